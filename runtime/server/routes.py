"""The HTTP endpoints: images and probes (/metrics has a listener of its own: runtime.server.app).
Endpoints only; the work is the service's.

The router is built per service because the OpenAPI document of POST /v1/images carries that
service's request limits, and per verifier because only token mode requires (and documents)
a bearer token. The document lists every status each route answers, with its content type:
an answer the document does not describe is a bug (tests/runtime/server/test_openapi.py).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Mapping
from typing import Any, Final

from fastapi import APIRouter, Depends, Request, Security
from fastapi.responses import JSONResponse, Response

from plan import contract
from runtime.server.auth import BearerToken, TokenVerifier
from runtime.server.protocol import ApiError, ErrorBody, ImagesResponse, Liveness, Readiness, Timings
from runtime.server.service import ImageService, asgi_client_gone

MAX_BODY_BYTES: Final = 64 * 1024
MALFORMED_JSON: Final = 'body: malformed JSON (send an object like {"prompt": "a cat"})'
TOO_DEEP_JSON: Final = 'body: JSON nested too deeply (send a flat object like {"prompt": "a cat"})'
JSON_MEDIA_TYPE: Final = "application/json"

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


def require_json(request: Request) -> None:
    """415 unless the body is declared application/json (a text/plain body is not 'malformed JSON')."""
    given = request.headers.get("content-type", "")
    if given.split(";")[0].strip().lower() != JSON_MEDIA_TYPE:
        shown = " ".join(given.split())[:64] or "none"
        raise ApiError(415, f"Content-Type must be {JSON_MEDIA_TYPE} (got {shown!r})", "content-type")


async def read_json(request: Request) -> Any:
    """The body as JSON, capped in size; ApiError(413/422) with a one-line reason otherwise."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise ApiError(413, f"body: larger than {MAX_BODY_BYTES} bytes", "body")
        chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks))
    except (ValueError, UnicodeDecodeError):
        raise ApiError(422, MALFORMED_JSON, "body") from None
    except RecursionError:  # json.loads recurses per nesting level: a small body can exhaust the stack
        raise ApiError(422, TOO_DEEP_JSON, "body") from None


def _error(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    answer: dict[str, Any] = {"model": ErrorBody, "description": description}
    if headers:
        answer["headers"] = headers
    return answer


def image_responses(authenticated: bool) -> dict[int | str, dict[str, Any]]:
    """Every answer POST /v1/images can give, with its content type (errors: the one ErrorBody shape)."""
    responses: dict[int | str, dict[str, Any]] = {
        200: {
            "model": ImagesResponse,
            "description": "response_format 'png' (the default): the image as image/png; "
            "'json': every image as base64 PNG in JSON",
            "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
            "headers": _IMAGE_HEADERS,
        },
        413: _error(f"body larger than {MAX_BODY_BYTES} bytes"),
        415: _error(f"Content-Type is not {JSON_MEDIA_TYPE}"),
        422: _error(
            "malformed JSON, or a body outside the schema; also a size the device cannot produce "
            "(a Neuron model serves the size it was compiled for), or steps, size and images that alone need "
            "more device time than the request deadline (the message says how many steps fit). "
            "The message names the field and its allowed values"
        ),
        429: _error(
            "queue full (by count, or by the estimated device time ahead), or this client's limit of requests "
            "in flight or per minute: retry after Retry-After seconds",
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


async def no_identity() -> None:
    """The images route's identity with auth none: nobody in particular (no per-client limits)."""
    return None


def build_router(
    service: ImageService,
    verifier: TokenVerifier | None = None,
    on_rejected_token: Callable[[], None] | None = None,
) -> APIRouter:
    router = APIRouter()
    schema = service.request_model.model_json_schema()
    # The token's claims (its sub is who asks, for the per-client limits); with auth none, no identity.
    identity: Any = Security(BearerToken(verifier, on_rejected_token)) if verifier is not None else Depends(no_identity)

    @router.post(
        contract.IMAGES_PATH,
        summary="Generate images",
        openapi_extra={"requestBody": {"required": True, "content": {JSON_MEDIA_TYPE: {"schema": schema}}}},
        responses=image_responses(verifier is not None),
    )
    async def images(request: Request, claims: Mapping[str, Any] | None = identity) -> Response:
        require_json(request)
        service.refuse_unless_ready()  # cheap refusal before reading the body
        try:
            req = service.validate(await read_json(request))
        except ApiError:
            service.prom.rejections.labels(reason="invalid").inc()
            raise
        client = str(claims["sub"]) if claims else None
        out = await service.generate(req, client_gone=asgi_client_gone(request.receive), client=client)
        r = out.result
        headers = {
            "X-Seed": str(out.seed),
            "X-Queue-Ms": f"{r.queue_s * 1000:.1f}",
            "X-Inference-Ms": f"{r.inference_s * 1000:.1f}",
            "X-Batch-Size": str(r.batch_images),
        }
        if req.response_format == "png":  # type: ignore[attr-defined]
            return Response(out.pngs[0], media_type="image/png", headers=headers)
        body = ImagesResponse(
            request_id=request_id(request),
            seed=out.seed,
            width=out.width,
            height=out.height,
            steps=out.steps,
            images=[base64.b64encode(p).decode("ascii") for p in out.pngs],
            timings=Timings(
                queue_ms=round(r.queue_s * 1000, 2),
                inference_ms=round(r.inference_s * 1000, 2),
                batch_size=r.batch_images,
            ),
        )
        return JSONResponse(body.model_dump(), headers=headers)

    @router.get(contract.HEALTH_PATH, summary="Liveness: the process answers", response_model=Liveness)
    async def healthz() -> Liveness:
        return Liveness(status="alive")

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
