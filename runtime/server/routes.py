"""The HTTP endpoints: images, probes and an index (/metrics has a listener of its own: runtime.server.app).
Endpoints only; the work is the service's.

POST /v1/images takes JSON, or multipart/form-data with the same fields (numbers as text; the image
prompt as the file part `image`). Everything but an image prompt fits in MAX_BODY_BYTES; an image
prompt may add its own limit (runtime.server.codec.InputLimits), as base64 text in JSON or bytes in
a file part. The answer is the one image as png, jpeg or webp, or JSON (`response_format`).

The router is built per service because the OpenAPI document of POST /v1/images carries that
service's request limits, and per verifier because only token mode requires (and documents)
a bearer token. The document lists every status each route answers, with its content type:
an answer the document does not describe is a bug (tests/runtime/server/test_openapi.py).
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import re
from collections.abc import AsyncGenerator, Callable, Mapping
from typing import Any, Final

from fastapi import APIRouter, Depends, Request, Security
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from plan import contract
from runtime.server.auth import BearerToken, TokenVerifier
from runtime.server.codec import MEDIA_TYPES, InputLimits
from runtime.server.protocol import (
    INTEGER_FIELDS,
    NUMBER_FIELDS,
    ApiError,
    ErrorBody,
    ImagesResponse,
    Index,
    Liveness,
    Readiness,
    Timings,
    image_text_max_chars,
)
from runtime.server.service import ImageService, asgi_client_gone

MAX_BODY_BYTES: Final = 64 * 1024  # the body besides an image prompt
MALFORMED_JSON: Final = 'body: malformed JSON (send an object like {"prompt": "a cat"})'
TOO_DEEP_JSON: Final = 'body: JSON nested too deeply (send a flat object like {"prompt": "a cat"})'
JSON_MEDIA_TYPE: Final = "application/json"
MULTIPART_MEDIA_TYPE: Final = "multipart/form-data"
MAX_FORM_FIELDS: Final = 32
MULTIPART_OVERHEAD_BYTES: Final = 16 * 1024  # boundaries and part headers
JSON_IN_THREAD_BYTES: Final = 1024 * 1024  # larger bodies (an image prompt) are parsed off the event loop
# Memory for the bodies of requests in flight past their first MAX_BODY_BYTES (image prompts): ~23 prompts
# of the largest size, or hundreds of phone photos, queued or being received at once.
BODY_BUDGET_BYTES: Final = 256 * 1024 * 1024
BODY_BUDGET_RETRY_S: Final = 1
IMAGE_FIELD: Final = "image"
# A JSON number, as a form field's text may spell one (Python's float() would also take "nan", "1_0").
_FORM_INTEGER: Final = re.compile(r"-?(0|[1-9][0-9]*)")
_FORM_NUMBER: Final = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?")
# The example body the API's description shows (and Swagger UI's "Try it out" starts from).
EXAMPLE_BODY: Final = {"prompt": "a low-poly red fox figurine, studio light", "steps": 20, "seed": 7}

_RETRY_AFTER: Final = {"Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "integer"}}}
_IMAGE_HEADERS: Final = {
    contract.REQUEST_ID_HEADER: {
        "description": "this request's id: the client's when well-formed, else a new one",
        "schema": {"type": "string"},
    },
    "X-Seed": {"description": "seed of the first image (image i used seed + i)", "schema": {"type": "integer"}},
    "X-Queue-Ms": {"description": "milliseconds queued before the batch ran", "schema": {"type": "string"}},
    "X-Inference-Ms": {"description": "milliseconds of the batch's device call", "schema": {"type": "string"}},
    "X-Batch-Size": {"description": "images in the device call", "schema": {"type": "integer"}},
}


def request_id(request: Request) -> str | None:
    """The id RequestIdMiddleware gave this request."""
    return request.scope.get("state", {}).get("request_id")


def body_media_type(request: Request) -> str:
    """application/json or multipart/form-data; 415 otherwise (a text/plain body is not 'malformed JSON')."""
    given = request.headers.get("content-type", "")
    media_type = given.split(";")[0].strip().lower()
    if media_type not in (JSON_MEDIA_TYPE, MULTIPART_MEDIA_TYPE):
        shown = " ".join(given.split())[:64] or "none"
        raise ApiError(
            415, f"Content-Type must be {JSON_MEDIA_TYPE} or {MULTIPART_MEDIA_TYPE} (got {shown!r})", "content-type"
        )
    return media_type


def _too_large(limit: int, image_limits: InputLimits) -> ApiError:
    return ApiError(
        413,
        f"body: larger than {limit} bytes ({MAX_BODY_BYTES} bytes besides an image prompt of at most "
        f"{image_limits.max_bytes} bytes)",
        "body",
    )


class BodyBudgetError(ApiError):
    """The memory for image prompts in flight is full (429 with Retry-After)."""

    reason = "body_budget"  # the rejection metric's label


class BodyBudget:
    """Bytes of request bodies past their first MAX_BODY_BYTES held at once (image prompts), each until its
    request ends.

    A body is 64 KiB at most without an image prompt and ~11 MB with one, and a request holds its image
    prompt while it is decoded and queued: many at once would hold any amount of memory. A body that
    would take the total past `limit` is refused at once (429, Retry-After); requests without an image
    prompt never touch it. Only the event loop uses it (no lock).
    """

    def __init__(self, limit: int = BODY_BUDGET_BYTES) -> None:
        self.limit = limit
        self.held = 0

    def take(self, size: int) -> None:
        if self.held + size > self.limit:
            raise BodyBudgetError(
                429,
                f"body: image prompts in flight would take more than the {self.limit} bytes this server holds "
                f"for them; retry after {BODY_BUDGET_RETRY_S} s",
                "body",
                {"Retry-After": str(BODY_BUDGET_RETRY_S)},
            )
        self.held += size

    def give(self, size: int) -> None:
        self.held -= size


class Holding:
    """What one request holds of a BodyBudget; `release` when the request ends."""

    def __init__(self, budget: BodyBudget) -> None:
        self.budget, self.size = budget, 0

    def take(self, size: int) -> None:
        self.budget.take(size)
        self.size += size

    def release(self) -> None:
        self.budget.give(self.size)
        self.size = 0


async def capped(
    request: Request, limit: int, image_limits: InputLimits, holding: Holding | None = None
) -> AsyncGenerator[bytes, None]:
    """The body's chunks; ApiError(413) once they pass `limit` bytes; past MAX_BODY_BYTES each chunk is
    taken from `holding`'s budget (BodyBudgetError when it is full)."""
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit, image_limits)
        if holding is not None and size > MAX_BODY_BYTES:
            holding.take(min(len(chunk), size - MAX_BODY_BYTES))
        yield chunk


