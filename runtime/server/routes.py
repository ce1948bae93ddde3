"""The HTTP endpoints: images, probes and metrics. Endpoints only; the work is the service's.

The router is built per service because the OpenAPI document of POST /v1/images carries that
service's request limits.
"""

from __future__ import annotations

import base64
import json
from typing import Any, Final

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from runtime.server.protocol import ApiError, ImagesResponse, Timings
from runtime.server.service import ImageService
from spec import contract

MAX_BODY_BYTES: Final = 64 * 1024
MALFORMED_JSON: Final = 'body: malformed JSON (send an object like {"prompt": "a cat"})'


def request_id(request: Request) -> str | None:
    """The id RequestIdMiddleware gave this request."""
    return request.scope.get("state", {}).get("request_id")


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


def build_router(service: ImageService) -> APIRouter:
    router = APIRouter()
    schema = service.request_model.model_json_schema()

    @router.post(
        contract.IMAGES_PATH,
        summary="Generate images",
        openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}},
        responses={
            200: {"content": {"image/png": {}, "application/json": {}}, "description": "PNG, or JSON with base64"},
            422: {"description": "invalid input: the message names the field and its allowed values"},
            429: {"description": "queue full; see Retry-After"},
            503: {"description": "not ready or draining; see Retry-After"},
            504: {"description": "request deadline passed"},
        },
    )
    async def images(request: Request) -> Response:
        service.refuse_unless_ready()  # cheap refusal before reading the body
        try:
            req = service.validate(await read_json(request))
        except ApiError:
            service.prom.rejections.labels(reason="invalid").inc()
            raise
        out = await service.generate(req, request.is_disconnected)
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

    @router.get(contract.HEALTH_PATH, summary="Liveness: the process answers")
    async def healthz() -> dict[str, str]:
        return {"status": "alive", "state": service.state}

    @router.get(contract.READY_PATH, summary="Readiness: model loaded, warmed with a finite image, not draining")
    async def readyz() -> JSONResponse:
        body = {
            "ready": service.ready,
            "state": service.state,
            "reason": service.reason,
            "device": service.backend.device,
            "model": service.settings.model_id,
        }
        return JSONResponse(body, status_code=200 if service.ready else 503)

    @router.get(contract.METRICS_PATH, summary="Prometheus metrics")
    async def metrics() -> Response:
        return Response(generate_latest(service.prom.registry), media_type=CONTENT_TYPE_LATEST)

    return router
