"""The batcher's policy with a fake device (fast, deterministic, no model), and stopping with the real
tiny pipeline: a request whose client leaves frees the device within about one denoising step."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

import numpy as np
import pytest

from runtime.server.backends import Backend, BatchParams, DiffusersBackend, ImageSpec, StepReport, StopCheck
from runtime.server.batcher import (
    Batcher,
    ClientGoneError,
    DeadlineExceededError,
    GenerationError,
    QueueFullError,
)
from runtime.server.settings import Settings

P = BatchParams(steps=2, guidance_scale=7.5, width=8, height=8)


class FakeDevice(Backend):
    """Takes `seconds` per batch in `steps` steps (asking should_stop after each, like diffusers);
    an image whose prompt is 'boom' fails the whole batch."""

    def __init__(self, seconds: float = 0.05, steps: int = 1) -> None:
        super().__init__()
        self.seconds = seconds
        self.steps = steps
        self.batches: list[list[str]] = []
        self.steps_run: list[int] = []
        self.threads: list[str] = []

    def load(self) -> None:
        pass

    def generate(
        self,
        params: BatchParams,
        images: Sequence[ImageSpec],
        should_stop: StopCheck,
        on_step: StepReport | None = None,
    ) -> list[np.ndarray]:
        self.batches.append([s.prompt for s in images])
        self.threads.append(threading.current_thread().name)
        self.steps_run.append(0)
        for step in range(1, self.steps + 1):
            time.sleep(self.seconds / self.steps)
            if should_stop():
                return []
            self.steps_run[-1] = step
            if on_step is not None:
                on_step(step, self.steps)
        if any(s.prompt == "boom" for s in images):
            raise RuntimeError("device error")
        return [np.full((params.height, params.width, 3), s.seed / 100, dtype=np.float32) for s in images]


def spec(prompt: str, seed: int = 1) -> list[ImageSpec]:
    return [ImageSpec(prompt, "", seed)]


T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def test_lone_request_does_not_wait_for_company() -> None:
    async def main() -> float:
        b = Batcher(FakeDevice(), max_batch=8, max_wait_s=1.0, queue_size=8)
        b.observe_batch_time(4.0)  # a slow device: the wait bound alone would allow 1 s
        b.start()
        started = time.perf_counter()
        result = await b.wait(b.submit(P, spec("a"), 10))
        await b.stop()
        assert result.batch_images == 1
        return time.perf_counter() - started

    assert run(main()) < 0.5


def test_waits_for_as_many_as_the_last_batch_and_keeps_params_apart() -> None:
    device = FakeDevice()

    async def main() -> None:
        b = Batcher(device, max_batch=8, max_wait_s=1.0, queue_size=16)
        b.observe_batch_time(4.0)
        b.expected_images = 4  # as if the previous batch had four images
        b.start()
        jobs = []
        for i in range(4):  # staggered arrivals still make one batch
            jobs.append(b.submit(P, spec(f"p{i}", i), 10))
            await asyncio.sleep(0.02)
        other = b.submit(BatchParams(3, 7.5, 8, 8), spec("other"), 10)
        results = [await b.wait(j) for j in jobs]
        assert [r.batch_images for r in results] == [4, 4, 4, 4]
        assert (await b.wait(other)).batch_images == 1
        assert [round(float(r.images[0][0, 0, 0]) * 100) for r in results] == [0, 1, 2, 3]  # each its own seed
        await b.stop()

    run(main())
    assert device.batches[0] == ["p0", "p1", "p2", "p3"] and device.batches[1] == ["other"]


def test_a_failing_request_does_not_fail_its_batch_mates() -> None:
    async def main() -> None:
        b = Batcher(FakeDevice(0.01), max_batch=8, max_wait_s=0.2, queue_size=8)
        b.expected_images = 3
        b.start()
        good1, bad, good2 = (b.submit(P, spec(p, i), 10) for i, p in enumerate(["ok1", "boom", "ok2"]))
        assert (await b.wait(good1)).batch_images == 1  # retried alone after the batch failed
        with pytest.raises(GenerationError):
            await b.wait(bad)
        assert len((await b.wait(good2)).images) == 1
        assert b.pending == 0
        await b.stop()

    run(main())


def test_queue_bound_and_deadline() -> None:
    async def main() -> None:
        b = Batcher(FakeDevice(0.3), max_batch=1, max_wait_s=0.0, queue_size=2)
        b.start()
        first = b.submit(P, spec("a"), 10)
        await asyncio.sleep(0.05)  # first is running now
        b.submit(P, spec("b"), 10)
        late = b.submit(P, spec("c"), 0.1)
        with pytest.raises(QueueFullError) as full:
            b.submit(P, spec("d"), 10)
        assert full.value.retry_after_s >= 1
        with pytest.raises(DeadlineExceededError):
            await b.wait(late)
        assert b.queued == 1  # the expired request left the queue at once
        await b.wait(first)
        await b.stop()

    run(main())


def test_a_full_queue_answers_retry_after_from_the_estimated_work_ahead() -> None:
    """Retry-After weighs what is ahead (steps, sizes), not how many batches: 3 long batches ahead of a
    device that took 0.02 s for the short one it measured are seconds, not one batch time."""
    from tests.runtime.server.conftest import PacedDevice

    async def main() -> None:
        b = Batcher(PacedDevice(0.01), max_batch=1, max_wait_s=0.0, queue_size=2)
        b.start()
        await b.wait(b.submit(BatchParams(20, 7.5, 8, 8), spec("teach"), 10))  # 0.01 s a step, measured
        long = BatchParams(100, 7.5, 8, 8)  # about 1.25 s each, estimated
        running = b.submit(long, spec("running"), 30)
        while not b.device_busy:
            await asyncio.sleep(0.005)
        queued = [b.submit(long, spec(f"queued{i}"), 30) for i in range(2)]
        with pytest.raises(QueueFullError, match=r"^queue is full \(2 requests waiting\); retry after \d+ s$") as full:
            b.submit(P, spec("late"), 30)
        assert 3 <= full.value.retry_after_s <= 6, full.value.retry_after_s  # 3 x 1.25 s, and a busy machine's sleeps
        for job in [running, *queued]:
            b.cancel(job)
        await b.stop()

    run(main())


def test_a_batch_grows_only_while_its_estimate_fits_its_members_deadlines() -> None:
    """Measured alone, two images are estimated at twice one: the head, whose deadline fits one, runs alone."""
    from tests.runtime.server.conftest import PacedDevice

    async def main() -> tuple[int, int]:
        b = Batcher(PacedDevice(0.01), max_batch=4, max_wait_s=0.0, queue_size=8)
        b.start()
        await b.wait(b.submit(BatchParams(20, 7.5, 8, 8), spec("teach"), 10))
        blocker = b.submit(BatchParams(10, 7.5, 8, 8), spec("blocker"), 10)  # 0.1 s, 0.125 s estimated
        while not b.device_busy:
            await asyncio.sleep(0.005)
        pair = BatchParams(40, 7.5, 8, 8)  # 0.5 s estimated alone, 1 s for two
        head = b.submit(pair, spec("head", 1), 0.8)  # about 0.7 s left when the blocker ends
        other = b.submit(pair, spec("other", 2), 10)
        await b.wait(blocker)
        head_result, other_result = await b.wait(head), await b.wait(other)
        await b.stop()
        return head_result.batch_images, other_result.batch_images

    assert run(main()) == (1, 1)


def test_progress_reaches_listeners_on_the_event_loop_step_by_step() -> None:
    async def main() -> tuple[list[tuple[int, int]], set[str]]:
        seen: list[tuple[int, int]] = []
        threads: set[str] = set()

        def listener(done: int, total: int) -> None:
            seen.append((done, total))
            threads.add(threading.current_thread().name)

        b = Batcher(FakeDevice(0.1, steps=5), max_batch=4, max_wait_s=0.0, queue_size=4)
        b.start()
        job = b.submit(P, spec("a"), 10, on_progress=listener)
        await b.wait(job)
        assert (job.step, job.steps) == (5, 5)
        await b.stop()
        return seen, threads

    seen, threads = run(main())
    assert seen == [(i, 5) for i in range(1, 6)]
    assert threads == {threading.main_thread().name}  # asyncio.run's loop runs on the main thread


def test_batch_whose_requests_are_all_gone_stops_within_a_step_and_the_next_starts() -> None:
    step_s = 0.05
    device = FakeDevice(seconds=step_s * 40, steps=40)

    async def main() -> tuple[float, float]:
        b = Batcher(device, max_batch=4, max_wait_s=0.0, queue_size=8)
        b.start()
        gone = asyncio.Event()
        long_jobs = [b.submit(P, spec(f"long{i}", i), 30) for i in range(2)]
        while device.steps_run[-1:] != [2]:  # the batch of both is denoising
            await asyncio.sleep(0.005)
        waits = [asyncio.ensure_future(b.wait(j, client_gone=gone.wait)) for j in long_jobs[:1]]
        next_job = b.submit(BatchParams(3, 7.5, 8, 8), spec("next"), 30)  # other params: its own batch
        b.cancel(long_jobs[1])
        left_at = time.monotonic()
        gone.set()  # the first one's client leaves too
        with pytest.raises(ClientGoneError):
            await waits[0]
        while b.device_busy and device.batches[-1] != ["next"]:
            await asyncio.sleep(0.001)
        freed = time.monotonic() - left_at
        result = await b.wait(next_job)
        started_next = (next_job.started_at or 0) - left_at
        assert result.batch_images == 1
        assert b.abandoned_batches == 1
        await b.stop()
        return freed, started_next

    freed, started_next = run(main())
    assert device.steps_run[0] < 6, device.steps_run  # stopped within a step or two of 40
    assert freed < 3 * step_s, freed
    assert started_next < 3 * step_s, started_next


def test_batch_with_a_live_request_finishes_for_it_and_drops_the_gone_one() -> None:
    device = FakeDevice(seconds=0.2, steps=4)

    async def main() -> None:
        b = Batcher(device, max_batch=4, max_wait_s=0.0, queue_size=8)
        b.expected_images = 2
        b.start()
        stay, leave = b.submit(P, spec("stay", 1), 10), b.submit(P, spec("leave", 2), 10)
        while not device.steps_run or device.steps_run[-1] < 1:
            await asyncio.sleep(0.005)
        b.cancel(leave)
        result = await b.wait(stay)
        assert result.batch_images == 2 and len(result.images) == 1
        assert round(float(result.images[0][0, 0, 0]) * 100) == 1  # its own image, not the gone one's
        assert leave.future.cancelled()
        await b.stop()

    run(main())
    assert device.batches == [["stay", "leave"]] and device.steps_run == [4]


def test_deadline_stops_the_device_even_when_nobody_polls() -> None:
    device = FakeDevice(seconds=2.0, steps=40)

    async def main() -> None:
        b = Batcher(device, max_batch=1, max_wait_s=0.0, queue_size=2)
        b.start()
        b.submit(P, spec("late"), 0.2)  # nobody waits on it: only the device thread's clock can stop it
        started = time.perf_counter()
        await asyncio.sleep(0.05)
        while b.device_busy:
            await asyncio.sleep(0.005)
        assert time.perf_counter() - started < 0.5
        await b.stop()

    run(main())
    assert device.steps_run[0] < 10


def test_images_are_checked_and_encoded_on_the_device_thread() -> None:
    device = FakeDevice(0.01)
    encoded_on: list[str] = []

    def encode(image: np.ndarray) -> bytes:
        encoded_on.append(threading.current_thread().name)
        return image.tobytes()[:4]

    async def main() -> None:
        b = Batcher(device, max_batch=2, max_wait_s=0.0, queue_size=2, encode=encode)
        b.start()
        result = await b.wait(b.submit(P, spec("a", 50), 10))
        assert result.encoded == [result.images[0].tobytes()[:4]]
        await b.stop()

    run(main())
    assert encoded_on == device.threads and encoded_on[0].startswith("infer-")


def test_deadline_error_names_the_limit() -> None:
    async def main() -> None:
        b = Batcher(FakeDevice(1.0, steps=10), max_batch=1, max_wait_s=0.0, queue_size=2)
        b.start()
        with pytest.raises(DeadlineExceededError, match=r"request deadline 0\.2 s passed"):
            await b.wait(b.submit(P, spec("slow"), 0.2))
        await b.stop()

    run(main())


# --- the same with the real pipeline (the tiny model) ------------------------------------------


@pytest.fixture(scope="module")
def tiny_backend() -> DiffusersBackend:
    backend = DiffusersBackend(Settings(model_id="tiny", torch_threads=1, auth="none", metrics_sink="none"), "cpu")
    backend.load()
    return backend


def test_real_pipeline_stops_within_a_step_of_the_client_leaving(tiny_backend: DiffusersBackend) -> None:
    long = BatchParams(steps=100, guidance_scale=7.5, width=128, height=128)
    quick = BatchParams(steps=2, guidance_scale=7.5, width=64, height=64)

    async def main() -> tuple[list[float], float, float, int]:
        b = Batcher(tiny_backend, max_batch=2, max_wait_s=0.0, queue_size=4)
        b.start()
        step_times: list[float] = []
        gone = asyncio.Event()
        job = b.submit(
            long, spec("a long walk"), 60, on_progress=lambda done, total: step_times.append(time.monotonic())
        )
        waiting = asyncio.ensure_future(b.wait(job, client_gone=gone.wait))
        while len(step_times) < 6:  # measure this machine's step time now, under its current load
            await asyncio.sleep(0.001)
        following = b.submit(quick, spec("next"), 60)  # queued behind the long one
        left_at = time.monotonic()
        gone.set()
        with pytest.raises(ClientGoneError):
            await waiting
        while b.device_busy and following.started_at is None:
            await asyncio.sleep(0.001)
        freed = time.monotonic() - left_at
        result = await b.wait(following)
        assert len(result.images) == 1 and result.images[0].shape == (64, 64, 3)
        started_next = (following.started_at or 0.0) - left_at
        await b.stop()
        return step_times, freed, started_next, job.step

    step_times, freed, started_next, steps_done = run(main())
    step_s = max(b - a for a, b in itertools.pairwise(step_times))
    assert steps_done < len(step_times) + 3, steps_done  # of 100 steps
    # The current step finishes, then the device is free: within about one step (plus a thread hop).
    assert freed <= 2 * step_s + 0.05, (freed, step_s)
    assert started_next <= 2 * step_s + 0.05, (started_next, step_s)


@pytest.mark.parametrize("encoded", [True, False])
def test_a_non_finite_image_fails_its_request_with_or_without_an_encoder(encoded: bool) -> None:
    class Broken(FakeDevice):
        def generate(self, *args: Any, **kwargs: Any) -> list[np.ndarray]:
            return [np.full((8, 8, 3), np.nan, dtype=np.float32)]

    async def main() -> None:
        b = Batcher(
            Broken(), max_batch=1, max_wait_s=0.0, queue_size=4, encode=(lambda img: b"png") if encoded else None
        )
        b.start()
        with pytest.raises(GenerationError, match=r"^generation produced a non-finite image$"):
            await b.wait(b.submit(P, spec("a"), 10))
        await b.stop()

    run(main())
