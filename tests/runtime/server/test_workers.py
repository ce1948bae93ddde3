"""Device workers: the tiny pipeline in a worker process gives what it gives in process, stops when
nobody waits, reports its failures as the in-process backend would; the batcher shares the waiting
requests out among free devices and runs their calls side by side."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from plan import contract
from runtime.server.admission import StepClock, Timing
from runtime.server.backends import (
    BatchParams,
    DiffusersBackend,
    Encoder,
    ImageSpec,
    StepReport,
    StopCheck,
    create_backend,
)
from runtime.server.batcher import Batcher
from runtime.server.settings import Settings
from runtime.server.workers import (
    MEMORY_SHARE,
    STOP_POLL_S,
    ProcessBackend,
    WorkerError,
    create_backends,
    memory_limit,
    resident_bytes,
    threads_per_worker,
    worker_count,
    workers_that_fit,
)
from tests.runtime.server.conftest import start_in_process, tiny_settings, wait_until
from tests.runtime.server.test_batcher import FakeDevice, run, spec

TINY = BatchParams(steps=2, guidance_scale=7.5, width=64, height=64)


def settings(**changes: Any) -> Settings:
    return Settings(**{"model_id": "tiny", "auth": "none", "metrics_sink": "none", "torch_threads": 1, **changes})


# --- how many workers, and their threads ----------------------------------------------------------


@pytest.mark.parametrize(
    ("workers", "device", "cpus", "expected"),
    [(0, "cpu", 2, 2), (0, "cpu", 16, 2), (0, "cpu", 1, 1), (0, "cuda", 16, 1), (0, "neuron", 8, 1), (3, "cpu", 2, 3)],
)
def test_worker_count(workers: int, device: str, cpus: int, expected: int) -> None:
    assert worker_count(settings(workers=workers), device, cpus) == expected


@pytest.mark.parametrize(
    ("threads", "workers", "cpus", "expected"), [(0, 2, 2, 1), (0, 2, 8, 3), (0, 1, 8, 7), (4, 2, 2, 4)]
)
def test_threads_per_worker_leave_the_event_loop_a_cpu(threads: int, workers: int, cpus: int, expected: int) -> None:
    assert threads_per_worker(settings().replace(torch_threads=threads), workers, cpus) == expected


def test_a_device_in_the_servers_process_encodes_on_all_cpus_but_the_event_loops(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Worker processes encode on their own thread (their CPUs are the other workers' too); a lone device in
    the server's process waits while its answers encode, so they encode side by side."""
    import runtime.server.workers as workers

    monkeypatch.setattr(workers, "available_cpus", lambda: 4)
    (alone,) = create_backends(settings(workers=1))
    assert alone.encode_threads == 3
    monkeypatch.setattr(workers, "available_cpus", lambda: 1)
    assert create_backends(settings(workers=1))[0].encode_threads == 1
    assert all(device.encode_threads == 1 for device in create_backends(settings(workers=2)))
    assert create_backend(settings()).encode_threads == 1  # what a worker process builds


def test_the_pods_cpu_request_caps_the_cpus_counted() -> None:
    from runtime.server.backends import available_cpus

    everything = available_cpus({})
    assert available_cpus({contract.ENV_CPU_REQUEST: "1"}) == 1
    assert available_cpus({contract.ENV_CPU_REQUEST: str(everything + 8)}) == everything  # never above what there is
    assert available_cpus({contract.ENV_CPU_REQUEST: "0"}) == everything  # 0: unset


def test_workers_that_fit_the_memory_limit() -> None:
    gib = 1 << 30
    assert workers_that_fit(2, 6 * gib, gib, None) == 2  # no limit
    assert workers_that_fit(2, 6 * gib, gib, 14 * gib) == 1  # a CPU pod's 14Gi: 2 x 6 GiB is past 70 %
    assert workers_that_fit(2, 4 * gib, gib, 14 * gib) == 2
    assert workers_that_fit(2, 20 * gib, gib, 14 * gib) == 1  # never fewer than the one already running
    assert MEMORY_SHARE * 14 * gib - gib >= 2 * 4 * gib


