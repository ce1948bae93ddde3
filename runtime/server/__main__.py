"""``python -m runtime.server``: settings from the contract's environment (flags override), then serve.

Before serving, the TLS certificate (files or Secrets Manager) and the token public key (file
or KMS) are read and checked once; any problem is one line and exit 2, never a server that
answers plain HTTP or accepts every token. uvicorn then starts at once (so /healthz answers
during a long model load) while the model loads and warms in the background; only then is the
server ready. SIGTERM flips /readyz to 503, refuses new work, finishes what was accepted, and
exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Sequence
from types import FrameType
from typing import Any

import uvicorn

from plan import contract
from runtime.server.app import create_app
from runtime.server.auth import verifier_from_settings
from runtime.server.service import ImageService
from runtime.server.settings import Settings
from runtime.server.tls import context_from_settings
from runtime.settings import SettingsError, error_exit

log = logging.getLogger("runtime.server")


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
            base = f"{'https' if self.config.is_ssl else 'http'}://{host}:{self.config.port}"
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


def main(argv: Sequence[str] | None = None) -> int:
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
    except SettingsError as exc:
        return error_exit(Settings.PROG, exc)
    if verifier is None:
        log.warning(
            "authentication is off (%s=none): anyone who reaches port %d can generate images",
            contract.ENV_AUTH,
            settings.port,
        )
    app = create_app(settings, verifier=verifier)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=False,
        server_header=False,  # no "server: uvicorn" on every answer
        # Our context (runtime.server.tls: TLS 1.2+, checked pair), not one uvicorn builds from files.
        ssl_context_factory=(lambda _config, _default: ssl_context) if ssl_context is not None else None,
    )
    DrainingServer(config, app.state.service).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
