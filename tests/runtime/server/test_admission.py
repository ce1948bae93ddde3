"""Admission against real servers: size caps, device-time estimates, per-client limits, stopping
inside a step, and what /readyz says when the model cannot load.

Estimates are checked against what the tiny model really takes on this machine; where a test is
about queue arithmetic rather than a model, a device that sleeps a fixed time per step keeps the
timings exact under any machine load.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import statistics
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from plan import contract
from runtime.server.backends import (
    Backend,
    BatchParams,
    DiffusersBackend,
    ImageSpec,
    StepReport,
    StopCheck,
)
from runtime.server.batcher import Batcher, ClientGoneError
from runtime.server.settings import Settings
from tests.runtime.server.conftest import (
    PacedDevice,
    RunningServer,
    metric_value,
    start_in_process,
    tiny_settings,
    wait_until,
)
from tests.runtime.server.test_auth import ISSUER, KEY, mint, public_pem

REJECTIONS = contract.PROM_REJECTIONS + "_total"


def rejections(server: RunningServer, reason: str) -> float:
    return metric_value(server.metrics(), REJECTIONS, f'reason="{reason}"')


def post(server: RunningServer, body: dict[str, Any], token: str | None = None, timeout: float = 60) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.post(server.url + contract.IMAGES_PATH, json=body, headers=headers, timeout=timeout)


def in_background(fn: Any, *args: Any) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []
    thread = threading.Thread(target=lambda: out.append(fn(*args)), daemon=True)
    thread.start()
    return thread, out


def one_line(r: httpx.Response) -> str:
    message = r.json()["error"]
    assert isinstance(message, str) and "\n" not in message and "Traceback" not in r.text
    return message


# --- 1. size ------------------------------------------------------------------------------------


def test_a_huge_request_on_the_default_tiny_server_is_refused_at_once_and_the_next_is_served() -> None:
    """`make serve` as a new user tries it: 2048x2048 and 100 steps is a 422 naming the size, not a 504 later."""
    running = start_in_process(tiny_settings())  # the model's native size, 64x64, and nothing larger
    try:
        started = time.monotonic()
        r = post(running, {"prompt": "a huge city", "width": 2048, "height": 2048, "steps": 100}, timeout=10)
        refused_in = time.monotonic() - started
        assert r.status_code == 422, r.text
        assert r.json()["field"] == "width"
        assert one_line(r) == "width: 2048 is not allowed; allowed: 64 (the only size this server serves)"
        assert refused_in < 2, refused_in
        assert running.service.batcher.pending == 0 and not running.service.batcher.device_busy
        started = time.monotonic()
        small = post(running, {"prompt": "a small cat", "steps": 2})
        assert small.status_code == 200, small.text
        assert float(small.headers["X-Queue-Ms"]) < 500 and time.monotonic() - started < 5
        schema = running.service.request_model.model_json_schema()["properties"]
        assert {"maximum": 64} in [{k: v for k, v in s.items() if k == "maximum"} for s in schema["width"]["anyOf"]]
        from runtime.server.service import ADMISSION_REASONS

        text = running.metrics()
        for reason in ADMISSION_REASONS:  # exported from the start, at 0 (a size refusal is "invalid")
            assert f'{REJECTIONS}{{reason="{reason}"}} 0.0' in text, reason
    finally:
        running.stop()


def test_the_operator_can_allow_larger_sizes_up_to_the_contract_bound() -> None:
    running = start_in_process(tiny_settings(max_image_size=128))
    try:
        r = post(running, {"prompt": "a", "width": 128, "height": 96, "steps": 1})
        assert r.status_code == 200, r.text
        refused = post(running, {"prompt": "a", "width": 64, "height": 136, "steps": 1})
        assert refused.status_code == 422 and refused.json()["field"] == "height"
        assert one_line(refused) == (
            "height: 136 is not allowed; allowed: a multiple of 8 from 64 to 128 (the largest this server serves)"
        )
        # The warm-up measured the largest size too: its estimate is a measurement, not an extrapolation.
        assert (1, 128 * 128) in running.service.batcher.costs.sizes()
    finally:
        running.stop()


# --- 2. device time ---------------------------------------------------------------------------


def test_a_request_that_alone_outlasts_the_deadline_is_refused_saying_how_many_steps_fit() -> None:
    deadline_s = 2.0
    running = start_in_process(tiny_settings(width=256, height=256, request_timeout_s=deadline_s))
    try:
        before = rejections(running, "over_deadline")
        started = time.monotonic()
        r = post(running, {"prompt": "a long walk", "steps": 100})
        assert r.status_code == 422, r.text
        assert time.monotonic() - started < 1
        assert r.json()["field"] == "steps"
        message = one_line(r)
        said = re.fullmatch(
            r"steps: 100 steps at 256x256 need about (?P<s>[0-9.]+) s on this device, over the 2 s request "
            r"deadline; at most (?P<fit>\d+) steps fit at this size",
            message,
        )
        assert said, message
        assert float(said["s"]) > deadline_s and 1 <= int(said["fit"]) < 100
        assert rejections(running, "over_deadline") == before + 1
        # What it says fits does: served within the deadline.
        ok = post(running, {"prompt": "a shorter walk", "steps": int(said["fit"])})
        assert ok.status_code == 200, ok.text
        several = post(running, {"prompt": "four", "steps": 100, "num_images": 4, "response_format": "json"})
        assert several.status_code == 422
        assert "for 4 images" in one_line(several) and "and number of images" in one_line(several)
    finally:
        running.stop()


def test_estimates_are_upper_bounds_of_what_the_tiny_model_takes() -> None:
    """Measured at 64 and 256 pixels a side, the estimates at 128 (between) and 512 (beyond) are not below
    what those sizes then take on this machine."""
    from runtime.server.admission import CostModel, StepClock, Timing

    backend = DiffusersBackend(Settings(model_id="tiny", torch_threads=1, auth="none", metrics_sink="none"), "cpu")
    backend.load()
    costs = CostModel()

    def timed(size: int, steps: int) -> Timing:
        clock = StepClock(1, size, size, steps)
        backend.generate(BatchParams(steps, 7.5, size, size), [ImageSpec("a", "", 1)], lambda: False, on_step=clock)
        return clock.timing()

    for size in (64, 256):
        timed(size, 2)  # the first call at a size pays one-off costs, as the warm-up does
        costs.record(timed(size, 3))
    for size, runs in ((128, 3), (512, 1)):  # the median of a few where a run is short enough to be noisy
        took = []
        for _ in range(runs):
            started = time.perf_counter()
            timed(size, 4)
            took.append(time.perf_counter() - started)
        estimate = costs.estimate_s(1, size, size, 4)
        assert estimate is not None and estimate >= statistics.median(took), (size, estimate, took)


def test_an_estimate_follows_every_new_measurement_of_its_shape() -> None:
    """Estimates are kept per shape between measurements (admission asks several per request); a new
    measurement, of that shape or another batch size, is in the next answer."""
    from runtime.server.admission import MAX_SHAPES_KEPT, CostModel, Timing

    costs = CostModel(margin=1.0)
    costs.record(Timing(images=1, pixels=64 * 64, steps=4, step_s=0.01, other_s=0.02))
    assert costs.estimate_s(1, 64, 64, 4) == pytest.approx(0.06)
    costs.record(Timing(images=1, pixels=64 * 64, steps=4, step_s=0.02, other_s=0.02))
    assert costs.estimate_s(1, 64, 64, 4) == pytest.approx(0.06 + 0.3 * 0.04)  # the EWMA moved
    costs.record(Timing(images=2, pixels=64 * 64, steps=4, step_s=0.001, other_s=0.002))
    assert costs.estimate_s(1, 64, 64, 4) == pytest.approx(0.006)  # a faster batch of 2 bounds one image too
    for side in range(8, 8 * (MAX_SHAPES_KEPT + 2), 8):  # many shapes between two measurements: still right
        assert costs.estimate_s(1, side, 64, 1) is not None
        assert len(costs._bounds_at) <= MAX_SHAPES_KEPT
    assert costs.estimate_s(1, 64, 64, 4) == pytest.approx(0.006)
    assert costs.estimate_s(2, 64, 64, 4) == pytest.approx(0.006)


# --- 3. the queue weighs cost ----------------------------------------------------------------


def test_the_queue_refuses_by_estimated_time_before_its_count_is_full() -> None:
    step_s = 0.1
    running = start_in_process(
        tiny_settings(max_batch=1, queue_size=64, request_timeout_s=4.0, max_wait_ms=0.0), PacedDevice(step_s)
    )
    try:
        before = rejections(running, "queue_time")
        body = {"prompt": "twenty steps", "steps": 20}  # 2 s on this device, about 2.5 s estimated
        first, answers = in_background(post, running, body)
        wait_until(lambda: running.service.batcher.in_flight == 1, timeout_s=10, interval_s=0.005)
        r = post(running, body)
        assert r.status_code == 429, r.text
        said = re.fullmatch(
            r"queue is full: about (?P<ahead>[0-9.]+) s of device work is ahead and this request needs about "
            r"(?P<own>[0-9.]+) s, over the 4 s request deadline; retry after (?P<retry>\d+) s",
            one_line(r),
        )
        assert said, r.json()["error"]
        assert 1.5 <= float(said["ahead"]) <= 2.5 and 2.0 <= float(said["own"]) <= 3.0
        retry = int(r.headers["Retry-After"])
        assert retry == int(said["retry"]) and 1 <= retry <= 2
        assert running.service.batcher.queued == 0  # far from the count limit of 64
        assert rejections(running, "queue_time") == before + 1
        time.sleep(retry)  # as told: by then it fits
        again = post(running, body)
        assert again.status_code == 200, again.text
        first.join(30)
        assert answers[0].status_code == 200
    finally:
        running.stop()


# --- 4. per client ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def token_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """Token mode, UI mounted, one request in flight and three a minute per client, a paced device."""
    key_file = tmp_path_factory.mktemp("keys") / "token-public.pem"
    key_file.write_bytes(public_pem(KEY))
    settings = tiny_settings(
        auth="token",
        token_public_key_file=str(key_file),
        token_issuer=ISSUER,
        placement="auth-test",
        ui=True,
        client_max_in_flight=1,
        client_rate_per_min=3,
        max_wait_ms=0.0,
    )
    running = start_in_process(settings, PacedDevice(0.05))
    yield running
    running.stop()


def test_a_client_with_a_request_in_flight_waits_while_another_is_served(token_server: RunningServer) -> None:
    a, b = mint(KEY, sub="device-a"), mint(KEY, sub="device-b")
    before = rejections(token_server, "client_in_flight")
    first, answers = in_background(post, token_server, {"prompt": "long", "steps": 30}, a)  # 1.5 s
    wait_until(lambda: token_server.service.clients.in_flight("device-a") == 1, timeout_s=10, interval_s=0.005)
    r = post(token_server, {"prompt": "again", "steps": 1}, a)
    assert r.status_code == 429, r.text
    said = re.fullmatch(
        r"too many requests in flight for this client: 1 of at most 1 at once; retry after (\d+) s", one_line(r)
    )
    assert said and r.headers["Retry-After"] == said[1] and 1 <= int(said[1]) <= 2, r.text
    other = post(token_server, {"prompt": "someone else", "steps": 1}, b)
    assert other.status_code == 200, other.text
    first.join(30)
    assert answers[0].status_code == 200
    assert rejections(token_server, "client_in_flight") == before + 1
    assert post(token_server, {"prompt": "after", "steps": 1}, a).status_code == 200  # nothing in flight now


def test_a_client_over_its_rate_is_refused_in_api_and_ui_while_another_is_served(token_server: RunningServer) -> None:
    from gradio_client import Client

    c, d = mint(KEY, sub="device-c"), mint(KEY, sub="device-d")
    before = rejections(token_server, "client_rate")
    for i in range(3):
        assert post(token_server, {"prompt": f"one of three {i}", "steps": 1}, c).status_code == 200
    r = post(token_server, {"prompt": "a fourth", "steps": 1}, c)
    assert r.status_code == 429, r.text
    said = re.fullmatch(r"request rate limit for this client: 3 requests per minute; retry after (\d+) s", one_line(r))
    assert said and r.headers["Retry-After"] == said[1] and 18 <= int(said[1]) <= 20, r.text
    assert post(token_server, {"prompt": "someone else", "steps": 1}, d).status_code == 200
    # The UI counts against the same sub: its token is the client's.
    ui = Client(token_server.url + contract.UI_PATH + "/", headers={"Authorization": f"Bearer {c}"}, verbose=False)
    with pytest.raises(Exception, match="request rate limit for this client"):
        ui.predict("from the ui", "", 1, 7.5, 64, 64, 5, None, 0.8, api_name="/generate")
    assert rejections(token_server, "client_rate") == before + 2


def test_without_auth_there_is_no_identity_and_no_per_client_limit() -> None:
    running = start_in_process(tiny_settings(auth="none", client_max_in_flight=1, max_wait_ms=0.0), PacedDevice(0.05))
    try:
        first, answers = in_background(post, running, {"prompt": "long", "steps": 20})
        wait_until(lambda: running.service.batcher.in_flight == 1, timeout_s=10, interval_s=0.005)
        assert post(running, {"prompt": "second", "steps": 1}).status_code == 200
        first.join(30)
        assert answers[0].status_code == 200
        assert rejections(running, "client_in_flight") == 0
    finally:
        running.stop()


# --- 5. stopping inside a step -------------------------------------------------------------------


def test_an_abandoned_large_cpu_batch_frees_the_device_within_a_fraction_of_a_step() -> None:
    """512x512 on the tiny model takes about half a second a step here: the client leaves just after a
    step ends, and the device is free long before the next one would have."""
    backend = DiffusersBackend(Settings(model_id="tiny", torch_threads=1, auth="none", metrics_sink="none"), "cpu")
    backend.load()
    params = BatchParams(steps=30, guidance_scale=7.5, width=512, height=512)

    async def main() -> tuple[list[float], float, int]:
        b = Batcher(backend, max_batch=1, max_wait_s=0.0, queue_size=4)
        b.start()
        steps_at: list[float] = []
        gone = asyncio.Event()
        left_at: list[float] = []

        def progress(done: int, total: int) -> None:  # on the event loop, just after the step ended
            steps_at.append(time.monotonic())
            if done == 4:
                left_at.append(time.monotonic())
                gone.set()

        job = b.submit(params, [ImageSpec("a large view", "", 1)], 120, on_progress=progress)
        with pytest.raises(ClientGoneError):
            await b.wait(job, client_gone=gone.wait)
        while b.device_busy:
            await asyncio.sleep(0.001)
        freed = time.monotonic() - left_at[0]
        await b.stop()
        assert b.abandoned_batches == 1
        return steps_at, freed, job.step

    steps_at, freed, steps_done = asyncio.run(main())
    step_s = statistics.median(b - a for a, b in itertools.pairwise(steps_at))
    assert steps_done == 4, steps_done  # the fifth step never completed
    assert freed < 0.25 * step_s, (freed, step_s)
    assert backend.stop_hooks > 0


# --- 6. /readyz when the model cannot load ---------------------------------------------------------


class FailingLoad(PacedDevice):
    def load(self) -> None:
        raise RuntimeError("cannot open /secret/path/model.bin with token hf_abcdef")


@pytest.mark.parametrize(
    ("settings", "backend", "reason", "logged"),
    [
        (
            {"model_source": "/nonexistent/model-dir"},
            None,
            "model load failed during loading the model: the model source is missing or does not match this "
            "deployment (see the pod log)",
            "/nonexistent/model-dir",
        ),
        (
            {},
            FailingLoad(0.01),
            "model load failed during loading the model: an unexpected error (see the pod log)",
            "hf_abcdef",
        ),
    ],
    ids=["missing model source", "unexpected error"],
)
def test_readyz_names_the_phase_and_a_short_reason_never_the_exception_text(
    caplog: pytest.LogCaptureFixture, settings: dict[str, Any], backend: Backend | None, reason: str, logged: str
) -> None:
    caplog.set_level(logging.ERROR, logger="runtime.server")
    running = start_in_process(tiny_settings(**settings), backend, wait_ready=False)
    try:
        wait_until(lambda: httpx.get(running.url + contract.READY_PATH).json()["state"] == "failed", timeout_s=60)
        ready = httpx.get(running.url + contract.READY_PATH)
        assert ready.status_code == 503
        assert ready.json()["reason"] == reason
        assert logged not in ready.text
        answer = post(running, {"prompt": "a"})
        assert answer.status_code == 503 and logged not in answer.text
        # The pod log has all of it, traceback included.
        record = next(r for r in caplog.records if r.getMessage().startswith("model load failed"))
        assert logged in record.getMessage() and record.exc_info is not None
    finally:
        running.stop()


def test_a_non_finite_warm_up_says_so_in_readyz(tmp_path: Path) -> None:
    class NaNDevice(PacedDevice):
        def generate(
            self,
            params: BatchParams,
            images: Sequence[ImageSpec],
            should_stop: StopCheck,
            on_step: StepReport | None = None,
        ) -> list[np.ndarray]:
            return [np.full((params.height, params.width, 3), np.nan, dtype=np.float32) for _ in images]

    running = start_in_process(tiny_settings(), NaNDevice(0.0), wait_ready=False)
    try:
        wait_until(lambda: httpx.get(running.url + contract.READY_PATH).json()["state"] == "failed", timeout_s=60)
        assert httpx.get(running.url + contract.READY_PATH).json()["reason"] == (
            "model load failed during warming up: the warm-up image was non-finite (NaN or inf) (see the pod log)"
        )
    finally:
        running.stop()