def test_memory_limit_reads_cgroup_v2(tmp_path: Path) -> None:
    limit = tmp_path / "memory.max"
    limit.write_text("max\n")
    assert memory_limit(limit) is None
    limit.write_text("15032385536\n")
    assert memory_limit(limit) == 15032385536
    assert memory_limit(tmp_path / "absent") is None


def test_resident_bytes_of_this_process() -> None:
    assert resident_bytes(os.getpid()) > 0
    assert resident_bytes(os.getpid(), "VmHWM") >= resident_bytes(os.getpid())
    assert resident_bytes(2**22 + 7) == 0


def test_one_worker_is_the_backend_in_process() -> None:
    (backend,) = create_backends(settings(workers=1))
    assert isinstance(backend, DiffusersBackend)
    backends = create_backends(settings(workers=2))
    assert all(isinstance(b, ProcessBackend) and b.settings.torch_threads == 1 for b in backends)
    assert len(backends) == 2


# --- a worker process running the tiny pipeline ---------------------------------------------------


@pytest.fixture(scope="module")
def worker() -> Iterator[ProcessBackend]:
    backend = ProcessBackend(settings(), 0, 1)
    backend.load()
    yield backend
    backend.close()


def test_a_worker_reports_what_the_server_needs(worker: ProcessBackend) -> None:
    assert worker.pid is not None and worker.pid != os.getpid()
    assert worker.description.startswith("tiny on cpu") and worker.description.endswith("in worker process 0")
    assert (worker.default_width, worker.default_height) == (64, 64)
    assert getattr(worker.rules, "stop_hooks", 0) > 0  # the worker's facts reached the rules object
    assert worker.check_size(64, 64) is None and worker.max_device_batch is None


def test_a_worker_generates_what_the_pipeline_generates_in_process(worker: ProcessBackend) -> None:
    local = create_backend(settings())
    local.load()
    specs = [ImageSpec("a lighthouse", "", seed) for seed in (3, 4, 5)]
    steps: list[tuple[int, int]] = []
    remote = worker.generate(TINY, specs, lambda: False, on_step=lambda done, total: steps.append((done, total)))
    here = local.generate(TINY, specs, lambda: False)
    assert len(remote) == 3
    for a, b in zip(remote, here, strict=True):  # the same kernels, up to float rounding in another process
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert steps[-1] == (2, 2) and steps[0][0] <= 1  # every step was relayed, in order
    alone = worker.generate(TINY, specs[1:2], lambda: False)
    np.testing.assert_allclose(alone[0], remote[1], atol=1e-5)  # the same seed alone and in a batch


def test_a_worker_stops_when_nobody_waits(worker: ProcessBackend) -> None:
    params = BatchParams(steps=50, guidance_scale=7.5, width=64, height=64)
    asked = 0

    def gone() -> bool:
        nonlocal asked
        asked += 1
        return asked > 2  # leave after the first relayed step

    started = time.monotonic()
    images = worker.generate(params, [ImageSpec("x", "", 1)], gone)
    assert images == [] and time.monotonic() - started < 5
    assert len(worker.generate(TINY, [ImageSpec("x", "", 1)], lambda: False)) == 1  # the next call runs whole


class ArrivalClock(StepClock):
    """A StepClock that also notes when each report reached this process."""

    def __init__(self, steps: int) -> None:
        super().__init__(1, 64, 64, steps)
        self.arrived: list[float] = []

    def mark(self, done: int, total: int, at: float) -> None:
        self.arrived.append(time.perf_counter())
        super().mark(done, total, at)


