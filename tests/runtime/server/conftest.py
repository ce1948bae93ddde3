"""Real uvicorn servers on loopback with the tiny model, shared per session.

In-process servers (the server `python -m runtime.server` builds, on a thread: its guarded
connections and its metrics listener) let tests swap the backend (gated load, NaN output); the
SIGTERM test starts `python -m runtime.server` as a real subprocess.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
import pytest

from plan import contract
from runtime.server.backends import Backend, BatchParams, ImageSpec, StepReport, StopCheck
from runtime.server.settings import Settings
from tests.runtime.conftest import ROOT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Any, timeout_s: float = 60.0, interval_s: float = 0.05) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval_s)
    raise AssertionError(f"condition not met within {timeout_s}s")


def metric_value(text: str, name: str, labels: str = "") -> float:
    """One sample from a Prometheus exposition (0 when absent)."""
    prefix = f"{name}{{{labels}}} " if labels else f"{name} "
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line.split()[-1])
    return 0.0


@dataclass
class RunningServer:
    url: str
    metrics_url: str  # the metrics listener's /metrics (a port of its own)
    app: Any
    server: Any
    thread: threading.Thread

    @property
    def service(self) -> Any:
        return self.app.state.service

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=kwargs.pop("timeout", 120), **kwargs)

    def metrics(self) -> str:
        return httpx.get(self.metrics_url, timeout=30).text

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def start_in_process(settings: Settings, backend: Backend | None = None, wait_ready: bool = True) -> RunningServer:
    from runtime.server.__main__ import build_server, open_listeners
    from runtime.server.app import create_app

    port = free_port()
    settings = settings.replace(host="127.0.0.1", port=port, metrics_port=0, log_level="warning")
    listener, metrics_listener = open_listeners(settings, None)
    app = create_app(settings, backend)
    server = build_server(settings, app, listener, metrics_listener)
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    wait_until(lambda: server.started, timeout_s=60)
    metrics_url = f"http://127.0.0.1:{server.metrics_port}{contract.METRICS_PATH}"
    running = RunningServer(f"http://127.0.0.1:{port}", metrics_url, app, server, thread)
    if wait_ready:
        wait_until(lambda: httpx.get(running.url + contract.READY_PATH).status_code == 200, timeout_s=120)
    return running


def tiny_settings(**changes: Any) -> Settings:
    # One intra-op thread: 64x64 tensors gain nothing from more, and the machine is shared.
    # No auth unless a test asks for tokens (test_auth does).
    base = Settings(model_id="tiny", metrics_sink="none", ui=False, max_wait_ms=20.0, torch_threads=1, auth="none")
    return base.replace(**changes)


@pytest.fixture(scope="session")
def server() -> Iterator[RunningServer]:
    """The main server: default batching (contract.DEFAULT_MAX_BATCH), UI and API docs on (as `make serve`),
    and sizes up to 128 (the tiny model serves 64x64; tests ask for other shapes)."""
    running = start_in_process(tiny_settings(ui=True, docs=True, max_image_size=128))
    yield running
    running.stop()


@pytest.fixture(scope="session")
def tight_server() -> Iterator[RunningServer]:
    """One image per batch and a 2-request queue: overload is easy to reach."""
    running = start_in_process(tiny_settings(max_batch=1, queue_size=2))
    yield running
    running.stop()


@pytest.fixture(scope="session")
def deadline_server() -> Iterator[RunningServer]:
    """A short request deadline: long generations time out."""
    running = start_in_process(tiny_settings(request_timeout_s=0.5, max_batch=2))
    yield running
    running.stop()


@dataclass
class ServerProcess:
    """`python -m runtime.server` as a subprocess (stdout and stderr merged in ``proc.stdout``)."""

    proc: subprocess.Popen[str]
    url: str
    metrics_url: str


def start_server_process(env: dict[str, str], *args: str) -> ServerProcess:
    """The tiny model on free loopback ports, API docs on as `make serve` has them (env may turn them off)."""
    port, metrics_port = free_port(), free_port()
    full_env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        contract.ENV_METRICS_SINK: "none",
        contract.ENV_TORCH_THREADS: "1",
        contract.ENV_DOCS: "1",
        **env,
    }
    command = [sys.executable, "-m", "runtime.server", "--model", "tiny", "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(
        [*command, "--metrics-port", str(metrics_port), *args],
        cwd=ROOT,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    return ServerProcess(proc, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{metrics_port}{contract.METRICS_PATH}")


def start_subprocess(env: dict[str, str], *args: str) -> tuple[subprocess.Popen[str], str]:
    started = start_server_process(env, *args)
    return started.proc, started.url


class PacedDevice(Backend):
    """Sleeps `step_s` per denoising step whatever the batch (the CPU stays free), reporting each step
    and stopping between steps once nobody waits, as diffusers does. `step_s` may be changed while it
    serves (a device that slows after the warm-up measured it)."""

    def __init__(self, step_s: float, default_steps: int | None = 4) -> None:
        super().__init__()
        self.step_s = step_s
        self.default_width = self.default_height = 64
        if default_steps is not None:
            self.default_steps = default_steps

    def load(self) -> None:
        self.description = f"paced device, {self.step_s}s per step"

    def generate(
        self,
        params: BatchParams,
        images: Sequence[ImageSpec],
        should_stop: StopCheck,
        on_step: StepReport | None = None,
    ) -> list[np.ndarray]:
        for step in range(1, params.steps + 1):
            time.sleep(self.step_s)
            if should_stop():
                return []
            if on_step is not None:
                on_step(step, params.steps)
        return [np.full((params.height, params.width, 3), 0.5, dtype=np.float32) for _ in images]
