"""Karpenter: launches and retires the serving nodes the charts' NodePools and EC2NodeClasses ask for.

Its AWS side is read from Karpenter's getting-started CloudFormation template for v1.14
(aws/karpenter-provider-aws, website/content/en/v1.14/getting-started/
getting-started-with-karpenter/cloudformation.yaml), vendored unchanged as
third_party/karpenter/cloudformation.yaml: the node role's managed policies, the interruption
queue's retention, the interruption rules, and the controller's six managed policies,
statement for statement (same Sids, resources and conditions; ``${...}`` replaced by this
cluster's values). What stays here is what a reviewer needs and upstream does not say: why
each wildcard resource is acceptable (:data:`WILDCARD_REASONS`, keyed by Sid; a Sid with a
wildcard and no reason fails synth). Differences from upstream, on purpose:

* the controller role is trusted by EKS Pod Identity, not IRSA;
* the queue policy admits ``events.amazonaws.com`` per rule ARN (``aws:SourceArn``) instead
  of any EventBridge rule or SQS, and the queue's name comes from ``plan.naming``;
* the node role's name comes from ``plan.naming`` (the EC2NodeClass refers to it by name);
  the controller policies' names are CloudFormation's, not ``KarpenterController<...>-<cluster>``;
* with ``serving.spot``, a seventh policy lets the controller create the EC2 Spot service-linked
  role (AWSServiceRoleForEC2Spot) and nothing else: EC2 creates it with the caller's credentials on
  an account's first Spot launch, and fails with ``ServiceLinkedRoleCreationNotPermitted``
  without them; upstream creates it out of band instead (v1.14.1 getting started,
  ``step06-add-spot-role.sh``: ``aws iam create-service-linked-role --aws-service-name
  spot.amazonaws.com || true``; troubleshooting.md, "Missing Service Linked Role").
"""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Mapping
from typing import Any, ClassVar, Final, cast

import aws_cdk as cdk
from aws_cdk import aws_eks_v2 as eks
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from plan import naming, versions
from plan.config import AppConfig
from stacks import nag
from stacks.cluster.addon import ClusterInfo, ControllerAddOn, ControllerSetup, PodIdentityGrant
from stacks.cluster.upstream import THIRD_PARTY, load_cloudformation, statement_resources, substitute

UPSTREAM_TEMPLATE: Final = THIRD_PARTY / "karpenter" / "cloudformation.yaml"
SERVICE_ACCOUNT: Final = "karpenter"
SPOT_SERVICE: Final = "spot.amazonaws.com"
SPOT_SERVICE_LINKED_ROLE: Final = "AWSServiceRoleForEC2Spot"

