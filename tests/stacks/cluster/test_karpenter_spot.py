"""serving.spot: the Karpenter controller may create the EC2 Spot service-linked role, and only that."""

from __future__ import annotations

from typing import Any

from tests.conftest import Synth

SID = "AllowSpotServiceLinkedRoleCreation"


def spot_statements(template: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        statement
        for resource in template["Resources"].values()
        if resource["Type"] == "AWS::IAM::ManagedPolicy"
        for statement in resource["Properties"]["PolicyDocument"]["Statement"]
        if statement.get("Sid") == SID
    ]


def test_the_spot_service_linked_role_policy_follows_serving_spot(synth: Synth) -> None:
    stack = synth.stacks.cluster
    statements = spot_statements(synth.template_json(stack))
    assert len(statements) == (1 if stack.config.serving.spot else 0)
    for statement in statements:
        assert statement["Action"] == "iam:CreateServiceLinkedRole"
        assert statement["Condition"] == {"StringEquals": {"iam:AWSServiceName": "spot.amazonaws.com"}}
        resource = "".join(part if isinstance(part, str) else "" for part in statement["Resource"]["Fn::Join"][1])
        assert resource.endswith(":role/aws-service-role/spot.amazonaws.com/AWSServiceRoleForEC2Spot")
