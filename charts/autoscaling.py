"""KEDA: each serving Deployment scales on the pending-request metric its own pods publish.

The trigger reads ``contract.METRIC_PENDING_REQUESTS`` in ``contract.METRIC_NAMESPACE`` with
exactly the dimensions the runtime attaches (Deployment, Accelerator, Location; see
``runtime.server.metrics.Dimensions``), summed over all pods of the Deployment; KEDA divides that
sum by the per-replica target. KEDA's operator authenticates with its own Pod Identity
role (``podIdentity.provider: aws``), which may read CloudWatch metrics.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

import cdk8s
from constructs import Construct

from charts.imports.sh import keda
from spec import contract, topology
from spec.config import AppConfig
from spec.topology import Placement

TRIGGER_AUTHENTICATION: Final = "aws-pod-identity"
TRIGGER_TYPE: Final = "aws-cloudwatch"
# The runtime publishes once per interval; a longer window tolerates one late publish.
METRIC_PERIOD_S: Final = contract.METRIC_PUBLISH_INTERVAL_S


@dataclass(frozen=True)
class AutoscalingSettings:
    """Trigger details not in AppConfig.serving, in one place."""

    collection_periods: int = 3  # metricCollectionTime = this many publish intervals
    end_time_offset_s: int = METRIC_PERIOD_S  # skip the period still being filled
    fallback_failures: int = 3  # metric unreadable this many polls: hold the fallback count


def metric_dimensions(placement: Placement, config: AppConfig) -> dict[str, str]:
    """The dimension values the runtime publishes for the pods of ``placement``.

    They come from the environment the serving chart sets: ENV_DEPLOYMENT, the backend's
    device (ENV_DEVICE) and ENV_LOCATION.
    """
    values = {
        contract.DIMENSION_DEPLOYMENT: placement.name,
        contract.DIMENSION_ACCELERATOR: placement.accelerator.device,
        contract.DIMENSION_LOCATION: placement.location.metric_value(config),
    }
    return {name: values[name] for name in contract.METRIC_DIMENSIONS}


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
    """One TriggerAuthentication for the namespace and a ScaledObject per serving Deployment."""

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
                    polling_interval=serving.keda_polling_interval_s,
                    cooldown_period=serving.keda_cooldown_period_s,
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
                            authentication_ref=keda.ScaledObjectSpecTriggersAuthenticationRef(
                                name=TRIGGER_AUTHENTICATION,
                                kind=keda.ScaledObjectSpecTriggersAuthenticationRefKind.TRIGGER_AUTHENTICATION,
                            ),
                            metadata=trigger_metadata(placement, config, settings),
                        )
                    ],
                ),
            )
