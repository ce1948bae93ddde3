"""The server access-log bucket every bucket of the app logs to, secured alike everywhere."""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_s3 as s3
from constructs import Construct

from stacks import nag


def access_log_bucket(scope: Construct, construct_id: str, *, expiration_days: int, logs_of: str) -> s3.Bucket:
    """A versioned, SSL-only, private bucket for S3 server access logs of ``logs_of``.

    SSE-S3 because it is the only encryption S3 log delivery supports; it is itself not logged
    (acknowledged), since logging it into itself would log its own deliveries without end.
    """
    bucket = s3.Bucket(
        scope,
        construct_id,
        encryption=s3.BucketEncryption.S3_MANAGED,
        enforce_ssl=True,
        block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
        object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
        versioned=True,
        lifecycle_rules=[
            s3.LifecycleRule(
                expiration=cdk.Duration.days(expiration_days),
                noncurrent_version_expiration=cdk.Duration.days(1),
            )
        ],
        removal_policy=cdk.RemovalPolicy.RETAIN,
    )
    nag.acknowledge(
        bucket,
        "AwsSolutions-S1",
        f"This is the server access log bucket of {logs_of}; logging it into itself would log its own "
        "log deliveries without end.",
    )
    return bucket