@pytest.mark.parametrize("live", [True, False])
def test_step_reports_come_as_they_happen_only_when_someone_watches(worker: ProcessBackend, live: bool) -> None:
    params = BatchParams(steps=6, guidance_scale=7.5, width=64, height=64)
    clock = ArrivalClock(params.steps)
    out, encoded = worker.generate_encoded(params, [ImageSpec("x", "", 1)], lambda: False, clock, [None], live)
    ended = time.perf_counter()
    assert len(out) == 1 and encoded == [None]
    # Either way the clock has every step, timed when it ended in the worker (one clock for both processes).
    assert len(clock.marks) == params.steps and clock.marks == sorted(clock.marks)
    assert clock.started < clock.marks[0] and clock.marks[-1] < ended
    assert 0 < clock.timing().step_s < ended - clock.started
    if live:  # the first step reached the server before the last one ended
        assert clock.arrived[0] < clock.marks[-1]
    else:  # all of them came with the images
        assert min(clock.arrived) > clock.marks[-1]


def test_a_worker_without_live_reports_still_stops_within_a_poll_and_a_step(worker: ProcessBackend) -> None:
    clock = StepClock(1, 64, 64, 6)
    worker.generate_encoded(BatchParams(6, 7.5, 64, 64), [ImageSpec("x", "", 1)], lambda: False, clock, [None], False)
    step_s = clock.timing().step_s
    leave_at = time.monotonic() + 0.2
    out, _ = worker.generate_encoded(
        BatchParams(steps=500, guidance_scale=7.5, width=64, height=64),
        [ImageSpec("x", "", 1)],
        lambda: time.monotonic() > leave_at,
        None,
        [None],
        False,
    )
    # The server polls whether anyone waits every STOP_POLL_S; the worker reads the flag at its next step.
    assert out == [] and time.monotonic() - leave_at <= STOP_POLL_S + 2 * step_s + 0.1, step_s


def test_the_batcher_asks_for_live_reports_only_for_a_listener() -> None:
    class Recording(FakeDevice):
        def __init__(self) -> None:
            super().__init__(seconds=0.01, steps=2)
            self.live: list[bool] = []

        def generate_encoded(
            self,
            params: BatchParams,
            images: Sequence[ImageSpec],
            should_stop: StopCheck,
            on_step: StepReport | None,
            encoders: Sequence[Encoder | None],
            live_steps: bool = True,
        ) -> tuple[list[np.ndarray], list[bytes | None]]:
            self.live.append(live_steps)
            return super().generate_encoded(params, images, should_stop, on_step, encoders, live_steps)

    device = Recording()

    async def main() -> list[tuple[int, int]]:
        seen: list[tuple[int, int]] = []
        b = Batcher(device, max_batch=1, max_wait_s=0.0, queue_size=4)
        b.start()
        await b.wait(b.submit(TINY, spec("nobody watches"), 10))
        await b.wait(
            b.submit(TINY, spec("the UI watches"), 10, on_progress=lambda done, total: seen.append((done, total)))
        )
        await b.stop()
        return seen

    assert run(main()) == [(1, 2), (2, 2)] and device.live == [False, True]


def test_a_workers_error_is_raised_here_and_it_keeps_serving(worker: ProcessBackend) -> None:
    with pytest.raises(Exception) as raised:
        worker.generate(BatchParams(steps=2, guidance_scale=7.5, width=60, height=60), [ImageSpec("x", "", 1)], bool)
    assert "60" in str(raised.value) or "divisible" in str(raised.value)
    assert len(worker.generate(TINY, [ImageSpec("x", "", 1)], lambda: False)) == 1


def test_a_dead_worker_is_one_line_not_a_hang() -> None:
    backend = ProcessBackend(settings(), 1, 1)
    backend.load()
    assert backend.pid is not None
    os.kill(backend.pid, signal.SIGKILL)
    with pytest.raises(WorkerError, match=r"^device worker 1 exited with -9$"):
        backend.generate(TINY, [ImageSpec("x", "", 1)], lambda: False)
    backend.close()


