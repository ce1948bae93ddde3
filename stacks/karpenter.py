"""Karpenter's AWS side: node role, controller permissions, interruption queue and rules.

Source: Karpenter's getting-started CloudFormation template for v1.14
(https://github.com/aws/karpenter-provider-aws, website/content/en/v1.14/getting-started/
getting-started-with-karpenter/cloudformation.yaml; a copy is in
../shared/reference/karpenter/cloudformation.yaml). The controller statements below are that
template's six managed policies, statement for statement, with the same Sids, resources and
conditions and the template's own ``${...}`` placeholders, so a reviewer can diff them against
upstream (tests/test_cluster.py does exactly that). Differences from upstream, on purpose:

* the controller role is trusted by EKS Pod Identity, not IRSA;
* the queue policy admits ``events.amazonaws.com`` per rule ARN (``aws:SourceArn``) instead
  of any EventBridge rule or SQS, and the queue's name comes from ``spec.naming``;
* the node role's name comes from ``spec.naming`` (the EC2NodeClass refers to it by name).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, cast

import aws_cdk as cdk
from aws_cdk import aws_eks_v2 as eks
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from spec import naming
from spec.config import AppConfig
from stacks import nag

Condition = Mapping[str, Mapping[str, str | tuple[str, ...]]]


@dataclass(frozen=True)
class Statement:
    """One Allow statement in upstream's shape; strings may hold upstream ``${...}`` placeholders."""

    sid: str
    actions: tuple[str, ...]
    resources: tuple[str, ...]
    condition: Condition = field(default_factory=dict)
    # Why a resource has a wildcard (and what scopes it instead): the cdk-nag acknowledgement.
    why_wildcard: str = ""

    def __post_init__(self) -> None:
        if any("*" in r for r in self.resources) and not self.why_wildcard:
            raise ValueError(f"statement {self.sid} has a wildcard resource but no why_wildcard")

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "Sid": self.sid,
            "Effect": "Allow",
            "Action": list(self.actions),
            "Resource": list(self.resources),
        }
        if self.condition:
            doc["Condition"] = {
                op: {key: list(value) if isinstance(value, tuple) else value for key, value in body.items()}
                for op, body in self.condition.items()
            }
        return doc


_EC2: Final = "arn:${AWS::Partition}:ec2:${AWS::Region}"
_INSTANCE_PROFILES: Final = "arn:${AWS::Partition}:iam::${AWS::AccountId}:instance-profile/*"
_CLUSTER_OWNED: Final = "kubernetes.io/cluster/${ClusterName}"
_TAGGED_RESOURCES: Final = tuple(
    f"{_EC2}:*:{kind}/*"
    for kind in ("fleet", "instance", "volume", "network-interface", "launch-template", "spot-instances-request")
)

