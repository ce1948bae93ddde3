"""Probes tell the truth: not ready until warmed, not ready after a failed load, draining on SIGTERM."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Sequence

import httpx
import numpy as np
import pytest

from runtime.server.backends import BatchParams, DiffusersBackend, ImageSpec, StopCheck
from spec import contract
from tests.runtime.server.conftest import (
    metric_value,
    start_in_process,
    start_subprocess,
    tiny_settings,
    wait_until,
)


class GatedBackend(DiffusersBackend):
    """The tiny model, but load() blocks until the test opens the gate."""

    def __init__(self) -> None:
        super().__init__(tiny_settings(), "cpu")
        self.gate = threading.Event()

    def load(self) -> None:
        assert self.gate.wait(60)
        super().load()


class NaNBackend(DiffusersBackend):
    """Loads fine, but every image is NaN (what a broken fp16 model does)."""

    def __init__(self) -> None:
        super().__init__(tiny_settings(), "cpu")

    def generate(self, params: BatchParams, images: Sequence[ImageSpec], should_stop: StopCheck) -> list[np.ndarray]:
        return [np.full((params.height, params.width, 3), np.nan, dtype=np.float32) for _ in images]


def test_not_ready_until_loaded_and_warmed() -> None:
    backend = GatedBackend()
    running = start_in_process(tiny_settings(), backend, wait_ready=False)
    try:
        health = httpx.get(running.url + contract.HEALTH_PATH)
        assert health.status_code == 200
        ready = httpx.get(running.url + contract.READY_PATH)
        assert ready.status_code == 503 and ready.json()["state"] == "loading"
        post = httpx.post(running.url + contract.IMAGES_PATH, json={"prompt": "too early"})
        assert post.status_code == 503 and post.headers["retry-after"].isdigit()
        assert metric_value(running.metrics(), contract.PROM_READY) == 0
        backend.gate.set()
        wait_until(lambda: httpx.get(running.url + contract.READY_PATH).status_code == 200, timeout_s=60)
        assert metric_value(running.metrics(), contract.PROM_READY) == 1
        assert httpx.post(running.url + contract.IMAGES_PATH, json={"prompt": "now", "steps": 2}).status_code == 200
    finally:
        backend.gate.set()
        running.stop()


def test_warmup_with_non_finite_image_is_not_ready() -> None:
    running = start_in_process(tiny_settings(), NaNBackend(), wait_ready=False)
    try:
        wait_until(lambda: httpx.get(running.url + contract.READY_PATH).json()["state"] == "failed", timeout_s=60)
        ready = httpx.get(running.url + contract.READY_PATH)
        assert ready.status_code == 503
        assert "non-finite" in ready.json()["reason"]
        assert httpx.get(running.url + contract.HEALTH_PATH).status_code == 200
    finally:
        running.stop()


def test_failed_model_load_stays_alive_not_ready_and_says_why(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="runtime.server")
    running = start_in_process(tiny_settings(model_source="/nonexistent/model-dir"), wait_ready=False)
    try:
        wait_until(lambda: httpx.get(running.url + contract.READY_PATH).json()["state"] == "failed", timeout_s=60)
        ready = httpx.get(running.url + contract.READY_PATH)
        assert ready.status_code == 503
        assert "/nonexistent/model-dir" in ready.json()["reason"]
        assert httpx.get(running.url + contract.HEALTH_PATH).status_code == 200
        post = httpx.post(running.url + contract.IMAGES_PATH, json={"prompt": "a"})
        assert post.status_code == 503 and "model load failed" in post.json()["error"]
        assert any("/nonexistent/model-dir" in r.getMessage() for r in caplog.records)
    finally:
        running.stop()


def test_sigterm_drains_accepted_work_then_exits_zero() -> None:
    # `make serve`'s command line (plus a free port): it must print where the UI is.
    proc, url = start_subprocess({contract.ENV_MAX_BATCH: "2", contract.ENV_QUEUE_SIZE: "64"})
    try:
        wait_until(lambda: _ready(url), timeout_s=120, interval_s=0.2)
        n = 8
        statuses: dict[int, int] = {}
        barrier = threading.Barrier(n + 1)

        def send(i: int) -> None:
            with httpx.Client(base_url=url, timeout=120) as c:
                barrier.wait()
                statuses[i] = c.post(contract.IMAGES_PATH, json={"prompt": f"p{i}", "steps": 10, "seed": i}).status_code

        threads = [threading.Thread(target=send, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        barrier.wait()
        wait_until(lambda: _metric(url, contract.PROM_QUEUE_DEPTH) >= 2, timeout_s=30)
        proc.send_signal(signal.SIGTERM)
        wait_until(lambda: httpx.get(url + contract.READY_PATH).status_code == 503, timeout_s=5)
        assert httpx.get(url + contract.READY_PATH).json()["state"] == "draining"
        late = httpx.post(url + contract.IMAGES_PATH, json={"prompt": "late"}, timeout=30)
        assert late.status_code == 503
        for t in threads:
            t.join(timeout=120)
        assert statuses == dict.fromkeys(range(n), 200)  # every accepted request completed
        assert proc.wait(timeout=60) == 0
        out = proc.stdout.read() if proc.stdout else ""
        assert f"Edge Diffusion UI: {url}{contract.UI_PATH}/" in out
        assert "draining" in out and "Traceback" not in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _ready(url: str) -> bool:
    try:
        return httpx.get(url + contract.READY_PATH, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _metric(url: str, name: str) -> float:
    return metric_value(httpx.get(url + contract.METRICS_PATH, timeout=5).text, name)
