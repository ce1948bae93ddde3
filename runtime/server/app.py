"""The FastAPI app: its service, lifespan, error answers, request ids, auth, routes, docs and the UI.

Every error leaves as one JSON line (`ApiError.body`), whether the service refused, pydantic
rejected the body, the path or method does not exist, a token was refused, or something
unexpected failed; every response carries an X-Request-Id. In token mode the inference route
and, when mounted, the whole UI need a bearer token (runtime.server.auth says what stays open):
a plain browser cannot send one, so the UI is for auth none (``make serve``), a client that sends
the header (``gradio_client.Client(..., headers=...)``) or a proxy that adds it.
/docs (Swagger UI from runtime/server/static: it works offline and calls no CDN) and /openapi.json
exist only with the docs setting on (``make serve``); pods describe their API to nobody. GET / says
where the images route is and, only when they are on, the UI and the docs (open like /healthz: it
tells no more than a 404 from them would).
/metrics is not on this app: ``create_metrics_app`` serves it on a listener of its own, which the
charts keep inside the cluster.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final
from uuid import uuid4

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from starlette.applications import Starlette
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import Route
from starlette.staticfiles import StaticFiles

from plan import contract
from runtime.server.auth import TokenError, TokenVerifier, verifier_from_settings
from runtime.server.backends import Backend
from runtime.server.metrics import AnswerCounter
from runtime.server.protocol import ApiError, describe_errors
from runtime.server.routes import BodyBudget, build_router, request_id
from runtime.server.service import ImageService
from runtime.server.settings import Settings

# nginx's status for a client that closed the connection before the answer: not a server error.
CLIENT_CLOSED_REQUEST: Final = 499
log = logging.getLogger(__name__)

_REQUEST_ID_RE: Final = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
STATIC_DIR: Final = Path(__file__).resolve().parent / "static"
STATIC_PATH: Final = f"{contract.DOCS_PATH}/static"
OPENAPI_PATH: Final = "/openapi.json"
# Prometheus text exposition 0.0.4: what every Prometheus version scrapes (the names are all legacy-safe).
METRICS_MEDIA_TYPE: Final = CONTENT_TYPE_PLAIN_0_0_4

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


class TokenGateMiddleware:
    """Require a bearer token on every request under ``prefix`` (the mounted UI), answering 401 like the API.

    The UI's pages, queue and generation calls all live under the prefix; a gate there covers
    whatever routes Gradio adds, where a per-route check would miss one.
    """

    def __init__(self, app: ASGIApp, verifier: TokenVerifier, prefix: str, on_rejected: Callable[[], None]) -> None:
        self.app = app
        self.verifier = verifier
        self.prefix = prefix
        self.on_rejected = on_rejected

    def _guarded(self, path: str) -> bool:
        return path == self.prefix or path.startswith(self.prefix + "/")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or not self._guarded(scope.get("path", "")):
            await self.app(scope, receive, send)
            return
        authorization = next(
            (
                v.decode("latin-1")
                for k, v in scope.get("headers", [])
                if k.decode("latin-1").lower() == "authorization"
            ),
            None,
        )
        try:
            self.verifier.verify_header(authorization)
        except TokenError as exc:
            self.on_rejected()
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})  # policy violation
                return
            body = exc.body(scope.get("state", {}).get("request_id"))
            await JSONResponse(body, status_code=exc.status, headers=exc.headers)(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _error_response(request: Request, exc: ApiError) -> JSONResponse:
    return JSONResponse(exc.body(request_id(request)), status_code=exc.status, headers=exc.headers)


def _one_line(text: str, limit: int = 80) -> str:
    return " ".join(text.split())[:limit]


def _http_error(request: Request, exc: StarletteHTTPException, docs: bool) -> ApiError:
    """Starlette's own refusals (no route, wrong method, ...) in the API's one error shape; they point
    at /docs only when it is served."""
    path = _one_line(request.url.path)
    headers = dict(exc.headers or {})
    if exc.status_code == 404:
        described = f"; the API is described at {contract.DOCS_PATH}" if docs else ""
        return ApiError(404, f"path: {path!r} not found{described}", "path", headers)
    if exc.status_code == 405:
        allowed = headers.get("Allow") or headers.get("allow") or ("see " + contract.DOCS_PATH if docs else "none")
        return ApiError(
            405, f"method: {request.method} is not allowed on {path}; allowed: {allowed}", "method", headers
        )
    detail = exc.detail if isinstance(exc.detail, str) else "request refused"
    return ApiError(exc.status_code, _one_line(detail, 200), None, headers)


def _mount_docs(app: FastAPI) -> None:
    """Swagger UI from the bundled static files; its page references nothing outside this server."""
    app.mount(STATIC_PATH, StaticFiles(directory=STATIC_DIR), name="docs-static")

    @app.get(contract.DOCS_PATH, include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=OPENAPI_PATH,
            title=f"{app.title} - API",
            swagger_js_url=f"{STATIC_PATH}/swagger-ui-bundle.js",
            swagger_css_url=f"{STATIC_PATH}/swagger-ui.css",
            swagger_favicon_url=f"{STATIC_PATH}/favicon-32x32.png",
            swagger_ui_parameters={"validatorUrl": None},  # no spec upload to validator.swagger.io
        )


def create_app(settings: Settings, backend: Backend | None = None, verifier: TokenVerifier | None = None) -> FastAPI:
    """The app and its service (at `app.state.service`); lifespan loads the model in the background.

    In token mode without a ``verifier`` the key is read as the settings say (file or KMS);
    AuthSetupError (one line) when none is configured.
    """
    if settings.auth == "token" and verifier is None:
        verifier = verifier_from_settings(settings)
    if settings.auth == "none":
        verifier = None
    service = ImageService(settings, backend)

    def rejected_token() -> None:
        service.prom.rejections.labels(reason="unauthorized").inc()

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
        openapi_url=OPENAPI_PATH if settings.docs else None,
        docs_url=None,  # served by _mount_docs from local files
        redoc_url=None,  # ReDoc would load its script from a CDN
    )
    app.state.service = service
    app.state.verifier = verifier

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return _error_response(request, exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        field, message = describe_errors(exc.errors(), service.ranges)
        return _error_response(request, ApiError(422, message, field))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error_response(request, _http_error(request, exc, settings.docs))

    @app.exception_handler(ClientDisconnect)
    async def client_gone(request: Request, exc: ClientDisconnect) -> Response:
        """The client left while sending its body: nobody reads an answer, and it is no server error."""
        log.info("client left before its request body arrived on %s", request.url.path)
        return Response(status_code=CLIENT_CLOSED_REQUEST)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)
        return _error_response(request, ApiError(500, f"internal error ({type(exc).__name__})"))

    app.state.body_budget = BodyBudget()  # image prompts in flight, across the app's requests
    app.include_router(build_router(service, verifier, rejected_token, app.state.body_budget))
    if settings.docs:
        _mount_docs(app)
    if settings.ui:
        from runtime.server.ui import mount_ui

        app = mount_ui(app, service)
        if verifier is not None:
            app.add_middleware(
                TokenGateMiddleware, verifier=verifier, prefix=contract.UI_PATH, on_rejected=rejected_token
            )
    # Every answer of the image route counts in CloudWatch, refusals no handler sees (a bad token) too.
    app.add_middleware(AnswerCounter, record=service.cloudwatch.record_answer)
    app.add_middleware(RequestIdMiddleware)  # outermost: every answer, a refused token's too, has an id
    return app


def create_metrics_app(service: ImageService) -> Starlette:
    """The metrics listener's app: ``GET /metrics`` (Prometheus text 0.0.4 of ``service``) and nothing else.

    No token: the port it listens on is reachable from pods of the cluster only (charts/network_policies.py),
    never through a Service, the ALB or a NodePort.
    """

    async def metrics(_request: Request) -> Response:
        return Response(generate_latest(service.prom.registry), media_type=METRICS_MEDIA_TYPE)

    return Starlette(routes=[Route(contract.METRICS_PATH, metrics, methods=["GET"])])
