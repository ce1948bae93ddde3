"""The AWS side of the app's pods, and the charts applied to the cluster.

Each serving Deployment's service account gets its own Pod Identity role that may publish
the runtime's metrics (only into ``contract.METRIC_NAMESPACE``) and read the compiled models;
the compile jobs' service account may also write them. Then every chart of
``charts.build.add_charts`` is applied with ``ClusterStack.apply_charts`` (after the
controllers), each after the charts it depends on and after the roles its pods use: a Pod
Identity association must exist before the pod is created for the pod to get credentials.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import aws_cdk as cdk
import cdk8s
from aws_cdk import aws_eks_v2 as eks
from aws_cdk import aws_iam as iam

from charts import model_builds
from charts.build import AppCharts, add_charts
from spec import contract, model_artifacts, naming, topology
from spec.config import AppConfig
from stacks import nag
from stacks.cluster import ClusterStack
from stacks.cluster.pod_identity import PodIdentityRole

MODELS_PREFIX: Final = f"{model_artifacts.MODELS_PREFIX}/"  # s3://<bucket>/models/: every artifact


def _bucket_arn(config: AppConfig) -> str:
    return f"arn:{cdk.Aws.PARTITION}:s3:::{naming.model_bucket_name(config)}"


def metrics_statement() -> iam.PolicyStatement:
    """PutMetricData has no resource-level permissions; the namespace condition scopes it."""
    return iam.PolicyStatement(
        actions=["cloudwatch:PutMetricData"],
        resources=["*"],
        conditions={"StringEquals": {"cloudwatch:namespace": contract.METRIC_NAMESPACE}},
    )


def read_models_statements(config: AppConfig) -> list[iam.PolicyStatement]:
    bucket = _bucket_arn(config)
    return [
        iam.PolicyStatement(actions=["s3:GetObject"], resources=[f"{bucket}/{MODELS_PREFIX}*"]),
        iam.PolicyStatement(
            actions=["s3:ListBucket"],
            resources=[bucket],
            conditions={"StringLike": {"s3:prefix": [f"{MODELS_PREFIX}*"]}},
        ),
    ]


def write_models_statement(config: AppConfig) -> iam.PolicyStatement:
    return iam.PolicyStatement(
        actions=["s3:PutObject", "s3:AbortMultipartUpload"], resources=[f"{_bucket_arn(config)}/{MODELS_PREFIX}*"]
    )


@dataclass(frozen=True)
class AppChartsOnCluster:
    charts: AppCharts
    manifests: dict[str, eks.KubernetesManifest]  # chart id -> manifest
    serving_identities: dict[str, PodIdentityRole]  # service account -> role and association
    compile_identity: PodIdentityRole


def add_app_charts(cluster: ClusterStack, config: AppConfig) -> AppChartsOnCluster:
    """Create the workload roles and apply every chart of the app to ``cluster``."""
    serving_identities = {
        placement.name: cluster.add_pod_identity_role(
            f"Serving-{placement.name}",
            namespace=topology.NAMESPACE,
            service_account=placement.name,
            statements=[metrics_statement(), *read_models_statements(config)],
        )
        for placement in topology.placements(config)
    }
    compile_identity = cluster.add_pod_identity_role(
        "ModelCompiler",
        namespace=topology.NAMESPACE,
        service_account=model_builds.SERVICE_ACCOUNT,
        statements=[*read_models_statements(config), write_models_statement(config)],
    )
    for identity in serving_identities.values():
        _acknowledge(identity.role, config, puts_metrics=True)
    _acknowledge(compile_identity.role, config, puts_metrics=False)

    charts = add_charts(cdk8s.App(), config)
    manifests = dict(zip((c.node.id for c in charts.all), cluster.apply_charts(charts.all), strict=True))
    for chart in charts.all:
        manifest = manifests[chart.node.id]
        for dependency in chart.node.dependencies:
            manifest.node.add_dependency(manifests[dependency.node.id])
    # Pods get Pod Identity credentials only if the association exists when they are admitted.
    for identity in serving_identities.values():
        manifests[charts.serving.node.id].node.add_dependency(identity)
    manifests[charts.model_builds.node.id].node.add_dependency(compile_identity)
    return AppChartsOnCluster(charts, manifests, serving_identities, compile_identity)


def _acknowledge(role: iam.Role, config: AppConfig, *, puts_metrics: bool) -> None:
    if puts_metrics:
        nag.acknowledge(
            role,
            nag.wildcard_resource_finding("*"),
            "cloudwatch:PutMetricData supports no resource-level permissions; the statement is "
            f"limited to the {contract.METRIC_NAMESPACE} namespace by the cloudwatch:namespace condition",
        )
    nag.acknowledge(
        role,
        nag.wildcard_resource_finding(f"arn:<AWS::Partition>:s3:::{naming.model_bucket_name(config)}/{MODELS_PREFIX}*"),
        "the objects under the models/ prefix of the model bucket, which the compile jobs write "
        "as <model>/<revision>/<device>/ trees: no other prefix or bucket",
    )
