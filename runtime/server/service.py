"""The image service: model lifecycle, readiness, and the one generate() path REST and UI share.

The model loads and warms in the background (so /healthz answers during a long load); only a
warm model with a finite image is ready. Draining turns readiness off, refuses new work and
lets accepted work finish. Whatever asks for images (the REST route, the Gradio UI) goes
through `validate` and `generate`, and so through the same batcher and the same refusals,
admission's included (runtime.server.admission: size, device time, per client, queue).
An image prompt is decoded and fitted to the request's size on the service's codec threads (never
the event loop, never the device thread); results are encoded in the request's format and quality
on the device thread as its call ends.
A failed load is logged in full; /readyz says only the phase and a short reason.

Cold start is timed from the process's own start (the kernel's record of it, so the imports
count too) to each of contract.STARTUP_PHASES: a Prometheus gauge per phase, the /readyz
reason while not ready, and one CloudWatch datapoint at ready.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import os
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

import numpy as np
from pydantic import ValidationError

from plan import contract
from runtime.server import codec
from runtime.server.admission import AdmissionError, ClientLimits, deadline_refusal, served_size, size_caps
from runtime.server.backends import (
    MAX_SCHEDULE_STEPS,
    Backend,
    BackendError,
    BatchParams,
    ImageSpec,
    NonFiniteImageError,
    NoVaeEncoderError,
    denoising_steps,
    warmup,
)
from runtime.server.batcher import (
    DISCONNECT_POLL_S,
    Batcher,
    BatcherError,
    ClientGoneError,
    DeadlineExceededError,
    Job,
    JobResult,
    ProgressListener,
    QueueFullError,
    costs_for,
)
from runtime.server.metrics import CloudWatchAggregator, Dimensions, PromMetrics, build_sink
from runtime.server.model_source import ModelSourceError
from runtime.server.protocol import (
    DEFAULT_STRENGTH,
    ApiError,
    ImageRequestBase,
    allowed_ranges,
    build_request_model,
    describe_errors,
)
from runtime.server.settings import Settings
from runtime.server.workers import (
    ProcessBackend,
    create_backends,
    memory_limit,
    resident_bytes,
    threads_per_worker,
    workers_that_fit,
)

log = logging.getLogger(__name__)

NOT_READY_RETRY_S: Final = 5
# What a BatcherError means to the client (anything else: 500).
_BATCHER_STATUS: Final = {"draining": 503, "deadline": 504, "disconnected": 499}
DEADLINE_HINT: Final = "lower steps, size or number of images"
_IMPORTED_AT: Final = time.monotonic()
# What the server does until each startup phase is reached (the /readyz reason says it).
_DOING: Final = {"model_loaded": "loading the model", "warmed_up": "warming up", "ready": "checking the warm-up"}
# Rejection metric labels admission adds to metrics.REJECTION_REASONS (exported at 0 from the start).
ADMISSION_REASONS: Final = ("over_deadline", "queue_time", "client_in_flight", "client_rate")
# Image prompts decoded at once: a large one takes ~0.1-0.3 s of a CPU (and its pixels' memory).
CODEC_THREADS: Final = 2


def failure_summary(exc: BaseException) -> str:
    """A short, fixed reason for /readyz: never the exception's text (paths, ids, library internals)."""
    if isinstance(exc, NonFiniteImageError):
        return "the warm-up image was non-finite (NaN or inf)"
    if isinstance(exc, NoVaeEncoderError):
        return "the Neuron artifact has no compiled VAE encoder (vae_encoder), which image prompts need: recompile it"
    if isinstance(exc, ModelSourceError):
        return "the model source is missing or does not match this deployment"
    if isinstance(exc, MemoryError) or "OutOfMemory" in type(exc).__name__:
        return "out of memory"
    if isinstance(exc, BackendError):
        return "the device cannot serve this model as configured"
    if isinstance(exc, OSError):
        return "a file or network error"
    return "an unexpected error"


def process_started_at() -> float:
    """The time.monotonic() value at which this process started (Linux /proc; else this module's import)."""
    try:
        after_name = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        start_ticks = int(after_name[19])  # field 22 of proc(5): starttime, clock ticks since boot
        uptime_s = float(Path("/proc/uptime").read_text().split()[0])
        age_s = uptime_s - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return _IMPORTED_AT
    return time.monotonic() - max(0.0, age_s)


