"""KEDA: one ScaledObject per placement, scaling on the signals its config names, and waking
placements that sleep on device demand.

Signals (``serving.signals``, per placement ``serving.placements``), one aws-cloudwatch trigger
each, read with KEDA's own Pod Identity role:

* ``pending``: ``contract.METRIC_PENDING_REQUESTS`` with exactly the dimensions the runtime
  attaches (``runtime.server.metrics.Dimensions``), summed over the pods, divided by the
  per-replica target (AverageValue);
* ``utilization``: Container Insights' device utilization of the placement's pods
  (the accelerator table's ``utilization_metric``), averaged over them, against the target percent (Value:
  the HPA scales the current count by value / target);
* ``latency``: p90 of ``contract.METRIC_INFERENCE_LATENCY_MS`` over the pods (Value).

A placement at minReplicas >= 1 scales 1..N; its cooldown is the HPA's scale-down window
(docs/adr/0007). A placement at minReplicas 0 sleeps: its pods publish nothing while there are
none, so a ``demand`` trigger on ``contract.METRIC_DEVICE_DEMAND``, which the inventory API
records for the placement's location, wakes it; after ``serving.scaleToZeroAfterSeconds``
without demand or pending requests, KEDA's cooldownPeriod, the last pod goes
(docs/adr/0017-placements-sleep-and-wake-on-device-demand.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal

import cdk8s
from constructs import Construct

from charts.imports.sh import keda
from plan import contract, topology
from plan.config import AppConfig, ServingConfig
from plan.config.sections import (
    AVERAGE_VALUE,
    SIGNAL_LATENCY,
    SIGNAL_METRIC_TYPES,
    SIGNAL_PENDING,
    SIGNAL_UTILIZATION,
)
from plan.topology import Placement

TRIGGER_AUTHENTICATION: Final = "aws-pod-identity"
TRIGGER_TYPE: Final = "aws-cloudwatch"
# The runtime publishes once per interval; a longer window tolerates one late publish.
METRIC_PERIOD_S: Final = contract.METRIC_PUBLISH_INTERVAL_S
DEMAND_TRIGGER: Final = "demand"


@dataclass(frozen=True)
class ScalingPolicy:
    """One HPAScalingPolicy: at most ``value`` pods (or percent of them) added or removed per ``period_s``."""

    kind: Literal["Pods", "Percent"]
    value: int
    period_s: int


@dataclass(frozen=True)
class AutoscalingSettings:
    """Trigger and HPA details not in AppConfig.serving, in one place."""

    collection_periods: int = 3  # metricCollectionTime = this many publish intervals
    end_time_offset_s: int = METRIC_PERIOD_S  # skip the period still being filled
    fallback_failures: int = 3  # metric unreadable this many polls: hold the fallback count
    latency_statistic: str = "p90"  # CloudWatch percentile statistic; KEDA passes metricStat through
    # The demand trigger asks for ceil(demand / target) pods: with this target, one while there is
    # any demand; the signals decide any more.
    demand_target: int = 1_000_000
    # KEDA ends the query window at the start of the current period already; the demand window
    # ends there too (a wake waits for no further period: any count in it is demand).
    demand_end_time_offset_s: int = 0
    # Scale-up: double or add 4 pods per 15 s, whichever is more, at once (no stabilization): the
    # Kubernetes defaults. A new pod takes minutes to serve (docs/scaling.md), so holding back only
    # delays it; from 1 pod this reaches the default maxReplicas (4) in one sync.
    scale_up_policies: tuple[ScalingPolicy, ...] = (ScalingPolicy("Percent", 100, 15), ScalingPolicy("Pods", 4, 15))
    scale_up_stabilization_s: int = 0
    # Scale-down: every surplus pod may go in one 15 s period once the window has passed.
    scale_down_policies: tuple[ScalingPolicy, ...] = (ScalingPolicy("Percent", 100, 15),)
    select_policy: Literal["Max", "Min", "Disabled"] = "Max"  # of the policies, the one allowing the most change


def hpa_behavior(
    serving: ServingConfig, settings: AutoscalingSettings
) -> keda.ScaledObjectSpecAdvancedHorizontalPodAutoscalerConfigBehavior:
    """The HPA's behaviour: the scale-down window is ``serving.scaleDownWindowSeconds``."""
    return keda.ScaledObjectSpecAdvancedHorizontalPodAutoscalerConfigBehavior(
        scale_up=keda.ScaledObjectSpecAdvancedHorizontalPodAutoscalerConfigBehaviorScaleUp(
            stabilization_window_seconds=settings.scale_up_stabilization_s,
            select_policy=settings.select_policy,
            policies=[
                keda.ScaledObjectSpecAdvancedHorizontalPodAutoscalerConfigBehaviorScaleUpPolicies(
                    type=p.kind, value=p.value, period_seconds=p.period_s
                )
                for p in settings.scale_up_policies
            ],
        ),
        scale_down=keda.ScaledObjectSpecAdvancedHorizontalPodAutoscalerConfigBehaviorScaleDown(
            stabilization_window_seconds=serving.scale_down_window_s,
            select_policy=settings.select_policy,
            policies=[
                keda.ScaledObjectSpecAdvancedHorizontalPodAutoscalerConfigBehaviorScaleDownPolicies(
                    type=p.kind, value=p.value, period_seconds=p.period_s
                )
                for p in settings.scale_down_policies
            ],
        ),
    )


