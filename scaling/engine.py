"""The deterministic simulation: one tick per ``dt``, events at their tick, the fluid in between.

Order within a tick: pods turn ready, pods publish, KEDA polls (cached metrics only), the HPA
syncs and scales, Karpenter consolidates empty nodes; then the requests of the tick flow and every
ready pod samples its pending count (the server samples once a second).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from scaling.cloudwatch import AverageMetric, PercentileMetric, SumMetric
from scaling.hpa import Hpa
from scaling.loop import SIGNAL_LATENCY, SIGNAL_PENDING, SIGNAL_UTILIZATION, Simulation, check
from scaling.queue import Flow, advance, p90_ms
from scaling.traffic import Trace

# The fluid backlog decays exponentially once arrivals stop; requests are whole, so under half a
# request left is the last one finishing (the pods then publish 0 pending and KEDA may scale to 0).
_LAST_REQUEST = 0.5


@dataclass(eq=False)
class _Node:
    launched_s: float
    image_at_s: float  # the serving image is on the node from then on
    busy: bool = True
    empty_since_s: float | None = None
    removed_s: float | None = None


@dataclass(eq=False)
class _Pod:
    created_s: float
    ready_s: float
    node: _Node
    next_publish_s: float | None = None
    samples: list[float] = field(default_factory=list)  # pending per second
    busy: list[float] = field(default_factory=list)  # device busy % per second
    latencies: list[tuple[float, float]] = field(default_factory=list)  # (p90 ms, requests served) per second


@dataclass
class Series:
    """One value per tick (rates per second, counts at the end of the tick)."""

    t: list[float] = field(default_factory=list)
    demand: list[float] = field(default_factory=list)
    replicas: list[int] = field(default_factory=list)  # what the HPA has set
    ready: list[int] = field(default_factory=list)
    backlog: list[float] = field(default_factory=list)
    p90_ms: list[float] = field(default_factory=list)
    served: list[float] = field(default_factory=list)
    refused: list[float] = field(default_factory=list)
    metric: list[float] = field(default_factory=list)  # the last value the HPA read
    nodes: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class Absorption:
    """How one rise in demand went: seconds until latency was back within the SLO for good."""

    at_s: float
    absorbed_s: float | None  # None: not within the simulated time
    capacity_s: float | None  # until the ready pods' throughput first covered the demand
    refused: float
    demand: float
    worst_p90_ms: float


@dataclass(frozen=True)
class Result:
    trace: str
    series: Series
    absorptions: tuple[Absorption, ...]
    node_seconds: float
    start_backlog: float  # pending at t=0: the steady state of the demand at t=0

    @property
    def refused(self) -> float:
        return sum(self.series.refused) * self._dt

    @property
    def demand(self) -> float:
        return sum(self.series.demand) * self._dt

    @property
    def _dt(self) -> float:
        t = self.series.t
        return t[1] - t[0] if len(t) > 1 else 1.0


def initial_replicas(sim: Simulation, demand: float) -> int:
    """The HPA's steady state for ``demand``: the pending it holds (Little: demand * c / mu) over the target."""
    a, p = sim.autoscaling, sim.pod
    pending = demand * p.concurrency / p.images_per_s
    return min(a.max_replicas, max(a.min_replicas, math.ceil(pending / a.target_pending_per_replica - 1e-9)))


def _on_tick(t: float, period: float, phase: float, dt: float) -> bool:
    """Whether an event every ``period`` seconds (first at ``phase``) falls in the tick at ``t``."""
    k = math.floor((t + dt / 2 - phase) / period)
    return k >= 0 and t - dt / 2 <= phase + k * period < t + dt / 2