async def read_json(request: Request, image_limits: InputLimits | None = None, holding: Holding | None = None) -> Any:
    """The body as JSON, capped in size; ApiError(413/422) with a one-line reason otherwise.

    The cap leaves room for an image prompt as base64 text; what is not that text must fit in
    MAX_BODY_BYTES.
    """
    image_limits = image_limits or InputLimits()
    limit = MAX_BODY_BYTES + image_text_max_chars(image_limits)
    raw = b"".join([chunk async for chunk in capped(request, limit, image_limits, holding)])
    try:
        body = await asyncio.to_thread(json.loads, raw) if len(raw) > JSON_IN_THREAD_BYTES else json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(422, MALFORMED_JSON, "body") from None
    except RecursionError:  # json.loads recurses per nesting level: a small body can exhaust the stack
        raise ApiError(422, TOO_DEEP_JSON, "body") from None
    image = body.get(IMAGE_FIELD) if isinstance(body, dict) else None
    besides = len(raw) - (len(image) if isinstance(image, str) else 0)
    if besides > MAX_BODY_BYTES:
        raise ApiError(413, f"body: larger than {MAX_BODY_BYTES} bytes besides an image prompt", "body")
    return body


def _form_value(name: str, text: str) -> Any:
    """A form field's text as the JSON value it spells where the field is a number (else the text, refused later)."""
    if name in INTEGER_FIELDS or name in NUMBER_FIELDS:
        if _FORM_INTEGER.fullmatch(text):
            return int(text)
        if _FORM_NUMBER.fullmatch(text):
            return float(text)
    return text