# Why each upstream statement with a wildcard resource is acceptable (and what scopes it
# instead): the reason of its cdk-nag IAM5 acknowledgement. Keyed by upstream Sid.
WILDCARD_REASONS: Final[Mapping[str, str]] = {
    # NodeLifecyclePolicy
    "AllowScopedEC2InstanceAccessActions": (
        "AMIs, snapshots, security groups, subnets, capacity reservations and placement groups are chosen at "
        "launch time by the EC2NodeClass selectors; upstream limits them to this Region, and the instance "
        "side of the same RunInstances/CreateFleet call is tag-scoped by the statements below"
    ),
    "AllowScopedEC2LaunchTemplateAccessActions": (
        "only launch templates tagged as owned by this cluster and created for a NodePool"
    ),
    "AllowScopedEC2InstanceActionsWithTags": (
        "resources a RunInstances/CreateFleet/CreateLaunchTemplate call creates have no id before the call; "
        "allowed only when the request tags them as owned by this cluster and a NodePool"
    ),
    "AllowScopedResourceCreationTagging": (
        "tagging only at creation (ec2:CreateAction) and only with this cluster's ownership tags"
    ),
    "AllowScopedResourceTagging": (
        "only instances tagged as this cluster's NodePool nodes, and only the Name, karpenter.sh/nodeclaim "
        "and eks:eks-cluster-name tag keys"
    ),
    "AllowScopedDeletion": "only instances and launch templates tagged as owned by this cluster and a NodePool",
    # IAMIntegrationPolicy
    "AllowScopedInstanceProfileCreationActions": (
        "Karpenter generates instance profile names per EC2NodeClass; creation needs this cluster's, this "
        "Region's and an ec2nodeclass request tag"
    ),
    "AllowScopedInstanceProfileTagActions": (
        "only instance profiles already tagged as this cluster's, in this Region, for an EC2NodeClass"
    ),
    "AllowScopedInstanceProfileActions": (
        "only instance profiles tagged as this cluster's, in this Region, for an EC2NodeClass"
    ),
    # ZonalShiftPolicy
    "AllowZonalShiftStatusReadOnly": (
        "arc-zonal-shift:GetManagedResource has no resource-level permissions; the condition limits it to this cluster"
    ),
    # ResourceDiscoveryPolicy
    "AllowRegionalReadActions": (
        "EC2 Describe* actions have no resource-level permissions; the condition limits them to this Region"
    ),
    "AllowSSMReadActions": "read-only, and only AWS public parameters under /aws/service/ (EKS AMI ids)",
    "AllowPricingReadActions": "the Price List API has no resource-level permissions; read-only public prices",
    "AllowUnscopedInstanceProfileListAction": (
        "upstream grants iam:ListInstanceProfiles unscoped; it lists names only, read-only"
    ),
    "AllowInstanceProfileReadActions": "read-only; instance profile names are generated by Karpenter at runtime",
}

_AWS_MANAGED_POLICY_PREFIX: Final = "arn:${AWS::Partition}:iam::aws:policy/"


class UpstreamTemplateError(ValueError):
    """Upstream's template says something this module does not handle, or :data:`WILDCARD_REASONS`
    disagrees with it: an upgrade of the vendored file needs a decision here."""


@functools.cache
def upstream_resources() -> Mapping[str, Any]:
    """The Resources of the vendored template (read once; treat as read-only)."""
    return cast(Mapping[str, Any], load_cloudformation(UPSTREAM_TEMPLATE)["Resources"])


def upstream_controller_policies(resources: Mapping[str, Any] | None = None) -> dict[str, list[dict[str, Any]]]:
    """Upstream's controller managed policies by logical id, in upstream order: their statements as
    upstream writes them, ``${...}`` placeholders kept."""
    policies = {}
    for logical_id, resource in (upstream_resources() if resources is None else resources).items():
        if resource["Type"] == "AWS::IAM::ManagedPolicy":
            document = resource["Properties"]["PolicyDocument"]
            if "Fn::Sub" in document:  # a JSON string upstream: its condition keys interpolate ${ClusterName}
                document = json.loads(document["Fn::Sub"])
            policies[logical_id] = copy.deepcopy(document["Statement"])  # callers may edit theirs
    return policies


def wildcard_reasons(
    policies: Mapping[str, list[dict[str, Any]]], reasons: Mapping[str, str] = WILDCARD_REASONS
) -> dict[str, dict[str, str]]:
    """Policy -> wildcard resource (placeholders kept) -> the reason of its acknowledgement: the
    ``Sid: reason`` of every statement granting it, in upstream order.

    Raises :class:`UpstreamTemplateError` for a statement with a wildcard resource but no reason
    (a new or renamed upstream Sid: someone must say why it is acceptable) and for a reason no
    such statement uses (upstream dropped or renamed it).
    """
    by_policy: dict[str, dict[str, list[str]]] = {}
    used: set[str] = set()
    for policy, statements in policies.items():
        by_resource = by_policy.setdefault(policy, {})
        for statement in statements:
            sid = statement.get("Sid", "")
            wildcards = nag.wildcard_resources(statement_resources(statement))
            if not wildcards:
                continue
            if sid not in reasons:
                raise UpstreamTemplateError(
                    f"Karpenter's upstream {policy} grants {', '.join(wildcards)} in statement {sid or '(no Sid)'}, "
                    f"and {__name__}.WILDCARD_REASONS has no reason for it: add one saying why the wildcard is "
                    "acceptable and what scopes it (it becomes the cdk-nag AwsSolutions-IAM5 acknowledgement)"
                )
            used.add(sid)
            for resource in wildcards:
                by_resource.setdefault(resource, []).append(f"{sid}: {reasons[sid]}")
    if stale := sorted(set(reasons) - used):
        raise UpstreamTemplateError(
            f"{__name__}.WILDCARD_REASONS explains {', '.join(stale)}, but no upstream statement with a wildcard "
            "resource has that Sid (dropped or renamed upstream?): remove or rename the entry"
        )
    return {
        policy: {resource: " | ".join(why) for resource, why in by_resource.items()}
        for policy, by_resource in by_policy.items()
    }


