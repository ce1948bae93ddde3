"""cdk-nag v3 acknowledgements: one finding at a time, each with the reason a reviewer reads.

cdk-nag reports IAM findings per policy ARN (IAM4) and per wildcard resource (IAM5); these
helpers build those finding ids so acknowledgements can be generated from the same data
(policy tables, vendored policy documents) that the permissions are generated from.
"""

from __future__ import annotations

from collections.abc import Iterable

import aws_cdk as cdk
from constructs import IConstruct


def acknowledge(construct: IConstruct, finding: str, reason: str) -> None:
    """Acknowledge one finding on ``construct`` (and its children)."""
    cdk.Validations.of(construct).acknowledge(cdk.Acknowledgment(id=finding, reason=reason))


def aws_managed_policy_finding(policy_name: str) -> str:
    """IAM4 finding id for an AWS managed policy (``service-role/...`` names included)."""
    return f"AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/{policy_name}]"


def wildcard_resource_finding(resource: str) -> str:
    """IAM5 finding id for a resource with ``*`` in it, as cdk-nag renders it."""
    return f"AwsSolutions-IAM5[Resource::{resource}]"


def wildcard_resources(resources: Iterable[str]) -> list[str]:
    """The distinct resources with a wildcard, in first-seen order."""
    return list(dict.fromkeys(r for r in resources if "*" in r))
