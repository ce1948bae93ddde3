"""The FastAPI app: its service, lifespan, error answers, request ids, routes and the UI.

Every error leaves as one JSON line (`ApiError.body`), whether the service refused, pydantic
rejected the body, or something unexpected failed; every response carries an X-Request-Id.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import Any, Final
from uuid import uuid4

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.datastructures import MutableHeaders

from runtime.server.backends import Backend
from runtime.server.protocol import ApiError, describe_errors
from runtime.server.routes import build_router, request_id
from runtime.server.service import ImageService
from runtime.server.settings import Settings
from spec import contract

log = logging.getLogger(__name__)

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


def _error_response(request: Request, exc: ApiError) -> JSONResponse:
    return JSONResponse(exc.body(request_id(request)), status_code=exc.status, headers=exc.headers)


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

    app.include_router(build_router(service))
    if settings.ui:
        from runtime.server.ui import mount_ui

        app = mount_ui(app, service)
    app.add_middleware(RequestIdMiddleware)
    return app
