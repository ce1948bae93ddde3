"""What a deployment's teardown leaves behind is what the README says it leaves behind."""

from __future__ import annotations

from typing import Any

from tests.conftest import ROOT

# What a deployment's stacks may keep on delete: (resource type, a part of its logical id) and the
# words of the README's teardown table that name it. Anything else retained (a KMS key, say) is a
# leak nobody was told about.
DOCUMENTED_RETAINED = {
    ("AWS::Logs::LogGroup", "FlowLogGroup"): "the VPC flow-log group",
    ("AWS::Cognito::UserPool", "UserPool"): "the Cognito user pool",
    ("AWS::ApiGateway::Account", "Account"): "the API Gateway logging role of the account and Region",
    ("AWS::IAM::Role", "CloudWatchRole"): "the API Gateway logging role of the account and Region",
}


def documented(kind: str, logical_id: str) -> str | None:
    return next((words for (k, part), words in DOCUMENTED_RETAINED.items() if k == kind and part in logical_id), None)


def retained(template: dict[str, Any]) -> dict[str, str]:
    return {
        logical_id: resource["Type"]
        for logical_id, resource in template["Resources"].items()
        if resource.get("DeletionPolicy", "Delete") in ("Retain", "RetainExceptOnCreate")
    }


def test_a_deployment_keeps_only_what_the_readme_lists(synth: Any) -> None:
    teardown = (ROOT / "README.md").read_text().split("### Teardown", 1)[1].split("\n### ", 1)[0]
    kept: dict[str, str] = {}
    for stack in synth.stacks.workstation.all:
        kept |= {f"{stack.stack_name}/{lid}": kind for lid, kind in retained(synth.template_json(stack)).items()}
    undocumented = {name: kind for name, kind in kept.items() if documented(kind, name) is None}
    assert not undocumented, f"retained on delete but not in the README's teardown table: {undocumented}"
    for name, kind in kept.items():
        assert str(documented(kind, name)) in teardown, (name, kind)