def test_a_worker_that_cannot_load_says_why() -> None:
    backend = ProcessBackend(settings(model_id="/nonexistent/model"), 2, 1)
    with pytest.raises(Exception, match="nonexistent"):
        backend.load()
    assert backend.pid is not None
    assert not Path(f"/proc/{backend.pid}/status").exists()  # closed: the worker is gone, not left behind


# --- the batcher with several devices -------------------------------------------------------------


def test_waiting_requests_are_shared_out_among_free_devices() -> None:
    first, second = FakeDevice(seconds=0.2), FakeDevice(seconds=0.2)

    async def main() -> float:
        b = Batcher(first, more_devices=[second], max_batch=8, max_wait_s=0.0, queue_size=16)
        b.expected_images = 8
        jobs = [b.submit(TINY, spec(f"p{i}", i), 30) for i in range(8)]
        started = time.monotonic()
        b.start()
        await asyncio.gather(*(b.wait(j) for j in jobs))
        await b.stop()
        return time.monotonic() - started

    seconds = run(main())
    assert sorted(len(batch) for batch in first.batches + second.batches) == [4, 4]
    assert seconds < 0.35  # side by side: one call's time, not two
    assert first.threads[0] != second.threads[0]


def test_a_free_device_waits_for_its_own_company_not_anothers() -> None:
    """Device 0 last ran 1 image, device 1 last ran 4: a lone request on device 0 goes at once."""
    first, second = FakeDevice(seconds=0.2), FakeDevice(seconds=0.3)

    async def main() -> float:
        b = Batcher(first, more_devices=[second], max_batch=8, max_wait_s=1.0, queue_size=16)
        b.observe_batch_time(4.0)  # a wait for company could last max_wait_s (1 s)
        b.start()
        one = b.submit(TINY, spec("one", 1), 30)
        await asyncio.sleep(0.02)
        four = [b.submit(TINY, spec(f"four{i}", i), 30) for i in range(4)]
        await asyncio.gather(b.wait(one), *(b.wait(j) for j in four))
        started = time.monotonic()
        await b.wait(b.submit(TINY, spec("alone", 9), 30))
        seconds = time.monotonic() - started
        await b.stop()
        return seconds

    seconds = run(main())
    assert [len(batch) for batch in first.batches] == [1, 1] and [len(b) for b in second.batches] == [4]
    assert seconds < 0.6  # 0.2 s on device 0, not a wait for the 4 device 1 expects


def test_two_devices_even_out_a_burst_split_six_and_two() -> None:
    """Eight closed-loop clients whose first burst splits unevenly over two devices soon settle at 4 and 4: the
    device that ran more waits for its share (4), not for all of its clients, and the other takes the rest.
    Clients come back one by one (client i after i ms), as over HTTP."""
    first, second = FakeDevice(seconds=0.2), FakeDevice(seconds=0.2)

    async def main() -> None:
        b = Batcher(first, more_devices=[second], max_batch=8, max_wait_s=1.0, queue_size=16)
        b.observe_batch_time(0.2)  # a wait for company lasts up to 50 ms: longer than any client's turnaround
        b.start()
        stop = time.monotonic() + 2.0

        async def client(i: int, delay: float) -> None:
            await asyncio.sleep(delay)
            while time.monotonic() < stop:
                await b.wait(b.submit(TINY, spec(f"c{i}", i), 30))
                await asyncio.sleep(0.001 * (i + 1))

        # One request alone on each device, then six more while both run: the first free device takes them.
        await asyncio.gather(*(client(i, 0.0 if i == 0 else 0.02 if i == 1 else 0.04) for i in range(8)))
        await b.stop()

    run(main())
    sizes = [len(batch) for batch in first.batches], [len(batch) for batch in second.batches]
    assert max(sizes[0][:2] + sizes[1][:2]) >= 6, sizes  # the burst did split unevenly
    # 4 and 4 from each device's fourth call on (the last may be short: clients stop when time is up); without the
    # share the split lasted to the fifth call ([1, 7, 7, 7, 4, ...] and [1, 1, 1, 1, 4, ...]).
    assert set(sizes[0][3:-1]) == {4} and set(sizes[1][3:-1]) == {4}, sizes


