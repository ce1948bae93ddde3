"""Dynamic micro-batching: coalesce compatible requests, one inference worker per device.

Requests wait in a bounded FIFO. The dispatcher (a task on the event loop) takes the oldest
request, adds later requests with the same BatchParams up to `max_batch` images, and runs the
batch on the device's single worker thread; while it runs, new arrivals queue up and form the
next batch.

How long to wait for company: when a batch finishes, the requests then in the system (queued
plus the ones just answered, whose clients tend to come back) are what the next batch expects,
up to `max_batch`. Once the device is free it dispatches as soon as that many images are
queued, else after `effective_wait_s()` (at most `max_wait_s`, at most `WAIT_FRACTION` of a
measured batch). A lone client therefore never waits (it expects 1), while eight clients keep
getting batches of eight rather than settling into two alternating half batches.

Isolation: a failing batch is retried one request at a time, so one request's failure is
its own; a request whose deadline passes or whose client disconnects is dropped from the
queue, or ignored in the running batch (which stops early if nobody is left waiting).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Final, TypeVar

import numpy as np

from runtime.server.backends import Backend, BatchParams, ImageSpec
from runtime.server.metrics import PromMetrics

log = logging.getLogger(__name__)
T = TypeVar("T")

WAIT_FRACTION: Final = 0.25  # never wait longer than a quarter of a batch for expected requests
DISCONNECT_POLL_S: Final = 0.1
EWMA_ALPHA: Final = 0.3


class BatcherError(Exception):
    """Base: a request the batcher did not complete. `reason` is the rejection metric label."""

    reason = "error"


class QueueFullError(BatcherError):
    reason = "queue_full"

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(f"queue is full; retry after {retry_after_s}s")
        self.retry_after_s = retry_after_s


class DrainingError(BatcherError):
    reason = "draining"


class DeadlineExceededError(BatcherError):
    reason = "deadline"


class ClientGoneError(BatcherError):
    reason = "disconnected"


class GenerationError(BatcherError):
    reason = "error"


@dataclass
class JobResult:
    images: list[np.ndarray]
    queue_s: float
    inference_s: float
    batch_images: int  # images in the pipeline call this request rode in


@dataclass(eq=False)
class Job:
    """One request in the queue: its images share `params`."""

    params: BatchParams
    images: tuple[ImageSpec, ...]
    enqueued_at: float
    deadline: float
    future: asyncio.Future[JobResult]
    cancelled: bool = False
    started_at: float | None = None

    @property
    def size(self) -> int:
        return len(self.images)


@dataclass
class _Stats:
    batch_s: float | None = None  # EWMA of one batch's duration
    batches: int = 0
    history: collections.deque[int] = field(default_factory=lambda: collections.deque(maxlen=1000))


class Batcher:
    """Owns the queue, the dispatcher task and the device's worker thread."""

    def __init__(
        self,
        backend: Backend,
        *,
        max_batch: int,
        max_wait_s: float,
        queue_size: int,
        metrics: PromMetrics | None = None,
        on_complete: Callable[[Job, JobResult], None] | None = None,
    ) -> None:
        self.backend = backend
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.queue_size = queue_size
        self.metrics = metrics
        self.on_complete = on_complete
        self._queue: collections.deque[Job] = collections.deque()
        self._running: list[Job] = []
        self._arrival = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"infer-{backend.device}")
        self._task: asyncio.Task[None] | None = None
        self.draining = False
        self.stats = _Stats()
        self.expected_images = 1  # requests in the system when the last batch ended (see module doc)
        self._idle_since = 0.0  # loop time when the device last became free

    # --- state --------------------------------------------------------------------------
    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def in_flight(self) -> int:
        return sum(1 for j in self._running if not j.cancelled)

    @property
    def pending(self) -> int:
        """Requests queued plus in flight: the per-pod KEDA metric."""
        return self.queued + self.in_flight

    def observe_batch_time(self, seconds: float) -> None:
        """Feed the wait heuristic (also used with the warm-up time before the first request)."""
        prev = self.stats.batch_s
        self.stats.batch_s = seconds if prev is None else (1 - EWMA_ALPHA) * prev + EWMA_ALPHA * seconds

    def effective_wait_s(self) -> float:
        """How long the oldest request may wait for the expected company."""
        if self.stats.batch_s is None:
            return self.max_wait_s
        return min(self.max_wait_s, WAIT_FRACTION * self.stats.batch_s)

    def retry_after_s(self) -> int:
        """A client's fair wait: the queued batches ahead times a batch's duration (at least 1s)."""
        batches = math.ceil((sum(j.size for j in self._queue) + 1) / self.max_batch)
        return max(1, math.ceil(batches * (self.stats.batch_s or 1.0)))

    def _update_gauges(self) -> None:
        if self.metrics:
            self.metrics.queue_depth.set(self.queued)
            self.metrics.in_flight.set(self.in_flight)
        if self._queue or self._running:
            self._idle.clear()
        else:
            self._idle.set()

    # --- lifecycle ----------------------------------------------------------------------
    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._dispatch_forever(), name="batcher")

    def begin_drain(self) -> None:
        """Refuse new work; what is queued still runs (without waiting for company)."""
        self.draining = True
        self._arrival.set()

    async def wait_idle(self, timeout_s: float | None = None) -> bool:
        """True when nothing is queued or running (False if the timeout passed first)."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for job in list(self._queue):
            self._fail(job, DrainingError("server stopped"))
        self._queue.clear()
        self._executor.shutdown(wait=True, cancel_futures=True)

    async def run_on_worker(self, fn: Callable[..., T], *args: object) -> T:
        """Run fn on the device's worker thread (model load, warm-up): never beside a batch."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # --- request side -------------------------------------------------------------------
    def submit(self, params: BatchParams, images: Sequence[ImageSpec], timeout_s: float) -> Job:
        """Enqueue or raise QueueFullError/DrainingError at once (never blocks)."""
        if self.draining:
            raise DrainingError("server is draining")
        if len(self._queue) >= self.queue_size:
            raise QueueFullError(self.retry_after_s())
        loop = asyncio.get_running_loop()
        now = loop.time()
        job = Job(params, tuple(images), now, now + timeout_s, loop.create_future())
        self._queue.append(job)
        self._arrival.set()
        self._update_gauges()
        return job

    async def wait(self, job: Job, is_disconnected: Callable[[], Awaitable[bool]] | None = None) -> JobResult:
        """The job's result; DeadlineExceededError/ClientGoneError cancel it and free its slot."""
        loop = asyncio.get_running_loop()
        while True:
            remaining = job.deadline - loop.time()
            if remaining <= 0:
                self.cancel(job)
                raise DeadlineExceededError("request deadline passed")
            done, _ = await asyncio.wait({job.future}, timeout=min(remaining, DISCONNECT_POLL_S))
            if done:
                return job.future.result()
            if is_disconnected is not None and await is_disconnected():
                self.cancel(job)
                raise ClientGoneError("client disconnected")

    def cancel(self, job: Job) -> None:
        """Drop a job: out of the queue now, or ignored by its running batch."""
        job.cancelled = True
        with contextlib.suppress(ValueError):
            self._queue.remove(job)
        if not job.future.done():
            job.future.cancel()
        self._update_gauges()

    # --- dispatcher ---------------------------------------------------------------------
    def _fail(self, job: Job, exc: BaseException) -> None:
        if not job.future.done():
            job.future.set_exception(exc)

    def _prune(self, now: float) -> None:
        for job in [j for j in self._queue if j.cancelled or j.deadline <= now]:
            self._queue.remove(job)
            if not job.cancelled:
                job.cancelled = True
                self._fail(job, DeadlineExceededError("request deadline passed while queued"))

    def _select(self) -> list[Job]:
        """The oldest job plus later compatible ones, up to max_batch images (FIFO, greedy fill)."""
        head = self._queue[0]
        batch, images = [head], head.size
        for job in list(self._queue)[1:]:
            if images >= self.max_batch:
                break
            if job.params == head.params and images + job.size <= self.max_batch:
                batch.append(job)
                images += job.size
        return batch

    async def _next_batch(self) -> list[Job] | None:
        loop = asyncio.get_running_loop()
        while True:
            self._prune(loop.time())
            self._update_gauges()
            if not self._queue:
                self._arrival.clear()
                await self._arrival.wait()
                continue
            batch = self._select()
            images = sum(j.size for j in batch)
            enough = images >= min(self.max_batch, self.expected_images)
            waiting_since = max(self._queue[0].enqueued_at, self._idle_since)
            wait_left = waiting_since + self.effective_wait_s() - loop.time()
            if enough or wait_left <= 0 or self.draining:
                return batch
            self._arrival.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrival.wait(), wait_left)

    async def _dispatch_forever(self) -> None:
        while True:
            batch = await self._next_batch()
            if not batch:
                continue
            try:
                await self._execute(batch)
            except Exception:  # the dispatcher must survive anything a batch does
                log.exception("batch failed unexpectedly")
                for job in batch:
                    self._fail(job, GenerationError("internal error"))
            finally:
                images = sum(j.size for j in batch)
                self.expected_images = max(1, min(self.max_batch, images + sum(j.size for j in self._queue)))
                self._idle_since = asyncio.get_running_loop().time()
                self._running = []
                self._update_gauges()

    async def _execute(self, batch: list[Job]) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        for job in batch:
            self._queue.remove(job)
            job.started_at = now
        self._running = batch
        self._update_gauges()
        try:
            results, seconds = await self._run_on_device(batch)
        except Exception as exc:
            if len(batch) == 1:
                log.warning("generation failed: %s", exc)
                self._fail(batch[0], GenerationError(f"generation failed: {type(exc).__name__}"))
                return
            log.warning("batch of %d failed (%s); retrying its requests one by one", len(batch), exc)
            for job in batch:
                if not job.cancelled:
                    self._running = [job]
                    await self._execute_alone(job)
            return
        self._deliver(batch, results, seconds)

    async def _execute_alone(self, job: Job) -> None:
        try:
            results, seconds = await self._run_on_device([job])
        except Exception as exc:
            log.warning("generation failed: %s", exc)
            self._fail(job, GenerationError(f"generation failed: {type(exc).__name__}"))
            return
        self._deliver([job], results, seconds)

    async def _run_on_device(self, batch: list[Job]) -> tuple[list[np.ndarray], float]:
        params = batch[0].params
        specs = [spec for job in batch for spec in job.images]

        def should_stop() -> bool:
            return all(job.cancelled for job in batch)

        def work() -> tuple[list[np.ndarray], float]:
            started = time.perf_counter()
            images = self.backend.generate(params, specs, should_stop)
            return images, time.perf_counter() - started

        images, seconds = await asyncio.get_running_loop().run_in_executor(self._executor, work)
        if len(images) != len(specs) and not should_stop():
            raise RuntimeError(f"backend returned {len(images)} images for {len(specs)}")
        self.observe_batch_time(seconds)
        self.stats.batches += 1
        self.stats.history.append(len(specs))
        if self.metrics:
            self.metrics.inference_duration.observe(seconds)
            self.metrics.batch_size.observe(len(specs))
        return images, seconds

    def _deliver(self, batch: list[Job], images: list[np.ndarray], seconds: float) -> None:
        total = sum(j.size for j in batch)
        offset = 0
        for job in batch:
            mine = images[offset : offset + job.size]
            offset += job.size
            if job.cancelled or job.future.done():
                continue
            if len(mine) != job.size or not all(np.isfinite(img).all() for img in mine):
                self._fail(job, GenerationError("generation produced a non-finite image"))
                continue
            queue_s = (job.started_at or job.enqueued_at) - job.enqueued_at
            result = JobResult(mine, queue_s, seconds, total)
            if self.metrics:
                self.metrics.queue_wait.observe(queue_s)
            job.future.set_result(result)
            if self.on_complete:
                self.on_complete(job, result)
