"""The dashboard of one deployment: the deployment's inventory, node count and device demand per
location, then a row of graphs per placement (requests/s, p50/p99 latency, pending requests, 429s
and 5xx, desired vs ready replicas, cold start, device utilization) and, for a placement at
minReplicas 0, its state (asleep by design, waking, serving) beside the demand that wakes it: no
pod while nobody asks is a state there, not an alarm. Why it says, not graphs, nodes per NodePool: no
CloudWatch metric carries the NodePool (:data:`NODES_PER_NODEPOOL_NOTE`)."""

from __future__ import annotations

from typing import Final

import aws_cdk as cdk
from aws_cdk import aws_cloudwatch as cloudwatch
from constructs import Construct

from plan import contract, topology
from plan.config import AppConfig
from plan.topology import Placement
from stacks.observability.alarms import ServingAlarms
from stacks.observability.metrics import (
    CI_CLUSTER,
    CI_CLUSTER_NODES,
    CI_POD_PENDING,
    CI_REPLICAS_DESIRED,
    CI_REPLICAS_READY,
    CONTAINER_INSIGHTS_NAMESPACE,
    demand_locations,
    demand_metric,
    inventory_dimensions,
    ready_pods_metric,
    serving_metric,
    sleeps,
    state_expressions,
    workload_metric,
)
from stacks.observability.props import ObservabilityProps

NODES_PER_NODEPOOL_NOTE: Final = (
    "**Nodes per NodePool:** no CloudWatch source. Container Insights node metrics carry "
    "ClusterName, NodeName and InstanceId but not the `karpenter.sh/nodepool` label, and Karpenter "
    "publishes Prometheus metrics only. Use `kubectl get nodes -L karpenter.sh/nodepool`; the graph "
    "shows the cluster's node count."
)


def dashboard_name(config: AppConfig) -> str:
    return f"{config.cluster_name}-serving"


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
                    width=8,
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
                    width=8,
                ),
                cloudwatch.GraphWidget(
                    title="Device demand per location (inventory calls)",
                    left=[demand_metric(location, config, period, location) for location in demand_locations(config)],
                    width=8,
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
            if sleeps(placement, config):
                rows.append(self._sleep_row(placement, config, period))
        self.dashboard = cloudwatch.Dashboard(
            self,
            "Dashboard",
            dashboard_name=dashboard_name(config),
            default_interval=cdk.Duration.hours(props.dashboard_hours),
            widgets=rows,
        )

    @staticmethod
    def _sleep_row(placement: Placement, config: AppConfig, period: cdk.Duration) -> list[cloudwatch.IWidget]:
        """A placement at minReplicas 0: its state as 0/1 lines, and the demand that wakes it."""
        location = placement.location.metric_value(config)
        return [
            cloudwatch.GraphWidget(
                title="State (minReplicas 0: sleeps when idle, by design)",
                left=list(state_expressions(placement, config, period)),
                left_y_axis=cloudwatch.YAxisProps(min=0, max=1, show_units=False),
                stacked=True,
                width=12,
            ),
            cloudwatch.GraphWidget(
                title=f"Device demand in {location} and ready pods",
                left=[demand_metric(location, config, period)],
                right=[ready_pods_metric(placement, config, period)],
                width=12,
            ),
        ]

    @staticmethod
    def _placement_row(placement: Placement, config: AppConfig, period: cdk.Duration) -> list[cloudwatch.IWidget]:
        requests = serving_metric(contract.METRIC_REQUESTS, placement, config, "Sum", period, "requests")
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
                    serving_metric(contract.METRIC_INFERENCE_LATENCY_MS, placement, config, "p50", period, "p50"),
                    serving_metric(contract.METRIC_INFERENCE_LATENCY_MS, placement, config, "p99", period, "p99"),
                ],
                left_annotations=[
                    cloudwatch.HorizontalAnnotation(value=config.alarms.latency_p99_slo_ms, label="p99 SLO")
                ],
                width=4,
            ),
            cloudwatch.GraphWidget(
                title="Pending requests",
                left=[
                    serving_metric(contract.METRIC_PENDING_REQUESTS, placement, config, "Sum", period, "pending"),
                ],
                width=4,
            ),
            cloudwatch.GraphWidget(
                title="429 and 5xx",
                left=[
                    serving_metric(
                        contract.METRIC_REJECTED_REQUESTS, placement, config, "Sum", period, "429 queue full"
                    ),
                    serving_metric(contract.METRIC_SERVER_ERRORS, placement, config, "Sum", period, "5xx"),
                ],
                width=4,
            ),
            cloudwatch.GraphWidget(
                title="Replicas",
                left=[
                    workload_metric(CI_REPLICAS_DESIRED, placement, config, "Maximum", period, "desired"),
                    workload_metric(CI_REPLICAS_READY, placement, config, "Maximum", period, "ready"),
                    ready_pods_metric(placement, config, period),
                    workload_metric(CI_POD_PENDING, placement, config, "Sum", period, "pending pods"),
                ],
                # How long a new pod took to turn ready (each pod publishes it once): scale-out lag.
                right=[
                    serving_metric(
                        contract.METRIC_COLD_START_SECONDS, placement, config, "Maximum", period, "cold start (s)"
                    )
                ],
                width=4,
            ),
            cloudwatch.GraphWidget(
                title="Device utilization (%)",
                left=[
                    workload_metric(
                        placement.accelerator.utilization_metric,
                        placement,
                        config,
                        "Average",
                        period,
                        placement.accelerator.utilization_metric,
                    )
                ],
                width=4,
            ),
        ]