def test_a_lone_device_still_takes_a_full_batch() -> None:
    device = FakeDevice(seconds=0.05)

    async def main() -> None:
        b = Batcher(device, max_batch=8, max_wait_s=0.0, queue_size=16)
        jobs = [b.submit(TINY, spec(f"p{i}", i), 30) for i in range(8)]
        b.start()
        await asyncio.gather(*(b.wait(j) for j in jobs))
        await b.stop()

    run(main())
    assert [len(batch) for batch in device.batches] == [8]


def test_work_ahead_is_shared_among_devices() -> None:
    """Admission and Retry-After: the queued work's device time is spread over the devices."""

    async def main() -> tuple[float | None, float | None]:
        one = Batcher(FakeDevice(), max_batch=1, max_wait_s=0.0, queue_size=16)
        two = Batcher(FakeDevice(), more_devices=[FakeDevice()], max_batch=1, max_wait_s=0.0, queue_size=16)
        for b in (one, two):
            b.costs.record(Timing(images=1, pixels=64 * 64, steps=2, step_s=0.5, other_s=0.0))
            for i in range(4):
                b.submit(TINY, spec(f"p{i}", i), 30)
        return one.work_ahead_s(), two.work_ahead_s()

    alone, shared = run(main())
    assert alone is not None and shared is not None
    assert alone >= 4.0  # 4 calls of (at least) 2 steps x 0.5 s
    assert shared == pytest.approx(alone / 2)


def test_keep_devices_closes_the_rest() -> None:
    closed: list[int] = []

    class Closing(FakeDevice):
        def __init__(self, n: int) -> None:
            super().__init__()
            self.n = n

        def close(self) -> None:
            closed.append(self.n)

    async def main() -> int:
        b = Batcher(Closing(0), more_devices=[Closing(1), Closing(2)], max_batch=8, max_wait_s=0.0, queue_size=8)
        b.keep_devices(1)
        count = len(b.devices)
        await b.stop()
        return count

    assert run(main()) == 1
    assert closed == [1, 2, 0]


# --- a server whose workers die ---------------------------------------------------------------------


def test_a_server_serves_on_while_a_worker_lives_and_asks_for_a_restart_when_none_does() -> None:
    running = start_in_process(tiny_settings(workers=2))
    try:
        devices = running.service.batcher.devices
        assert [type(d) for d in devices] == [ProcessBackend, ProcessBackend]
        wait_until(lambda: running.service.batcher.serving == 2, timeout_s=60)  # the second joins after ready
        body = {"prompt": "a boat", "steps": 2}
        with running.client() as c:
            assert c.post(contract.IMAGES_PATH, json=body).status_code == 200
            os.kill(devices[0].pid, signal.SIGKILL)
            answers = [c.post(contract.IMAGES_PATH, json={**body, "seed": i}).status_code for i in range(4)]
            assert answers.count(200) >= 3 and set(answers) <= {200, 500}  # at most the call on the dead one fails
            assert c.get(contract.HEALTH_PATH).json() == {"status": "alive"}
            os.kill(devices[1].pid, signal.SIGKILL)
            failed = c.post(contract.IMAGES_PATH, json=body)
            assert failed.status_code == 500 and "device worker 1 exited with -9" in failed.text
            health = c.get(contract.HEALTH_PATH)
            assert health.status_code == 503 and health.json() == {"status": "no device"}
            ready = c.get(contract.READY_PATH)
            assert ready.status_code == 503 and "no device left: device worker 1 exited with -9" in ready.text
            assert c.post(contract.IMAGES_PATH, json=body).status_code == 503  # refused up front, not queued
    finally:
        running.stop()


