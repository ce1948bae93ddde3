"""What the simulation is made of: the autoscaling loop as deployed, the cold-start chain, one pod.

Every default is written once, here, with where it comes from; docs/scaling.md gives the sources.
The autoscaling knobs default to ``plan.config.ServingConfig``; the HPA behaviour, the trigger's
metric caching and the scale-down window are what ``charts/autoscaling.py`` renders (this package
may not import the charts: tests/scaling/test_loop.py renders them and compares).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final, Literal

from plan import contract
from plan.config import ServingConfig
from plan.config.sections import (  # the HPA API's limit and the signal names, one home each
    MAX_STABILIZATION_WINDOW_S,
    SIGNAL_LATENCY,
    SIGNAL_PENDING,
    SIGNAL_UTILIZATION,
    SIGNALS,
)

PolicyKind = Literal["Pods", "Percent"]
SelectPolicy = Literal["Max", "Min", "Disabled"]


@dataclass(frozen=True)
class HpaPolicy:
    kind: PolicyKind
    value: int
    period_s: int


@dataclass(frozen=True)
class HpaRules:
    """One direction of ``spec.behavior`` (HPAScalingRules)."""

    stabilization_window_s: int
    policies: tuple[HpaPolicy, ...]
    select: SelectPolicy = "Max"


# Kubernetes defaults (HorizontalPodAutoscalerBehavior, autoscaling/v2), what an HPA without a
# ``behavior`` does: scale up by 100 % or 4 pods per 15 s, whichever is more, no stabilization;
# scale down by up to 100 % per 15 s after a 300 s stabilization window.
KUBERNETES_SCALE_UP: Final = HpaRules(0, (HpaPolicy("Percent", 100, 15), HpaPolicy("Pods", 4, 15)), "Max")
KUBERNETES_SCALE_DOWN: Final = HpaRules(300, (HpaPolicy("Percent", 100, 15),), "Max")
# What charts/autoscaling.py renders: the same scale-up rules, written out; scale-down by up to
# 100 % per 15 s once the window (serving.scaleDownWindowSeconds) has passed.
RENDERED_SCALE_UP: Final = KUBERNETES_SCALE_UP
RENDERED_SCALE_DOWN_POLICIES: Final = KUBERNETES_SCALE_DOWN.policies
HPA_SYNC_PERIOD_S: Final = 15  # kube-controller-manager --horizontal-pod-autoscaler-sync-period default
HPA_TOLERANCE: Final = 0.1  # cluster-wide default tolerance


@dataclass(frozen=True)
class Autoscaling:
    """KEDA's ScaledObject and the HPA it owns, as charts/autoscaling.py renders them."""

    min_replicas: int = ServingConfig.min_replicas
    max_replicas: int = ServingConfig.max_replicas
    target_pending_per_replica: int = ServingConfig.target_pending_per_replica
    keda_polling_interval_s: int = ServingConfig.keda_polling_interval_s
    # The rendered trigger sets useCachedMetrics: KEDA reads CloudWatch once per polling interval
    # and every HPA sync gets the value of its last poll. False: every HPA sync reads CloudWatch.
    use_cached_metrics: bool = True
    hpa_sync_s: int = HPA_SYNC_PERIOD_S
    # Where the HPA's syncs and KEDA's polls fall relative to the metric's minute boundaries: nothing
    # aligns them, so the default is half a period late (the mean wait); 0 is the best case.
    # scaling.simulate.phase_sweep runs every combination on a grid instead.
    hpa_sync_phase_s: float = HPA_SYNC_PERIOD_S / 2
    keda_poll_phase_s: float | None = None  # None: half the polling interval
    tolerance: float = HPA_TOLERANCE
    scale_up: HpaRules = RENDERED_SCALE_UP
    # The window is serving.scaleDownWindowSeconds: the chart renders it as the HPA's
    # scaleDown.stabilizationWindowSeconds (KEDA's own cooldownPeriod acts only at 0 replicas).
    scale_down: HpaRules = HpaRules(ServingConfig.scale_down_window_s, RENDERED_SCALE_DOWN_POLICIES, "Max")
    # What the ScaledObject's triggers read (serving.signals); the HPA takes the most replicas any asks for.
    signals: tuple[str, ...] = ServingConfig.signals
    utilization_target_percent: int = ServingConfig.utilization_target_percent  # the pods' average, Value
    latency_target_ms: int = ServingConfig.latency_target_ms  # the pods' p90, Value
    # KEDA's cooldownPeriod for a placement at minReplicas 0: no trigger active for this long -> 0 pods.
    scale_to_zero_after_s: int = ServingConfig.scale_to_zero_after_s

    def target_of(self, signal: str) -> float:
        """The trigger's target (its metric type: plan.config.sections.SIGNAL_METRIC_TYPES)."""
        return {
            SIGNAL_PENDING: float(self.target_pending_per_replica),
            SIGNAL_UTILIZATION: float(self.utilization_target_percent),
            SIGNAL_LATENCY: float(self.latency_target_ms),
        }[signal]

    @property
    def poll_phase_s(self) -> float:
        return self.keda_polling_interval_s / 2 if self.keda_poll_phase_s is None else self.keda_poll_phase_s


