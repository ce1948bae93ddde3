"""AWS Load Balancer Controller: the ALBs and NLBs of the serving Ingresses and Services.

Its role gets upstream's IAM policy for the controller version the chart ships
(docs/install/iam_policy.json, vendored unchanged in third_party/aws-load-balancer-controller/,
the same file aws-cdk-lib ships), read at synth time.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar, Final

from aws_cdk import aws_iam as iam

from plan import versions
from stacks import nag
from stacks.cluster.addon import ClusterInfo, ControllerAddOn, ControllerSetup, PodIdentityGrant
from stacks.cluster.karpenter import Karpenter
from stacks.cluster.upstream import THIRD_PARTY, statement_resources

POLICY_FILE: Final = (
    THIRD_PARTY
    / "aws-load-balancer-controller"
    / f"iam_policy-{versions.AWS_LOAD_BALANCER_CONTROLLER_APP_VERSION}.json"
)
SERVICE_ACCOUNT: Final = "aws-load-balancer-controller"
WILDCARD_REASON: Final = (
    f"Upstream AWS Load Balancer Controller {versions.AWS_LOAD_BALANCER_CONTROLLER_APP_VERSION} policy "
    "(docs/install/iam_policy.json), unchanged: Describe* calls have no resource-level permissions, "
    "and the load balancers, target groups, listeners and security groups it manages are created at "
    "runtime with generated names; upstream scopes every change to them by the elbv2.k8s.aws/cluster "
    "tag conditions kept here."
)


class AwsLoadBalancerController(ControllerAddOn):
    """The ALB controller. Its webhooks mutate every Service and Pod created after it, so the
    Helm releases that create Services come after it (they declare it)."""

    name: ClassVar[str] = "aws-load-balancer-controller"
    chart: ClassVar[versions.HelmChart] = versions.AWS_LOAD_BALANCER_CONTROLLER
    after: ClassVar[tuple[str, ...]] = (Karpenter.name,)  # Karpenter's CRDs and nodes come first

    def setup(self, info: ClusterInfo) -> ControllerSetup:
        statements: list[dict[str, Any]] = json.loads(POLICY_FILE.read_text())["Statement"]
        resources = [r for s in statements for r in statement_resources(s)]
        return ControllerSetup(
            values={
                "clusterName": info.cluster.cluster_name,
                # Given explicitly: with IMDS hop limit 1 the controller cannot look them up.
                "region": info.region,
                "vpcId": info.vpc.vpc_id,
                "serviceAccount": {"create": True, "name": SERVICE_ACCOUNT},
                "nodeSelector": dict(info.node_selector),
            },
            identity=PodIdentityGrant(
                "AwsLoadBalancerController",
                service_account=SERVICE_ACCOUNT,
                statements=[iam.PolicyStatement.from_json(s) for s in statements],
                acknowledgements={
                    nag.wildcard_resource_finding(r): WILDCARD_REASON for r in nag.wildcard_resources(resources)
                },
            ),
        )
