"""The HPA's replica decision for External metrics, as kube-controller-manager makes it.

Desired replicas are ``ceil(metric / target)`` for an AverageValue target (a total shared among the
pods: pending requests) and ``ceil(current x metric / target)`` for a Value target (a per-pod level:
utilization, latency; ``plan.config.sections.SIGNAL_METRIC_TYPES``), unless the usage ratio is within the tolerance;
then the recommendation is stabilized over the scale-up and scale-down windows and limited by the
policies' allowed change per period (pkg/controller/podautoscaler: GetExternalPerPodMetricReplicas,
stabilizeRecommendationWithBehaviors, convertDesiredReplicasWithBehaviorRate).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from plan.config.sections import AVERAGE_VALUE, SIGNAL_METRIC_TYPES, VALUE
from scaling.loop import Autoscaling, HpaRules


@dataclass
class Hpa:
    config: Autoscaling
    recommendations: list[tuple[float, int]] = field(default_factory=list)
    scale_up_events: list[tuple[float, int]] = field(default_factory=list)
    scale_down_events: list[tuple[float, int]] = field(default_factory=list)

    def metric_replicas(
        self, metric: float, current: int, target: float | None = None, kind: str = AVERAGE_VALUE
    ) -> int:
        """Replicas one metric asks for (pending requests, an AverageValue target, by default)."""
        target = float(self.config.target_pending_per_replica) if target is None else target
        if kind == VALUE:  # GetExternalMetricReplicas: the usage ratio scales the current count
            ratio = metric / target
            if abs(1.0 - ratio) <= self.config.tolerance:
                return current
            return math.ceil(ratio * current - 1e-9)
        if current > 0 and abs(1.0 - metric / (target * current)) <= self.config.tolerance:
            return current
        return math.ceil(metric / target - 1e-9)

    def desired_of(self, readings: Mapping[str, float], current: int) -> int:
        """Several triggers: each metric's own count (its tolerance too), the HPA takes the largest."""
        return max(
            self.metric_replicas(v, current, self.config.target_of(signal), SIGNAL_METRIC_TYPES[signal])
            for signal, v in readings.items()
        )

    def decide(self, now: float, metric: float | Mapping[str, float], current: int) -> int:
        """The replica count the HPA sets at this sync (records what its next syncs remember).

        ``metric``: the pending value, or one reading per signal (the triggers of the ScaledObject).
        """
        desired = (
            self.desired_of(metric, current) if isinstance(metric, Mapping) else self.metric_replicas(metric, current)
        )
        up_cut = now - self.config.scale_up.stabilization_window_s
        down_cut = now - self.config.scale_down.stabilization_window_s
        up, down = desired, desired
        for at, value in self.recommendations:
            if at > up_cut:
                up = min(up, value)
            if at > down_cut:
                down = max(down, value)
        horizon = now - max(self.config.scale_up.stabilization_window_s, self.config.scale_down.stabilization_window_s)
        self.recommendations = [r for r in self.recommendations if r[0] > horizon] + [(now, desired)]
        stabilized = min(max(current, up), down)
        decided = self._rate_limited(now, stabilized, current)
        if decided > current:
            self.scale_up_events.append((now, decided - current))
        elif decided < current:
            self.scale_down_events.append((now, current - decided))
        return decided

    def _changed(self, events: list[tuple[float, int]], now: float, period_s: int) -> int:
        return sum(n for at, n in events if at > now - period_s)

    def _limit(self, rules: HpaRules, now: float, current: int, up: bool) -> int:
        if rules.select == "Disabled":
            return current
        proposals = []
        for p in rules.policies:
            start = (
                current
                - self._changed(self.scale_up_events, now, p.period_s)
                + self._changed(self.scale_down_events, now, p.period_s)
            )
            if up:
                proposals.append(start + p.value if p.kind == "Pods" else math.ceil(start * (1 + p.value / 100)))
            else:
                proposals.append(start - p.value if p.kind == "Pods" else int(start * (1 - p.value / 100)))
        most_change = max if up else min
        least_change = min if up else max
        return (most_change if rules.select == "Max" else least_change)(proposals)

    def _rate_limited(self, now: float, desired: int, current: int) -> int:
        c = self.config
        if desired > current:
            allowed = min(c.max_replicas, max(current, self._limit(c.scale_up, now, current, up=True)))
            return min(desired, allowed)
        if desired < current:
            # KEDA renders the HPA's minReplicas as at least 1: only KEDA itself takes a placement to 0.
            allowed = max(max(1, c.min_replicas), min(current, self._limit(c.scale_down, now, current, up=False)))
            return max(desired, allowed)
        return min(max(desired, c.min_replicas), c.max_replicas)