# Upstream managed policy name -> its statements, in upstream order.
KARPENTER_CONTROLLER_POLICIES: Final[Mapping[str, tuple[Statement, ...]]] = {
    "NodeLifecyclePolicy": (
        Statement(
            "AllowScopedEC2InstanceAccessActions",
            ("ec2:RunInstances", "ec2:CreateFleet"),
            (
                "arn:${AWS::Partition}:ec2:${AWS::Region}::image/*",
                "arn:${AWS::Partition}:ec2:${AWS::Region}::snapshot/*",
                f"{_EC2}:*:security-group/*",
                f"{_EC2}:*:subnet/*",
                f"{_EC2}:*:capacity-reservation/*",
                f"{_EC2}:*:placement-group/*",
            ),
            why_wildcard=(
                "AMIs, snapshots, security groups, subnets, capacity reservations and placement groups are chosen at "
                "launch time by the EC2NodeClass selectors; upstream limits them to this Region, and the instance "
                "side of the same RunInstances/CreateFleet call is tag-scoped by the statements below"
            ),
        ),
        Statement(
            "AllowScopedEC2LaunchTemplateAccessActions",
            ("ec2:RunInstances", "ec2:CreateFleet"),
            (f"{_EC2}:*:launch-template/*",),
            {
                "StringEquals": {f"aws:ResourceTag/{_CLUSTER_OWNED}": "owned"},
                "StringLike": {"aws:ResourceTag/karpenter.sh/nodepool": "*"},
            },
            why_wildcard="only launch templates tagged as owned by this cluster and created for a NodePool",
        ),
        Statement(
            "AllowScopedEC2InstanceActionsWithTags",
            ("ec2:RunInstances", "ec2:CreateFleet", "ec2:CreateLaunchTemplate"),
            _TAGGED_RESOURCES,
            {
                "StringEquals": {
                    f"aws:RequestTag/{_CLUSTER_OWNED}": "owned",
                    "aws:RequestTag/eks:eks-cluster-name": "${ClusterName}",
                },
                "StringLike": {"aws:RequestTag/karpenter.sh/nodepool": "*"},
            },
            why_wildcard=(
                "resources a RunInstances/CreateFleet/CreateLaunchTemplate call creates have no id before the call; "
                "allowed only when the request tags them as owned by this cluster and a NodePool"
            ),
        ),
        Statement(
            "AllowScopedResourceCreationTagging",
            ("ec2:CreateTags",),
            _TAGGED_RESOURCES,
            {
                "StringEquals": {
                    f"aws:RequestTag/{_CLUSTER_OWNED}": "owned",
                    "aws:RequestTag/eks:eks-cluster-name": "${ClusterName}",
                    "ec2:CreateAction": ("RunInstances", "CreateFleet", "CreateLaunchTemplate"),
                },
                "StringLike": {"aws:RequestTag/karpenter.sh/nodepool": "*"},
            },
            why_wildcard="tagging only at creation (ec2:CreateAction) and only with this cluster's ownership tags",
        ),
        Statement(
            "AllowScopedResourceTagging",
            ("ec2:CreateTags",),
            (f"{_EC2}:*:instance/*",),
            {
                "StringEquals": {f"aws:ResourceTag/{_CLUSTER_OWNED}": "owned"},
                "StringLike": {"aws:ResourceTag/karpenter.sh/nodepool": "*"},
                "StringEqualsIfExists": {"aws:RequestTag/eks:eks-cluster-name": "${ClusterName}"},
                "ForAllValues:StringEquals": {
                    "aws:TagKeys": ("eks:eks-cluster-name", "karpenter.sh/nodeclaim", "Name")
                },
            },
            why_wildcard=(
                "only instances tagged as this cluster's NodePool nodes, and only the Name, karpenter.sh/nodeclaim "
                "and eks:eks-cluster-name tag keys"
            ),
        ),
        Statement(
            "AllowScopedDeletion",
            ("ec2:TerminateInstances", "ec2:DeleteLaunchTemplate"),
            (f"{_EC2}:*:instance/*", f"{_EC2}:*:launch-template/*"),
            {
                "StringEquals": {f"aws:ResourceTag/{_CLUSTER_OWNED}": "owned"},
                "StringLike": {"aws:ResourceTag/karpenter.sh/nodepool": "*"},
            },
            why_wildcard="only instances and launch templates tagged as owned by this cluster and a NodePool",
        ),
    ),
    "IAMIntegrationPolicy": (
        Statement(
            "AllowPassingInstanceRole",
            ("iam:PassRole",),
            ("${KarpenterNodeRole.Arn}",),
            {"StringEquals": {"iam:PassedToService": ("ec2.amazonaws.com", "ec2.amazonaws.com.cn")}},
        ),
        Statement(
            "AllowScopedInstanceProfileCreationActions",
            ("iam:CreateInstanceProfile",),
            (_INSTANCE_PROFILES,),
            {
                "StringEquals": {
                    f"aws:RequestTag/{_CLUSTER_OWNED}": "owned",
                    "aws:RequestTag/eks:eks-cluster-name": "${ClusterName}",
                    "aws:RequestTag/topology.kubernetes.io/region": "${AWS::Region}",
                },
                "StringLike": {"aws:RequestTag/karpenter.k8s.aws/ec2nodeclass": "*"},
            },
            why_wildcard=(
                "Karpenter generates instance profile names per EC2NodeClass; creation needs this cluster's, this "
                "Region's and an ec2nodeclass request tag"
            ),
        ),
        Statement(
            "AllowScopedInstanceProfileTagActions",
            ("iam:TagInstanceProfile",),
            (_INSTANCE_PROFILES,),
            {
                "StringEquals": {
                    f"aws:ResourceTag/{_CLUSTER_OWNED}": "owned",
                    "aws:ResourceTag/topology.kubernetes.io/region": "${AWS::Region}",
                    f"aws:RequestTag/{_CLUSTER_OWNED}": "owned",
                    "aws:RequestTag/eks:eks-cluster-name": "${ClusterName}",
                    "aws:RequestTag/topology.kubernetes.io/region": "${AWS::Region}",
                },
                "StringLike": {
                    "aws:ResourceTag/karpenter.k8s.aws/ec2nodeclass": "*",
                    "aws:RequestTag/karpenter.k8s.aws/ec2nodeclass": "*",
                },
            },
            why_wildcard="only instance profiles already tagged as this cluster's, in this Region, for an EC2NodeClass",
        ),
        Statement(
            "AllowScopedInstanceProfileActions",
            ("iam:AddRoleToInstanceProfile", "iam:RemoveRoleFromInstanceProfile", "iam:DeleteInstanceProfile"),
            (_INSTANCE_PROFILES,),
            {
                "StringEquals": {
                    f"aws:ResourceTag/{_CLUSTER_OWNED}": "owned",
                    "aws:ResourceTag/topology.kubernetes.io/region": "${AWS::Region}",
                },
                "StringLike": {"aws:ResourceTag/karpenter.k8s.aws/ec2nodeclass": "*"},
            },
            why_wildcard="only instance profiles tagged as this cluster's, in this Region, for an EC2NodeClass",
        ),
    ),
    "EKSIntegrationPolicy": (
        Statement(
            "AllowAPIServerEndpointDiscovery",
            ("eks:DescribeCluster",),
            ("arn:${AWS::Partition}:eks:${AWS::Region}:${AWS::AccountId}:cluster/${ClusterName}",),
        ),
    ),
    "InterruptionPolicy": (
        Statement(
            "AllowInterruptionQueueActions",
            ("sqs:DeleteMessage", "sqs:GetQueueUrl", "sqs:ReceiveMessage"),
            ("${KarpenterInterruptionQueue.Arn}",),
        ),
    ),
    "ZonalShiftPolicy": (
        # arc-zonal-shift:GetManagedResource has no resource-level permissions; the
        # condition pins it to this cluster.
        Statement(
            "AllowZonalShiftStatusReadOnly",
            ("arc-zonal-shift:GetManagedResource",),
            ("*",),
            {
                "StringEquals": {
                    "arc-zonal-shift:ResourceIdentifier": (
                        "arn:${AWS::Partition}:eks:${AWS::Region}:${AWS::AccountId}:cluster/${ClusterName}"
                    )
                }
            },
            why_wildcard=(
                "arc-zonal-shift:GetManagedResource has no resource-level permissions; the condition limits it to "
                "this cluster"
            ),
        ),
    ),
    "ResourceDiscoveryPolicy": (
        # EC2 Describe* calls have no resource-level permissions; pinned to the Region.
        Statement(
            "AllowRegionalReadActions",
            (
                "ec2:DescribeCapacityReservations",
                "ec2:DescribeImages",
                "ec2:DescribeInstances",
                "ec2:DescribeInstanceStatus",
                "ec2:DescribeInstanceTypeOfferings",
                "ec2:DescribeInstanceTypes",
                "ec2:DescribeLaunchTemplates",
                "ec2:DescribePlacementGroups",
                "ec2:DescribeSecurityGroups",
                "ec2:DescribeSpotPriceHistory",
                "ec2:DescribeSubnets",
            ),
            ("*",),
            {"StringEquals": {"aws:RequestedRegion": "${AWS::Region}"}},
            why_wildcard=(
                "EC2 Describe* actions have no resource-level permissions; the condition limits them to this Region"
            ),
        ),
        Statement(
            "AllowSSMReadActions",
            ("ssm:GetParameter",),
            ("arn:${AWS::Partition}:ssm:${AWS::Region}::parameter/aws/service/*",),
            why_wildcard="read-only, and only AWS public parameters under /aws/service/ (EKS AMI ids)",
        ),
        # The Price List API and ListInstanceProfiles have no resource-level permissions.
        Statement(
            "AllowPricingReadActions",
            ("pricing:GetProducts",),
            ("*",),
            why_wildcard="the Price List API has no resource-level permissions; read-only public prices",
        ),
        Statement(
            "AllowUnscopedInstanceProfileListAction",
            ("iam:ListInstanceProfiles",),
            ("*",),
            why_wildcard="upstream grants iam:ListInstanceProfiles unscoped; it lists names only, read-only",
        ),
        Statement(
            "AllowInstanceProfileReadActions",
            ("iam:GetInstanceProfile",),
            (_INSTANCE_PROFILES,),
            why_wildcard="read-only; instance profile names are generated by Karpenter at runtime",
        ),
    ),
}

