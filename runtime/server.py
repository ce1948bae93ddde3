"""The inference server: REST API, Gradio UI, probes and metrics on one FastAPI app.

`python -m runtime.server` reads its settings from the contract's environment variables
(flags override), starts uvicorn at once (so /healthz answers during a long model load),
loads and warms the model in the background, and only then reports ready. SIGTERM flips
/readyz to 503, refuses new work, finishes what was accepted, and exits 0.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import re
import secrets
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from types import FrameType
from typing import Any, Final
from uuid import uuid4

import numpy as np
import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.datastructures import MutableHeaders

from runtime.backends import Backend, BatchParams, ImageSpec, create_backend, warmup
from runtime.batcher import Batcher, BatcherError, ClientGoneError, Job, JobResult, QueueFullError
from runtime.metrics import CloudWatchAggregator, Dimensions, PromMetrics, build_sink
from runtime.schemas import (
    ImageRequestBase,
    allowed_ranges,
    build_request_model,
    describe_errors,
)
from runtime.settings import Settings, SettingsError
from spec import contract

log = logging.getLogger("runtime.server")

MAX_BODY_BYTES: Final = 64 * 1024
NOT_READY_RETRY_S: Final = 5
_REQUEST_ID_RE: Final = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class RequestIdMiddleware:
    """Give every HTTP response an X-Request-Id (the client's, when well-formed, else a new one).

    Pure ASGI rather than BaseHTTPMiddleware, which would hide client disconnects from handlers.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = ""
        for key, value in scope.get("headers", []):
            if key.decode("latin-1").lower() == contract.REQUEST_ID_HEADER.lower():
                incoming = value.decode("latin-1")
                break
        request_id = incoming if _REQUEST_ID_RE.match(incoming) else uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)[contract.REQUEST_ID_HEADER] = request_id
            await send(message)

        await self.app(scope, receive, send_with_id)


