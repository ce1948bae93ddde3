"""The publisher's CloudWatch metrics, every heartbeat: ready serving pods and the inventory's size.

Alarms need a data point to fire on: an accelerator with no ready pod publishes 0 (not nothing),
and an empty inventory publishes 0 endpoints. Dimensions: ``ReadyServingPods`` by (Placement =
the serving Kubernetes Deployment, named like its Service; Accelerator; Location), as the servers
publish theirs; ``InventoryEndpoints`` by Cluster = the cluster name (the deployment's name prefix),
the one publisher's scope.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Final

from plan import contract
from runtime.inventory.cluster import PodCount

log = logging.getLogger("edge_diffusion.inventory")

MAX_DATA_PER_CALL: Final = 1000  # PutMetricData's limit of metric data per request


def metric_data(counts: Sequence[PodCount], endpoints: int, cluster: str) -> list[dict[str, Any]]:
    """PutMetricData ``MetricData`` for one heartbeat, under the current and the legacy dimension
    names (``contract.LEGACY_METRIC_DIMENSIONS``: what images before 1.1.0 published)."""
    data: list[dict[str, Any]] = []
    for placement_key in (contract.DIMENSION_PLACEMENT, contract.LEGACY_DIMENSION_DEPLOYMENT):
        data += [
            {
                "MetricName": contract.METRIC_READY_SERVING_PODS,
                "Dimensions": [
                    {"Name": placement_key, "Value": count.service},
                    {"Name": contract.DIMENSION_ACCELERATOR, "Value": count.accelerator},
                    {"Name": contract.DIMENSION_LOCATION, "Value": count.location},
                ],
                "Value": float(count.ready),
                "Unit": "Count",
            }
            for count in counts
        ]
    data += [
        {
            "MetricName": contract.METRIC_INVENTORY_ENDPOINTS,
            "Dimensions": [{"Name": cluster_key, "Value": cluster}],
            "Value": float(endpoints),
            "Unit": "Count",
        }
        for cluster_key in (contract.DIMENSION_CLUSTER, contract.LEGACY_DIMENSION_DEPLOYMENT)
    ]
    return data


class CapacityMetrics:
    """Puts one heartbeat's metrics; a failure is logged, never stops the inventory's heartbeat."""

    def __init__(self, cloudwatch: Any, cluster: str) -> None:
        self._cloudwatch, self._cluster = cloudwatch, cluster

    def publish(self, counts: Sequence[PodCount], endpoints: int) -> bool:
        data = metric_data(counts, endpoints, self._cluster)
        try:
            for start in range(0, len(data), MAX_DATA_PER_CALL):
                self._cloudwatch.put_metric_data(
                    Namespace=contract.METRIC_NAMESPACE, MetricData=data[start : start + MAX_DATA_PER_CALL]
                )
        except Exception as err:  # throttled or denied: the next heartbeat publishes again
            log.warning("PutMetricData failed (next heartbeat retries): %s", err)
            return False
        return True