def asgi_client_gone(receive: Callable[[], Awaitable[Mapping[str, Any]]]) -> Callable[[], Awaitable[None]]:
    """For an HTTP request whose body is read: returns when the client disconnects (ASGI http.disconnect).

    The server hands the disconnect to the next receive() as soon as the connection drops, so a
    request whose client left is cancelled at once rather than at the next poll.
    """

    async def gone() -> None:
        while (await receive()).get("type") != "http.disconnect":
            await asyncio.sleep(DISCONNECT_POLL_S)  # not expected once the body is read; never spin

    return gone


@dataclass
class Startup:
    """Seconds from process start to each startup phase reached so far."""

    started_at: float = field(default_factory=process_started_at)  # time.monotonic() at process start
    reached: dict[str, float] = field(default_factory=dict)  # phase -> seconds since started_at

    def elapsed(self) -> float:
        return time.monotonic() - self.started_at

    def reach(self, phase: str) -> float:
        self.reached[phase] = seconds = self.elapsed()
        return seconds

    @property
    def next_phase(self) -> str | None:
        return next((p for p in contract.STARTUP_PHASES if p not in self.reached), None)

    def describe(self) -> str:
        """Where startup is: what the server does, how long since process start, the phases behind it."""
        done = "".join(f"; {p} at {s:.1f} s" for p, s in self.reached.items())
        upcoming = self.next_phase
        doing = _DOING.get(upcoming, "starting") if upcoming else "started"
        nxt = f"; next phase: {upcoming}" if upcoming else ""
        return f"{doing} ({self.elapsed():.1f} s since process start{done}{nxt})"


@dataclass
class Generated:
    """A completed request: its images encoded as asked, plus what the client is told about it."""

    encoded: list[bytes]  # file bytes in `image_format`, encoded on the device thread
    image_format: str  # png, jpeg or webp
    seed: int
    width: int
    height: int
    steps: int
    result: JobResult

    @property
    def media_type(self) -> str:
        return codec.MEDIA_TYPES[self.image_format]

    @property
    def pngs(self) -> list[bytes]:
        """The images (PNG unless the request asked for another format): the name the UI reads."""
        return self.encoded


def image_prompt_schedule(steps: int, strength: float) -> tuple[int, float]:
    """(steps, strength) for an img2img call that runs at least one denoising step.

    An image prompt runs the last steps x strength steps of a `steps`-step schedule. Where that is
    less than one (1 step at strength 0.8), the schedule is lengthened until one step runs from the
    same noise level; below 1/MAX_SCHEDULE_STEPS there is no noise level lower, so the last one runs.
    """
    if denoising_steps(steps, strength) >= 1:
        return steps, strength
    if denoising_steps(MAX_SCHEDULE_STEPS, strength) < 1:
        return MAX_SCHEDULE_STEPS, 1 / MAX_SCHEDULE_STEPS
    least = min(MAX_SCHEDULE_STEPS, max(steps, math.ceil(1 / strength) - 1))
    while denoising_steps(least, strength) < 1:
        least += 1
    return least, strength


