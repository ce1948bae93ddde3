"""Probes tell the truth: not ready until warmed (saying which startup phase and since when), not ready
after a failed load, draining on SIGTERM; cold start reaches Prometheus and CloudWatch."""

from __future__ import annotations

import json
import logging
import re
import signal
import subprocess
import threading
import time
from collections.abc import Sequence

import httpx
import numpy as np
import pytest

from plan import contract
from runtime.server.backends import BatchParams, DiffusersBackend, ImageSpec, StepReport, StopCheck
from tests.runtime.server.conftest import (
    metric_value,
    start_in_process,
    start_server_process,
    tiny_settings,
    wait_until,
)

SETTINGS = tiny_settings(auth="none")
PHASE_REASON = re.compile(r"^loading the model \((?P<s>[0-9.]+) s since process start; next phase: model_loaded\)$")


class GatedBackend(DiffusersBackend):
    """The tiny model, but load() blocks until the test opens the gate."""

    def __init__(self) -> None:
        super().__init__(SETTINGS, "cpu")
        self.gate = threading.Event()

    def load(self) -> None:
        assert self.gate.wait(60)
        super().load()


class NaNBackend(DiffusersBackend):
    """Loads fine, but every image is NaN (what a broken fp16 model does)."""

    def __init__(self) -> None:
        super().__init__(SETTINGS, "cpu")

    def generate(
        self,
        params: BatchParams,
        images: Sequence[ImageSpec],
        should_stop: StopCheck,
        on_step: StepReport | None = None,
    ) -> list[np.ndarray]:
        return [np.full((params.height, params.width, 3), np.nan, dtype=np.float32) for _ in images]


def test_not_ready_until_loaded_and_warmed() -> None:
    backend = GatedBackend()
    running = start_in_process(SETTINGS, backend, wait_ready=False)
    try:
        health = httpx.get(running.url + contract.HEALTH_PATH)
        assert health.status_code == 200
        wait_until(lambda: httpx.get(running.url + contract.READY_PATH).json()["state"] == "loading")
        ready = httpx.get(running.url + contract.READY_PATH)
        assert ready.status_code == 503 and ready.json()["state"] == "loading"
        first = PHASE_REASON.match(ready.json()["reason"])
        assert first, ready.json()["reason"]  # the phase it waits for, and the seconds since process start
        time.sleep(0.3)
        later = PHASE_REASON.match(httpx.get(running.url + contract.READY_PATH).json()["reason"])
        assert later and float(later["s"]) >= float(first["s"]) + 0.2  # the clock runs while it waits
        post = httpx.post(running.url + contract.IMAGES_PATH, json={"prompt": "too early"})
        assert post.status_code == 503 and post.headers["retry-after"].isdigit()
        assert metric_value(running.metrics(), contract.PROM_READY) == 0
        backend.gate.set()
        wait_until(lambda: httpx.get(running.url + contract.READY_PATH).status_code == 200, timeout_s=60)
        text = running.metrics()
        assert metric_value(text, contract.PROM_READY) == 1
        phases = [metric_value(text, contract.PROM_STARTUP_SECONDS, f'phase="{p}"') for p in contract.STARTUP_PHASES]
        # the test held the load for 0.3 s and more: model_loaded comes after that, the rest in order
        assert float(later["s"]) <= phases[0] <= phases[1] <= phases[2], phases
        assert running.service.startup.reached == dict(zip(contract.STARTUP_PHASES, phases, strict=True))
        assert httpx.post(running.url + contract.IMAGES_PATH, json={"prompt": "now", "steps": 2}).status_code == 200
    finally:
        backend.gate.set()
        running.stop()


