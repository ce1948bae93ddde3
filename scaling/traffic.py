"""Demand traces in images/s (one image per request): step, ramp, cosine wave, flash crowd."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final, Protocol


class Trace(Protocol):
    @property
    def name(self) -> str: ...

    def rate(self, t: float) -> float: ...

    def changes(self) -> tuple[float, ...]:
        """Times the demand jumps up (time to absorb is measured from each)."""
        ...


@dataclass(frozen=True)
class Step:
    base: float
    factor: float  # demand after the step = base * factor
    at_s: float
    name: str = "step"

    def rate(self, t: float) -> float:
        return self.base * (self.factor if t >= self.at_s else 1.0)

    def changes(self) -> tuple[float, ...]:
        return (self.at_s,)


@dataclass(frozen=True)
class Ramp:
    base: float
    peak: float
    start_s: float
    duration_s: float
    name: str = "ramp"

    def rate(self, t: float) -> float:
        if t < self.start_s:
            return self.base
        return self.base + (self.peak - self.base) * min(1.0, (t - self.start_s) / self.duration_s)

    def changes(self) -> tuple[float, ...]:
        return (self.start_s,)


@dataclass(frozen=True)
class Cosine:
    base: float
    amplitude: float  # demand swings between base - amplitude and base + amplitude
    period_s: float
    name: str = "cosine"

    def rate(self, t: float) -> float:
        return max(0.0, self.base - self.amplitude * math.cos(2 * math.pi * t / self.period_s))

    def changes(self) -> tuple[float, ...]:
        return ()


@dataclass(frozen=True)
class FlashCrowd:
    base: float
    peak: float
    at_s: float
    rise_s: float
    hold_s: float
    decay_s: float
    name: str = "flash crowd"

    def rate(self, t: float) -> float:
        u = t - self.at_s
        if u < 0:
            return self.base
        if u < self.rise_s:
            return self.base + (self.peak - self.base) * u / self.rise_s
        if u < self.rise_s + self.hold_s:
            return self.peak
        v = u - self.rise_s - self.hold_s
        return self.base + (self.peak - self.base) * math.exp(-v / self.decay_s) if self.decay_s > 0 else self.base

    def changes(self) -> tuple[float, ...]:
        return (self.at_s,)


TRACE_KINDS: Final = ("step", "ramp", "cosine", "flash")


@dataclass(frozen=True)
class Pulse:
    """Demand only between ``start_s`` and ``end_s`` (devices near a Local Zone during working hours)."""

    rate_during: float
    start_s: float
    end_s: float
    base: float = 0.0
    name: str = "pulse"

    def rate(self, t: float) -> float:
        return self.rate_during if self.start_s <= t < self.end_s else self.base

    def changes(self) -> tuple[float, ...]:
        return (self.start_s,)


@dataclass(frozen=True)
class Pulses:
    """Demand in several windows, none between (a Local Zone's devices used now and then)."""

    rate_during: float
    windows: tuple[tuple[float, float], ...]  # (start_s, end_s), ascending
    name: str = "pulses"

    def rate(self, t: float) -> float:
        return self.rate_during if any(start <= t < end for start, end in self.windows) else 0.0

    def changes(self) -> tuple[float, ...]:
        return tuple(start for start, _ in self.windows)
