"""EKS Pod Identity: an IAM role that exactly one Kubernetes service account can assume.

Pod Identity (not IRSA, not the node role) is how every in-cluster AWS caller of this app
gets credentials: the grant is per service account, needs no OIDC provider, and the node
role stays minimal. The association names the service account; the account itself is
created by whoever owns the pods (a Helm chart, an add-on, a cdk8s chart).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from aws_cdk import aws_eks_v2 as eks
from aws_cdk import aws_iam as iam
from constructs import Construct

POD_IDENTITY_PRINCIPAL: Final = "pods.eks.amazonaws.com"
# Pod Identity needs both: AssumeRole for credentials, TagSession for the session tags
# (cluster, namespace, service account) it attaches.
POD_IDENTITY_TRUST_ACTIONS: Final = ("sts:AssumeRole", "sts:TagSession")


class PodIdentityRole(Construct):
    """A role trusted by ``pods.eks.amazonaws.com`` and associated with one service account."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        cluster_name: str,
        namespace: str,
        service_account: str,
        statements: Sequence[iam.PolicyStatement] = (),
        managed_policies: Sequence[iam.IManagedPolicy] = (),
    ) -> None:
        super().__init__(scope, construct_id)
        self.namespace = namespace
        self.service_account = service_account
        self.role = iam.Role(
            self,
            "Role",
            assumed_by=iam.ServicePrincipal(POD_IDENTITY_PRINCIPAL),
            description=f"EKS Pod Identity role of {namespace}/{service_account}",
            managed_policies=list(managed_policies),
        )
        trust = self.role.assume_role_policy
        assert trust is not None  # a Role always has a trust policy
        trust.add_statements(
            iam.PolicyStatement(
                actions=["sts:TagSession"],
                principals=[iam.ServicePrincipal(POD_IDENTITY_PRINCIPAL)],
            )
        )
        for statement in statements:
            self.role.add_to_principal_policy(statement)
        self.association = eks.CfnPodIdentityAssociation(
            self,
            "Association",
            cluster_name=cluster_name,
            namespace=namespace,
            service_account=service_account,
            role_arn=self.role.role_arn,
        )