def test_warmup_with_non_finite_image_is_not_ready() -> None:
    running = start_in_process(SETTINGS, NaNBackend(), wait_ready=False)
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
    running = start_in_process(SETTINGS.replace(model_source="/nonexistent/model-dir"), wait_ready=False)
    try:
        wait_until(lambda: httpx.get(running.url + contract.READY_PATH).json()["state"] == "failed", timeout_s=60)
        ready = httpx.get(running.url + contract.READY_PATH)
        assert ready.status_code == 503
        reason = ready.json()["reason"]
        assert "model source" in reason and "/nonexistent/model-dir" not in reason  # the phase, no exception text
        assert httpx.get(running.url + contract.HEALTH_PATH).status_code == 200
        post = httpx.post(running.url + contract.IMAGES_PATH, json={"prompt": "a"})
        assert post.status_code == 503 and "model load failed" in post.json()["error"]
        assert any("/nonexistent/model-dir" in r.getMessage() for r in caplog.records)
    finally:
        running.stop()


def test_a_pod_whose_model_cannot_load_exits_1_saying_why() -> None:
    """What the charts set: the kubelet restarts the container (CrashLoopBackOff) instead of the startup
    probe waiting out its budget for a pod that can never be ready."""
    started = start_server_process(
        {
            contract.ENV_EXIT_ON_FAILED_LOAD: "1",
            contract.ENV_MODEL_SOURCE: "/nonexistent/model-dir",
            contract.ENV_AUTH: "none",
        }
    )
    try:
        out, _ = started.proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        started.proc.kill()
        started.proc.communicate()
        raise
    assert started.proc.returncode == 1, out
    assert (
        f"exiting ({contract.ENV_EXIT_ON_FAILED_LOAD}): model load failed during loading the model: the model "
        "source is missing or does not match this deployment (see the pod log)"
    ) in out


def test_sigterm_drains_accepted_work_then_exits_zero() -> None:
    # `make serve`'s command line (plus free ports): it must print where the UI, the API docs and
    # /metrics are. Metrics as EMF lines on stdout every second: the cold start must be among them, once.
    env = {
        contract.ENV_MAX_BATCH: "2",
        contract.ENV_QUEUE_SIZE: "64",
        contract.ENV_AUTH: "none",
        contract.ENV_UI: "1",
        contract.ENV_METRICS_SINK: "emf",
        contract.ENV_METRICS_INTERVAL_S: "1",
        contract.ENV_PLACEMENT: "sd-cpu-test",
    }
    started = start_server_process(env)
    proc, url, metrics_url = started.proc, started.url, started.metrics_url
    try:
        wait_until(lambda: _ready(url), timeout_s=120, interval_s=0.2)
        ready_gauge = metric_value(httpx.get(metrics_url).text, contract.PROM_STARTUP_SECONDS, 'phase="ready"')
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
        wait_until(lambda: _metric(metrics_url, contract.PROM_QUEUE_DEPTH) >= 2, timeout_s=30)
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
        assert f"API docs: {url}{contract.DOCS_PATH}" in out and f"metrics: {metrics_url}" in out
        assert "draining" in out and "Traceback" not in out
        records = [json.loads(line) for line in out.splitlines() if line.startswith('{"') and '"_aws"' in line]
        cold = [r for r in records if contract.METRIC_COLD_START_SECONDS in r]
        assert len(cold) == 1 and len(records) >= 2, out[-2000:]  # once, among the per-interval records
        (record,) = cold
        assert record[contract.METRIC_COLD_START_SECONDS] == ready_gauge > 0  # the same figure everywhere
        assert record[contract.DIMENSION_PLACEMENT] == "sd-cpu-test"
        assert record[contract.DIMENSION_ACCELERATOR] == "cpu"
        (directive,) = record["_aws"]["CloudWatchMetrics"]
        assert {"Name": contract.METRIC_COLD_START_SECONDS, "Unit": "Seconds"} in directive["Metrics"]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _ready(url: str) -> bool:
    try:
        return httpx.get(url + contract.READY_PATH, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _metric(metrics_url: str, name: str) -> float:
    return metric_value(httpx.get(metrics_url, timeout=5).text, name)
