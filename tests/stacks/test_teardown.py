"""What a deployment's teardown leaves behind is what the README says it leaves behind."""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any

import pytest

from plan.deployments import PIPELINE, WORKSTATION, stack_selectors
from tests.conftest import ROOT

# What a deployment's stacks may keep on delete: (resource type, a part of its logical id) and the
# words of the README's teardown table that name it. Anything else retained (a KMS key, say) is a
# leak nobody was told about.
DOCUMENTED_RETAINED = {
    ("AWS::Logs::LogGroup", "FlowLogGroup"): "the VPC flow-log group",
    ("AWS::Logs::LogGroup", "AccessLogs"): "the inventory API's access-log and handler log groups",
    ("AWS::Logs::LogGroup", "HandlerLogs"): "the inventory API's access-log and handler log groups",
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


def test_make_destroy_names_every_stack_of_a_deployment_on_its_deploy_path(synth: Any) -> None:
    """``cdk destroy`` selects stacks by their construct path: a pipeline deployment's stacks sit in
    its stage, so their bare names match nothing (``No stacks match the name(s)``)."""
    deployments = [synth.stacks.workstation, *synth.stacks.pipeline.values()]
    assert {d.deployment.deployed_by for d in deployments} == {WORKSTATION, PIPELINE}
    for stacks in deployments:
        assert set(stack_selectors(stacks.deployment)) == {s.node.path for s in stacks.all}, stacks.deployment.name


def make_n(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["make", "-n", *args], cwd=ROOT, capture_output=True, text=True, check=False)


@pytest.mark.parametrize("target", ["synth", "manifests", "destroy"])
def test_make_targets_take_the_deployment_they_are_given(target: str) -> None:
    run = make_n(target, "DEPLOYMENT=staging")
    assert run.returncode == 0, run.stderr
    assert "-c deployment=staging" in run.stdout


@pytest.mark.parametrize("target", ["serve", "bench", "simulate", "pytest", "lint", "clean"])
def test_make_targets_that_act_on_no_deployment_refuse_one(target: str) -> None:
    run = make_n(target, "DEPLOYMENT=staging")
    assert run.returncode == 2
    (line,) = run.stderr.strip().splitlines()
    assert f"make {target} acts on no deployment: drop DEPLOYMENT=staging" in line


def test_the_stack_of_each_table_a_cluster_writes_comes_before_it_and_goes_after_it(synth: Any) -> None:
    """The inventory publisher writes its table by name: the table's stack is deployed first (no
    publisher retrying writes to a missing table) and deleted last (no writes while it goes)."""
    for deployment in [synth.stacks.workstation, *synth.stacks.pipeline.values()]:
        cluster = json.dumps(synth.template_json(deployment.cluster))
        for stack in deployment.all:
            tables = [
                r["Properties"]["TableName"]
                for r in synth.template_json(stack)["Resources"].values()
                if r["Type"] == "AWS::DynamoDB::Table" and isinstance(r["Properties"].get("TableName"), str)
            ]
            for table in (t for t in tables if t in cluster):
                assert stack in deployment.cluster.dependencies, f"{deployment.cluster.stack_name} writes {table}"


@pytest.mark.parametrize("name", ["STACKS", "BUILD_STACKS", "DEPLOYMENT_STACKS"])
def test_an_environment_variable_does_not_break_make(name: str) -> None:
    """CodeBuild's pull-request diff sets STACKS in the environment; make exports a variable that
    comes from the environment with the Makefile's value, into every recipe, make deps included."""
    run = subprocess.run(
        ["make", "-n", "deps", "synth"], cwd=ROOT, env={**os.environ, name: "X/**"}, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
