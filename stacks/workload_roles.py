"""The AWS side of the app's pods: what the serving and compile service accounts may do.

Each serving Deployment's service account gets its own Pod Identity role that may publish
the runtime's metrics (only into ``contract.METRIC_NAMESPACE``) and read the compiled models;
the compile jobs' service account may also write them (``composition.app_charts`` creates
the roles next to the charts whose pods use them).
"""

from __future__ import annotations

from typing import Final

import aws_cdk as cdk
from aws_cdk import aws_iam as iam

from spec import contract, model_artifacts, naming
from spec.config import AppConfig
from stacks import nag

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


def acknowledge_workload_role(role: iam.Role, config: AppConfig, *, puts_metrics: bool) -> None:
    """The wildcard findings a workload role carries, each with its reason."""
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
