"""``python -m runtime.server``: settings from the contract's environment (flags override), then serve.

Before serving, the TLS certificate (files or Secrets Manager) and the token public key (file
or KMS) are read and checked once, the open-file limit is raised and checked to hold every
connection the server may accept, and both ports are bound; any problem is one line and exit 2,
never a server that answers plain HTTP, accepts every token or runs out of file descriptors.
uvicorn then starts at once (so /healthz answers during a long model load) while the model loads
and warms in the background; only then is the server ready. /metrics answers on a port of its own
(plain HTTP) from the start. SIGTERM flips /readyz to 503, refuses new work, finishes what was
accepted, and exits 0. With --exit-on-failed-load (pods) a model that cannot load ends the
process with exit 1, so that the kubelet restarts it. Connections are guarded by
runtime.server.transport.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import ssl
import sys
from collections.abc import MutableMapping, Sequence
from types import FrameType
from typing import Any, Final

import uvicorn

from plan import contract
from runtime.server import transport
from runtime.server.app import create_app, create_metrics_app
from runtime.server.auth import verifier_from_settings
from runtime.server.service import ImageService
from runtime.server.settings import Settings
from runtime.server.tls import context_from_settings
from runtime.settings import SettingsError, error_exit, refusal

log = logging.getLogger("runtime.server")

OMP_WAIT_POLICY: Final = "OMP_WAIT_POLICY"


def idle_kernel_threads_sleep(environ: MutableMapping[str, str] = os.environ) -> bool:
    """Make torch's idle OpenMP threads sleep instead of spin (OMP_WAIT_POLICY=PASSIVE), unless the operator set it.

    Called before torch loads (libgomp reads it once). In process a pipeline has the CPUs to itself
    and spinning saves a wake-up; served, the event loop (answers out, requests in) needs a core the
    moment a batch ends, and spinning workers hold it: on 2 shared cores that cost the server most of
    its gap to in process (docs/benchmarks.md, "Server efficiency"). True when it set the policy.
    """
    if environ.get(OMP_WAIT_POLICY):
        return False
    environ[OMP_WAIT_POLICY] = "PASSIVE"
    return True


class SideServer(uvicorn.Server):
    """A uvicorn.Server that another one starts and stops on its own event loop: no signal handlers
    and no lifespan of its own (the metrics listener)."""

    async def start(self, listener: socket.socket) -> None:
        if not self.config.loaded:
            self.config.load()
        self.lifespan = self.config.lifespan_class(self.config)
        await self.startup(sockets=[listener])

    async def stop(self, listener: socket.socket) -> None:
        if self.started:
            await self.shutdown(sockets=[listener])


class DrainingServer(uvicorn.Server):
    """uvicorn.Server whose first SIGTERM drains (readiness off, finish accepted work), then exits 0.

    A second SIGTERM, or SIGINT, falls back to uvicorn's own shutdown. It serves on ``listener`` and
    runs the metrics listener beside it on the same loop, from before the app starts to after it stops.
    """

    def __init__(
        self,
        config: uvicorn.Config,
        service: ImageService,
        listener: transport.Listener,
        metrics: SideServer,
        metrics_listener: transport.Listener,
    ) -> None:
        super().__init__(config)
        self.service = service
        self.listener = listener
        self.metrics = metrics
        self.metrics_listener = metrics_listener
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_task: asyncio.Task[None] | None = None
        self._drain_requested = False
        self._folded = transport.FoldedWarnings(listener.limiter.events)
        self.exit_code = 0
        if service.settings.exit_on_failed_load:
            service.on_failed_load = self._exit_failed

    def _exit_failed(self, reason: str) -> None:
        """The model cannot load: stop and exit 1, so that the kubelet restarts the container."""
        log.error("exiting (%s): %s", contract.ENV_EXIT_ON_FAILED_LOAD, reason)
        self.exit_code = 1
        self.should_exit = True

    @property
    def port(self) -> int:
        return int(self.listener.getsockname()[1])

    @property
    def metrics_port(self) -> int:
        return int(self.metrics_listener.getsockname()[1])

    def urls(self) -> dict[str, str]:
        """Where the UI, the API docs and the metrics are, or that they are off: what startup prints."""
        host = self.config.host
        host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host  # noqa: S104
        host = f"[{host}]" if ":" in host else host
        base = f"{'https' if self.listener.limiter.ssl_context else 'http'}://{host}:{self.port}"
        settings = self.service.settings
        return {
            "UI": f"{base}{contract.UI_PATH}/" if settings.ui else "off (--ui)",
            "API docs": f"{base}{contract.DOCS_PATH}" if settings.docs else "off (--docs)",
            "metrics": f"http://{host}:{self.metrics_port}{contract.METRICS_PATH}",
        }

    async def startup(self, sockets: Any = None) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.set_exception_handler(transport.accept_error_handler(self.listener.limiter.events))
        logging.getLogger("uvicorn.error").addFilter(self._folded)
        await self.metrics.start(self.metrics_listener)
        await super().startup(sockets=[self.listener])
        if self.started:
            urls = self.urls()
            log.info("serving on port %d, metrics on port %d", self.port, self.metrics_port)
            print(
                f"Edge Diffusion UI: {urls['UI']}  API docs: {urls['API docs']}  metrics: {urls['metrics']}",
                flush=True,
            )

    async def shutdown(self, sockets: Any = None) -> None:
        try:
            await super().shutdown(sockets=[self.listener])
        finally:
            await self.metrics.stop(self.metrics_listener)
            for limiter in (self.listener.limiter, self.metrics_listener.limiter):
                limiter.events.flush()
            logging.getLogger("uvicorn.error").removeFilter(self._folded)

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


def connection_limits(settings: Settings) -> tuple[transport.ConnectionLimits, transport.ConnectionLimits]:
    """The API listener's limits (the settings') and the metrics listener's (a few connections)."""
    api = transport.ConnectionLimits(
        max_connections=settings.max_connections,
        header_timeout_s=settings.header_timeout_s,
        body_timeout_s=settings.body_timeout_s,
        keep_alive_s=settings.keep_alive_s,
    )
    metrics = transport.ConnectionLimits(
        max_connections=transport.METRICS_MAX_CONNECTIONS,
        header_timeout_s=settings.header_timeout_s,
        body_timeout_s=settings.body_timeout_s,
        keep_alive_s=settings.keep_alive_s,
    )
    return api, metrics


