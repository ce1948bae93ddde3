"""RegistryStack: image repository and model bucket settings a security review asks about."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aws_cdk.assertions import Match

from plan import naming
from tests.conftest import Synth


@pytest.fixture(scope="module")
def template(synth: Synth) -> dict[str, Any]:
    return synth.template_json(synth.stacks.registry)


def of_type(template: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {lid: res for lid, res in template["Resources"].items() if res["Type"] == kind}


def buckets(template: dict[str, Any]) -> tuple[tuple[str, dict[str, Any]], tuple[str, dict[str, Any]]]:
    """(model bucket, access log bucket), each as (logical id, resource)."""
    all_buckets = of_type(template, "AWS::S3::Bucket")
    (model,) = [(lid, b) for lid, b in all_buckets.items() if "BucketName" in b["Properties"]]
    (log,) = [(lid, b) for lid, b in all_buckets.items() if lid != model[0]]
    return model, log


def test_repository_scans_on_push_with_immutable_tags_and_encryption(synth: Synth, template: dict[str, Any]) -> None:
    (repo,) = of_type(template, "AWS::ECR::Repository").values()
    props = repo["Properties"]
    assert props["RepositoryName"] == naming.IMAGE_REPOSITORY_NAME
    assert props["ImageScanningConfiguration"] == {"ScanOnPush": True}
    assert props["ImageTagMutability"] == "IMMUTABLE"
    assert props["EncryptionConfiguration"]["EncryptionType"] in ("KMS", "AES256")
    assert repo["DeletionPolicy"] == "Retain"


def test_repository_lifecycle_expires_untagged_and_caps_tagged_images(template: dict[str, Any]) -> None:
    (repo,) = of_type(template, "AWS::ECR::Repository").values()
    rules = json.loads(repo["Properties"]["LifecyclePolicy"]["LifecyclePolicyText"])["rules"]
    by_status = {rule["selection"]["tagStatus"]: rule["selection"] for rule in rules}
    untagged = by_status["untagged"]
    assert untagged["countType"] == "sinceImagePushed" and 1 <= untagged["countNumber"] <= 14
    tagged = by_status["tagged"]
    assert tagged["countType"] == "imageCountMoreThan" and tagged["countNumber"] >= 5


def test_model_bucket_is_versioned_encrypted_private_and_logged(synth: Synth, template: dict[str, Any]) -> None:
    (_, model), (log_id, _) = buckets(template)
    props = model["Properties"]
    assert props["BucketName"] == naming.model_bucket_name(synth.stacks.registry.config)
    assert props["VersioningConfiguration"] == {"Status": "Enabled"}
    assert props["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]["ServerSideEncryptionByDefault"][
        "SSEAlgorithm"
    ] in ("AES256", "aws:kms")
    assert props["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True,
        "BlockPublicPolicy": True,
        "IgnorePublicAcls": True,
        "RestrictPublicBuckets": True,
    }
    assert props["LoggingConfiguration"]["DestinationBucketName"] == {"Ref": log_id}
    assert model["DeletionPolicy"] == "Retain" and model["UpdateReplacePolicy"] == "Retain"


@pytest.mark.parametrize("which", ["model", "log"])
def test_buckets_deny_requests_without_tls(synth: Synth, template: dict[str, Any], which: str) -> None:
    model, log = buckets(template)
    bucket_id = (model if which == "model" else log)[0]
    synth.template(synth.stacks.registry).has_resource_properties(
        "AWS::S3::BucketPolicy",
        {
            "Bucket": {"Ref": bucket_id},
            "PolicyDocument": {
                "Statement": Match.array_with(
                    [
                        Match.object_like(
                            {
                                "Effect": "Deny",
                                "Action": "s3:*",
                                "Condition": {"Bool": {"aws:SecureTransport": "false"}},
                                "Principal": {"AWS": "*"},
                            }
                        )
                    ]
                )
            },
        },
    )


def test_access_log_bucket_is_encrypted_private_and_retained(template: dict[str, Any]) -> None:
    _, (_, log) = buckets(template)
    props = log["Properties"]
    assert props["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]["ServerSideEncryptionByDefault"] == {
        "SSEAlgorithm": "AES256"  # S3 server access log delivery supports SSE-S3 only
    }
    assert all(props["PublicAccessBlockConfiguration"].values())
    assert log["DeletionPolicy"] == "Retain"