# The node role's AWS managed policies, as upstream's KarpenterNodeRole.
KARPENTER_NODE_MANAGED_POLICIES: Final = (
    "AmazonEKS_CNI_Policy",
    "AmazonEKSWorkerNodePolicy",
    "AmazonEC2ContainerRegistryPullOnly",
    "AmazonSSMManagedInstanceCore",
)


@dataclass(frozen=True)
class InterruptionRule:
    """An EventBridge rule forwarding one kind of EC2 event to the interruption queue."""

    upstream_id: str  # logical id in upstream's template
    source: str
    detail_type: str


# Upstream's rules, all of them, in upstream order.
INTERRUPTION_RULES: Final = (
    InterruptionRule("ScheduledChangeRule", "aws.health", "AWS Health Event"),
    InterruptionRule("SpotInterruptionRule", "aws.ec2", "EC2 Spot Instance Interruption Warning"),
    InterruptionRule("RebalanceRule", "aws.ec2", "EC2 Instance Rebalance Recommendation"),
    InterruptionRule("InstanceStateChangeRule", "aws.ec2", "EC2 Instance State-change Notification"),
    InterruptionRule(
        "CapacityReservationInterruptionRule", "aws.ec2", "EC2 Capacity Reservation Instance Interruption Warning"
    ),
)
INTERRUPTION_QUEUE_RETENTION: Final = cdk.Duration.seconds(300)  # as upstream: stale notices are useless
KARPENTER_SERVICE_ACCOUNT: Final = "karpenter"