def open_listeners(
    settings: Settings, ssl_context: ssl.SSLContext | None
) -> tuple[transport.Listener, transport.Listener]:
    """The file budget checked, then both ports bound; SettingsError (one line) when either fails."""
    api_limits, metrics_limits = connection_limits(settings)
    log.info(transport.ensure_file_budget(api_limits, [metrics_limits]))
    api = transport.ConnectionLimiter("api", api_limits, ssl_context)
    metrics = transport.ConnectionLimiter("metrics", metrics_limits)
    bound: list[transport.Listener] = []
    for limiter, env, port in (
        (api, contract.ENV_PORT, settings.port),
        (metrics, contract.ENV_METRICS_PORT, settings.metrics_port),
    ):
        try:
            bound.append(transport.listen(settings.host, port, limiter))
        except OSError as exc:
            for sock in bound:
                sock.close()
            detail = f"cannot listen on {settings.host}:{port} ({exc.strerror or exc})"
            raise refusal(env, port, "a free port on this host", detail) from None
    return bound[0], bound[1]


def build_server(
    settings: Settings, app: Any, listener: transport.Listener, metrics_listener: transport.Listener
) -> DrainingServer:
    """The API server on ``listener`` with the metrics server beside it, both under their limiters."""
    service: ImageService = app.state.service
    config = transport.uvicorn_config(
        app, listener.limiter, host=settings.host, port=settings.port, log_level=settings.log_level, lifespan=True
    )
    metrics_config = transport.uvicorn_config(
        create_metrics_app(service),
        metrics_listener.limiter,
        host=settings.host,
        port=settings.metrics_port,
        log_level=settings.log_level,
        lifespan=False,
    )
    return DrainingServer(config, service, listener, SideServer(metrics_config), metrics_listener)


def main(argv: Sequence[str] | None = None) -> int:
    idle_kernel_threads_sleep()
    try:
        settings = Settings.from_args(argv)
    except SettingsError as exc:
        return error_exit(Settings.PROG, exc)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    try:
        ssl_context = context_from_settings(settings)
        verifier = verifier_from_settings(settings)
        listener, metrics_listener = open_listeners(settings, ssl_context)
    except SettingsError as exc:
        return error_exit(Settings.PROG, exc)
    if verifier is None:
        log.warning(
            "authentication is off (%s=none): anyone who reaches port %d can generate images",
            contract.ENV_AUTH,
            settings.port,
        )
    app = create_app(settings, verifier=verifier)
    server = build_server(settings, app, listener, metrics_listener)
    server.run()
    return server.exit_code


if __name__ == "__main__":
    sys.exit(main())
