"""RegistryStack: where the build puts what the cluster runs.

One ECR repository holds every serving image variant (tagged ``<version>-<variant>``), and
one S3 bucket holds the compiled model artifacts the build caches into image layers. Both
outlive the stack (retained on delete): they hold build outputs, not infrastructure.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aws_cdk as cdk
from aws_cdk import aws_ecr as ecr
from aws_cdk import aws_s3 as s3
from constructs import Construct

from plan import naming
from plan.config import AppConfig
from stacks.access_logs import access_log_bucket


@dataclass(frozen=True)
class RetentionProps:
    """How long the registry keeps things; defaults in one place."""

    # A release pushes ~14 tags (per-arch serve and runtime images, their manifest lists): ~10 releases.
    tagged_images_kept: int = 150
    untagged_image_days: int = 3  # untagged = superseded layers of failed or re-run pushes
    access_log_days: int = 365
    noncurrent_model_days: int = 90  # old versions of overwritten model artifacts


class RegistryStack(cdk.Stack):
    """ECR repository for the serving images and S3 bucket for compiled model artifacts."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: AppConfig,
        retention: RetentionProps | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(scope, construct_id, **kwargs)
        self.config = config
        retention = retention or RetentionProps()

        self.repository = ecr.Repository(
            self,
            "ImageRepository",
            repository_name=naming.IMAGE_REPOSITORY_NAME,
            image_scan_on_push=True,
            image_tag_mutability=ecr.TagMutability.IMMUTABLE,
            encryption=ecr.RepositoryEncryption.KMS,  # AWS managed key for ECR
            removal_policy=cdk.RemovalPolicy.RETAIN,
            lifecycle_rules=[
                ecr.LifecycleRule(
                    rule_priority=1,
                    description=f"expire untagged images after {retention.untagged_image_days} days",
                    tag_status=ecr.TagStatus.UNTAGGED,
                    max_image_age=cdk.Duration.days(retention.untagged_image_days),
                ),
                ecr.LifecycleRule(
                    rule_priority=2,
                    description=f"keep the last {retention.tagged_images_kept} tagged images",
                    tag_status=ecr.TagStatus.TAGGED,
                    tag_pattern_list=["*"],
                    max_image_count=retention.tagged_images_kept,
                ),
            ],
        )

        self.access_log_bucket = access_log_bucket(
            self, "AccessLogBucket", expiration_days=retention.access_log_days, logs_of="the model bucket"
        )

        self.model_bucket = s3.Bucket(
            self,
            "ModelBucket",
            bucket_name=naming.model_bucket_name(config),
            encryption=s3.BucketEncryption.S3_MANAGED,
            enforce_ssl=True,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            versioned=True,
            server_access_logs_bucket=self.access_log_bucket,
            server_access_logs_prefix="model-bucket/",
            lifecycle_rules=[
                s3.LifecycleRule(
                    noncurrent_version_expiration=cdk.Duration.days(retention.noncurrent_model_days),
                    abort_incomplete_multipart_upload_after=cdk.Duration.days(7),
                )
            ],
            removal_policy=cdk.RemovalPolicy.RETAIN,
        )