def metric_dimensions(placement: Placement, config: AppConfig) -> dict[str, str]:
    """The dimension values the runtime publishes for the pods of ``placement``.

    They come from the environment the serving chart sets: ENV_PLACEMENT, the backend's
    device (ENV_DEVICE) and ENV_LOCATION.
    """
    values = {
        contract.LEGACY_DIMENSION_DEPLOYMENT: placement.name,
        contract.DIMENSION_ACCELERATOR: placement.accelerator.device,
        contract.DIMENSION_LOCATION: placement.location.metric_value(config),
    }
    # The legacy set: pods of every image version publish it, so KEDA counts the pending requests of
    # the previous version's pods too while a rollout waits for the new images (docs/adr/0015).
    return {name: values[name] for name in contract.LEGACY_METRIC_DIMENSIONS}


def _metadata(
    namespace: str,
    metric: str,
    dimensions: Mapping[str, str],
    *,
    statistic: str,
    target: int,
    activation: int,
    end_time_offset_s: int,
    config: AppConfig,
    settings: AutoscalingSettings,
) -> dict[str, str]:
    """aws-cloudwatch scaler metadata; KEDA requires every value to be a string."""
    return {
        "namespace": namespace,
        "metricName": metric,
        "dimensionName": ";".join(dimensions),
        "dimensionValue": ";".join(dimensions.values()),
        "metricStat": statistic,
        "metricStatPeriod": str(METRIC_PERIOD_S),
        "metricCollectionTime": str(METRIC_PERIOD_S * settings.collection_periods),
        "metricEndTimeOffset": str(end_time_offset_s),
        "targetMetricValue": str(target),
        "activationTargetMetricValue": str(activation),
        "minMetricValue": "0",  # no datapoint in the window (KEDA's ignoreNullValues default): 0
        "awsRegion": config.region,
    }


def trigger_metadata(
    placement: Placement, config: AppConfig, settings: AutoscalingSettings, signal: str = SIGNAL_PENDING
) -> dict[str, str]:
    """The metadata of the trigger for ``signal``.

    Activation (the 0 <-> 1 decision, placements at minReplicas 0 only): any pending request wakes
    or keeps a placement awake; utilization and latency do only at their target, since idle pods
    report some utilization (a CPU pod's background threads) and must still go to sleep.
    """
    serving = config.serving
    pods = metric_dimensions(placement, config)
    namespace, metric, dimensions, statistic, target, activation = {
        SIGNAL_PENDING: (
            contract.METRIC_NAMESPACE,
            contract.METRIC_PENDING_REQUESTS,
            pods,
            "Sum",
            serving.target_pending_per_replica,
            0,
        ),
        SIGNAL_UTILIZATION: (
            contract.CONTAINER_INSIGHTS_NAMESPACE,
            placement.accelerator.utilization_metric,
            topology.workload_dimensions(placement, config),
            "Average",
            serving.utilization_target_percent,
            serving.utilization_target_percent,
        ),
        SIGNAL_LATENCY: (
            contract.METRIC_NAMESPACE,
            contract.METRIC_INFERENCE_LATENCY_MS,
            pods,
            settings.latency_statistic,
            serving.latency_target_ms,
            serving.latency_target_ms,
        ),
    }[signal]
    return _metadata(
        namespace,
        metric,
        dimensions,
        statistic=statistic,
        target=target,
        activation=activation,
        end_time_offset_s=settings.end_time_offset_s,
        config=config,
        settings=settings,
    )


def demand_metadata(placement: Placement, config: AppConfig, settings: AutoscalingSettings) -> dict[str, str]:
    """The wake trigger of a placement at minReplicas 0: device demand for its location, recorded by
    the inventory API (never by the placement's own pods), active at any count."""
    return _metadata(
        contract.METRIC_NAMESPACE,
        contract.METRIC_DEVICE_DEMAND,
        topology.demand_dimensions(placement.location.metric_value(config), config),
        statistic="Sum",
        target=settings.demand_target,
        activation=0,
        end_time_offset_s=settings.demand_end_time_offset_s,
        config=config,
        settings=settings,
    )


# The demand trigger is a total too: it asks for ceil(calls / a huge target) = one pod.
METRIC_TYPES: Final[Mapping[str, str]] = {**SIGNAL_METRIC_TYPES, DEMAND_TRIGGER: AVERAGE_VALUE}


