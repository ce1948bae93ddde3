"""The alarms of one deployment and the encrypted topic they notify. Why together: the topic's
key and access policies admit exactly this deployment's alarms, by the name prefix both share
(:func:`alarm_prefix`)."""

from __future__ import annotations

from typing import Final

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
from stacks.observability.metrics import (
    CI_POD_PENDING,
    WAKING_EXPRESSION,
    WAKING_LABEL,
    demand_metric,
    error_rate_expression,
    inventory_dimensions,
    ready_pods_metric,
    serving_metric,
    sleeps,
    workload_metric,
)
from stacks.observability.props import ObservabilityProps

# A placement at minReplicas 0 alarms when demanded and not waking: demand and no ready pod in each
# of WAKE_EVALUATION_PERIODS windows of WAKE_WINDOW_S. A window is longer than a cold start on a new
# node (445 s, docs/scaling.md section 2) plus the demand's way to KEDA (EMF extraction, the
# trigger's collection window and polling: a few minutes).
WAKE_WINDOW_S: Final = 900
WAKE_EVALUATION_PERIODS: Final = 2


def alarm_prefix(config: AppConfig) -> str:
    """Every alarm of the deployment is named ``<cluster name>-...`` (the key policy relies on it)."""
    return f"{config.cluster_name}-"


def alarm_name(config: AppConfig, placement: Placement | None, what: str) -> str:
    return f"{alarm_prefix(config)}{placement.name + '-' if placement else ''}{what}"


def topic_name(config: AppConfig) -> str:
    return f"{config.cluster_name}-alarms"


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
                    metric=serving_metric(
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
                (
                    self._not_waking(placement, config, where, prefix)
                    if sleeps(placement, config)
                    else self._no_ready_pod(placement, config, props, where, prefix, period)
                ),
                cloudwatch.Alarm(
                    self,
                    f"{prefix}PodsPending",
                    alarm_name=alarm_name(config, placement, "pods-pending"),
                    alarm_description=(
                        f"A pod of {where} pending for {slo.pending_pods_minutes} minutes: no capacity (NodePool "
                        "limits, instance quota, the Local Zone's offerings) or an image that cannot be pulled."
                    ),
                    metric=workload_metric(CI_POD_PENDING, placement, config, "Maximum", period, "pending pods"),
                    threshold=1,
                    comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
                    evaluation_periods=slo.pending_pods_minutes,
                    # Container Insights reports pods that exist; no pod at all is the no-ready-pod
                    # (or, asleep by design, the demanded-not-waking) alarm's case.
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

    def _no_ready_pod(
        self,
        placement: Placement,
        config: AppConfig,
        props: ObservabilityProps,
        where: str,
        prefix: str,
        period: cdk.Duration,
    ) -> cloudwatch.Alarm:
        """A placement that always serves (minReplicas >= 1) without a ready pod: an outage."""
        return cloudwatch.Alarm(
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
        )

    def _not_waking(self, placement: Placement, config: AppConfig, where: str, prefix: str) -> cloudwatch.Alarm:
        """A placement at minReplicas 0 has no pod by design while nobody asks for it; it fails
        only when devices ask (DeviceDemand for its location) and no pod turns ready for longer
        than a cold start: every one of :data:`WAKE_EVALUATION_PERIODS` windows of :data:`WAKE_WINDOW_S`
        has demand and not one ready pod (the demand of the first may come at its end, so the
        pod has had at least one whole window, longer than a cold start, to turn ready)."""
        window = cdk.Duration.seconds(WAKE_WINDOW_S)
        minutes = WAKE_WINDOW_S * WAKE_EVALUATION_PERIODS // 60
        return cloudwatch.Alarm(
            self,
            f"{prefix}NotWaking",
            alarm_name=alarm_name(config, placement, "demanded-not-waking"),
            alarm_description=(
                f"Devices asked for {where} (minReplicas 0: it sleeps when idle) and no pod of it was ready "
                f"in {minutes} minutes, longer than a cold start: KEDA's demand trigger, Karpenter or the pods "
                "do not wake it; devices are served by the Region meanwhile. No data is no verdict: no demand "
                "recorded wakes nothing, and the publisher's own outage is the inventory-empty alarm's."
            ),
            metric=cloudwatch.MathExpression(
                expression=WAKING_EXPRESSION,
                using_metrics={
                    "ready": ready_pods_metric(placement, config, window),
                    "demand": demand_metric(placement.location.metric_value(config), config, window),
                },
                period=window,
                label=WAKING_LABEL,
            ),
            threshold=1,
            comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
            evaluation_periods=WAKE_EVALUATION_PERIODS,
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
        )

    @property
    def all(self) -> list[cloudwatch.Alarm]:
        return [*(a for alarms in self.by_placement.values() for a in alarms), self.inventory_empty]


def _construct_id(name: str) -> str:
    """``stable-diffusion-nvidia-us-west-2-lax-1a`` -> ``StableDiffusionNvidiaUsWest2Lax1a``."""
    return "".join(part[:1].upper() + part[1:] for part in name.split("-"))
