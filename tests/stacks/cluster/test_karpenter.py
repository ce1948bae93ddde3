"""Karpenter's policies are read from upstream's template; the why-wildcard reasons stay in step with it."""

from __future__ import annotations

import copy
import json
from typing import Any, cast

import pytest

from stacks.cluster import karpenter
from stacks.cluster.karpenter import (
    WILDCARD_REASONS,
    UpstreamTemplateError,
    upstream_controller_policies,
    upstream_resources,
    wildcard_reasons,
)

NEW_STATEMENT = {
    "Sid": "AllowSomethingNew",
    "Effect": "Allow",
    "Resource": "arn:${AWS::Partition}:ec2:${AWS::Region}:*:volume/*",
    "Action": "ec2:AttachVolume",
}


def test_every_upstream_wildcard_has_a_reason_and_every_reason_a_wildcard() -> None:
    reasons = wildcard_reasons(upstream_controller_policies())
    assert set(reasons) == {
        "NodeLifecyclePolicy",
        "IAMIntegrationPolicy",
        "EKSIntegrationPolicy",
        "InterruptionPolicy",
        "ZonalShiftPolicy",
        "ResourceDiscoveryPolicy",
    }
    assert reasons["EKSIntegrationPolicy"] == reasons["InterruptionPolicy"] == {}  # no wildcard, no reason needed
    assert "AllowPassingInstanceRole" not in WILDCARD_REASONS
    # One acknowledgement per resource, naming every statement that grants it.
    instance = reasons["NodeLifecyclePolicy"]["arn:${AWS::Partition}:ec2:${AWS::Region}:*:instance/*"]
    assert [part.split(":")[0] for part in instance.split(" | ")] == [
        "AllowScopedEC2InstanceActionsWithTags",
        "AllowScopedResourceCreationTagging",
        "AllowScopedResourceTagging",
        "AllowScopedDeletion",
    ]


def test_a_new_upstream_sid_with_a_wildcard_and_no_reason_fails() -> None:
    policies = upstream_controller_policies()
    policies["NodeLifecyclePolicy"].append(NEW_STATEMENT)
    message = r"NodeLifecyclePolicy grants .* in statement AllowSomethingNew, and .*WILDCARD_REASONS has no reason"
    with pytest.raises(UpstreamTemplateError, match=message):
        wildcard_reasons(policies)
    assert wildcard_reasons(policies, {**WILDCARD_REASONS, "AllowSomethingNew": "because"})


def test_a_reason_upstream_no_longer_needs_fails() -> None:
    with pytest.raises(UpstreamTemplateError, match="explains AllowSomethingOld"):
        wildcard_reasons(upstream_controller_policies(), {**WILDCARD_REASONS, "AllowSomethingOld": "stale"})


def test_a_new_upstream_sid_without_a_reason_fails_synth(monkeypatch: pytest.MonkeyPatch) -> None:
    """The construct checks before creating anything, so synth stops with the message."""
    import aws_cdk as cdk
    from aws_cdk import aws_eks_v2 as eks

    from plan.config import load_config
    from tests.conftest import cdk_json_context

    resources = copy.deepcopy(dict(upstream_resources()))
    document = json.loads(resources["ResourceDiscoveryPolicy"]["Properties"]["PolicyDocument"]["Fn::Sub"])
    document["Statement"].append(NEW_STATEMENT)
    resources["ResourceDiscoveryPolicy"]["Properties"]["PolicyDocument"]["Fn::Sub"] = json.dumps(document)
    monkeypatch.setattr(karpenter, "upstream_resources", lambda: resources)

    config = load_config(cdk_json_context())
    stack = cdk.Stack(cdk.App(), "Probe", env=cdk.Environment(account=config.account, region=config.region))
    cluster = eks.Cluster.from_cluster_attributes(stack, "Cluster", cluster_name=config.cluster_name)
    with pytest.raises(UpstreamTemplateError, match="AllowSomethingNew"):
        karpenter.KarpenterInfrastructure(stack, "Karpenter", config=config, cluster=cast(Any, cluster))