class Placement:
    """One placement's Deployment, its KEDA ScaledObject and HPA, its nodes: advanced one tick at a time.

    ``tick(t, demand)`` runs the order of the module docstring for the demand that reaches the
    placement's pods; ``record_demand`` counts device demand for its location (the inventory API's
    DeviceDemand), which is what wakes a placement at 0 pods.
    """

    def __init__(self, sim: Simulation, start_demand: float, *, asleep: bool = False) -> None:
        check(sim)
        self.sim = sim
        a, pod = sim.autoscaling, sim.pod
        self.hpa = Hpa(a)
        self.pending = SumMetric(sim.metrics)
        self.utilization = AverageMetric(sim.metrics)
        self.latency = PercentileMetric(sim.metrics)
        self.demand = SumMetric(sim.wake.demand_metric)
        self.nodes: list[_Node] = []
        self.pods: list[_Pod] = []
        start = 0 if asleep else initial_replicas(sim, start_demand)
        for _ in range(start):  # running before t=0: node, image and model in place, publishing from t=0
            self.nodes.append(_Node(launched_s=-math.inf, image_at_s=-math.inf))
            self.pods.append(_Pod(created_s=-math.inf, ready_s=0.0, node=self.nodes[-1]))
        self.backlog = advance(
            0.0, start_demand, start, pod.images_per_s, pod.concurrency, pod.capacity, 3600.0
        ).backlog
        self.start_backlog = self.backlog
        self.cached = dict.fromkeys(sim.autoscaling.signals, 0.0)  # minMetricValue until the first poll
        self.read = dict(self.cached)
        self.last_active_s = 0.0
        self.series = Series()
        self.node_seconds = 0.0
        self.woken_s: list[float] = []  # when KEDA took it 0 -> 1
        self.slept_s: list[float] = []  # when KEDA took it to 0

    def record_demand(self, t: float, demand: float) -> None:
        """Inventory calls in this tick from devices this placement would serve (DeviceDemand, Sum)."""
        calls = demand * self.sim.dt_s * self.sim.wake.calls_per_image
        if calls > 0:
            self.demand.put(t, calls)

    def ready(self, t: float) -> list[_Pod]:
        return [p for p in self.pods if p.ready_s <= t + 1e-9]

    def _query(self, t: float) -> dict[str, float]:
        metrics: dict[str, SumMetric | PercentileMetric] = {
            SIGNAL_PENDING: self.pending,
            SIGNAL_UTILIZATION: self.utilization,
            SIGNAL_LATENCY: self.latency,
        }
        return {signal: metrics[signal].query(t) for signal in self.sim.autoscaling.signals}

    def tick(self, t: float, demand: float) -> Flow:
        sim, a, pod, dt = self.sim, self.sim.autoscaling, self.sim.pod, self.sim.dt_s
        drained = 0.0  # the backlog share of pods deleted this tick: they finish it while draining
        for p in self.ready(t):
            if p.next_publish_s is None:
                p.next_publish_s = p.ready_s + sim.metrics.publish_interval_s
            while p.next_publish_s <= t + 1e-9:
                at = p.next_publish_s
                self.pending.put(at, sum(p.samples) / len(p.samples) if p.samples else 0.0)
                self.utilization.put(at, sum(p.busy) / len(p.busy) if p.busy else 0.0)
                self.latency.put(at, p.latencies)
                p.samples, p.busy, p.latencies = [], [], []
                p.next_publish_s += sim.metrics.publish_interval_s
        if _on_tick(t, a.keda_polling_interval_s, a.poll_phase_s, dt):
            self.cached = self._query(t)
            self._keda(t, self.demand.query(t))
        if self.pods and _on_tick(t, a.hpa_sync_s, a.hpa_sync_phase_s, dt):  # at 0 replicas the HPA does nothing
            self.read = self.cached if a.use_cached_metrics else self._query(t)
            current = len(self.pods)
            wanted = self.hpa.decide(t, dict(self.read), current)
            if wanted > current:
                self.pods.extend(_place(t, self.nodes, sim) for _ in range(wanted - current))
            elif wanted < current:
                remaining = _remove(t, self.pods, current - wanted, self.backlog)
                drained, self.backlog = self.backlog - remaining, remaining
        for n in self.nodes:
            idle = n.empty_since_s is not None and t - n.empty_since_s >= sim.nodes.consolidate_after_s - 1e-9
            if not n.busy and n.removed_s is None and idle:
                n.removed_s = t
        ready = self.ready(t)
        r = len(ready)
        per_pod_before = self.backlog / r if r else 0.0
        flow = advance(self.backlog, demand, r, pod.images_per_s, pod.concurrency, pod.capacity, dt)
        if demand <= 0 and 0 < flow.backlog < _LAST_REQUEST:  # whole requests: the last one finishes, no tail
            flow = Flow(0.0, flow.served + flow.backlog, flow.refused)
        self.backlog = flow.backlog
        per_pod = self.backlog / r if r else 0.0
        worst = max(per_pod_before, per_pod)
        p90 = p90_ms(worst, pod.p90_ms, pod.concurrency, pod.images_per_s) if r else math.inf
        busy = 100.0 * min(1.0, flow.served / (r * pod.images_per_s * dt)) if r else 0.0
        for p in ready:
            p.samples.append(per_pod)
            p.busy.append(busy)
            p.latencies.append((p90, flow.served / r))
        live_nodes = sum(1 for n in self.nodes if n.removed_s is None)
        self.node_seconds += live_nodes * dt
        s = self.series
        s.t.append(t)
        s.demand.append(demand)
        s.replicas.append(len(self.pods))
        s.ready.append(r)
        s.backlog.append(self.backlog)
        s.p90_ms.append(p90)
        s.served.append((flow.served + drained) / dt)
        s.refused.append(flow.refused / dt)
        s.metric.append(next(iter(self.read.values()), 0.0))
        s.nodes.append(live_nodes)
        return flow

    def _keda(self, t: float, demand: float) -> None:
        """KEDA's own 0 <-> 1 at a poll (minReplicaCount 0 only): activation is any trigger's value > 0."""
        a = self.sim.autoscaling
        if a.min_replicas > 0:
            return
        active = demand > 0 or any(v > 0 for v in self.cached.values())
        if active:
            self.last_active_s = t
            if not self.pods:
                self.pods.append(_place(t, self.nodes, self.sim))
                self.woken_s.append(t)
        elif self.pods and t - self.last_active_s >= a.scale_to_zero_after_s - 1e-9:
            self.backlog = _remove(t, self.pods, len(self.pods), self.backlog)
            self.slept_s.append(t)


