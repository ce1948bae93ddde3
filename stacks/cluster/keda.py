"""KEDA: scales the serving Kubernetes Deployments on the CloudWatch metrics the runtime publishes.

Only its operator calls AWS (the aws-cloudwatch scaler), so only the operator's service
account gets a role, and that role may only read metrics.
"""

from __future__ import annotations

from typing import ClassVar, Final

from aws_cdk import aws_iam as iam

from plan import versions
from stacks import nag
from stacks.cluster.addon import ClusterInfo, ControllerAddOn, ControllerSetup, PodIdentityGrant
from stacks.cluster.aws_load_balancer_controller import AwsLoadBalancerController

OPERATOR_SERVICE_ACCOUNT: Final = "keda-operator"
# What the aws-cloudwatch scaler calls. CloudWatch metric reads have no resource-level
# permissions, so these are granted on "*" (and only to the keda-operator service account).
CLOUDWATCH_READ_ACTIONS: Final = (
    "cloudwatch:GetMetricData",
    "cloudwatch:GetMetricStatistics",
    "cloudwatch:ListMetrics",
)


class Keda(ControllerAddOn):
    """KEDA, whose CRDs (ScaledObject, TriggerAuthentication) and webhooks the charts use."""

    name: ClassVar[str] = "keda"
    chart: ClassVar[versions.HelmChart] = versions.KEDA
    # Its Helm release creates Services: the ALB controller's webhooks must be serving first.
    after: ClassVar[tuple[str, ...]] = (AwsLoadBalancerController.name,)

    def setup(self, info: ClusterInfo) -> ControllerSetup:
        return ControllerSetup(
            values={
                "serviceAccount": {"operator": {"create": True, "name": OPERATOR_SERVICE_ACCOUNT}},
                "nodeSelector": dict(info.node_selector),
            },
            identity=PodIdentityGrant(
                "KedaOperator",
                service_account=OPERATOR_SERVICE_ACCOUNT,
                statements=[iam.PolicyStatement(actions=list(CLOUDWATCH_READ_ACTIONS), resources=["*"])],
                acknowledgements={
                    nag.wildcard_resource_finding("*"): (
                        "CloudWatch GetMetricData, GetMetricStatistics and ListMetrics have no resource-level "
                        "permissions; the role may only read metrics, and only KEDA's operator service account "
                        "can assume it."
                    )
                },
            ),
        )
