"""Admission: what a request may ask for, and whether the server takes it now, from what the device measured.

A request meets these checks in order (`ImageService.generate`); every refusal is one line:

1. size (422, in the request schema): width and height up to the served size (the width and height
   settings, else the model's native size), or up to ``--max-image-size`` when the operator allows
   more (`size_caps`);
2. deadline (422, `deadline_refusal`): a request that alone needs more device time than the request
   deadline is refused at once, saying how many steps fit at its size, instead of answering 504
   after the deadline and keeping the device busy;
3. client (429, `ClientLimits`): per bearer token ``sub``, a bounded number of requests in flight
   and a request rate;
4. queue (429, `runtime.server.batcher.Batcher.submit`): the count limit (queue_size), and the
   estimated device time of the work queued and running plus this request must fit within the
   deadline; Retry-After is computed from that estimate.

Estimates come from `CostModel`. It learns seconds per denoising step and seconds outside the steps
(text encoding, VAE decode, PNG encoding) per batch size and image size, from the warm-up (a single
image and a full batch at the served size, and one image at the largest size allowed when that is
larger, each timed step by step) and from every completed batch.
Before the first measurement the server is not ready: it answers 503 while loading and warming up,
so a request that reaches the checks above always has an estimate. A Batcher used without any
measurement admits by count alone.
"""

from __future__ import annotations

import bisect
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from runtime.server.protocol import ApiError

if TYPE_CHECKING:
    from runtime.server.settings import Settings

# Estimates are multiplied by this: device time varies with co-tenants, clocks and caches (on CPU,
# 4x the pixels took 12x to 17x the time with the tiny model, where quadratic scaling says 16x).
ESTIMATE_MARGIN: Final = 1.25
EWMA_ALPHA: Final = 0.3
MAX_TRACKED_CLIENTS: Final = 10_000  # idle clients with a full bucket are forgotten beyond this
StepListener = Callable[[int, int], None]  # (steps done, steps in the call), as backends report


class AdmissionError(ApiError):
    """An admission refusal: the HTTP status, one line, and `reason` (the rejection metric's label)."""

    def __init__(
        self, status: int, message: str, reason: str, field: str | None = None, retry_after_s: int | None = None
    ) -> None:
        headers = {"Retry-After": str(retry_after_s)} if retry_after_s is not None else None
        super().__init__(status, message, field, headers)
        self.reason = reason
        self.retry_after_s = retry_after_s


# --- 1. size ------------------------------------------------------------------------------


def served_size(settings: Settings, backend_default: tuple[int, int]) -> tuple[int, int]:
    """The size a request without one gets, as known before the model loads.

    The width/height settings (the charts set them), else a built-in model's native size, else the
    backend's own default (a Neuron artifact's compiled size once loaded, else the contract's).
    """
    from runtime.server.models import built_in

    model = built_in(settings.model_id)
    native = (model.native_size, model.native_size) if model is not None else backend_default
    return settings.width or native[0], settings.height or native[1]


def size_caps(settings: Settings, served: tuple[int, int]) -> tuple[int, int]:
    """The largest width and height a request may ask for: the served size, or --max-image-size when set."""
    if settings.max_image_size is None:
        return served
    return max(settings.max_image_size, served[0]), max(settings.max_image_size, served[1])


# --- 2. device time -------------------------------------------------------------------------


@dataclass(frozen=True)
class Timing:
    """One device call: its images, pixels per image, steps, seconds per step and seconds outside the steps."""

    images: int
    pixels: int
    steps: int
    step_s: float
    other_s: float


class StepClock:
    """Times one device call from its step reports (pass it as the backend's on_step).

    The first report comes after text encoding and the first step, so the step time is the mean
    interval between reports; what the call took beyond `steps` of those (encoding, VAE decode,
    whatever follows until `timing()`) is the rest. Without reports (a pipeline that takes no step
    callback) the whole call counts as steps, which overestimates the steps: the safe side.
    """

    def __init__(self, images: int, width: int, height: int, steps: int, forward: StepListener | None = None) -> None:
        self.images, self.pixels, self.steps = images, width * height, steps
        self.forward = forward
        self.started = time.perf_counter()
        self.marks: list[float] = []

    def __call__(self, done: int, total: int) -> None:
        self.mark(done, total, time.perf_counter())

    def mark(self, done: int, total: int, at: float) -> None:
        """A step that ended at `at` (time.perf_counter(): on Linux the system's monotonic clock, so a
        worker process's reading counts here too)."""
        self.marks.append(at)
        if self.forward is not None:
            self.forward(done, total)

    def timing(self) -> Timing:
        total = time.perf_counter() - self.started
        steps = max(1, self.steps)
        if len(self.marks) >= 2:
            step_s = (self.marks[-1] - self.marks[0]) / (len(self.marks) - 1)
        elif self.marks:
            step_s = self.marks[0] - self.started
        else:
            step_s = total / steps
        return Timing(self.images, self.pixels, steps, step_s, max(0.0, total - steps * step_s))