class ApiError(Exception):
    """An HTTP error answered as one JSON line: {"error": ..., "field": ..., "request_id": ...}."""

    def __init__(self, status: int, message: str, field: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field
        self.headers = headers or {}


@dataclass
class Generated:
    """A completed request: images as PNG bytes plus what the client is told about it."""

    pngs: list[bytes]
    seed: int
    width: int
    height: int
    steps: int
    result: JobResult


def encode_png(image: np.ndarray) -> bytes:
    from PIL import Image

    pixels = (np.clip(image, 0.0, 1.0) * 255).round().astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", compress_level=1)  # level 6 costs ~25 ms at 512x512
    return buf.getvalue()


class ImageService:
    """Model lifecycle, readiness, and the one generate() path shared by REST and UI."""

    def __init__(self, settings: Settings, backend: Backend | None = None) -> None:
        self.settings = settings
        self.backend = backend or create_backend(settings)
        self.prom = PromMetrics()
        self.batcher = Batcher(
            self.backend,
            max_batch=settings.max_batch,
            max_wait_s=settings.max_wait_ms / 1000.0,
            queue_size=settings.queue_size,
            metrics=self.prom,
        )
        dims = Dimensions(settings.deployment, self.backend.accelerator, settings.metric_location)
        self.cloudwatch = CloudWatchAggregator(
            build_sink(settings.metrics_sink, dims, settings.aws_region),
            pending=lambda: self.batcher.pending,
            interval_s=settings.metrics_interval_s,
        )
        self.request_model = build_request_model(settings.limits)
        self.ranges = allowed_ranges(settings.limits)
        self.state = "starting"  # starting|loading|warming|ready|failed|draining
        self.reason = "model not loaded yet"
        self._load_task: asyncio.Task[None] | None = None

    # --- lifecycle ----------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self.state == "ready"

    def _set_state(self, state: str, reason: str) -> None:
        self.state, self.reason = state, reason
        self.prom.ready.set(1 if state == "ready" else 0)

    async def start(self) -> None:
        self.batcher.start()
        self.cloudwatch.start()
        self._load_task = asyncio.get_running_loop().create_task(self._load(), name="model-load")

    async def _load(self) -> None:
        try:
            self._set_state("loading", f"loading model {self.settings.model_id}")
            await self.batcher.run_on_worker(self.backend.load)
            self._set_state("warming", "warming up")
            seconds = await self.batcher.run_on_worker(warmup, self.backend, self.settings.max_batch)
            self.batcher.observe_batch_time(seconds)
        except Exception as exc:
            reason = " ".join(f"model load failed: {type(exc).__name__}: {exc}".split())[:500]
            log.error("%s", reason)
            if self.state != "draining":
                self._set_state("failed", reason)
            return
        if self.state != "draining":
            self._set_state("ready", self.backend.description)
            log.info("ready: %s (warm-up %.2fs)", self.backend.description, seconds)

    async def drain(self, timeout_s: float) -> bool:
        """Readiness off, refuse new work, wait for accepted work; True if all of it finished."""
        self._set_state("draining", "draining: shutting down")
        self.batcher.begin_drain()
        finished = await self.batcher.wait_idle(timeout_s)
        log.info("drained (%s)", "all accepted work finished" if finished else "timeout, dropping the rest")
        return finished

    async def stop(self) -> None:
        if self.state != "draining":
            await self.drain(timeout_s=min(self.settings.drain_timeout_s, 5.0))
        if self._load_task is not None and not self._load_task.done():
            self._load_task.cancel()
        await self.batcher.stop()
        await asyncio.to_thread(self.cloudwatch.stop)

    # --- the generate path --------------------------------------------------------------
    def validate(self, body: Any) -> ImageRequestBase:
        from pydantic import ValidationError

        try:
            req = self.request_model.model_validate(body)
        except ValidationError as exc:
            field, message = describe_errors(exc.errors(), self.ranges)
            raise ApiError(422, message, field) from None
        return req

    def plan(self, req: ImageRequestBase) -> tuple[BatchParams, list[ImageSpec], int]:
        """Fill the model's defaults, apply device rules, and give each image its seed."""
        data = req.model_dump()
        width = data["width"] or self.backend.default_width
        height = data["height"] or self.backend.default_height
        problem = self.backend.check_size(width, height)
        if problem:
            raise ApiError(422, f"width/height: {problem}", "width")
        if data["response_format"] == "png" and data["num_images"] > 1:
            raise ApiError(422, "num_images: a PNG response holds one image; use response_format 'json'", "num_images")
        steps = data["steps"] or self.backend.default_steps
        seed = data["seed"] if data["seed"] is not None else secrets.randbelow(self.settings.limits.max_seed + 1)
        params = BatchParams(steps=steps, guidance_scale=float(data["guidance_scale"]), width=width, height=height)
        negative = data["negative_prompt"] or ""
        # Image i of a request uses seed + i: the same request gives the same images, alone or batched.
        specs = [ImageSpec(data["prompt"], negative, seed + i) for i in range(data["num_images"])]
        return params, specs, seed

    async def generate(
        self, req: ImageRequestBase, is_disconnected: Callable[[], Awaitable[bool]] | None = None
    ) -> Generated:
        """Queue, wait, encode. Raises ApiError with the status the client should see."""
        if not self.ready:
            self.prom.rejections.labels(reason="draining" if self.state == "draining" else "not_ready").inc()
            raise ApiError(503, f"not ready: {self.reason}", headers={"Retry-After": str(NOT_READY_RETRY_S)})
        params, specs, seed = self.plan(req)
        started = time.perf_counter()
        job: Job | None = None
        try:
            job = self.batcher.submit(params, specs, self.settings.request_timeout_s)
            result = await self.batcher.wait(job, is_disconnected)
        except QueueFullError as exc:
            self.prom.rejections.labels(reason=exc.reason).inc()
            raise ApiError(429, str(exc), headers={"Retry-After": str(exc.retry_after_s)}) from None
        except BatcherError as exc:
            self.prom.rejections.labels(reason=exc.reason).inc()
            self.prom.request_duration.labels(outcome=exc.reason).observe(time.perf_counter() - started)
            status = {"draining": 503, "deadline": 504, "disconnected": 499}.get(exc.reason, 500)
            if isinstance(exc, ClientGoneError):
                log.info("client disconnected; request dropped from its batch")
            raise ApiError(status, str(exc)) from None
        except asyncio.CancelledError:
            if job is not None:
                self.batcher.cancel(job)
            raise
        pngs = await asyncio.to_thread(lambda: [encode_png(img) for img in result.images])
        elapsed = time.perf_counter() - started
        self.prom.request_duration.labels(outcome="ok").observe(elapsed)
        self.prom.images_generated.inc(len(pngs))
        self.cloudwatch.record_request(result.inference_s * 1000.0, len(pngs))
        return Generated(pngs, seed, params.width, params.height, params.steps, result)


def _error_response(request: Request, exc: ApiError) -> JSONResponse:
    body: dict[str, Any] = {"error": exc.message, "request_id": request.scope.get("state", {}).get("request_id")}
    if exc.field:
        body["field"] = exc.field
    return JSONResponse(body, status_code=exc.status, headers=exc.headers)


async def _read_json(request: Request) -> Any:
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
        raise ApiError(422, 'body: malformed JSON (send an object like {"prompt": "a cat"})', "body") from None


def create_app(settings: Settings, backend: Backend | None = None) -> FastAPI:
    """The app and its service (at `app.state.service`); lifespan loads the model in the background."""
    service = ImageService(settings, backend)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    app = FastAPI(
        title="Edge Diffusion",
        version="1",
        description="Hardware-agnostic Stable Diffusion inference (CUDA, Neuron, CPU) with dynamic batching.",
        lifespan=lifespan,
        docs_url=contract.DOCS_PATH,
    )
    app.state.service = service

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return _error_response(request, exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        field, message = describe_errors(exc.errors(), service.ranges)
        return _error_response(request, ApiError(422, message, field))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)
        return _error_response(request, ApiError(500, f"internal error ({type(exc).__name__})"))

    schema = service.request_model.model_json_schema()

    @app.post(
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
        if not service.ready:  # cheap refusal before reading the body
            service.prom.rejections.labels(reason="draining" if service.state == "draining" else "not_ready").inc()
            raise ApiError(503, f"not ready: {service.reason}", headers={"Retry-After": str(NOT_READY_RETRY_S)})
        try:
            req = service.validate(await _read_json(request))
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
        return JSONResponse(
            {
                "request_id": request.scope.get("state", {}).get("request_id"),
                "seed": out.seed,
                "width": out.width,
                "height": out.height,
                "steps": out.steps,
                "images": [base64.b64encode(p).decode("ascii") for p in out.pngs],
                "timings": {
                    "queue_ms": round(r.queue_s * 1000, 2),
                    "inference_ms": round(r.inference_s * 1000, 2),
                    "batch_size": r.batch_images,
                },
            },
            headers=headers,
        )

    @app.get(contract.HEALTH_PATH, summary="Liveness: the process answers")
    async def healthz() -> dict[str, str]:
        return {"status": "alive", "state": service.state}

    @app.get(contract.READY_PATH, summary="Readiness: model loaded, warmed with a finite image, not draining")
    async def readyz() -> JSONResponse:
        body = {
            "ready": service.ready,
            "state": service.state,
            "reason": service.reason,
            "accelerator": service.backend.accelerator,
            "model": settings.model_id,
        }
        return JSONResponse(body, status_code=200 if service.ready else 503)

    @app.get(contract.METRICS_PATH, summary="Prometheus metrics")
    async def metrics() -> Response:
        return Response(generate_latest(service.prom.registry), media_type=CONTENT_TYPE_LATEST)

    if settings.ui:
        from runtime.ui import mount_ui

        app = mount_ui(app, service)
    app.add_middleware(RequestIdMiddleware)
    return app


class DrainingServer(uvicorn.Server):
    """uvicorn.Server whose first SIGTERM drains (readiness off, finish accepted work), then exits 0.

    A second SIGTERM, or SIGINT, falls back to uvicorn's own shutdown.
    """

    def __init__(self, config: uvicorn.Config, service: ImageService) -> None:
        super().__init__(config)
        self.service = service
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_task: asyncio.Task[None] | None = None
        self._drain_requested = False

    async def startup(self, sockets: Any = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets)
        if self.started:
            host = self.config.host
            host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host  # noqa: S104
            base = f"http://{host}:{self.config.port}"
            ui = f"{base}{contract.UI_PATH}/" if self.service.settings.ui else "(UI disabled)"
            print(f"Edge Diffusion UI: {ui}  API docs: {base}{contract.DOCS_PATH}", flush=True)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig == signal.SIGTERM and not self._drain_requested and self._loop is not None:
            self._drain_requested = True
            self._loop.call_soon_threadsafe(self._start_drain)
            return
        super().handle_exit(sig, frame)

    def _start_drain(self) -> None:
        if self._drain_task is None:
            self._drain_task = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        log.info("SIGTERM: draining")
        await self.service.drain(self.service.settings.drain_timeout_s)
        self.should_exit = True


def main(argv: list[str] | None = None) -> int:
    try:
        settings = Settings.from_args(argv)
    except SettingsError as exc:
        print(f"invalid settings: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    app = create_app(settings)
    config = uvicorn.Config(
        app, host=settings.host, port=settings.port, log_level=settings.log_level.lower(), access_log=False
    )
    DrainingServer(config, app.state.service).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
