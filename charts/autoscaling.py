"""KEDA: each serving Kubernetes Deployment scales on the pending-request metric its own pods publish.

The trigger reads ``contract.METRIC_PENDING_REQUESTS`` with exactly the dimensions the runtime
attaches (``runtime.server.metrics.Dimensions``), summed over the Kubernetes Deployment's pods, which KEDA
divides by the per-replica target; KEDA authenticates with its own Pod Identity role. Every
``serving`` knob acts on 1..N scaling (minReplicas >= 1), which is why the cooldown is the HPA's
scale-down window: docs/adr/0007-keda-cooldown-is-the-hpa-scale-down-window.md.
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
from plan.topology import Placement

TRIGGER_AUTHENTICATION: Final = "aws-pod-identity"
TRIGGER_TYPE: Final = "aws-cloudwatch"
# The runtime publishes once per interval; a longer window tolerates one late publish.
METRIC_PERIOD_S: Final = contract.METRIC_PUBLISH_INTERVAL_S


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


def trigger_metadata(placement: Placement, config: AppConfig, settings: AutoscalingSettings) -> dict[str, str]:
    """aws-cloudwatch scaler metadata; KEDA requires every value to be a string."""
    dimensions: Mapping[str, str] = metric_dimensions(placement, config)
    return {
        "namespace": contract.METRIC_NAMESPACE,
        "metricName": contract.METRIC_PENDING_REQUESTS,
        "dimensionName": ";".join(dimensions),
        "dimensionValue": ";".join(dimensions.values()),
        "metricStat": "Sum",
        "metricStatPeriod": str(METRIC_PERIOD_S),
        "metricCollectionTime": str(METRIC_PERIOD_S * settings.collection_periods),
        "metricEndTimeOffset": str(settings.end_time_offset_s),
        "targetMetricValue": str(config.serving.target_pending_per_replica),
        "activationTargetMetricValue": "0",
        "minMetricValue": "0",
        "awsRegion": config.region,
    }


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
        min_replicas = serving.min_replicas  # config keeps it >= 1: the pods publish the metric
        self.scaled_objects: dict[str, keda.ScaledObject] = {}
        for placement in topology.placements(config):
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
                    advanced=keda.ScaledObjectSpecAdvanced(
                        horizontal_pod_autoscaler_config=keda.ScaledObjectSpecAdvancedHorizontalPodAutoscalerConfig(
                            behavior=hpa_behavior(serving, settings)
                        )
                    ),
                    # CloudWatch unreadable: keep the accelerator's usual replica count.
                    fallback=keda.ScaledObjectSpecFallback(
                        failure_threshold=settings.fallback_failures,
                        replicas=max(min_replicas, placement.accelerator.default_replicas),
                    ),
                    triggers=[
                        keda.ScaledObjectSpecTriggers(
                            type=TRIGGER_TYPE,
                            name="pending-requests",
                            metric_type="AverageValue",
                            use_cached_metrics=True,  # the HPA reads KEDA's last poll: pollingInterval paces reads
                            authentication_ref=keda.ScaledObjectSpecTriggersAuthenticationRef(
                                name=TRIGGER_AUTHENTICATION,
                                kind=keda.ScaledObjectSpecTriggersAuthenticationRefKind.TRIGGER_AUTHENTICATION,
                            ),
                            metadata=trigger_metadata(placement, config, settings),
                        )
                    ],
                ),
            )