@dataclass
class _Point:
    step_s: float
    other_s: float


MAX_SHAPES_KEPT: Final = 256  # (images, pixels) estimates a CostModel keeps between two measurements


class CostModel:
    """Device seconds for a batch, estimated from measured ones (thread-safe: the device thread records).

    A batch of n images of p pixels each, with s steps, costs s * step(n, p) + other(n, p), both
    estimated from the measured batch sizes and pixel counts, always on the high side:
    - images: from a measured batch of b <= n images, times n / b (an image never costs more in a
      larger batch); from a measured b > n, unchanged (a smaller batch is not slower);
    - pixels: a measured size is used as is; between two, the chord (time is convex in pixels:
      convolutions grow linearly, attention quadratically); above the largest, times (p / p_max)^2
      (nothing grows faster than attention); below the smallest, unchanged;
    - the lowest of those estimates over the measured batch sizes, times ESTIMATE_MARGIN.
    """

    def __init__(self, margin: float = ESTIMATE_MARGIN) -> None:
        self.margin = margin
        self._rows: dict[int, dict[int, _Point]] = {}  # images -> pixels -> EWMA of the measurements
        # (images, pixels) -> _bounds, until the next measurement: admission asks for the same few shapes
        # several times per request (its own, the running calls', the queued batches').
        self._bounds_at: dict[tuple[int, int], tuple[tuple[float, float], ...]] = {}
        self._lock = threading.Lock()

    @property
    def measured(self) -> bool:
        return bool(self._rows)

    def sizes(self) -> set[tuple[int, int]]:
        """(images, pixels per image) of the calls measured so far."""
        with self._lock:
            return {(images, pixels) for images, row in self._rows.items() for pixels in row}

    def record(self, t: Timing) -> None:
        with self._lock:
            self._bounds_at.clear()
            row = self._rows.setdefault(t.images, {})
            old = row.get(t.pixels)
            if old is None:
                row[t.pixels] = _Point(t.step_s, t.other_s)
            else:
                old.step_s += EWMA_ALPHA * (t.step_s - old.step_s)
                old.other_s += EWMA_ALPHA * (t.other_s - old.other_s)

    def _bounds(self, images: int, width: int, height: int) -> tuple[tuple[float, float], ...]:
        """(seconds per step, seconds outside the steps) for one call, margin included: one upper bound
        per measured batch size (empty before any measurement)."""
        key = (images, width * height)
        with self._lock:
            bounds = self._bounds_at.get(key)
            if bounds is None:
                if len(self._bounds_at) >= MAX_SHAPES_KEPT:
                    self._bounds_at.clear()
                bounds = self._bounds_at[key] = tuple(self._measured_bounds(images, key[1]))
        return bounds

    def _measured_bounds(self, images: int, pixels: int) -> list[tuple[float, float]]:
        out = []
        for measured, row in self._rows.items():
            step_s, other_s = _at_pixels(row, pixels)
            scale = (images / measured if measured <= images else 1.0) * self.margin
            out.append((step_s * scale, other_s * scale))
        return out

    def estimate_s(self, images: int, width: int, height: int, steps: int) -> float | None:
        """Device seconds of one call with these images, size and steps; None before any measurement."""
        bounds = self._bounds(images, width, height)
        return min(steps * step_s + other_s for step_s, other_s in bounds) if bounds else None

    def steps_within(self, images: int, width: int, height: int, budget_s: float) -> int | None:
        """The most steps one call of this size fits in budget_s (0: not even one); None: nothing measured."""
        bounds = self._bounds(images, width, height)
        if not bounds:
            return None
        return max(
            max(0, math.floor((budget_s - other_s) / step_s)) if step_s > 0 else 10**9 for step_s, other_s in bounds
        )


def _at_pixels(row: dict[int, _Point], pixels: int) -> tuple[float, float]:
    """One batch size's (step, other) seconds at `pixels` (see CostModel for the rules)."""
    sizes = sorted(row)
    i = bisect.bisect_left(sizes, pixels)
    if i < len(sizes) and sizes[i] == pixels:
        point = row[pixels]
        return point.step_s, point.other_s
    if i == 0:
        point = row[sizes[0]]
        return point.step_s, point.other_s
    if i == len(sizes):
        point, scale = row[sizes[-1]], (pixels / sizes[-1]) ** 2
        return point.step_s * scale, point.other_s * scale
    lo, hi = sizes[i - 1], sizes[i]
    w = (pixels - lo) / (hi - lo)
    return (
        row[lo].step_s + w * (row[hi].step_s - row[lo].step_s),
        row[lo].other_s + w * (row[hi].other_s - row[lo].other_s),
    )