async def read_form(
    request: Request, image_limits: InputLimits | None = None, holding: Holding | None = None
) -> dict[str, Any]:
    """A multipart/form-data body as the JSON body it stands for: the file part `image` as bytes.

    Capped like JSON (MAX_BODY_BYTES besides the image); a field given twice, a file under another
    name, or a malformed body is a one-line 422.
    """
    image_limits = image_limits or InputLimits()
    limit = MAX_BODY_BYTES + image_limits.max_bytes + MULTIPART_OVERHEAD_BYTES
    parser = _FormParser(
        request.headers,
        capped(request, limit, image_limits, holding),
        max_files=1,
        max_fields=MAX_FORM_FIELDS,
        max_part_size=MAX_BODY_BYTES,
    )
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise ApiError(
            422, f"body: malformed multipart/form-data ({' '.join(exc.message.split())[:120]})", "body"
        ) from None
    body: dict[str, Any] = {}
    try:
        for name, value in form.multi_items():
            field = " ".join(name.split())[:64]
            if name in body:
                raise ApiError(422, f"{field}: given more than once", field)
            if isinstance(value, UploadFile):
                if name != IMAGE_FIELD:
                    raise ApiError(422, f"{field}: a file part is allowed only as '{IMAGE_FIELD}'", field)
                body[name] = await value.read()
            else:
                body[name] = _form_value(name, value)
    finally:
        await form.close()
    return body


class _FormParser(MultiPartParser):
    """Starlette's multipart parser, holding an image prompt in memory (pods have no writable disk but /tmp)."""

    spool_max_size = InputLimits().max_bytes + MULTIPART_OVERHEAD_BYTES


