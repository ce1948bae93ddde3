"""Dynamic micro-batching: coalesce compatible requests, one worker thread per device.

Requests wait in a bounded FIFO; the dispatcher takes the oldest, adds later ones with the same
BatchParams up to `max_batch` images and runs them on a free device's worker thread, because a
denoising step is one call on the whole batch. With several devices (worker processes,
runtime.server.workers) a batch takes its share of what waits, so every free device gets work, and
estimates of the work ahead are shared out among them. How long a batch waits for company, how failures stay
isolated and when a batch stops: docs/adr/0004-micro-batches-wait-for-expected-company.md.

Admission weighs cost (runtime.server.admission): besides the count limit, the estimated device time
of the work queued and running plus a new request must fit within that request's deadline, and a
batch grows only while its estimated time fits its members' deadlines. Every completed device call
is timed step by step and teaches the `CostModel` those estimates come from. An image prompt's call
(img2img) is estimated by `costs_for`: its steps x strength denoising steps plus a VAE encode.

Each request's images are checked finite and encoded (its format and quality) on the device
thread as its call ends: never on the event loop.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

import numpy as np

from runtime.server.admission import CostModel, StepClock, Timing, seconds_text
from runtime.server.backends import Backend, BatchParams, DeviceLostError, Encoder, ImageSpec, denoising_steps
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
    """The queue holds as many requests as allowed (429 with Retry-After)."""

    reason = "queue_full"

    def __init__(self, retry_after_s: int, message: str | None = None) -> None:
        super().__init__(message or f"queue is full; retry after {retry_after_s} s")
        self.retry_after_s = retry_after_s


class QueueBusyError(QueueFullError):
    """The work ahead plus this request would not finish within its deadline (429 with Retry-After)."""

    reason = "queue_time"


class DrainingError(BatcherError):
    reason = "draining"


class DeadlineExceededError(BatcherError):
    reason = "deadline"


class ClientGoneError(BatcherError):
    reason = "disconnected"


class GenerationError(BatcherError):
    reason = "error"


ProgressListener = Callable[[int, int], None]  # (steps done, steps), called on the event loop


class ImagePromptCosts(CostModel):
    """The cost model's estimates for calls from image prompts at one strength (a view: it learns nothing).

    Such a call runs steps x strength of the denoising steps (`denoising_steps`) and first encodes
    every image prompt with the VAE. The encode is bounded by the measured time outside the steps
    (text encoding, VAE decode, image encoding): the VAE encoder is the smaller half of the VAE. So
    an estimate is the text-to-image estimate at the denoising steps plus that time once more.
    `steps_within` answers in the request's steps, so admission's messages quote what to ask for.
    """

    def __init__(self, costs: CostModel, strength: float) -> None:
        super().__init__(costs.margin)
        self.costs, self.strength = costs, strength

    @property
    def measured(self) -> bool:
        return self.costs.measured

    def sizes(self) -> set[tuple[int, int]]:
        return self.costs.sizes()

    def record(self, t: Timing) -> None:
        self.costs.record(t)

    def _encode_s(self, images: int, width: int, height: int) -> float | None:
        return self.costs.estimate_s(images, width, height, 0)

    def estimate_s(self, images: int, width: int, height: int, steps: int) -> float | None:
        denoise = self.costs.estimate_s(images, width, height, denoising_steps(steps, self.strength))
        encode = self._encode_s(images, width, height)
        return None if denoise is None or encode is None else denoise + encode

    def steps_within(self, images: int, width: int, height: int, budget_s: float) -> int | None:
        encode = self._encode_s(images, width, height)
        fit = self.costs.steps_within(images, width, height, budget_s - (encode or 0.0))
        if fit is None or fit < 1:
            return fit
        steps = math.ceil((fit + 1) / self.strength)  # the least steps past the fit, then back down
        while steps > 1 and denoising_steps(steps, self.strength) > fit:
            steps -= 1
        return steps


def costs_for(costs: CostModel, params: BatchParams) -> CostModel:
    """The estimates for calls with these parameters: `costs` itself for text, a view for image prompts."""
    return costs if params.strength is None else ImagePromptCosts(costs, params.strength)


@dataclass
class JobResult:
    images: list[np.ndarray]
    queue_s: float
    inference_s: float
    batch_images: int  # images in the pipeline call this request rode in
    encoded: list[bytes] = field(default_factory=list)  # the images encoded by the batcher's encoder


@dataclass(eq=False)
class Job:
    """One request in the queue: its images share `params`."""

    params: BatchParams
    images: tuple[ImageSpec, ...]
    enqueued_at: float  # time.monotonic(), like every time in this module
    deadline: float
    future: asyncio.Future[JobResult]
    cancelled: bool = False
    started_at: float | None = None
    on_progress: ProgressListener | None = None
    context: contextvars.Context | None = None  # the submitter's: its listener runs in it (Gradio's progress)
    encode: Encoder | None = None  # this request's encoding (format, quality); None: the batcher's
    step: int = 0  # denoising steps done (written by the device thread)
    steps: int = 0  # steps of the running call; 0 until it started

    @property
    def size(self) -> int:
        return len(self.images)

    @property
    def gone(self) -> bool:
        """Nobody waits for this request any more: cancelled, or past its deadline (any thread may ask)."""
        return self.cancelled or time.monotonic() >= self.deadline


@dataclass
class _Stats:
    batch_s: float | None = None  # EWMA of one batch's duration
    batches: int = 0
    history: collections.deque[int] = field(default_factory=lambda: collections.deque(maxlen=1000))


class Batcher:
    """Owns the queue, the dispatcher task and a worker thread per device."""

    def __init__(
        self,
        backend: Backend,
        *,
        more_devices: Sequence[Backend] = (),
        more_ready: bool = True,
        max_batch: int,
        max_wait_s: float,
        queue_size: int,
        metrics: PromMetrics | None = None,
        on_complete: Callable[[Job, JobResult], None] | None = None,
        encode: Encoder | None = None,
        costs: CostModel | None = None,
    ) -> None:
        self.backend = backend
        self._slots = [
            _Slot(device, ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"infer-{backend.device}-{i}"))
            for i, device in enumerate([backend, *more_devices])
        ]
        for slot in self._slots[1:]:  # more_ready False: they run nothing until enable() (loaded while serving)
            slot.starting = not more_ready
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.queue_size = queue_size
        self.metrics = metrics
        self.on_complete = on_complete
        self.encode = encode
        self.costs = costs if costs is not None else CostModel()
        self._queue: collections.deque[Job] = collections.deque()
        self._arrival = asyncio.Event()
        self._freed = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self.draining = False
        self.stats = _Stats()
        self.abandoned_batches = 0  # device calls stopped early because every request was gone
        self.on_all_lost: Callable[[str], None] | None = None  # told why, once no device is left

    # --- state --------------------------------------------------------------------------
    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def devices(self) -> list[Backend]:
        return [slot.backend for slot in self._slots]

    @property
    def expected_images(self) -> int:
        """The company the next free device waits for."""
        free = self._free
        return self._slots[free[0] if free else 0].expected

    @expected_images.setter
    def expected_images(self, images: int) -> None:
        for slot in self._slots:
            slot.expected = images

    @property
    def _running(self) -> list[Job]:
        """The jobs of every running device call."""
        return [job for slot in self._slots for job in slot.running]

    @property
    def _free(self) -> list[int]:
        return [i for i, slot in enumerate(self._slots) if not slot.running and not slot.lost and not slot.starting]

    @property
    def all_lost(self) -> bool:
        """Every device was retired: nothing will run again in this process."""
        return all(slot.lost for slot in self._slots)

    @property
    def serving(self) -> int:
        """Devices that run calls: not lost, not starting."""
        return sum(not slot.lost and not slot.starting for slot in self._slots)

    @property
    def _serving(self) -> int:
        """serving, at least 1: for the estimates."""
        return max(1, self.serving)

    @property
    def in_flight(self) -> int:
        return sum(1 for j in self._running if not j.cancelled)

    @property
    def device_busy(self) -> bool:
        """A device call is running (possibly for requests that are all gone, until its next step)."""
        return any(slot.running for slot in self._slots)

    def enable(self, device: int) -> None:
        """A device that was starting (more_ready False) is loaded and warm: it runs batches from now on."""
        self._slots[device].starting = False
        self._freed.set()

    def keep_devices(self, count: int) -> None:
        """Run on the first `count` devices only: the rest (still starting, so running nothing) are closed."""
        for slot in self._slots[count:]:
            slot.backend.close()
            slot.executor.shutdown(wait=False)
        del self._slots[count:]

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
        """A client's fair wait when the queue is full: the estimated device time of the work ahead.

        Before any measurement: the queued batches ahead times a batch's duration. At least 1 s.
        """
        ahead = self.work_ahead_s()
        if ahead is None:
            batches = math.ceil((sum(j.size for j in self._queue) + 1) / self.max_batch)
            ahead = batches * (self.stats.batch_s or 1.0)
        return max(1, math.ceil(ahead))

    def _estimate(self, params: BatchParams, images: int) -> float:
        return costs_for(self.costs, params).estimate_s(images, params.width, params.height, params.steps) or 0.0

    def _running_left_s(self, now: float) -> float:
        """Estimated device seconds left of the running calls (a call's is 0 once all its requests are gone)."""
        left = 0.0
        for slot in self._slots:
            if slot.running and not all(j.gone for j in slot.running):
                images = sum(j.size for j in slot.running)
                left += max(0.0, self._estimate(slot.running[0].params, images) - (now - slot.since))
        return left

    def _queued_s(self, jobs: Sequence[Job]) -> float:
        """Estimated device seconds of these queued jobs, batched as the dispatcher would (by params, in order)."""
        chunks: dict[BatchParams, list[int]] = {}
        for job in jobs:
            if job.cancelled:
                continue
            sizes = chunks.setdefault(job.params, [])
            if sizes and sizes[-1] + job.size <= self.max_batch:
                sizes[-1] += job.size
            else:
                sizes.append(job.size)
        return sum(self._estimate(params, images) for params, sizes in chunks.items() for images in sizes)

    def work_ahead_s(self) -> float | None:
        """Estimated seconds until the devices have done everything running and queued; None before any measurement."""
        if not self.costs.measured:
            return None
        return (self._running_left_s(time.monotonic()) + self._queued_s(list(self._queue))) / self._serving

    def eta_s(self, job: Job) -> float | None:
        """Estimated seconds until this job's images are ready; None before any measurement."""
        if not self.costs.measured:
            return None
        now = time.monotonic()
        for slot in self._slots:
            if job in slot.running:
                return max(0.0, self._estimate(job.params, sum(j.size for j in slot.running)) - (now - slot.since))
        queue = list(self._queue)
        ahead = queue[: queue.index(job) + 1] if job in queue else [job]
        own = self._queued_s([job])
        return (self._running_left_s(now) + self._queued_s(ahead) - own) / self._serving + own

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
        for slot in self._slots:
            slot.executor.shutdown(wait=True, cancel_futures=True)
        for slot in self._slots:
            await asyncio.to_thread(slot.backend.close)

    async def run_on_worker(self, fn: Callable[..., T], *args: object, device: int = 0) -> T:
        """Run fn on a device's worker thread (model load, warm-up): never beside a batch there."""
        return await asyncio.get_running_loop().run_in_executor(self._slots[device].executor, fn, *args)

    # --- request side -------------------------------------------------------------------
    def submit(
        self,
        params: BatchParams,
        images: Sequence[ImageSpec],
        timeout_s: float,
        on_progress: ProgressListener | None = None,
        encode: Encoder | None = None,
    ) -> Job:
        """Enqueue or raise QueueFullError/QueueBusyError/DrainingError at once (never blocks).

        `encode` encodes this request's images (else the batcher's encoder, if any).

        Refused when the queue holds queue_size requests, or when the estimated device time of the
        work ahead plus this request's own exceeds `timeout_s` (Retry-After: when that work will
        have shrunk enough). Before any measurement only the count applies.
        """
        if self.draining:
            raise DrainingError("server is draining")
        if len(self._queue) >= self.queue_size:
            retry = self.retry_after_s()
            raise QueueFullError(retry, f"queue is full ({len(self._queue)} requests waiting); retry after {retry} s")
        ahead = self.work_ahead_s()
        if ahead is not None:
            own = self._estimate(params, len(images))
            if ahead + own > timeout_s:
                retry = max(1, math.ceil(ahead + own - timeout_s))
                raise QueueBusyError(
                    retry,
                    f"queue is full: about {seconds_text(ahead)} s of device work is ahead and this request needs "
                    f"about {seconds_text(own)} s, over the {timeout_s:g} s request deadline; retry after {retry} s",
                )
        now = time.monotonic()
        job = Job(
            params, tuple(images), now, now + timeout_s, asyncio.get_running_loop().create_future(), encode=encode
        )
        if on_progress is not None:
            job.on_progress, job.context = on_progress, contextvars.copy_context()
        self._queue.append(job)
        self._arrival.set()
        self._update_gauges()
        return job

    async def wait(
        self,
        job: Job,
        is_disconnected: Callable[[], Awaitable[bool]] | None = None,
        client_gone: Callable[[], Awaitable[object]] | None = None,
    ) -> JobResult:
        """The job's result; DeadlineExceededError/ClientGoneError cancel it and free its slot.

        `client_gone` returns when the client has left (the batcher cancels the job at once);
        `is_disconnected` is asked every DISCONNECT_POLL_S instead, for callers without the former.
        """
        watcher = asyncio.ensure_future(client_gone()) if client_gone is not None else None
        try:
            while True:
                remaining = job.deadline - time.monotonic()
                if remaining <= 0:
                    self.cancel(job)
                    raise DeadlineExceededError(f"request deadline {job.deadline - job.enqueued_at:g} s passed")
                waiting: set[asyncio.Future[Any]] = {job.future}
                if watcher is not None:
                    waiting.add(watcher)
                timeout = min(remaining, DISCONNECT_POLL_S) if is_disconnected is not None else remaining
                done, _ = await asyncio.wait(waiting, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                if job.future in done:
                    if job.future.cancelled():  # cancel() from elsewhere: the client is gone
                        raise ClientGoneError("client disconnected")
                    return job.future.result()
                if (watcher is not None and watcher in done) or (
                    is_disconnected is not None and await is_disconnected()
                ):
                    self.cancel(job)
                    raise ClientGoneError("client disconnected")
        finally:
            if watcher is not None and not watcher.done():
                watcher.cancel()

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

    def _prune(self, now: float) -> None:  # now: time.monotonic()
        for job in [j for j in self._queue if j.cancelled or j.deadline <= now]:
            self._queue.remove(job)
            if not job.cancelled:
                job.cancelled = True
                self._fail(job, DeadlineExceededError(f"request deadline {job.deadline - job.enqueued_at:g} s passed"))

    def _share(self, images: int) -> int:
        """A batch's images when `images` wait: all of them up to max_batch, shared out among the free devices."""
        return max(1, min(self.max_batch, math.ceil(images / max(1, len(self._free)))))

    def _select(self) -> list[Job]:
        """The oldest job plus later compatible ones, up to its share of max_batch images (FIFO, greedy fill).

        A job joins only while the batch's estimated time fits every member's remaining deadline:
        a request that fits alone is not made late by company. With several free devices a batch takes
        its share of the waiting images, and the next free device the rest.
        """
        head = self._queue[0]
        now = time.monotonic()
        cap = self._share(sum(j.size for j in self._queue if j.params == head.params))
        batch, images, budget = [head], head.size, head.deadline - now
        for job in list(self._queue)[1:]:
            if images >= cap:
                break
            if job.params == head.params and images + job.size <= cap:
                within = min(budget, job.deadline - now)
                if self.costs.measured and self._estimate(head.params, images + job.size) > within:
                    continue
                batch.append(job)
                images += job.size
                budget = within
        return batch

    async def _next_batch(self) -> list[Job] | None:
        while True:
            self._prune(time.monotonic())
            self._update_gauges()
            if not self._queue:
                self._arrival.clear()
                await self._arrival.wait()
                continue
            batch = self._select()
            images = sum(j.size for j in batch)
            slot = self._slots[self._free[0] if self._free else 0]
            enough = images >= min(self.max_batch, slot.expected)
            waiting_since = max(self._queue[0].enqueued_at, slot.idle_since)
            wait_left = waiting_since + self.effective_wait_s() - time.monotonic()
            if enough or wait_left <= 0 or self.draining:
                return batch
            self._arrival.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrival.wait(), wait_left)

    async def _dispatch_forever(self) -> None:
        tasks: set[asyncio.Task[None]] = set()
        try:
            while True:
                if not self._free:
                    self._freed.clear()
                    await self._freed.wait()
                    continue
                batch = await self._next_batch()
                if not batch or not self._free:  # a device retired meanwhile: the batch waits in the queue
                    continue
                device = self._free[0]
                now = time.monotonic()
                for job in batch:
                    self._queue.remove(job)
                    job.started_at = now
                self._slots[device].start(batch, now)
                self._update_gauges()
                task = asyncio.get_running_loop().create_task(self._run_batch(device, batch))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        finally:
            for task in tasks:
                task.cancel()

    async def _run_batch(self, device: int, batch: list[Job]) -> None:
        try:
            await self._execute(device, batch)
        except Exception:  # the dispatcher must survive anything a batch does
            log.exception("batch failed unexpectedly")
            for job in batch:
                self._fail(job, GenerationError("internal error"))
        finally:
            slot = self._slots[device]
            slot.running = []
            # Only requests still waiting tend to come back: gone ones are not expected company.
            slot.expected = self._expected_company(sum(j.size for j in batch if not j.cancelled))
            slot.idle_since = time.monotonic()
            self._freed.set()
            self._update_gauges()

    def _expected_company(self, own: int) -> int:
        """The images a device that has just run `own` of them waits for (ADR 0004): its own requests, which
        tend to come back, and the queue, but no more than its share of every request in the system.

        Another device's running requests come back when that device is free: not this one's company.
        Without the share, a device that took more than its share of a burst (6 of 8 clients, the
        other device 2) would wait for all of its clients after every call, and the split would last.
        """
        queued = sum(j.size for j in self._queue)
        elsewhere = sum(j.size for j in self._running if not j.cancelled)
        share = math.ceil((own + queued + elsewhere) / self._serving)
        return max(1, min(self.max_batch, own + queued, share))

    async def _execute(self, device: int, batch: list[Job]) -> None:
        try:
            run = await self._run_on_device(device, batch)
        except DeviceLostError as exc:
            self._lose(device, batch, exc)
            return
        except Exception as exc:
            if len(batch) == 1:
                log.warning("generation failed: %s", exc)
                self._fail(batch[0], GenerationError(f"generation failed: {type(exc).__name__}"))
                return
            log.warning("batch of %d failed (%s); retrying its requests one by one", len(batch), exc)
            for job in batch:
                if not job.cancelled:
                    self._slots[device].start([job], time.monotonic())
                    await self._execute_alone(device, job)
            return
        self._deliver(batch, run)

    async def _execute_alone(self, device: int, job: Job) -> None:
        try:
            run = await self._run_on_device(device, [job])
        except DeviceLostError as exc:
            self._lose(device, [job], exc)
            return
        except Exception as exc:
            log.warning("generation failed: %s", exc)
            self._fail(job, GenerationError(f"generation failed: {type(exc).__name__}"))
            return
        self._deliver([job], run)

    def retire(self, device: int) -> None:
        """Run nothing more on this device (it did not start, or it died) and release what it holds."""
        slot = self._slots[device]
        slot.lost = True
        slot.backend.close()

    def _lose(self, device: int, batch: list[Job], exc: DeviceLostError) -> None:
        """Retire a device that will not run again; its batch fails, the other devices serve the queue."""
        self.retire(device)
        left = self.serving
        log.error("device %d lost (%s): %d of %d devices left", device, exc, left, len(self._slots))
        for job in batch:
            self._fail(job, GenerationError(f"generation failed: {exc}"))
        if left == 0:
            # One still starting would leave the server ready with nothing to run on until it is warm: a
            # restart of the container (/healthz 503 once all are retired) recovers sooner and surely.
            for index, slot in enumerate(self._slots):
                if not slot.lost:
                    self.retire(index)
            for job in list(self._queue):
                self._fail(job, GenerationError(f"generation failed: {exc}"))
            self._queue.clear()
            if self.on_all_lost is not None:
                self.on_all_lost(str(exc))

    async def _run_on_device(self, device: int, batch: list[Job]) -> _DeviceRun:
        loop = asyncio.get_running_loop()
        params = batch[0].params
        specs = [spec for job in batch for spec in job.images]
        listening = [job for job in batch if job.on_progress is not None]

        def should_stop() -> bool:
            return all(job.gone for job in batch)

        def on_step(done: int, total: int) -> None:  # device thread
            for job in batch:
                job.step, job.steps = done, total
            if listening:
                loop.call_soon_threadsafe(self._notify_progress, listening, done, total)

        def work() -> _DeviceRun:
            clock = StepClock(len(specs), params.width, params.height, params.denoising_steps, forward=on_step)
            started = time.perf_counter()
            encoders = [None if job.cancelled else job.encode or self.encode for job in batch for _ in job.images]
            images, encoded = self._slots[device].backend.generate_encoded(
                params, specs, should_stop, clock, encoders, live_steps=bool(listening)
            )
            seconds = time.perf_counter() - started
            if len(images) != len(specs):
                if should_stop():
                    return _DeviceRun(seconds, abandoned=True)
                raise RuntimeError(f"backend returned {len(images)} images for {len(specs)}")
            run = _DeviceRun(seconds, per_job=self._finish(batch, images, encoded))
            # The device's whole call: steps, decode and encoding (an image prompt's VAE encode counts as time
            # outside the steps: an overestimate of a text call's, never an underestimate).
            self.costs.record(clock.timing())
            return run

        run = await loop.run_in_executor(self._slots[device].executor, work)
        if run.abandoned:  # not a representative batch time: the wait heuristic does not learn from it
            self.abandoned_batches += 1
            return run
        self.observe_batch_time(run.seconds)
        self.stats.batches += 1
        self.stats.history.append(len(specs))
        if self.metrics:
            self.metrics.inference_duration.observe(run.seconds)
            self.metrics.batch_size.observe(len(specs))
        return run

    def _finish(
        self, batch: list[Job], images: list[np.ndarray], encoded: list[bytes | None]
    ) -> list[_JobImages | None]:
        """On the device thread: each live request's images, checked finite, and their encodings (None: gone)."""
        out: list[_JobImages | None] = []
        offset = 0
        for job in batch:
            mine, files = images[offset : offset + job.size], encoded[offset : offset + job.size]
            offset += job.size
            if job.cancelled:
                out.append(None)
                continue
            if job.encode or self.encode:  # generate_encoded encoded exactly the finite ones: no second scan
                finite = all(f is not None for f in files)
                kept = [f for f in files if f is not None] if finite else []
            else:
                finite, kept = all(np.isfinite(img).all() for img in mine), []
            out.append(_JobImages(mine, kept, finite))
        return out

    def _notify_progress(self, jobs: list[Job], done: int, total: int) -> None:
        for job in jobs:
            if job.on_progress is not None and not job.cancelled:
                try:
                    if job.context is not None:
                        job.context.run(job.on_progress, done, total)
                    else:
                        job.on_progress(done, total)
                except Exception:  # a listener's failure (a closed UI session) is not the batch's
                    log.debug("progress listener failed", exc_info=True)

    def _deliver(self, batch: list[Job], run: _DeviceRun) -> None:
        total = sum(j.size for j in batch)
        for job, mine in zip(batch, run.per_job or [None] * len(batch), strict=True):
            if mine is None or job.cancelled or job.future.done():
                continue
            if not mine.finite:
                self._fail(job, GenerationError("generation produced a non-finite image"))
                continue
            queue_s = (job.started_at or job.enqueued_at) - job.enqueued_at
            result = JobResult(mine.images, queue_s, run.seconds, total, mine.encoded)
            if self.metrics:
                self.metrics.queue_wait.observe(queue_s)
            job.future.set_result(result)
            if self.on_complete:
                self.on_complete(job, result)


@dataclass(eq=False)
class _Slot:
    """One device the batcher runs calls on, and what it knows of it."""

    backend: Backend
    executor: ThreadPoolExecutor  # its one worker thread
    # The requests in the system when its last batch ended: the company it waits for (see the module doc).
    # A device expects its own batch's clients back, not another's.
    expected: int = 1
    idle_since: float = 0.0  # when it last became free (monotonic)
    running: list[Job] = field(default_factory=list)  # the jobs of its running call ([]: free)
    since: float = 0.0  # when that call started (monotonic)
    lost: bool = False  # retired: it died (DeviceLostError) or did not start
    starting: bool = False  # loading or warming up while the others serve: no batches yet

    def start(self, jobs: list[Job], now: float) -> None:
        self.running, self.since = jobs, now


@dataclass
class _JobImages:
    images: list[np.ndarray]
    encoded: list[bytes]
    finite: bool


@dataclass
class _DeviceRun:
    """What one device call gave: its time, and per request its images (None: gone), or abandoned."""

    seconds: float
    per_job: list[_JobImages | None] | None = None
    abandoned: bool = False
