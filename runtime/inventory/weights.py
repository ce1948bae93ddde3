"""Capacity-aware ALB weights: each regional target group gets ready pods x its accelerator's cost preference.

The serving Ingress splits Region traffic with one weighted forward action; a fixed split keeps
sending an accelerator its share when it has no ready pod. So the publisher keeps the weights
current, with hysteresis and never all zero: docs/adr/0012-alb-weights-follow-ready-capacity.md.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from runtime.inventory.cluster import PodCount, WeightedIngress

log = logging.getLogger("edge_diffusion.inventory")

ALB_MAX_WEIGHT: Final = 999  # an ALB forward action accepts weights 0-999


@dataclass(frozen=True)
class WeightPolicy:
    """How fast weights follow capacity; defaults in one place."""

    min_interval_s: float = 30.0  # between two patches that do not take traffic off an empty group
    settle_s: float = 30.0  # a new non-zero ready count must hold this long before it moves weights
    max_weight: int = ALB_MAX_WEIGHT


@dataclass
class _Count:
    adopted: int
    candidate: int | None = None
    since: float = 0.0


def scale(weights: Mapping[str, int], maximum: int = ALB_MAX_WEIGHT) -> dict[str, int]:
    """``weights`` proportionally within ``0..maximum``; a non-zero weight stays at least 1."""
    top = max(weights.values(), default=0)
    if top <= maximum:
        return dict(weights)
    return {name: max(1, round(value * maximum / top)) if value > 0 else 0 for name, value in weights.items()}


@dataclass
class WeightController:
    """Decides the weights vector to patch onto the Ingress; pure logic (time comes in as ``now``)."""

    preference: Mapping[str, int]  # accelerator -> cost preference (higher: more traffic per pod)
    policy: WeightPolicy = field(default_factory=WeightPolicy)
    _counts: dict[str, _Count] = field(default_factory=dict)
    _last_patch: float | None = None

    def observe(self, service: str, ready: int, now: float) -> int:
        """The ready count of ``service`` that weights use, after hysteresis."""
        state = self._counts.get(service)
        if state is None or ready == 0:  # first sight, or nothing ready: no reason to wait
            self._counts[service] = _Count(adopted=ready)
            return ready
        if ready == state.adopted:
            state.candidate = None
            return ready
        if ready != state.candidate:
            state.candidate, state.since = ready, now
        if now - state.since >= self.policy.settle_s:
            state.adopted, state.candidate = ready, None
        return state.adopted

    def target(self, ingress: WeightedIngress, counts: Sequence[PodCount], now: float) -> dict[str, int]:
        """The weights the Ingress should carry now, by target group (Service)."""
        by_service = {c.service: c for c in counts}
        raw: dict[str, int] = {}
        fallback: dict[str, int] = {}
        for group in ingress.target_groups:
            count = by_service.get(group.service)
            preference = max(0, int(self.preference.get(count.accelerator, 0))) if count else 0
            ready = self.observe(group.service, count.ready if count else 0, now)
            raw[group.service] = ready * preference
            fallback[group.service] = preference
        if sum(raw.values()) == 0:
            return scale(fallback, self.policy.max_weight) if sum(fallback.values()) else ingress.weights
        return scale(raw, self.policy.max_weight)

    def decide(self, ingress: WeightedIngress, counts: Sequence[PodCount], now: float) -> dict[str, int] | None:
        """The vector to patch now, or None (unchanged, or rate limited until the next cycle)."""
        target = self.target(ingress, counts, now)
        current = ingress.weights
        if target == current:
            return None
        urgent = any(current.get(name, 0) > 0 and weight == 0 for name, weight in target.items())
        if not urgent and self._last_patch is not None and now - self._last_patch < self.policy.min_interval_s:
            return None
        return target

    def patched(self, now: float) -> None:
        self._last_patch = now


def reconcile(
    controller: WeightController,
    ingress: WeightedIngress | None,
    counts: Sequence[PodCount],
    now: float,
    patch: Callable[[WeightedIngress, str], None],
) -> dict[str, int] | None:
    """One cycle: decide, and apply through ``patch(ingress, new annotation value)``; the vector patched."""
    if ingress is None:
        return None
    weights = controller.decide(ingress, counts, now)
    if weights is None:
        return None
    try:
        patch(ingress, ingress.action_with(weights))
    except Exception as err:  # a conflict (409) or an outage: the next cycle reads the Ingress again
        log.warning("patching the weights of Ingress %s failed (retried next cycle): %s", ingress.name, err)
        return None
    controller.patched(now)
    log.info("Ingress %s weights %s -> %s", ingress.name, ingress.weights, weights)
    return weights