@dataclass(frozen=True)
class MetricPipeline:
    """PutMetricData by every pod, GetMetricData by KEDA (the aws-cloudwatch trigger's metadata)."""

    publish_interval_s: int = contract.METRIC_PUBLISH_INTERVAL_S  # each pod's mean pending, once per interval
    stat_period_s: int = contract.METRIC_PUBLISH_INTERVAL_S  # metricStatPeriod
    end_time_offset_s: int = contract.METRIC_PUBLISH_INTERVAL_S  # metricEndTimeOffset
    collection_time_s: int = 3 * contract.METRIC_PUBLISH_INTERVAL_S  # metricCollectionTime
    # Time from PutMetricData until GetMetricData returns the point. Not published by AWS: assumed
    # shorter than the end-time offset, which then hides it (0 here).
    ingest_delay_s: int = 0


# How often the inventory publisher (runtime.inventory, EDGE_DIFFUSION_INVENTORY_INTERVAL_S) lists
# ready pods: tests/scaling/test_loop.py compares it with the publisher's default.
INVENTORY_HEARTBEAT_S: Final = 15.0


@dataclass(frozen=True)
class Wake:
    """A placement at minReplicas 0: what wakes it and how its devices are served meanwhile.

    Devices call the inventory API before every use; it records DeviceDemand (Sum, 60 s) for each
    location that would serve the caller, as Embedded Metric Format lines in its log. KEDA's
    ``demand`` trigger reads it every polling interval and takes the placement 0 -> 1 itself when
    the value is > 0 (activation); then the cold-start chain, the publisher's next heartbeat lists
    the ready pod, and the device's next inventory read sends it there.
    """

    # The demand trigger reads the newest whole minute (metricEndTimeOffset 0: activation needs one
    # call, not a settled sum). EMF lines become metric points after the Lambda's log is delivered
    # and extracted: not published by AWS; estimated at 60 s.
    demand_metric: MetricPipeline = field(
        default_factory=lambda: MetricPipeline(end_time_offset_s=0, ingest_delay_s=60)
    )
    calls_per_image: float = 1.0  # the client reads the inventory (and records demand) before each request
    heartbeat_s: float = INVENTORY_HEARTBEAT_S
    heartbeat_phase_s: float | None = None  # None: half the heartbeat (nothing aligns it)
    # The client reads the inventory before every request (runtime/client): a listed pod gets the
    # next request. Longer if an app caches the inventory.
    client_read_s: float = 0.0
    # Extra time per request for a device near a sleeping Local Zone served by the Region: the longer
    # network path (connect, TLS, request and answer): an estimate for a metro device and a Region
    # ~1,000 km away; measure yours with the client's timings.
    region_extra_latency_ms: float = 60.0

    @property
    def phase_s(self) -> float:
        return self.heartbeat_s / 2 if self.heartbeat_phase_s is None else self.heartbeat_phase_s


@dataclass(frozen=True)
class ColdStart:
    """Seconds from the HPA adding a replica to that pod answering /readyz (docs/scaling.md)."""

    karpenter_decision_s: float = 5.0  # batch window (1 s idle, 10 s max) + scheduling + CreateFleet: estimate
    node_launch_s: float = 65.0  # EC2 launch to node Ready (measured on EKS by Outreach: 65 s, 45 s tuned)
    image_pull_s: float = 300.0  # a 20+ GB image from ECR (AWS: 15-20 GB pulls take 4-6 min)
    # Bottlerocket data volume restored from a snapshot holding the image: no pull, but the blocks the
    # container reads at start (a few GB of libraries) come from S3 on first touch: estimate.
    image_pull_from_snapshot_s: float = 30.0
    model_load_s: float = 45.0  # S3 download of ~5 GB of artifacts + load onto the device: estimate
    warmup_s: float = 30.0  # the server's warm-up batches before /readyz: estimate
    snapshot: bool = False  # nodeImage: bottlerocket with dataVolumeSnapshotId

    @property
    def pull_s(self) -> float:
        return self.image_pull_from_snapshot_s if self.snapshot else self.image_pull_s

    @property
    def new_node_s(self) -> float:
        """A replica that needs a new node: the whole chain."""
        return self.karpenter_decision_s + self.node_launch_s + self.pull_s + self.model_load_s + self.warmup_s

    @property
    def warm_node_s(self) -> float:
        """A replica landing on an empty node that already holds the image (not yet consolidated)."""
        return self.model_load_s + self.warmup_s


