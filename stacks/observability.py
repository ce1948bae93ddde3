"""ObservabilityStack: one deployment's CloudWatch dashboard, its alarms and the topic they notify.

Everything reads metrics by name and dimension values computed from config (``plan.topology``):
no resource of another stack is referenced, so the stack deploys beside the deployment's others
in any order. Three constructs, one concern each:

* :class:`AlarmTopic` - an SNS topic encrypted with its own KMS key, which CloudWatch alarms of
  this deployment may use, and the email subscriptions of ``alarms.emails``;
* :class:`ServingAlarms` - per placement (accelerator x location): p99 latency over the SLO,
  5xx share of requests, no ready pod, pods pending; and an empty endpoint inventory;
* :class:`ServingDashboard` - per placement: requests/s, p50/p99 latency, pending requests,
  429s and 5xx, desired vs ready replicas, ready pods as the inventory sees them, new pods' cold
  start, device utilization; and the deployment's inventory and node count.

Metric sources (names and dimensions exactly as published):

* ``EdgeDiffusion`` (``plan.contract``): the serving pods publish ``Requests``,
  ``RejectedRequests``, ``ServerErrors`` and ``PendingRequests`` every interval (zero too),
  ``InferenceLatencyMs`` in intervals that answered requests, and ``ColdStartSeconds`` once per
  pod (in the interval it turned ready), all with
  Deployment (the Kubernetes Deployment's name), Accelerator (the torch *device*: cuda | neuron
  | cpu, ``runtime/server/metrics.py``) and Location (Region or Local Zone name); the inventory
  publisher publishes ``ReadyServingPods`` with the same Deployment and Location but the
  *accelerator* name (the Service label) as Accelerator, and ``InventoryEndpoints`` with
  Deployment only (the cluster name: the publisher's ``EDGE_DIFFUSION_INVENTORY_CLUSTER``).
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
  ReplicaSet the receiver reports its Deployment's name (awscontainerinsightreceiver
  ``addPodOwnersAndPodName``; pending pods, which no node reports, come from the cluster-level
  collector with the same naming, ``getPendingPodStatusMetrics``).
* Nodes per NodePool: no CloudWatch source. Container Insights' node metrics carry ClusterName,
  NodeName, InstanceId (and InstanceType on the GPU ones), never the ``karpenter.sh/nodepool``
  label, and Karpenter's own metrics are Prometheus only. The dashboard says so and graphs the
  cluster's node count (``cluster_node_count``, ClusterName) instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import aws_cdk as cdk
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as cloudwatch_actions
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subscriptions
from constructs import Construct

from plan import contract, topology
from plan.config import AppConfig
from plan.topology import Placement

CONTAINER_INSIGHTS_NAMESPACE: Final = "ContainerInsights"
CI_CLUSTER: Final = "ClusterName"
CI_NAMESPACE: Final = "Namespace"
CI_WORKLOAD: Final = "PodName"  # the Deployment's name for a Deployment's pods (see the module docstring)
CI_REPLICAS_DESIRED: Final = "replicas_desired"
CI_REPLICAS_READY: Final = "replicas_ready"
CI_POD_PENDING: Final = "pod_status_pending"  # 1 per pending pod, 0 per other pod, each collection
CI_CLUSTER_NODES: Final = "cluster_node_count"
# Device utilization (percent) of a placement's pods, by accelerator (plan.accelerators).
DEVICE_UTILIZATION: Final[Mapping[str, str]] = {
    "nvidia": "pod_gpu_utilization",
    "neuron": "pod_neuroncore_utilization",
    "cpu": "pod_cpu_utilization",
}
NODES_PER_NODEPOOL_NOTE: Final = (
    "**Nodes per NodePool:** no CloudWatch source. Container Insights node metrics carry "
    "ClusterName, NodeName and InstanceId but not the `karpenter.sh/nodepool` label, and Karpenter "
    "publishes Prometheus metrics only. Use `kubectl get nodes -L karpenter.sh/nodepool`; the graph "
    "shows the cluster's node count."
)


@dataclass(frozen=True)
class ObservabilityProps:
    """Periods and evaluation windows of the dashboard and alarms; defaults in one place."""

    period_s: int = contract.METRIC_PUBLISH_INTERVAL_S  # the pods publish once a minute
    # p99 latency and 5xx: 3 of the last 5 minutes over the threshold (a single slow batch is not an outage).
    latency_evaluation_periods: int = 5
    latency_datapoints_to_alarm: int = 3
    errors_evaluation_periods: int = 5
    errors_datapoints_to_alarm: int = 3
    # No ready pod / empty inventory: three minutes in a row (the publisher reports every 15 s).
    ready_evaluation_periods: int = 3
    inventory_evaluation_periods: int = 3
    dashboard_hours: int = 3
    key_pending_window_days: int = 7


# --- what the runtime and Container Insights publish, per placement ---------------------------


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


def workload_dimensions(placement: Placement, config: AppConfig) -> dict[str, str]:
    """Container Insights' workload dimension set for the placement's Deployment."""
    return {CI_CLUSTER: config.cluster_name, CI_NAMESPACE: topology.NAMESPACE, CI_WORKLOAD: placement.name}


def alarm_prefix(config: AppConfig) -> str:
    """Every alarm of the deployment is named ``<cluster name>-...`` (the key policy relies on it)."""
    return f"{config.cluster_name}-"


def alarm_name(config: AppConfig, placement: Placement | None, what: str) -> str:
    return f"{alarm_prefix(config)}{placement.name + '-' if placement else ''}{what}"


def dashboard_name(config: AppConfig) -> str:
    return f"{config.cluster_name}-serving"


def topic_name(config: AppConfig) -> str:
    return f"{config.cluster_name}-alarms"


def _serving(
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


def _workload(
    name: str, placement: Placement, config: AppConfig, statistic: str, period: cdk.Duration, label: str
) -> cloudwatch.Metric:
    return cloudwatch.Metric(
        namespace=CONTAINER_INSIGHTS_NAMESPACE,
        metric_name=name,
        dimensions_map=workload_dimensions(placement, config),
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
            "requests": _serving(contract.METRIC_REQUESTS, placement, config, "Sum", period, "requests"),
            "errors": _serving(contract.METRIC_SERVER_ERRORS, placement, config, "Sum", period, "5xx"),
        },
        period=period,
        label="5xx % of requests",
    )


# --- the constructs -----------------------------------------------------------------------------


class AlarmTopic(Construct):
    """The deployment's notification topic, KMS-encrypted, with the configured email subscriptions.

    CloudWatch publishes to an encrypted topic only if the key policy lets the
    ``cloudwatch.amazonaws.com`` principal use the key (kms:Decrypt, kms:GenerateDataKey*:
    https://docs.aws.amazon.com/sns/latest/dg/sns-key-management.html#compatibility-with-aws-services);
    both the key and the topic grants are limited to this account's alarms named after the
    deployment (aws:SourceAccount, aws:SourceArn) against the confused deputy.
    """

    def __init__(self, scope: Construct, construct_id: str, *, config: AppConfig, props: ObservabilityProps) -> None:
        super().__init__(scope, construct_id)
        stack = cdk.Stack.of(self)
        alarms_arn = f"arn:{stack.partition}:cloudwatch:{config.region}:{config.account}:alarm:{alarm_prefix(config)}*"
        conditions = {
            "StringEquals": {"aws:SourceAccount": config.account},
            "ArnLike": {"aws:SourceArn": alarms_arn},
        }
        self.key = kms.Key(
            self,
            "Key",
            description=f"Alarm notifications of {config.cluster_name}",
            enable_key_rotation=True,
            pending_window=cdk.Duration.days(props.key_pending_window_days),
            removal_policy=cdk.RemovalPolicy.DESTROY,  # encrypts only this stack's topic, deleted with it
        )
        self.key.add_to_resource_policy(
            iam.PolicyStatement(
                sid="CloudWatchAlarmsPublish",
                principals=[iam.ServicePrincipal("cloudwatch.amazonaws.com")],
                actions=["kms:Decrypt", "kms:GenerateDataKey*"],
                resources=["*"],  # in a key policy "*" is this key
                conditions=conditions,
            )
        )
        self.topic = sns.Topic(
            self,
            "Topic",
            topic_name=topic_name(config),
            display_name=f"Edge Diffusion {config.cluster_name} alarms",
            master_key=self.key,
            enforce_ssl=True,
        )
        self.topic.add_to_resource_policy(
            iam.PolicyStatement(
                sid="CloudWatchAlarmsPublish",
                principals=[iam.ServicePrincipal("cloudwatch.amazonaws.com")],
                actions=["sns:Publish"],
                resources=[self.topic.topic_arn],
                conditions=conditions,
            )
        )
        for email in config.alarms.emails:
            self.topic.add_subscription(subscriptions.EmailSubscription(email))


class ServingAlarms(Construct):
    """The alarms of one deployment, each notifying the topic when it fires and when it clears."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: AppConfig,
        topic: sns.ITopic,
        props: ObservabilityProps,
    ) -> None:
        super().__init__(scope, construct_id)
        period = cdk.Duration.seconds(props.period_s)
        slo = config.alarms
        self.by_placement: dict[str, list[cloudwatch.Alarm]] = {}
        action = cloudwatch_actions.SnsAction(topic)
        for placement in topology.placements(config):
            where = f"{placement.accelerator.name} in {placement.location.metric_value(config)}"
            prefix = _construct_id(placement.name)
            alarms = [
                cloudwatch.Alarm(
                    self,
                    f"{prefix}Latency",
                    alarm_name=alarm_name(config, placement, "p99-latency"),
                    alarm_description=(
                        f"p99 inference latency of {where} over the {slo.latency_p99_slo_ms} ms SLO "
                        f"in {props.latency_datapoints_to_alarm} of {props.latency_evaluation_periods} minutes."
                    ),
                    metric=_serving(
                        contract.METRIC_INFERENCE_LATENCY_MS, placement, config, "p99", period, "p99 latency"
                    ),
                    threshold=slo.latency_p99_slo_ms,
                    comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
                    evaluation_periods=props.latency_evaluation_periods,
                    datapoints_to_alarm=props.latency_datapoints_to_alarm,
                    # No requests, no latency datapoint: idle is not slow.
                    treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
                ),
                cloudwatch.Alarm(
                    self,
                    f"{prefix}ServerErrors",
                    alarm_name=alarm_name(config, placement, "5xx-rate"),
                    alarm_description=(
                        f"5xx answers of {where} over {slo.server_error_percent} % of its requests "
                        f"in {props.errors_datapoints_to_alarm} of {props.errors_evaluation_periods} minutes."
                    ),
                    metric=error_rate_expression(placement, config, period),
                    threshold=slo.server_error_percent,
                    comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
                    evaluation_periods=props.errors_evaluation_periods,
                    datapoints_to_alarm=props.errors_datapoints_to_alarm,
                    treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
                ),
                cloudwatch.Alarm(
                    self,
                    f"{prefix}NoReadyPod",
                    alarm_name=alarm_name(config, placement, "no-ready-pod"),
                    alarm_description=(
                        f"No ready serving pod of {where} for {props.ready_evaluation_periods} minutes: devices "
                        "cannot use this location. Missing data counts: the publisher stops reporting a "
                        "location when nothing serves there, and when the publisher itself is down."
                    ),
                    metric=ready_pods_metric(placement, config, period),
                    threshold=1,
                    comparison_operator=cloudwatch.ComparisonOperator.LESS_THAN_THRESHOLD,
                    evaluation_periods=props.ready_evaluation_periods,
                    treat_missing_data=cloudwatch.TreatMissingData.BREACHING,
                ),
                cloudwatch.Alarm(
                    self,
                    f"{prefix}PodsPending",
                    alarm_name=alarm_name(config, placement, "pods-pending"),
                    alarm_description=(
                        f"A pod of {where} pending for {slo.pending_pods_minutes} minutes: no capacity (NodePool "
                        "limits, instance quota, the Local Zone's offerings) or an image that cannot be pulled."
                    ),
                    metric=_workload(CI_POD_PENDING, placement, config, "Maximum", period, "pending pods"),
                    threshold=1,
                    comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
                    evaluation_periods=slo.pending_pods_minutes,
                    # Container Insights reports pods that exist; no pod at all is the no-ready-pod alarm's case.
                    treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
                ),
            ]
            self.by_placement[placement.name] = alarms
        self.inventory_empty = cloudwatch.Alarm(
            self,
            "InventoryEmpty",
            alarm_name=alarm_name(config, None, "inventory-empty"),
            alarm_description=(
                f"The endpoint inventory of {config.cluster_name} lists no endpoint for "
                f"{props.inventory_evaluation_periods} minutes: devices find nothing to call. Missing data "
                "counts: the publisher is not running."
            ),
            metric=cloudwatch.Metric(
                namespace=contract.METRIC_NAMESPACE,
                metric_name=contract.METRIC_INVENTORY_ENDPOINTS,
                dimensions_map=inventory_dimensions(config),
                statistic="Maximum",
                period=period,
            ),
            threshold=1,
            comparison_operator=cloudwatch.ComparisonOperator.LESS_THAN_THRESHOLD,
            evaluation_periods=props.inventory_evaluation_periods,
            treat_missing_data=cloudwatch.TreatMissingData.BREACHING,
        )
        for alarm in self.all:
            alarm.add_alarm_action(action)
            alarm.add_ok_action(action)

    @property
    def all(self) -> list[cloudwatch.Alarm]:
        return [*(a for alarms in self.by_placement.values() for a in alarms), self.inventory_empty]