def run(sim: Simulation, trace: Trace, duration_s: float) -> Result:
    """One placement serving ``trace``; at minReplicas 0 it starts asleep when the trace starts at 0."""
    start = trace.rate(0.0)
    placement = Placement(sim, start, asleep=sim.autoscaling.min_replicas == 0 and start <= 0)
    for i in range(round(duration_s / sim.dt_s)):
        t = i * sim.dt_s
        demand = trace.rate(t)
        placement.record_demand(t, demand)
        placement.tick(t, demand)
    s = placement.series
    return Result(
        trace.name, s, _absorptions(sim, trace, s, duration_s), placement.node_seconds, placement.start_backlog
    )


def _place(t: float, nodes: list[_Node], sim: Simulation) -> _Pod:
    """Karpenter: an empty node that is still there, else a new one; then pull, load, warm up."""
    cold = sim.cold_start
    for n in nodes:
        if not n.busy and n.removed_s is None:
            n.busy, n.empty_since_s = True, None
            return _Pod(created_s=t, ready_s=max(t, n.image_at_s) + cold.model_load_s + cold.warmup_s, node=n)
    node_ready = t + cold.karpenter_decision_s + cold.node_launch_s
    nodes.append(_Node(launched_s=t, image_at_s=node_ready + cold.pull_s))
    return _Pod(created_s=t, ready_s=node_ready + cold.pull_s + cold.model_load_s + cold.warmup_s, node=nodes[-1])


def _remove(t: float, pods: list[_Pod], count: int, backlog: float) -> float:
    """The ReplicaSet deletes pods not ready first (youngest first), then the most recently ready.

    A deleted ready pod drains its share of the backlog (counted as served); its node turns empty.
    """
    ready = [p for p in pods if p.ready_s <= t + 1e-9]
    order = sorted(pods, key=lambda p: (p.ready_s <= t + 1e-9, -p.ready_s, -p.created_s))
    for victim in order[:count]:
        if victim in ready:
            backlog -= backlog / len(ready)
            ready.remove(victim)
        victim.node.busy, victim.node.empty_since_s = False, t
        pods.remove(victim)
    return backlog


def _absorptions(sim: Simulation, trace: Trace, s: Series, duration_s: float) -> tuple[Absorption, ...]:
    changes = sorted(trace.changes())
    out = []
    slo, mu = sim.slo_ms, sim.pod.images_per_s
    for n, at in enumerate(changes):
        end = changes[n + 1] if n + 1 < len(changes) else duration_s
        idx = [i for i, t in enumerate(s.t) if at - 1e-9 <= t < end]
        if not idx:
            continue
        bad = [i for i in idx if s.refused[i] > 1e-9 or s.p90_ms[i] > slo + 1e-6]
        absorbed = 0.0 if not bad else (s.t[bad[-1]] + sim.dt_s - at if bad[-1] != idx[-1] else None)
        short = [i for i in idx if s.ready[i] * mu < s.demand[i] - 1e-9]
        covered = (
            0.0
            if not short
            else next((s.t[i] - at for i in idx if i > short[0] and s.ready[i] * mu >= s.demand[i] - 1e-9), None)
        )
        out.append(
            Absorption(
                at_s=at,
                absorbed_s=absorbed,
                capacity_s=covered,
                refused=sum(s.refused[i] for i in idx) * sim.dt_s,
                demand=sum(s.demand[i] for i in idx) * sim.dt_s,
                worst_p90_ms=max(s.p90_ms[i] for i in idx),
            )
        )
    return tuple(out)