@dataclass(frozen=True)
class PodProfile:
    """One serving pod, from a breaking-point run (python -m runtime.bench.breaking_point --json).

    The defaults are an estimate for Stable Diffusion 2.1 base, 512x512, 25 steps, batch 4 on one
    A10G (g5.xlarge); replace them with a breaking point measured on the accelerator.
    """

    images_per_s: float = 0.8  # sustainable throughput of one pod
    concurrency: float = 4.0  # pending requests (queued + in flight) the pod holds at the SLO
    p90_ms: float = 5000.0  # p90 at that concurrency
    queue_size: int = 64  # the server's --queue-size default: requests past queue + batch get 429
    max_batch: int = contract.DEFAULT_MAX_BATCH

    @property
    def capacity(self) -> int:
        """Requests one pod holds before refusing (queued + one batch in flight)."""
        return self.queue_size + self.max_batch


@dataclass(frozen=True)
class Nodes:
    consolidate_after_s: float = 600.0  # charts/karpenter.py DisruptionSettings.consolidate_after "10m"
    pods_per_node: int = 1  # serving pods request 3 of 4 vCPUs and the node's one device (plan/accelerators.py)


@dataclass(frozen=True)
class Simulation:
    autoscaling: Autoscaling = field(default_factory=Autoscaling)
    metrics: MetricPipeline = field(default_factory=MetricPipeline)
    cold_start: ColdStart = field(default_factory=ColdStart)
    pod: PodProfile = field(default_factory=PodProfile)
    nodes: Nodes = field(default_factory=Nodes)
    wake: Wake = field(default_factory=Wake)
    slo_p90_ms: float | None = None  # None: the pod's p90 at its sustainable concurrency
    dt_s: float = 1.0

    @property
    def slo_ms(self) -> float:
        return self.pod.p90_ms if self.slo_p90_ms is None else self.slo_p90_ms


class SimulationError(ValueError):
    """A parameter the simulation cannot run with; one line naming it and what is allowed."""


def check(sim: Simulation) -> None:
    a, p = sim.autoscaling, sim.pod
    rules: list[tuple[str, object, bool, str]] = [
        ("minReplicas", a.min_replicas, a.min_replicas >= 0, "an integer >= 0 (0: device demand wakes it)"),
        ("maxReplicas", a.max_replicas, a.max_replicas >= a.min_replicas, "an integer >= minReplicas"),
        ("targetPendingPerReplica", a.target_pending_per_replica, a.target_pending_per_replica >= 1, ">= 1"),
        ("kedaPollingIntervalSeconds", a.keda_polling_interval_s, a.keda_polling_interval_s >= 1, ">= 1"),
        (
            "scaleDownWindowSeconds",
            a.scale_down.stabilization_window_s,
            0 <= a.scale_down.stabilization_window_s <= MAX_STABILIZATION_WINDOW_S,
            f"0 to {MAX_STABILIZATION_WINDOW_S} (the HPA's scale-down stabilization window)",
        ),
        ("signals", ",".join(a.signals), bool(a.signals) and set(a.signals) <= set(SIGNALS), ", ".join(SIGNALS)),
        ("utilizationTargetPercent", a.utilization_target_percent, 0 < a.utilization_target_percent <= 100, "1-100"),
        ("latencyTargetMs", a.latency_target_ms, a.latency_target_ms > 0, "> 0"),
        ("scaleToZeroAfterSeconds", a.scale_to_zero_after_s, a.scale_to_zero_after_s >= 0, ">= 0"),
        ("pod images/s", p.images_per_s, p.images_per_s > 0, "> 0"),
        ("pod concurrency", p.concurrency, 0 < p.concurrency <= p.capacity, f"> 0 and <= queue + batch ({p.capacity})"),
        ("dt", sim.dt_s, sim.dt_s > 0, "> 0 seconds"),
    ]
    for name, value, ok, allowed in rules:
        if not ok:
            raise SimulationError(f"{name}: {value!r} is not allowed; allowed: {allowed}")


def pod_from_breaking_point(path: Path, base: PodProfile | None = None) -> PodProfile:
    """The pod profile from the JSON the breaking-point tool writes (--json)."""
    try:
        doc: Mapping[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SimulationError(f"--breaking-point: cannot read {str(path)!r}: {exc}") from None
    values = (doc.get("images_per_s_per_pod"), doc.get("concurrency_per_pod"), doc.get("p90_ms_at_sustainable"))
    if not all(isinstance(v, int | float) and v > 0 for v in values):
        raise SimulationError(
            f"--breaking-point: {str(path)!r} has no sustainable step (images_per_s_per_pod, concurrency_per_pod, "
            "p90_ms_at_sustainable must be > 0); allowed: the --json of a run that found one"
        )
    images_per_s, concurrency, p90 = (float(v) for v in values)  # type: ignore[arg-type]
    return replace(base or PodProfile(), images_per_s=images_per_s, concurrency=concurrency, p90_ms=p90)
