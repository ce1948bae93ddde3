"""The AWS side of the app's pods: what the serving and compile service accounts may do.

Each serving Kubernetes Deployment's service account gets its own Pod Identity role that may publish
the runtime's metrics (only into ``contract.METRIC_NAMESPACE``) and read the public half of the
deployment's token-signing key (by its alias); a Local Zone Kubernetes Deployment's role may also
read the one TLS secret its pods terminate HTTPS with. Serving pods load the model baked into their
image, so their roles read nothing in the model bucket. The compile jobs' service account may read
and write its own cluster's artifact prefix, ``models/<cluster>/``, and nothing else of the bucket:
no deployment can change what another one compiled, nor what the serving images are built from
(docs/adr/0016-serving-images-bake-only-promoted-models.md). ``composition.app_charts`` creates the
roles next to the charts whose pods use them.
"""

from __future__ import annotations

from typing import Final

import aws_cdk as cdk
from aws_cdk import aws_iam as iam

from plan import contract, naming
from plan.config import AppConfig
from plan.topology import Placement
from stacks import nag

# Secrets Manager appends a hyphen and six random characters to a secret's name in its ARN: a
# name-based ARN matches that one secret with exactly six "?" (Secrets Manager user guide,
# "Resources: secret ARNs" in "Permissions policy examples").
NAME_ARN_SUFFIX: Final = "-??????"


def _bucket_arn(config: AppConfig) -> str:
    return f"arn:{cdk.Aws.PARTITION}:s3:::{naming.model_bucket_name(config)}"


def metrics_statement() -> iam.PolicyStatement:
    """PutMetricData has no resource-level permissions; the namespace condition scopes it."""
    return iam.PolicyStatement(
        actions=["cloudwatch:PutMetricData"],
        resources=["*"],
        conditions={"StringEquals": {"cloudwatch:namespace": contract.METRIC_NAMESPACE}},
    )


def own_models_key_pattern(config: AppConfig) -> str:
    """``models/<cluster>/*``: every key of this deployment's artifact prefix, and of no other's."""
    return f"{naming.cluster_models_key_prefix(config)}/*"


def read_models_statements(config: AppConfig) -> list[iam.PolicyStatement]:
    """What the compile job reads of its own prefix: the listing (a manifest's presence, the files'
    sizes) and the objects (the manifest, the publish lock)."""
    bucket = _bucket_arn(config)
    pattern = own_models_key_pattern(config)
    return [
        iam.PolicyStatement(actions=["s3:GetObject"], resources=[f"{bucket}/{pattern}"]),
        iam.PolicyStatement(
            actions=["s3:ListBucket"], resources=[bucket], conditions={"StringLike": {"s3:prefix": [pattern]}}
        ),
    ]


def write_models_statement(config: AppConfig) -> iam.PolicyStatement:
    """What a publish does under its own prefix (``runtime.artifacts.s3.publish_s3``): upload, take
    the old manifest off first and remove stale files last. S3 authorizes DeleteObjects per key as
    s3:DeleteObject, and checks it before it looks for the key."""
    return iam.PolicyStatement(
        actions=["s3:PutObject", "s3:AbortMultipartUpload", "s3:DeleteObject"],
        resources=[f"{_bucket_arn(config)}/{own_models_key_pattern(config)}"],
    )


def describe_images_statement(config: AppConfig) -> iam.PolicyStatement:
    """ecr:DescribeImages on the app's image repository: the publisher opens a serving pod's
    scheduling gate once its image is there (``runtime.inventory.gates``)."""
    return iam.PolicyStatement(
        actions=["ecr:DescribeImages"],
        resources=[
            f"arn:{cdk.Aws.PARTITION}:ecr:{config.region}:{config.account}:repository/{naming.IMAGE_REPOSITORY_NAME}"
        ],
    )


def _kms_key_arns() -> str:
    return f"arn:{cdk.Aws.PARTITION}:kms:{cdk.Aws.REGION}:{cdk.Aws.ACCOUNT_ID}:key/*"


def token_public_key_statement(config: AppConfig) -> iam.PolicyStatement:
    """kms:GetPublicKey on the key the token alias names, and no other.

    The key lives in the inventory stack and its id is only known after it is created; an IAM
    policy cannot name a key by alias ARN (alias ARNs only authorize alias operations), so the
    resource is every key of the account and Region, and the ``kms:RequestAlias`` condition
    admits only requests that name the key by this alias, as the servers do
    (``contract.ENV_TOKEN_KMS_KEY_ID``). AWS KMS developer guide, "kms:RequestAlias" (GetPublicKey
    is one of the operations it applies to) and "Using aliases to control access to KMS keys".
    """
    return iam.PolicyStatement(
        actions=["kms:GetPublicKey"],
        resources=[_kms_key_arns()],
        conditions={"StringEquals": {"kms:RequestAlias": naming.token_signing_key_alias(config)}},
    )


def tls_secret_statement(config: AppConfig) -> iam.PolicyStatement:
    """secretsmanager:GetSecretValue on ``tls.localZoneSecret`` only (by name: any version of it)."""
    arn = (
        f"arn:{cdk.Aws.PARTITION}:secretsmanager:{cdk.Aws.REGION}:{cdk.Aws.ACCOUNT_ID}:secret:"
        f"{config.tls.local_zone_secret}{NAME_ARN_SUFFIX}"
    )
    return iam.PolicyStatement(actions=["secretsmanager:GetSecretValue"], resources=[arn])


def serving_statements(config: AppConfig, placement: Placement) -> list[iam.PolicyStatement]:
    """Everything one placement's serving pods call: metrics, the token key, its TLS secret. Not the
    model bucket: the pods load the model their image carries (charts.serving sets no model source)."""
    statements = [metrics_statement()]
    if config.auth.mode == "token":
        statements.append(token_public_key_statement(config))
    if placement.location.is_local_zone and config.tls.local_zone_secret:
        statements.append(tls_secret_statement(config))
    return statements


def acknowledge_workload_role(
    role: iam.Role, config: AppConfig, *, puts_metrics: bool, reads_models: bool = False, reads_token_key: bool = False
) -> None:
    """The wildcard findings a workload role carries, each with its reason (``reads_models``: the
    compile role's own artifact prefix)."""
    if puts_metrics:
        nag.acknowledge(
            role,
            nag.wildcard_resource_finding("*"),
            "cloudwatch:PutMetricData supports no resource-level permissions; the statement is "
            f"limited to the {contract.METRIC_NAMESPACE} namespace by the cloudwatch:namespace condition",
        )
    if reads_token_key:
        nag.acknowledge(
            role,
            nag.wildcard_resource_finding("arn:<AWS::Partition>:kms:<AWS::Region>:<AWS::AccountId>:key/*"),
            "kms:GetPublicKey of the token-signing key, which the inventory stack creates: IAM cannot name a key "
            f"by alias, so the kms:RequestAlias condition admits {naming.token_signing_key_alias(config)} only",
        )
    if not reads_models:
        return
    pattern = own_models_key_pattern(config)
    nag.acknowledge(
        role,
        nag.wildcard_resource_finding(f"arn:<AWS::Partition>:s3:::{naming.model_bucket_name(config)}/{pattern}"),
        f"the objects under this cluster's own prefix of the model bucket ({pattern}), which its compile jobs "
        "write as <model>/<revision>/<device>/ trees: no other cluster's prefix, no other bucket",
    )
