"""The metrics one deployment's dashboard and alarms read: their names, dimension values (from
config: ``plan.topology``) and how they are aggregated. Why one module: the alarms and the
dashboard must read exactly what the runtime and Container Insights publish, so both take the
metrics from here.

Metric sources (names and dimensions exactly as published):

* ``EdgeDiffusion`` (``plan.contract``): the serving pods publish ``Requests``,
  ``RejectedRequests``, ``ServerErrors`` and ``PendingRequests`` every interval (zero too),
  ``InferenceLatencyMs`` in intervals that answered requests, and ``ColdStartSeconds`` once per
  pod (in the interval it turned ready), all with
  Placement (the placement's name, which names its Kubernetes Deployment), Accelerator (the
  torch *device*: cuda | neuron | cpu, ``runtime/server/metrics.py``) and Location (Region or
  Local Zone name); the inventory publisher publishes ``ReadyServingPods`` with the same
  Placement and Location but the *accelerator* name (the Service label) as Accelerator, and
  ``InventoryEndpoints`` with Cluster only (the publisher's ``EDGE_DIFFUSION_INVENTORY_CLUSTER``);
  the inventory API (``runtime/inventory/api.py``) writes ``DeviceDemand`` (1 per device call and
  location it would be served from) with Cluster and Location, as EMF lines in its log.
* ``ContainerInsights`` (the amazon-cloudwatch-observability add-on, which installs Container
  Insights with enhanced observability, and its agent's accelerated-compute metrics, on by
  default: https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/Container-Insights-setup-EKS-addon.html,
  aws/amazon-cloudwatch-agent translator/translate/otel/receiver/awscontainerinsight/utils.go).
  The agent's EMF metric declarations (aws/amazon-cloudwatch-agent
  translator/translate/otel/exporter/awsemf/kubernetes.go, listed in
  https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/Container-Insights-metrics-enhanced-EKS.html)
  publish ``replicas_desired``/``replicas_ready`` (deployment metrics), ``pod_status_pending``,
  ``pod_cpu_utilization``, ``pod_gpu_utilization`` (NVIDIA, DCGM) and
  ``pod_neuroncore_utilization`` (Neuron monitor) with the dimension set
  {ClusterName, Namespace, PodName}. PodName is the *workload* name: for a pod owned by a
  ReplicaSet the receiver reports its Kubernetes Deployment's name (awscontainerinsightreceiver
  ``addPodOwnersAndPodName``; pending pods, which no node reports, come from the cluster-level
  collector with the same naming, ``getPendingPodStatusMetrics``).
* Nodes per NodePool: no CloudWatch source. Container Insights' node metrics carry ClusterName,
  NodeName, InstanceId (and InstanceType on the GPU ones), never the ``karpenter.sh/nodepool``
  label, and Karpenter's own metrics are Prometheus only. The dashboard says so and graphs the
  cluster's node count (``cluster_node_count``, ClusterName) instead.
"""

from __future__ import annotations

from typing import Final

import aws_cdk as cdk
from aws_cdk import aws_cloudwatch as cloudwatch

from plan import contract, topology
from plan.config import AppConfig
from plan.topology import Placement

CONTAINER_INSIGHTS_NAMESPACE: Final = contract.CONTAINER_INSIGHTS_NAMESPACE
# Workload metrics carry plan.topology.workload_dimensions (PodName: the Kubernetes Deployment's name for
# its pods, see the module docstring); cluster-wide ones the cluster's alone.
CI_CLUSTER: Final = contract.CONTAINER_INSIGHTS_WORKLOAD_DIMENSIONS[0]
CI_REPLICAS_DESIRED: Final = "replicas_desired"
CI_REPLICAS_READY: Final = "replicas_ready"
CI_POD_PENDING: Final = "pod_status_pending"  # 1 per pending pod, 0 per other pod, each collection
CI_CLUSTER_NODES: Final = "cluster_node_count"


def serving_dimensions(placement: Placement, config: AppConfig) -> dict[str, str]:
    """Dimensions of the serving pods' metrics: Accelerator is the torch device."""
    return {
        contract.DIMENSION_PLACEMENT: placement.name,
        contract.DIMENSION_ACCELERATOR: placement.accelerator.device,
        contract.DIMENSION_LOCATION: placement.location.metric_value(config),
    }


def ready_pods_dimensions(placement: Placement, config: AppConfig) -> dict[str, str]:
    """Dimensions of the publisher's ReadyServingPods: Accelerator is the accelerator name."""
    return {**serving_dimensions(placement, config), contract.DIMENSION_ACCELERATOR: placement.accelerator.name}


