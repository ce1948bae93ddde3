"""Requests in the ready pods as a fluid: exact per step, so the arithmetic can be checked by hand.

``R`` ready pods each serve ``min(mu, mu * p / c)`` images/s at ``p`` pending requests per pod:
below the sustainable concurrency ``c`` throughput grows with the pending work (batches fill), at
``c`` and above it is the pod's sustainable ``mu``. Evenly spread load makes the cluster one
backlog ``B`` (``p = B / R``). Past ``R * capacity`` requests are refused (HTTP 429).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

_EPS = 1e-12


@dataclass(frozen=True)
class Flow:
    backlog: float  # pending requests at the end of the step
    served: float
    refused: float


def advance(backlog: float, arrival_rate: float, ready: int, mu: float, c: float, capacity: int, dt: float) -> Flow:
    """Backlog, served and refused requests after ``dt`` seconds of ``arrival_rate`` requests/s."""
    if ready <= 0:
        return Flow(0.0, backlog, arrival_rate * dt)  # no pod: every arrival refused, nothing holds work
    k = mu / c  # 1/s: service rate per pending request below saturation
    saturation = c * ready
    full = float(capacity * ready)
    b, left, served, refused = backlog, dt, 0.0, 0.0
    while left > _EPS:
        if b >= full - _EPS and arrival_rate >= mu * ready:  # full: serve at mu*R, refuse the rest
            served += mu * ready * left
            refused += (arrival_rate - mu * ready) * left
            b, left = full, 0.0
        elif b > saturation + _EPS or (b >= saturation - _EPS and arrival_rate >= mu * ready):
            slope = arrival_rate - mu * ready  # saturated: the backlog changes linearly
            if slope > _EPS:
                t = min(left, (full - b) / slope)
            elif slope < -_EPS:
                t = min(left, (b - saturation) / -slope)
            else:
                t = left
            served += mu * ready * t
            b = min(full, max(saturation, b + slope * t)) if t < left else b + slope * t
            left -= t
        else:  # below saturation: dB/dt = lambda - k B, B -> lambda / k
            b_inf = arrival_rate / k
            t = left
            if b_inf > saturation:  # reaches the knee within this step?
                t = min(left, math.log((b_inf - b) / (b_inf - saturation)) / k)
            b_next = saturation if t < left else b_inf + (b - b_inf) * math.exp(-k * t)
            served += arrival_rate * t - (b_next - b)
            b = b_next
            left -= t
    return Flow(b, served, refused)


def p90_ms(pending_per_pod: float, p90_at_c_ms: float, c: float, mu: float) -> float:
    """Estimated p90 of a request arriving at ``pending_per_pod``: the SLO-step p90, plus the wait for
    the work queued beyond the sustainable concurrency (served at ``mu``)."""
    return p90_at_c_ms + max(0.0, pending_per_pod - c) / mu * 1000.0