def _error(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    answer: dict[str, Any] = {"model": ErrorBody, "description": description}
    if headers:
        answer["headers"] = headers
    return answer


def image_responses(authenticated: bool) -> dict[int | str, dict[str, Any]]:
    """Every answer POST /v1/images can give, with its content type (errors: the one ErrorBody shape)."""
    binary = {"schema": {"type": "string", "format": "binary"}}
    responses: dict[int | str, dict[str, Any]] = {
        200: {
            "model": ImagesResponse,
            "description": "response_format 'png' (the default), 'jpeg' or 'webp': the image as that type; "
            "'json': every image base64-encoded in output_format (png by default) in JSON",
            "content": {media_type: binary for media_type in MEDIA_TYPES.values()},
            "headers": _IMAGE_HEADERS,
        },
        413: _error(
            f"body larger than {MAX_BODY_BYTES} bytes besides an image prompt, or an image prompt over its byte limit"
        ),
        415: _error(f"Content-Type is neither {JSON_MEDIA_TYPE} nor {MULTIPART_MEDIA_TYPE}"),
        422: _error(
            "malformed JSON or multipart/form-data, or a body outside the schema; an image prompt that is not "
            "a PNG, JPEG or WebP image, is truncated, has an unsupported colour mode, is over the pixel limit "
            "(a decompression bomb is refused from its header) or under the smallest side; a strength that runs "
            "no denoising step at these steps; also a size the device cannot produce "
            "(a Neuron model serves the size it was compiled for), or steps, size and images that alone need "
            "more device time than the request deadline (the message says how many steps fit). "
            "The message names the field and its allowed values"
        ),
        429: _error(
            "queue full (by count, or by the estimated device time ahead), or this client's limit of requests "
            "in flight or per minute, or the memory for image prompts in flight is full: retry after "
            "Retry-After seconds",
            _RETRY_AFTER,
        ),
        499: _error("the client closed the connection before the answer (logged; the client never reads it)"),
        500: _error("generation failed on the device"),
        503: _error(
            "not ready (model loading or failed) or draining: retry elsewhere or after Retry-After", _RETRY_AFTER
        ),
        504: _error("request deadline passed before the images were ready"),
    }
    if authenticated:
        responses[401] = _error(
            "missing, malformed, expired, not yet valid or wrongly signed bearer token, or one for another "
            "issuer or audience",
            {"WWW-Authenticate": {"description": 'Bearer error="invalid_token"', "schema": {"type": "string"}}},
        )
    return dict(sorted(responses.items(), key=lambda item: str(item[0])))


def form_schema(schema: Mapping[str, Any]) -> dict[str, Any]:
    """The multipart/form-data body's schema from the JSON one: no nulls (a form cannot send one), image a file."""
    form = copy.deepcopy(dict(schema))
    for name, prop in form["properties"].items():
        options = [o for o in prop.pop("anyOf", []) if o.get("type") != "null"]
        if len(options) == 1:
            prop.update(options[0])
        if prop.get("default", 0) is None:
            del prop["default"]
        if name == IMAGE_FIELD:
            form["properties"][name] = {  # a file part, as OpenAPI 3.1 writes one
                "type": "string",
                "contentMediaType": "application/octet-stream",
                "description": "an image prompt: a PNG, JPEG or WebP file",
            }
    return form


async def no_identity() -> None:
    """The images route's identity with auth none: nobody in particular (no per-client limits)."""
    return None


def build_router(
    service: ImageService,
    verifier: TokenVerifier | None = None,
    on_rejected_token: Callable[[], None] | None = None,
    body_budget: BodyBudget | None = None,
) -> APIRouter:
    router = APIRouter()
    budget = body_budget if body_budget is not None else BodyBudget()
    schema = service.request_model.model_json_schema()
    # The token's claims (its sub is who asks, for the per-client limits); with auth none, no identity.
    identity: Any = Security(BearerToken(verifier, on_rejected_token)) if verifier is not None else Depends(no_identity)

    content = {
        JSON_MEDIA_TYPE: {"schema": schema, "example": EXAMPLE_BODY},
        MULTIPART_MEDIA_TYPE: {
            "schema": form_schema(schema),
            "encoding": {IMAGE_FIELD: {"contentType": ", ".join(MEDIA_TYPES.values())}},
        },
    }

    @router.get("/", summary="Where this server's pages are", response_model=Index)
    async def index() -> Index:
        settings = service.settings
        return Index(
            name="Edge Diffusion",
            images=contract.IMAGES_PATH,
            ui=contract.UI_PATH if settings.ui else None,
            docs=contract.DOCS_PATH if settings.docs else None,
        )

    @router.post(
        contract.IMAGES_PATH,
        summary="Generate images",
        description="A text prompt, and optionally an image prompt (img2img). JSON, or multipart/form-data "
        "with the image as a file part.",
        openapi_extra={"requestBody": {"required": True, "content": content}},
        responses=image_responses(verifier is not None),
    )
    async def images(request: Request, claims: Mapping[str, Any] | None = identity) -> Response:
        media_type = body_media_type(request)
        service.refuse_unless_ready()  # cheap refusal before reading the body
        holding = Holding(budget)
        try:
            try:
                if media_type == JSON_MEDIA_TYPE:
                    body = await read_json(request, service.image_limits, holding)
                else:
                    body = await read_form(request, service.image_limits, holding)
                req = service.validate(body)
            except BodyBudgetError:
                service.prom.rejections.labels(reason=BodyBudgetError.reason).inc()
                raise
            except ApiError:
                service.prom.rejections.labels(reason="invalid").inc()
                raise
            client = str(claims["sub"]) if claims else None
            out = await service.generate(req, client_gone=asgi_client_gone(request.receive), client=client)
        finally:
            holding.release()
        r = out.result
        headers = {
            "X-Seed": str(out.seed),
            "X-Queue-Ms": f"{r.queue_s * 1000:.1f}",
            "X-Inference-Ms": f"{r.inference_s * 1000:.1f}",
            "X-Batch-Size": str(r.batch_images),
        }
        if req.response_format != "json":  # type: ignore[attr-defined]
            return Response(out.encoded[0], media_type=out.media_type, headers=headers)
        answer = ImagesResponse(
            request_id=request_id(request),
            seed=out.seed,
            width=out.width,
            height=out.height,
            steps=out.steps,
            output_format=out.image_format,  # type: ignore[arg-type]
            images=[base64.b64encode(p).decode("ascii") for p in out.encoded],
            timings=Timings(
                queue_ms=round(r.queue_s * 1000, 2),
                inference_ms=round(r.inference_s * 1000, 2),
                batch_size=r.batch_images,
            ),
        )
        return JSONResponse(answer.model_dump(), headers=headers)

    @router.get(
        contract.HEALTH_PATH,
        summary="Liveness: the process answers, and has a device to run on",
        response_model=Liveness,
        responses={503: {"model": Liveness, "description": "every device worker died: restart the container"}},
    )
    async def healthz() -> Response:
        if service.batcher.all_lost:  # workers that crashed leave this process up: have the container restarted
            return JSONResponse(Liveness(status="no device").model_dump(), status_code=503)
        return JSONResponse(Liveness(status="alive").model_dump())

    @router.get(
        contract.READY_PATH,
        summary="Readiness: model loaded, warmed with a finite image, not draining",
        response_model=Readiness,
        responses={503: {"model": Readiness, "description": "not ready: loading, failed or draining"}},
    )
    async def readyz() -> JSONResponse:
        reason = "ready" if service.ready else service.reason
        body = Readiness(ready=service.ready, state=service.state, reason=reason)
        return JSONResponse(body.model_dump(), status_code=200 if service.ready else 503)

    return router