class ImageService:
    """Model lifecycle, readiness, and the one generate() path shared by REST and UI."""

    def __init__(self, settings: Settings, backend: Backend | None = None) -> None:
        self.settings = settings
        devices = [backend] if backend is not None else create_backends(settings)
        self.backend = devices[0]
        self.prom = PromMetrics()
        self.batcher = Batcher(
            self.backend,
            more_devices=devices[1:],
            more_ready=False,  # loaded and warmed once the first serves (_start_more_devices)
            max_batch=settings.max_batch,
            max_wait_s=settings.max_wait_ms / 1000.0,
            queue_size=settings.queue_size,
            metrics=self.prom,
        )
        self.batcher.on_all_lost = self._device_lost
        for reason in ADMISSION_REASONS:
            self.prom.rejections.labels(reason=reason)
        # Per client (the token's sub): nothing applies to a request without one (auth none).
        self.clients = ClientLimits(settings.client_max_in_flight, settings.client_rate_per_min, self.batcher.eta_s)
        dims = Dimensions(settings.placement, self.backend.device, settings.metric_location)
        self.cloudwatch = CloudWatchAggregator(
            build_sink(settings.metrics_sink, dims, settings.aws_region),
            pending=lambda: self.batcher.pending,
            interval_s=settings.metrics_interval_s,
        )
        # The size caps are in the request schema (OpenAPI): a request it allows is never refused for its size.
        max_width, max_height = size_caps(
            settings, served_size(settings, (self.backend.default_width, self.backend.default_height))
        )
        self.limits = replace(settings.limits, max_width=max_width, max_height=max_height)
        self.image_limits = codec.InputLimits()
        self.request_model = build_request_model(self.limits, self.image_limits)
        self.ranges = allowed_ranges(self.limits, self.image_limits)
        self._codec = ThreadPoolExecutor(max_workers=CODEC_THREADS, thread_name_prefix="image-codec")
        self.state = "starting"  # starting|loading|warming|ready|failed|draining
        self.startup = Startup()
        self._problem = ""  # why the load failed, or what draining means
        self._load_task: asyncio.Task[None] | None = None
        # Called with /readyz's reason when the model cannot load (runtime.server.__main__: exit_on_failed_load).
        self.on_failed_load: Callable[[str], None] | None = None

    # --- lifecycle ----------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self.state == "ready"

    @property
    def reason(self) -> str:
        """One line for /readyz: the model when ready, else the startup phase and seconds, or the failure."""
        if self.state == "ready":
            return self.backend.description
        if self.state in ("failed", "draining"):
            return self._problem
        return self.startup.describe()

    def _set_state(self, state: str, problem: str = "") -> None:
        self.state, self._problem = state, problem
        self.prom.ready.set(1 if state == "ready" else 0)

    def _reach(self, phase: str) -> float:
        seconds = self.startup.reach(phase)
        self.prom.startup.labels(phase=phase).set(seconds)
        log.info("startup: %s after %.2fs since process start", phase, seconds)
        return seconds

    async def start(self) -> None:
        self.batcher.start()
        self.cloudwatch.start()
        self._load_task = asyncio.get_running_loop().create_task(self._load(), name="model-load")

    async def _load(self) -> None:
        try:
            self._set_state("loading")
            await self.batcher.run_on_worker(self.backend.load)
            self._reach("model_loaded")
            self._set_state("warming")
            seconds = await self._warm(0)
            self.batcher.observe_batch_time(seconds)
            self._reach("warmed_up")
        except Exception as exc:
            doing = _DOING.get(self.startup.next_phase or "", "starting")
            log.error("model load failed during %s: %s: %s", doing, type(exc).__name__, exc, exc_info=exc)
            if self.state != "draining":
                reason = f"model load failed during {doing}: {failure_summary(exc)} (see the pod log)"
                self._set_state("failed", reason)
                if self.on_failed_load is not None:
                    self.on_failed_load(reason)
            return
        if self.state != "draining":
            self._set_state("ready")
            cold_start = self._reach("ready")
            self.cloudwatch.record_cold_start(cold_start)
            log.info("ready: %s (warm-up %.2fs, cold start %.1fs)", self.backend.description, seconds, cold_start)
            try:  # the pod serves meanwhile: a wake from zero waits for one worker only
                await self._start_more_devices()
            except Exception as exc:  # the first worker serves on
                log.error("device workers beyond the first did not start: %s: %s", type(exc).__name__, exc)

    def _device_lost(self, why: str) -> None:
        """Every device is gone (its worker died): not ready, with the reason; /healthz has the container restarted."""
        if self.state != "draining":
            self._set_state("failed", f"no device left: {why} (see the pod log)")

    async def _warm(self, device: int) -> float:
        """Warm one device up (backends.warmup), teaching the cost model; the seconds of its single image."""
        largest = (self.limits.max_width, self.limits.max_height)  # measured too when above the default
        args = (self.batcher.devices[device], self.settings.max_batch, self.batcher.costs.record, largest)
        return await self.batcher.run_on_worker(warmup, *args, device=device)

    async def _start_more_devices(self) -> None:
        """Load and warm the other worker processes, as many as fit the container's memory beside the first,
        while the first serves; each runs batches once warm.

        The first worker's peak resident memory after its warm-up (a full batch at the default size,
        one image at the largest) is what each of the others will need."""
        devices = self.batcher.devices
        if len(devices) == 1:
            return
        first = devices[0]
        peak = resident_bytes(first.pid, "VmHWM") if isinstance(first, ProcessBackend) and first.pid else 0
        fit = workers_that_fit(len(devices), peak, resident_bytes(os.getpid()), memory_limit())
        if fit < len(devices):
            log.warning(
                "running %d of %d device workers: each reached %d MiB in its warm-up, and the container's memory "
                "limit leaves room for %d",
                fit,
                len(devices),
                peak >> 20,
                fit,
            )
            self.batcher.keep_devices(fit)
            if fit == 1 and isinstance(first, ProcessBackend):  # the CPUs meant for every worker go to this one
                await self.batcher.run_on_worker(first.set_threads, threads_per_worker(self.settings, 1))

        async def start(device: int) -> None:
            try:
                await self.batcher.run_on_worker(self.batcher.devices[device].load, device=device)
                await self._warm(device)
                self.batcher.enable(device)
                log.info("device worker %d serving", device)
            except Exception as exc:  # the first worker serves: a later one that cannot start is retired
                log.error(
                    "device worker %d did not start (%s: %s); serving without it", device, type(exc).__name__, exc
                )
                self.batcher.retire(device)

        await asyncio.gather(*(start(device) for device in range(1, len(self.batcher.devices))))
        log.info("%d of %d device workers serving", self.batcher.serving, len(self.batcher.devices))

    async def drain(self, timeout_s: float) -> bool:
        """Readiness off, refuse new work, wait for accepted work; True if all of it finished."""
        self._set_state("draining", "draining: shutting down")
        self.batcher.begin_drain()
        finished = await self.batcher.wait_idle(timeout_s)
        log.info("drained (%s)", "all accepted work finished" if finished else "timeout, dropping the rest")
        return finished

    async def stop(self) -> None:
        if self.state != "draining":
            await self.drain(timeout_s=min(self.settings.drain_timeout_s, 5.0))
        if self._load_task is not None and not self._load_task.done():
            self._load_task.cancel()
        await self.batcher.stop()
        self._codec.shutdown(wait=False, cancel_futures=True)
        await asyncio.to_thread(self.cloudwatch.stop)

    # --- the generate path --------------------------------------------------------------
    def refuse_unless_ready(self) -> None:
        """503 with Retry-After while loading, failed or draining (counted as a rejection)."""
        if self.ready:
            return
        self.prom.rejections.labels(reason="draining" if self.state == "draining" else "not_ready").inc()
        raise ApiError(503, f"not ready: {self.reason}", headers={"Retry-After": str(NOT_READY_RETRY_S)})

    def validate(self, body: Any) -> ImageRequestBase:
        """The request for a decoded JSON body; ApiError(422) naming the field otherwise."""
        try:
            return self.request_model.model_validate(body)
        except ValidationError as exc:
            field, message = describe_errors(exc.errors(), self.ranges)
            raise ApiError(422, message, field) from None

    def plan(self, req: ImageRequestBase) -> tuple[BatchParams, list[ImageSpec], int]:
        """Fill the model's defaults, apply device rules, and give each image its seed (image prompts: later)."""
        data = {name: getattr(req, name) for name in type(req).model_fields}  # no copy of an image prompt
        width = data["width"] or self.backend.default_width
        height = data["height"] or self.backend.default_height
        problem = self.backend.check_size(width, height)
        if problem:
            raise ApiError(422, f"width/height: {problem}", "width")
        steps, strength = data["steps"] or self.backend.default_steps, None
        if data["image"] is not None:
            steps, strength = image_prompt_schedule(
                steps, float(data["strength"]) if data["strength"] is not None else DEFAULT_STRENGTH
            )
        guidance = data["guidance_scale"]
        guidance = float(guidance) if guidance is not None else self.backend.default_guidance
        problem = self.backend.check_guidance(guidance)
        if problem:
            raise ApiError(422, f"guidance_scale: {problem}", "guidance_scale")
        params = BatchParams(steps=steps, guidance_scale=guidance, width=width, height=height, strength=strength)
        refusal = deadline_refusal(
            costs_for(self.batcher.costs, params),
            data["num_images"],
            width,
            height,
            steps,
            self.settings.request_timeout_s,
            min_size=self.settings.limits.min_size,
        )
        if refusal is not None:
            raise refusal
        seed = data["seed"] if data["seed"] is not None else secrets.randbelow(self.settings.limits.max_seed + 1)
        negative = data["negative_prompt"] or ""
        # Image i of a request uses seed + i: the same request gives the same images, alone or batched.
        specs = [ImageSpec(data["prompt"], negative, seed + i) for i in range(data["num_images"])]
        return params, specs, seed

    def encoder(self, req: ImageRequestBase) -> Callable[[np.ndarray], bytes]:
        """How this request's images are encoded: its format, and its quality for jpeg and webp."""
        quality = getattr(req, "quality", None) or codec.DEFAULT_QUALITY
        return functools.partial(codec.encode, output_format=req.image_format, quality=quality)

    async def decode_image(self, image: str | bytes, width: int, height: int) -> np.ndarray:
        """The image prompt decoded and fitted on a codec thread; ApiError (413/422, one line) when refused."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._codec, codec.decode_prompt, image, width, height, self.image_limits)
        except codec.ImageInputError as exc:
            self.prom.rejections.labels(reason="invalid").inc()
            raise ApiError(exc.status, str(exc), exc.field) from None

    async def generate(
        self,
        req: ImageRequestBase,
        is_disconnected: Callable[[], Awaitable[bool]] | None = None,
        *,
        client_gone: Callable[[], Awaitable[object]] | None = None,
        on_progress: ProgressListener | None = None,
        client: str | None = None,
    ) -> Generated:
        """Queue and wait for the images, encoded as asked. Raises ApiError with the status the client should see.

        `client` is who asks (the bearer token's sub), for the per-client limits; None (auth none,
        no identity) skips them. The work stops (within a fraction of a denoising step where the
        backend allows, see backends.install_stop_hooks) once every request of its batch is gone:
        `client_gone` returns when the client leaves (REST: `asgi_client_gone(request.receive)`, at
        once), or `is_disconnected` says so (polled). `on_progress(done, steps)` hears every step.
        """
        self.refuse_unless_ready()
        try:
            params, specs, seed = self.plan(req)
            if client is not None:
                self.clients.admit(client)
        except AdmissionError as exc:
            self.prom.rejections.labels(reason=exc.reason).inc()
            raise
        image = getattr(req, "image", None)
        if image is not None:  # after the client's limits: a client over them makes the server decode nothing
            pixels = await self.decode_image(image, params.width, params.height)
            specs = [replace(spec, image=pixels) for spec in specs]
        started = time.perf_counter()
        job: Job | None = None
        try:
            try:
                job = self.batcher.submit(
                    params, specs, self.settings.request_timeout_s, on_progress, encode=self.encoder(req)
                )
            except BatcherError:
                if client is not None:
                    self.clients.refund(client)
                raise
            if client is not None:
                self.clients.add(client, job)
            result = await self.batcher.wait(job, is_disconnected, client_gone)
        except QueueFullError as exc:
            self.prom.rejections.labels(reason=exc.reason).inc()
            raise ApiError(429, str(exc), headers={"Retry-After": str(exc.retry_after_s)}) from None
        except BatcherError as exc:
            self.prom.rejections.labels(reason=exc.reason).inc()
            self.prom.request_duration.labels(outcome=exc.reason).observe(time.perf_counter() - started)
            if isinstance(exc, ClientGoneError):
                log.info("client disconnected; request dropped from its batch")
            message = f"{exc}: {DEADLINE_HINT}" if isinstance(exc, DeadlineExceededError) else str(exc)
            raise ApiError(_BATCHER_STATUS.get(exc.reason, 500), message) from None
        except asyncio.CancelledError:
            if job is not None:
                self.batcher.cancel(job)
            raise
        finally:
            if client is not None and job is not None:
                self.clients.remove(client, job)
        encoded = result.encoded
        elapsed = time.perf_counter() - started
        self.prom.request_duration.labels(outcome="ok").observe(elapsed)
        self.prom.images_generated.inc(len(encoded))
        self.cloudwatch.record_request(result.inference_s * 1000.0, len(encoded))
        return Generated(encoded, req.image_format, seed, params.width, params.height, params.steps, result)