_PLACEHOLDER: Final = re.compile(r"\$\{([^}]+)\}")


def render(value: Any, values: Mapping[str, str]) -> Any:
    """Replace upstream ``${Name}`` placeholders in every string of a JSON-like value."""
    if isinstance(value, str):
        return _PLACEHOLDER.sub(lambda m: values[m.group(1)], value)
    if isinstance(value, list):
        return [render(item, values) for item in value]
    if isinstance(value, dict):
        return {render(k, values): render(v, values) for k, v in value.items()}
    return value


class KarpenterInfrastructure(Construct):
    """Node role (+ EC2_LINUX access entry), interruption queue and rules, controller policies.

    The controller role itself is a Pod Identity role made by the cluster stack from
    :attr:`controller_policies`; this construct owns everything upstream's template owns.
    """

    def __init__(self, scope: Construct, construct_id: str, *, config: AppConfig, cluster: eks.Cluster) -> None:
        super().__init__(scope, construct_id)
        stack = cdk.Stack.of(self)

        self.node_role = iam.Role(
            self,
            "NodeRole",
            role_name=naming.karpenter_node_role_name(config),
            assumed_by=iam.ServicePrincipal("ec2.amazonaws.com"),
            description="Nodes launched by Karpenter",
            managed_policies=[
                iam.ManagedPolicy.from_aws_managed_policy_name(p) for p in KARPENTER_NODE_MANAGED_POLICIES
            ],
        )
        # EC2_LINUX entries carry no access policies: EKS grants the node permissions itself.
        self.node_access_entry = eks.AccessEntry(
            self,
            "NodeAccessEntry",
            cluster=cast(eks.ICluster, cluster),  # jsii's Protocol misses a member Cluster has
            principal=self.node_role.role_arn,
            access_entry_type=eks.AccessEntryType.EC2_LINUX,
            access_policies=[],
        )

        self.queue = sqs.Queue(
            self,
            "InterruptionQueue",
            queue_name=naming.interruption_queue_name(config),
            retention_period=INTERRUPTION_QUEUE_RETENTION,
            encryption=sqs.QueueEncryption.SQS_MANAGED,
            enforce_ssl=True,
        )
        self.rules = [
            events.Rule(
                self,
                rule.upstream_id,
                event_pattern=events.EventPattern(source=[rule.source], detail_type=[rule.detail_type]),
                targets=[targets.SqsQueue(self.queue)],
            )
            for rule in INTERRUPTION_RULES
        ]

        placeholders = {
            "AWS::Partition": stack.partition,
            "AWS::Region": stack.region,
            "AWS::AccountId": stack.account,
            "ClusterName": config.cluster_name,
            "KarpenterNodeRole.Arn": self.node_role.role_arn,
            "KarpenterInterruptionQueue.Arn": self.queue.queue_arn,
        }
        # How cdk-nag prints these values in finding ids.
        finding_placeholders = {**placeholders, "AWS::Partition": "<AWS::Partition>"}
        self.controller_policies: list[iam.ManagedPolicy] = []
        for name, statements in KARPENTER_CONTROLLER_POLICIES.items():
            policy = iam.ManagedPolicy(
                self,
                name,
                description=f"Karpenter controller: upstream {name}",
                statements=[iam.PolicyStatement.from_json(render(s.to_json(), placeholders)) for s in statements],
            )
            self.controller_policies.append(policy)
            self._acknowledge_wildcards(policy, statements, finding_placeholders)
        for managed in KARPENTER_NODE_MANAGED_POLICIES:
            nag.acknowledge(
                self.node_role,
                nag.aws_managed_policy_finding(managed),
                f"Upstream Karpenter node role policy {managed}: what every EKS node needs (join the cluster, "
                "VPC CNI, pull images, SSM access without SSH); AWS maintains it with EKS.",
            )
        nag.acknowledge(
            self.queue,
            "AwsSolutions-SQS3",
            "Karpenter's interruption queue, as upstream: notices are useful for minutes (300 s retention); "
            "a dead-letter queue would only keep stale notices no one acts on.",
        )

    @staticmethod
    def _acknowledge_wildcards(
        policy: iam.ManagedPolicy, statements: Sequence[Statement], placeholders: Mapping[str, str]
    ) -> None:
        """One acknowledgement per wildcard resource, its reason taken from the statements using it."""
        reasons: dict[str, list[str]] = {}
        for statement in statements:
            for resource in nag.wildcard_resources(statement.resources):
                reasons.setdefault(render(resource, placeholders), []).append(
                    f"{statement.sid}: {statement.why_wildcard}"
                )
        for resource, why in reasons.items():
            nag.acknowledge(
                policy,
                nag.wildcard_resource_finding(resource),
                "Upstream Karpenter controller policy, scoped as upstream scopes it. " + " | ".join(why),
            )

    def helm_values(self, *, config: AppConfig, node_selector: Mapping[str, str]) -> dict[str, Any]:
        return {
            "settings": {
                "clusterName": config.cluster_name,
                "interruptionQueue": self.queue.queue_name,
            },
            "serviceAccount": {"name": KARPENTER_SERVICE_ACCOUNT},
            "nodeSelector": dict(node_selector),
        }


def statements_as_upstream() -> dict[str, list[dict[str, Any]]]:
    """The table in upstream's JSON shape, placeholders kept (for the drift test)."""
    return {name: [s.to_json() for s in statements] for name, statements in KARPENTER_CONTROLLER_POLICIES.items()}


__all__: Sequence[str] = (
    "INTERRUPTION_RULES",
    "KARPENTER_CONTROLLER_POLICIES",
    "KarpenterInfrastructure",
    "statements_as_upstream",
)