def seconds_text(value: float) -> str:
    """Seconds as a client reads them: one decimal under 10 s, whole seconds above."""
    return f"{value:.1f}" if value < 10 else f"{value:.0f}"


def deadline_refusal(
    costs: CostModel, images: int, width: int, height: int, steps: int, deadline_s: float, min_size: int = 0
) -> AdmissionError | None:
    """422 when the request alone needs more device time than its deadline (None: it fits, or nothing measured)."""
    needed = costs.estimate_s(images, width, height, steps)
    fit = costs.steps_within(images, width, height, deadline_s)
    if needed is None or fit is None or needed <= deadline_s:
        return None
    several = images > 1
    what = f"{steps} {'step' if steps == 1 else 'steps'} at {width}x{height}" + (
        f" for {images} images" if several else ""
    )
    if fit >= 1:
        advice = f"at most {fit} {'step fits' if fit == 1 else 'steps fit'} at this size" + (
            " and number of images" if several else ""
        )
    else:
        smaller = [
            knob for knob, can in (("width/height", max(width, height) > min_size), ("num_images", several)) if can
        ]
        advice = "not even 1 step fits at this size; " + (
            f"lower {' or '.join(smaller)}" if smaller else "this server's request deadline is too short for its model"
        )
    message = (
        f"steps: {what} need about {seconds_text(needed)} s on this device, over the {deadline_s:g} s "
        f"request deadline; {advice}"
    )
    return AdmissionError(422, message, "over_deadline", field="steps")


# --- 3. per client --------------------------------------------------------------------------


@dataclass
class _Client:
    tokens: float
    at: float  # when `tokens` was last brought up to date (monotonic)
    in_flight: list[Any] = field(default_factory=list)


class ClientLimits:
    """Per-client limits keyed by the bearer token's ``sub``: requests in flight, and a rate.

    The rate is a token bucket holding one minute's worth (``rate_per_min``) and refilled
    continuously; a request takes a token when the queue accepts it (a refused request gives it
    back). In-flight requests are whatever the caller registers with `add` until `remove`; the
    Retry-After of an in-flight refusal is the soonest `eta_s` among them. With auth none there is
    no identity (the service passes no client), so none of this applies: size, deadline and queue
    admission still do. Everything runs on the event loop thread (no lock).
    """

    def __init__(
        self,
        max_in_flight: int,
        rate_per_min: float,
        eta_s: Callable[[Any], float | None] = lambda item: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_in_flight = max_in_flight
        self.rate_per_min = rate_per_min
        self.eta_s = eta_s
        self.clock = clock
        self._clients: dict[str, _Client] = {}

    def _client(self, client: str) -> _Client:
        now = self.clock()
        state = self._clients.get(client)
        if state is None:
            if len(self._clients) >= MAX_TRACKED_CLIENTS:
                self._forget_idle(now)
            state = self._clients[client] = _Client(float(self.rate_per_min), now)
        state.tokens = min(float(self.rate_per_min), state.tokens + (now - state.at) * self.rate_per_min / 60.0)
        state.at = now
        return state

    def _forget_idle(self, now: float) -> None:
        for key, state in list(self._clients.items()):
            refilled = state.tokens + (now - state.at) * self.rate_per_min / 60.0
            if not state.in_flight and refilled >= self.rate_per_min:
                del self._clients[key]

    def admit(self, client: str) -> None:
        """Take one request's token, or raise a 429 AdmissionError naming the limit (in flight first, then rate)."""
        state = self._client(client)
        if len(state.in_flight) >= self.max_in_flight:
            etas = [eta for eta in (self.eta_s(item) for item in state.in_flight) if eta is not None]
            retry = max(1, math.ceil(min(etas))) if etas else 1
            raise AdmissionError(
                429,
                f"too many requests in flight for this client: {len(state.in_flight)} of at most "
                f"{self.max_in_flight} at once; retry after {retry} s",
                "client_in_flight",
                retry_after_s=retry,
            )
        if state.tokens < 1.0:
            retry = max(1, math.ceil((1.0 - state.tokens) * 60.0 / self.rate_per_min))
            raise AdmissionError(
                429,
                f"request rate limit for this client: {self.rate_per_min:g} requests per minute; retry after {retry} s",
                "client_rate",
                retry_after_s=retry,
            )
        state.tokens -= 1.0

    def refund(self, client: str) -> None:
        """Give back the token of a request the queue refused after `admit`."""
        state = self._client(client)
        state.tokens = min(float(self.rate_per_min), state.tokens + 1.0)

    def add(self, client: str, item: Any) -> None:
        self._client(client).in_flight.append(item)

    def remove(self, client: str, item: Any) -> None:
        state = self._clients.get(client)
        if state is not None and item in state.in_flight:
            state.in_flight.remove(item)

    def in_flight(self, client: str) -> int:
        state = self._clients.get(client)
        return len(state.in_flight) if state else 0
