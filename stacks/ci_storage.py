"""Storage every pipeline stack needs: an access-log bucket, a KMS-encrypted artifact bucket, a
log group with retention. One place, so the image and deploy pipelines are secured alike."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import aws_cdk as cdk
from aws_cdk import aws_kms as kms
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from constructs import Construct, IConstruct

from stacks import nag
from stacks.access_logs import access_log_bucket

# Wildcard actions of CDK's read/write grants on a KMS-encrypted bucket.
ARTIFACT_GRANT_ACTIONS: Final = (
    "kms:GenerateDataKey*",
    "kms:ReEncrypt*",
    "s3:Abort*",
    "s3:DeleteObject*",
    "s3:GetBucket*",
    "s3:GetObject*",
    "s3:List*",
)
# config.LOG_RETENTION_DAYS (the periods CloudWatch Logs accepts) -> the CDK enum.
RETENTION_DAYS: Final = {
    1: logs.RetentionDays.ONE_DAY,
    3: logs.RetentionDays.THREE_DAYS,
    5: logs.RetentionDays.FIVE_DAYS,
    7: logs.RetentionDays.ONE_WEEK,
    14: logs.RetentionDays.TWO_WEEKS,
    30: logs.RetentionDays.ONE_MONTH,
    60: logs.RetentionDays.TWO_MONTHS,
    90: logs.RetentionDays.THREE_MONTHS,
    120: logs.RetentionDays.FOUR_MONTHS,
    150: logs.RetentionDays.FIVE_MONTHS,
    180: logs.RetentionDays.SIX_MONTHS,
    365: logs.RetentionDays.ONE_YEAR,
    400: logs.RetentionDays.THIRTEEN_MONTHS,
    545: logs.RetentionDays.EIGHTEEN_MONTHS,
    731: logs.RetentionDays.TWO_YEARS,
    1096: logs.RetentionDays.THREE_YEARS,
    1827: logs.RetentionDays.FIVE_YEARS,
    2192: logs.RetentionDays.SIX_YEARS,
    2557: logs.RetentionDays.SEVEN_YEARS,
}


@dataclass(frozen=True)
class CiStorageProps:
    """Retention of CI data; defaults in one place."""

    log_retention_days: int = 90  # from config.pipeline.log_retention_days
    artifact_days: int = 30  # pipeline artifacts are inputs of past runs only
    access_log_days: int = 365


class CiStorage(Construct):
    """KMS key, access-log bucket, artifact bucket and build log group of one pipeline stack."""

    def __init__(self, scope: Construct, construct_id: str, *, props: CiStorageProps | None = None) -> None:
        super().__init__(scope, construct_id)
        props = props or CiStorageProps()
        self.props = props

        self.key = kms.Key(
            self,
            "Key",
            description=f"Pipeline artifacts and builds of {cdk.Stack.of(self).stack_name}",
            enable_key_rotation=True,
            removal_policy=cdk.RemovalPolicy.RETAIN,
        )
        self.access_log_bucket = access_log_bucket(
            self, "AccessLogBucket", expiration_days=props.access_log_days, logs_of="the pipeline buckets"
        )
        self.artifact_bucket = self.encrypted_bucket("ArtifactBucket", expire_days=props.artifact_days)
        self.log_group = logs.LogGroup(
            self,
            "BuildLogs",
            retention=RETENTION_DAYS[props.log_retention_days],
            removal_policy=cdk.RemovalPolicy.RETAIN,
        )

    def encrypted_bucket(
        self, construct_id: str, *, expire_days: int | None = None, event_bridge_enabled: bool = False
    ) -> s3.Bucket:
        """A versioned, KMS-encrypted, SSL-only bucket logging to the access-log bucket."""
        rules = [s3.LifecycleRule(abort_incomplete_multipart_upload_after=cdk.Duration.days(7))]
        if expire_days:
            rules.append(
                s3.LifecycleRule(
                    expiration=cdk.Duration.days(expire_days),
                    noncurrent_version_expiration=cdk.Duration.days(expire_days),
                )
            )
        bucket = s3.Bucket(
            self,
            construct_id,
            encryption=s3.BucketEncryption.KMS,
            encryption_key=self.key,
            bucket_key_enabled=True,
            enforce_ssl=True,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            versioned=True,
            server_access_logs_bucket=self.access_log_bucket,
            server_access_logs_prefix=f"{construct_id}/",
            lifecycle_rules=rules,
            removal_policy=cdk.RemovalPolicy.RETAIN,
        )
        if event_bridge_enabled:
            # Set on the L1 resource: the L2 flag deploys a notification custom resource (a Lambda).
            cfn = bucket.node.default_child
            assert isinstance(cfn, s3.CfnBucket)
            cfn.notification_configuration = s3.CfnBucket.NotificationConfigurationProperty(
                event_bridge_configuration=s3.CfnBucket.EventBridgeConfigurationProperty(event_bridge_enabled=True)
            )
        return bucket

    def acknowledge_artifact_access(self, construct: IConstruct) -> None:
        """The wildcards of CDK's grants on the artifact bucket and key (CodePipeline reads and
        writes run artifacts under generated names); acknowledged on ``construct`` and children."""
        stack = cdk.Stack.of(self)
        bucket_id = stack.get_logical_id(self.artifact_bucket.node.default_child)  # type: ignore[arg-type]
        reason = (
            "CDK's grant for pipeline artifacts: CodePipeline writes each run's artifacts under generated "
            "keys of this stack's own KMS-encrypted artifact bucket, and the KMS data-key actions are the "
            "ones S3 needs for that bucket's key."
        )
        for action in ARTIFACT_GRANT_ACTIONS:
            nag.acknowledge(construct, f"AwsSolutions-IAM5[Action::{action}]", reason)
        nag.acknowledge(construct, nag.wildcard_resource_finding(f"<{bucket_id}.Arn>/*"), reason)