def inventory_dimensions(config: AppConfig) -> dict[str, str]:
    """Dimensions of the publisher's InventoryEndpoints: the deployment's cluster."""
    return {contract.DIMENSION_CLUSTER: config.cluster_name}


def serving_metric(
    name: str, placement: Placement, config: AppConfig, statistic: str, period: cdk.Duration, label: str
) -> cloudwatch.Metric:
    return cloudwatch.Metric(
        namespace=contract.METRIC_NAMESPACE,
        metric_name=name,
        dimensions_map=serving_dimensions(placement, config),
        statistic=statistic,
        period=period,
        label=label,
    )


def workload_metric(
    name: str, placement: Placement, config: AppConfig, statistic: str, period: cdk.Duration, label: str
) -> cloudwatch.Metric:
    return cloudwatch.Metric(
        namespace=CONTAINER_INSIGHTS_NAMESPACE,
        metric_name=name,
        dimensions_map=topology.workload_dimensions(placement, config),
        statistic=statistic,
        period=period,
        label=label,
    )


def ready_pods_metric(placement: Placement, config: AppConfig, period: cdk.Duration) -> cloudwatch.Metric:
    return cloudwatch.Metric(
        namespace=contract.METRIC_NAMESPACE,
        metric_name=contract.METRIC_READY_SERVING_PODS,
        dimensions_map=ready_pods_dimensions(placement, config),
        statistic="Maximum",
        period=period,
        label="ready pods (inventory)",
    )


def error_rate_expression(placement: Placement, config: AppConfig, period: cdk.Duration) -> cloudwatch.MathExpression:
    """5xx as a percent of the requests answered; 0 when there were none (no traffic is no error)."""
    return cloudwatch.MathExpression(
        expression="IF(requests > 0, 100 * errors / requests, 0)",
        using_metrics={
            "requests": serving_metric(contract.METRIC_REQUESTS, placement, config, "Sum", period, "requests"),
            "errors": serving_metric(contract.METRIC_SERVER_ERRORS, placement, config, "Sum", period, "5xx"),
        },
        period=period,
        label="5xx % of requests",
    )


def demand_metric(
    location: str, config: AppConfig, period: cdk.Duration, label: str = "device demand"
) -> cloudwatch.Metric:
    """Device calls that would be served from ``location`` in each period (Sum: one per call)."""
    return cloudwatch.Metric(
        namespace=contract.METRIC_NAMESPACE,
        metric_name=contract.METRIC_DEVICE_DEMAND,
        dimensions_map=topology.demand_dimensions(location, config),
        statistic="Sum",
        period=period,
        label=label,
    )


def demand_locations(config: AppConfig) -> tuple[str, ...]:
    """Where demand is recorded: the Region and each Local Zone with serving placements."""
    return (config.region, *config.serving_local_zones)


def sleeps(placement: Placement, config: AppConfig) -> bool:
    """Whether the placement scales to zero when idle (its minReplicas is 0): no pod is then a state."""
    return config.serving.min_replicas_of(placement.node_pool_name) == 0


# The state of a placement at minReplicas 0, from its ready pods and the demand for its location
# (``ready`` and ``demand`` in the expressions): asleep is no pod and no demand, by design; waking is
# demand with no pod yet; serving is a ready pod. Missing demand is none; missing ready pods (the
# publisher down) gives no state rather than a wrong one.
ASLEEP_EXPRESSION: Final = "IF(ready < 1 AND FILL(demand, 0) == 0, 1, 0)"
WAKING_EXPRESSION: Final = "IF(ready < 1 AND FILL(demand, 0) > 0, 1, 0)"
SERVING_EXPRESSION: Final = "IF(ready >= 1, 1, 0)"
ASLEEP_LABEL: Final = "asleep (0 pods, by design)"
WAKING_LABEL: Final = "waking (demanded, 0 pods)"
SERVING_LABEL: Final = "serving (a ready pod)"


def state_expressions(placement: Placement, config: AppConfig, period: cdk.Duration) -> list[cloudwatch.MathExpression]:
    """Asleep, waking and serving as 0/1 series of a placement at minReplicas 0."""
    using = {
        "ready": ready_pods_metric(placement, config, period),
        "demand": demand_metric(placement.location.metric_value(config), config, period),
    }
    return [
        cloudwatch.MathExpression(expression=expression, using_metrics=using, period=period, label=label)
        for expression, label in (
            (ASLEEP_EXPRESSION, ASLEEP_LABEL),
            (WAKING_EXPRESSION, WAKING_LABEL),
            (SERVING_EXPRESSION, SERVING_LABEL),
        )
    ]
