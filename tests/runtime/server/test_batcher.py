"""The batcher's policy with a fake device: fast, deterministic, no model."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

import numpy as np
import pytest

from runtime.server.backends import Backend, BatchParams, ImageSpec, StopCheck
from runtime.server.batcher import Batcher, DeadlineExceededError, GenerationError, QueueFullError

P = BatchParams(steps=2, guidance_scale=7.5, width=8, height=8)


class FakeDevice(Backend):
    """Takes `seconds` per batch; an image whose prompt is 'boom' fails the whole batch."""

    def __init__(self, seconds: float = 0.05) -> None:
        super().__init__()
        self.seconds = seconds
        self.batches: list[list[str]] = []

    def load(self) -> None:
        pass

    def generate(self, params: BatchParams, images: Sequence[ImageSpec], should_stop: StopCheck) -> list[np.ndarray]:
        self.batches.append([s.prompt for s in images])
        time.sleep(self.seconds)
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