def _trigger(name: str, metadata: dict[str, str]) -> keda.ScaledObjectSpecTriggers:
    return keda.ScaledObjectSpecTriggers(
        type=TRIGGER_TYPE,
        name=name,
        metric_type=METRIC_TYPES[name],
        use_cached_metrics=True,  # the HPA reads KEDA's last poll: pollingInterval paces reads
        authentication_ref=keda.ScaledObjectSpecTriggersAuthenticationRef(
            name=TRIGGER_AUTHENTICATION,
            kind=keda.ScaledObjectSpecTriggersAuthenticationRefKind.TRIGGER_AUTHENTICATION,
        ),
        metadata=metadata,
    )


def triggers(
    placement: Placement, config: AppConfig, settings: AutoscalingSettings
) -> list[keda.ScaledObjectSpecTriggers]:
    """The demand trigger (placements at minReplicas 0 only), then one trigger per signal."""
    key = placement.node_pool_name
    wake = [_trigger(DEMAND_TRIGGER, demand_metadata(placement, config, settings))]
    signals = [
        _trigger(signal, trigger_metadata(placement, config, settings, signal))
        for signal in config.serving.signals_of(key)
    ]
    return [*(wake if config.serving.min_replicas_of(key) == 0 else []), *signals]


class AutoscalingChart(cdk8s.Chart):
    """One TriggerAuthentication for the namespace and a ScaledObject per serving Kubernetes Deployment."""

    def __init__(
        self, scope: Construct, construct_id: str, *, config: AppConfig, settings: AutoscalingSettings | None = None
    ) -> None:
        super().__init__(scope, construct_id, disable_resource_name_hashes=True)
        settings = settings or AutoscalingSettings()
        self.trigger_authentication = keda.TriggerAuthentication(
            self,
            "TriggerAuthentication",
            metadata=cdk8s.ApiObjectMetadata(name=TRIGGER_AUTHENTICATION, namespace=topology.NAMESPACE),
            spec=keda.TriggerAuthenticationSpec(
                pod_identity=keda.TriggerAuthenticationSpecPodIdentity(
                    provider=keda.TriggerAuthenticationSpecPodIdentityProvider.AWS
                )
            ),
        )
        serving = config.serving
        self.scaled_objects: dict[str, keda.ScaledObject] = {}
        for placement in topology.placements(config):
            min_replicas = serving.min_replicas_of(placement.node_pool_name)
            sleeps = min_replicas == 0
            self.scaled_objects[placement.name] = keda.ScaledObject(
                self,
                placement.name,
                metadata=cdk8s.ApiObjectMetadata(
                    name=placement.name, namespace=topology.NAMESPACE, labels=placement.labels
                ),
                spec=keda.ScaledObjectSpec(
                    scale_target_ref=keda.ScaledObjectSpecScaleTargetRef(
                        api_version="apps/v1", kind="Deployment", name=placement.name
                    ),
                    min_replica_count=min_replicas,
                    max_replica_count=max(serving.max_replicas, min_replicas),
                    # Relevant with useCachedMetrics below (KEDA's webhook warns otherwise at minReplicas >= 1).
                    polling_interval=serving.keda_polling_interval_s,
                    # At 0 only (KEDA's webhook calls cooldownPeriod irrelevant at >= 1): how long
                    # without an active trigger before the last pod goes, also after the
                    # ScaledObject's creation (a new deployment's pod proves the placement once).
                    cooldown_period=serving.scale_to_zero_after_s if sleeps else None,
                    initial_cooldown_period=serving.scale_to_zero_after_s if sleeps else None,
                    advanced=keda.ScaledObjectSpecAdvanced(
                        horizontal_pod_autoscaler_config=keda.ScaledObjectSpecAdvancedHorizontalPodAutoscalerConfig(
                            behavior=hpa_behavior(serving, settings)
                        )
                    ),
                    fallback=None if sleeps else fallback(placement, min_replicas, settings),
                    triggers=triggers(placement, config, settings),
                ),
            )


def fallback(placement: Placement, min_replicas: int, settings: AutoscalingSettings) -> keda.ScaledObjectSpecFallback:
    """CloudWatch unreadable: keep the accelerator's usual replica count.

    Placements at minReplicas >= 1 only. KEDA 2.20 counts a trigger in fallback as active
    (pkg/scaling/scale_handler.go), so at minReplicas 0 any fallback would wake a sleeping placement
    and keep it awake while CloudWatch stays unreadable; without one, a failing trigger freezes
    the count instead (pkg/scaling/executor/scale_scaledobjects.go: no scale to or from zero on
    error), and devices near a sleeping placement keep the Region (docs/adr/0017).
    """
    return keda.ScaledObjectSpecFallback(
        failure_threshold=settings.fallback_failures,
        replicas=max(min_replicas, placement.accelerator.default_replicas),
    )