def _aws_managed_policy_names(arns: list[Any]) -> list[str]:
    """``AmazonEKS_CNI_Policy`` and the like, from upstream's ``!Sub arn:${AWS::Partition}:iam::aws:policy/...``."""
    names = []
    for arn in arns:
        text = arn["Fn::Sub"] if isinstance(arn, dict) else arn
        if not text.startswith(_AWS_MANAGED_POLICY_PREFIX):
            raise UpstreamTemplateError(f"upstream KarpenterNodeRole has a managed policy that is not AWS's: {arn}")
        names.append(text.removeprefix(_AWS_MANAGED_POLICY_PREFIX))
    return names


def _event_pattern(pattern: Mapping[str, list[str]]) -> events.EventPattern:
    if unknown := set(pattern) - {"source", "detail-type"}:
        raise UpstreamTemplateError(f"upstream interruption rule pattern has keys not mapped here: {sorted(unknown)}")
    return events.EventPattern(source=pattern["source"], detail_type=pattern["detail-type"])


class KarpenterInfrastructure(Construct):
    """Node role (+ EC2_LINUX access entry), interruption queue and rules, controller policies.

    Everything upstream's template owns except the controller role: that is the add-on's Pod
    Identity role, made by the cluster stack from :attr:`controller_policies`.
    """

    def __init__(self, scope: Construct, construct_id: str, *, config: AppConfig, cluster: eks.Cluster) -> None:
        super().__init__(scope, construct_id)
        stack = cdk.Stack.of(self)
        upstream = upstream_resources()
        policies = upstream_controller_policies(upstream)
        reasons = wildcard_reasons(policies)  # before anything is created: a missing reason fails synth

        node_policies = _aws_managed_policy_names(upstream["KarpenterNodeRole"]["Properties"]["ManagedPolicyArns"])
        self.node_role = iam.Role(
            self,
            "NodeRole",
            role_name=naming.karpenter_node_role_name(config),
            assumed_by=iam.ServicePrincipal("ec2.amazonaws.com"),
            description="Nodes launched by Karpenter",
            managed_policies=[iam.ManagedPolicy.from_aws_managed_policy_name(p) for p in node_policies],
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

        upstream_queue = upstream["KarpenterInterruptionQueue"]["Properties"]
        self.queue = sqs.Queue(
            self,
            "InterruptionQueue",
            queue_name=naming.interruption_queue_name(config),
            # As upstream: a notice is useful for minutes, a stale one is useless.
            retention_period=cdk.Duration.seconds(upstream_queue["MessageRetentionPeriod"]),
            encryption=sqs.QueueEncryption.SQS_MANAGED,
            enforce_ssl=True,
        )
        # Upstream's rules, all of them, in upstream order, with upstream's logical ids.
        self.rules = [
            events.Rule(
                self,
                logical_id,
                event_pattern=_event_pattern(resource["Properties"]["EventPattern"]),
                targets=[targets.SqsQueue(self.queue)],
            )
            for logical_id, resource in upstream.items()
            if resource["Type"] == "AWS::Events::Rule"
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
        for name, statements in policies.items():
            source = f"{UPSTREAM_TEMPLATE.name} {name}"
            policy = iam.ManagedPolicy(
                self,
                name,
                description=f"Karpenter controller: upstream {name}",
                statements=[
                    iam.PolicyStatement.from_json(substitute(statement, placeholders, source=source))
                    for statement in statements
                ],
            )
            self.controller_policies.append(policy)
            for resource, why in reasons[name].items():
                nag.acknowledge(
                    policy,
                    nag.wildcard_resource_finding(substitute(resource, finding_placeholders, source=source)),
                    "Upstream Karpenter controller policy, scoped as upstream scopes it. " + why,
                )
        if config.serving.spot:
            self.controller_policies.append(_spot_service_linked_role_policy(self, stack))
        for managed in node_policies:
            nag.acknowledge(
                self.node_role,
                nag.aws_managed_policy_finding(managed),
                f"Upstream Karpenter node role policy {managed}: what every EKS node needs (join the cluster, "
                "VPC CNI, pull images, SSM access without SSH); AWS maintains it with EKS.",
            )
        nag.acknowledge(
            self.queue,
            "AwsSolutions-SQS3",
            "Karpenter's interruption queue, as upstream: notices are useful for minutes "
            f"({upstream_queue['MessageRetentionPeriod']} s retention); "
            "a dead-letter queue would only keep stale notices no one acts on.",
        )


def _spot_service_linked_role_policy(scope: Construct, stack: cdk.Stack) -> iam.ManagedPolicy:
    """iam:CreateServiceLinkedRole for EC2 Spot's role only, so that the first Spot launch of an account works."""
    return iam.ManagedPolicy(
        scope,
        "SpotServiceLinkedRolePolicy",
        description="Karpenter controller: create the EC2 Spot service-linked role on the first Spot launch",
        statements=[
            iam.PolicyStatement(
                sid="AllowSpotServiceLinkedRoleCreation",
                actions=["iam:CreateServiceLinkedRole"],
                resources=[
                    f"arn:{stack.partition}:iam::{stack.account}:role/aws-service-role/"
                    f"{SPOT_SERVICE}/{SPOT_SERVICE_LINKED_ROLE}"
                ],
                conditions={"StringEquals": {"iam:AWSServiceName": SPOT_SERVICE}},
            )
        ],
    )


class Karpenter(ControllerAddOn):
    """Karpenter, installed right after its CRDs: it launches the nodes everything else may need.
    Its controller role gets upstream's six managed policies and, with ``serving.spot``, the Spot
    service-linked role policy (see the module docstring).

    The CRDs come from the ``karpenter-crd`` add-on (:mod:`stacks.cluster.karpenter_crd`), so this
    Helm release skips the chart's ``crds/`` (``skip_crds``). aws-cdk-lib 2.275's eks-v2 Helm handler
    reads ``SkipCrds`` but does not pass it on to ``helm upgrade --install`` (the fix of
    aws/aws-cdk#31831 reached only the aws-eks handler); that is harmless here because the CRDs
    exist before this Helm release is installed, and Helm skips a ``crds/`` CRD that is already present
    on install and never touches ``crds/`` on upgrade.

    The Helm release depends on :class:`KarpenterInfrastructure` (the stack makes every Helm release depend
    on its add-on's resources), so on stack delete it goes before the node role's access entry and
    the interruption queue and rules; see :meth:`~stacks.cluster.stack.ClusterStack.apply_charts`
    for what goes before it.
    """

    name: ClassVar[str] = "karpenter"
    chart: ClassVar[versions.HelmChart] = versions.KARPENTER
    skip_crds: ClassVar[bool] = True

    def setup(self, info: ClusterInfo) -> ControllerSetup:
        infrastructure = KarpenterInfrastructure(info.scope, "Karpenter", config=info.config, cluster=info.cluster)
        return ControllerSetup(
            values={
                "settings": {
                    "clusterName": info.config.cluster_name,
                    "interruptionQueue": infrastructure.queue.queue_name,
                },
                "serviceAccount": {"name": SERVICE_ACCOUNT},
                "nodeSelector": dict(info.node_selector),  # never on the nodes it manages
            },
            identity=PodIdentityGrant(
                "KarpenterController",
                service_account=SERVICE_ACCOUNT,
                managed_policies=infrastructure.controller_policies,
            ),
            resources=infrastructure,
        )