def test_a_lone_worker_can_take_more_threads(worker: ProcessBackend) -> None:
    worker.set_threads(2)
    assert worker.settings.torch_threads == 2
    assert len(worker.generate(TINY, [ImageSpec("x", "", 1)], lambda: False)) == 1
    worker.set_threads(1)


def test_a_server_whose_memory_holds_one_worker_runs_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("runtime.server.service.memory_limit", lambda: 1)  # no room beside the first worker
    running = start_in_process(tiny_settings(workers=2))
    try:
        (only,) = running.service.batcher.devices
        assert isinstance(only, ProcessBackend) and only.index == 0
        with running.client() as c:
            assert c.post(contract.IMAGES_PATH, json={"prompt": "a boat", "steps": 2}).status_code == 200
    finally:
        running.stop()


def test_a_server_is_ready_with_its_first_worker_and_the_others_join_once_warm(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import threading
    from concurrent.futures import ThreadPoolExecutor

    release = threading.Event()
    calls: dict[int, int] = {0: 0, 1: 0}
    load, generate_encoded = ProcessBackend.load, ProcessBackend.generate_encoded

    def held_load(self: ProcessBackend) -> None:
        if self.index == 1:
            assert release.wait(60)
        load(self)

    def counted(self: ProcessBackend, *args: Any, **kwargs: Any) -> Any:
        calls[self.index] += 1
        return generate_encoded(self, *args, **kwargs)

    monkeypatch.setattr(ProcessBackend, "load", held_load)
    monkeypatch.setattr(ProcessBackend, "generate_encoded", counted)
    running = start_in_process(tiny_settings(workers=2, max_batch=1))
    try:
        batcher = running.service.batcher
        body = {"prompt": "a boat", "steps": 2}
        with running.client() as c:  # ready while the second worker has not even loaded
            assert c.post(contract.IMAGES_PATH, json=body).status_code == 200
        assert len(batcher.devices) == 2 and calls[1] == 0 and batcher._free == [0]  # warm-ups count too
        release.set()
        deadline = time.monotonic() + 60
        while 1 not in batcher._free and time.monotonic() < deadline:
            time.sleep(0.05)
        warmed = calls[1]
        with running.client() as c, ThreadPoolExecutor(8) as pool:
            codes = list(
                pool.map(lambda i: c.post(contract.IMAGES_PATH, json={**body, "seed": i}).status_code, range(8))
            )
        assert codes == [200] * 8 and calls[1] > warmed  # the second one serves once warm
    finally:
        release.set()
        running.stop()


def test_the_last_serving_device_lost_while_another_starts_retires_them_all() -> None:
    """Nothing would run until the starting one is warm: every device retired, /healthz then has the
    container restarted, and the queue fails at once."""

    class Dying(FakeDevice):
        def generate(self, *args: Any, **kwargs: Any) -> list[np.ndarray]:
            raise WorkerError("device worker 0 exited with -9")

    starting = FakeDevice()
    told: list[str] = []

    async def main() -> tuple[BaseException | None, BaseException | None]:
        b = Batcher(Dying(), more_devices=[starting], more_ready=False, max_batch=1, max_wait_s=0.0, queue_size=4)
        b.on_all_lost = told.append
        b.start()
        first, queued = b.submit(TINY, spec("a"), 10), b.submit(TINY, spec("b"), 10)
        results = await asyncio.gather(b.wait(first), b.wait(queued), return_exceptions=True)
        assert b.all_lost and starting.batches == []
        await b.stop()
        return results[0] if isinstance(results[0], BaseException) else None, (
            results[1] if isinstance(results[1], BaseException) else None
        )

    first_error, queued_error = run(main())
    assert "exited with -9" in str(first_error) and "exited with -9" in str(queued_error)
    assert told == ["device worker 0 exited with -9"]