class ServingDashboard(Construct):
    """One dashboard per deployment: a row of graphs per placement, then the deployment's own."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: AppConfig,
        alarms: ServingAlarms,
        props: ObservabilityProps,
    ) -> None:
        super().__init__(scope, construct_id)
        period = cdk.Duration.seconds(props.period_s)
        rows: list[list[cloudwatch.IWidget]] = [
            [
                cloudwatch.AlarmStatusWidget(title="Alarms", alarms=alarms.all, width=18, height=4),
                cloudwatch.TextWidget(markdown=NODES_PER_NODEPOOL_NOTE, width=6, height=4),
            ],
            [
                cloudwatch.GraphWidget(
                    title="Endpoints in the inventory",
                    left=[
                        cloudwatch.Metric(
                            namespace=contract.METRIC_NAMESPACE,
                            metric_name=contract.METRIC_INVENTORY_ENDPOINTS,
                            dimensions_map=inventory_dimensions(config),
                            statistic="Maximum",
                            period=period,
                            label="endpoints",
                        )
                    ],
                    width=12,
                ),
                cloudwatch.GraphWidget(
                    title="Nodes in the cluster (all NodePools)",
                    left=[
                        cloudwatch.Metric(
                            namespace=CONTAINER_INSIGHTS_NAMESPACE,
                            metric_name=CI_CLUSTER_NODES,
                            dimensions_map={CI_CLUSTER: config.cluster_name},
                            statistic="Maximum",
                            period=period,
                            label="nodes",
                        )
                    ],
                    width=12,
                ),
            ],
        ]
        for placement in topology.placements(config):
            rows.append(
                [
                    cloudwatch.TextWidget(
                        markdown=f"## {placement.accelerator.name} in {placement.location.metric_value(config)} "
                        f"(`{placement.name}`)",
                        width=24,
                        height=1,
                    )
                ]
            )
            rows.append(self._placement_row(placement, config, period))
        self.dashboard = cloudwatch.Dashboard(
            self,
            "Dashboard",
            dashboard_name=dashboard_name(config),
            default_interval=cdk.Duration.hours(props.dashboard_hours),
            widgets=rows,
        )

    @staticmethod
    def _placement_row(placement: Placement, config: AppConfig, period: cdk.Duration) -> list[cloudwatch.IWidget]:
        requests = _serving(contract.METRIC_REQUESTS, placement, config, "Sum", period, "requests")
        return [
            cloudwatch.GraphWidget(
                title="Requests/s",
                left=[
                    cloudwatch.MathExpression(
                        expression="requests / PERIOD(requests)",
                        using_metrics={"requests": requests},
                        period=period,
                        label="requests/s",
                    )
                ],
                width=4,
            ),
            cloudwatch.GraphWidget(
                title="Inference latency (ms)",
                left=[
                    _serving(contract.METRIC_INFERENCE_LATENCY_MS, placement, config, "p50", period, "p50"),
                    _serving(contract.METRIC_INFERENCE_LATENCY_MS, placement, config, "p99", period, "p99"),
                ],
                left_annotations=[
                    cloudwatch.HorizontalAnnotation(value=config.alarms.latency_p99_slo_ms, label="p99 SLO")
                ],
                width=4,
            ),
            cloudwatch.GraphWidget(
                title="Pending requests",
                left=[
                    _serving(contract.METRIC_PENDING_REQUESTS, placement, config, "Sum", period, "pending"),
                ],
                width=4,
            ),
            cloudwatch.GraphWidget(
                title="429 and 5xx",
                left=[
                    _serving(contract.METRIC_REJECTED_REQUESTS, placement, config, "Sum", period, "429 queue full"),
                    _serving(contract.METRIC_SERVER_ERRORS, placement, config, "Sum", period, "5xx"),
                ],
                width=4,
            ),
            cloudwatch.GraphWidget(
                title="Replicas",
                left=[
                    _workload(CI_REPLICAS_DESIRED, placement, config, "Maximum", period, "desired"),
                    _workload(CI_REPLICAS_READY, placement, config, "Maximum", period, "ready"),
                    ready_pods_metric(placement, config, period),
                    _workload(CI_POD_PENDING, placement, config, "Sum", period, "pending pods"),
                ],
                # How long a new pod took to turn ready (each pod publishes it once): scale-out lag.
                right=[
                    _serving(contract.METRIC_COLD_START_SECONDS, placement, config, "Maximum", period, "cold start (s)")
                ],
                width=4,
            ),
            cloudwatch.GraphWidget(
                title="Device utilization (%)",
                left=[
                    _workload(
                        DEVICE_UTILIZATION[placement.accelerator.name],
                        placement,
                        config,
                        "Average",
                        period,
                        DEVICE_UTILIZATION[placement.accelerator.name],
                    )
                ],
                width=4,
            ),
        ]


class ObservabilityStack(cdk.Stack):
    """``EdgeDiffusion-<deployment>-Observability``: the topic, the alarms and the dashboard."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: AppConfig,
        props: ObservabilityProps | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(scope, construct_id, **kwargs)
        props = props or ObservabilityProps()
        self.config = config
        self.notifications = AlarmTopic(self, "Notifications", config=config, props=props)
        self.alarms = ServingAlarms(self, "Alarms", config=config, topic=self.notifications.topic, props=props)
        self.dashboard = ServingDashboard(self, "Dashboard", config=config, alarms=self.alarms, props=props)
        cdk.CfnOutput(self, "DashboardName", value=dashboard_name(config))
        cdk.CfnOutput(self, "AlarmTopicArn", value=self.notifications.topic.topic_arn)


def _construct_id(name: str) -> str:
    """``stable-diffusion-nvidia-us-west-2-lax-1a`` -> ``StableDiffusionNvidiaUsWest2Lax1a``."""
    return "".join(part[:1].upper() + part[1:] for part in name.split("-"))
