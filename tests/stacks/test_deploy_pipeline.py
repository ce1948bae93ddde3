"""DeployPipelineStack: self-mutation with the pinned CLI, `make synth`, one stage per pipeline
deployment in order with an approval before each after the first, the same stacks a workstation
deploy builds; the pull-request diff project (webhook filter, read-only role)."""

from __future__ import annotations

import json
import subprocess
from dataclasses import replace
from typing import Any

import pytest

from composition.app import DeploymentStacks
from plan.config import load_config
from plan.deployments import load_plan
from stacks.deploy_pipeline import SYNTH_COMMANDS, DeployPipelineStack, approval_step, cdk_cli_version
from stacks.pr_diff import PR_EVENTS, lookup_role_arn
from tests.conftest import FIXTURE_DEPLOYMENTS, PIPELINE_DEPLOYMENTS, ROOT, Synth, cdk_json_context, plan_context

STACK_ID = "EdgeDiffusion-DeployPipeline"
CONNECTION = "arn:aws:codeconnections:us-west-2:111111111111:connection/12345678-1234-1234-1234-123456789012"


@pytest.fixture(scope="module")
def stack(synth: Synth) -> DeployPipelineStack:
    found = synth.app.node.find_child(STACK_ID)
    assert isinstance(found, DeployPipelineStack)
    return found


@pytest.fixture(scope="module")
def template(synth: Synth, stack: DeployPipelineStack) -> dict[str, Any]:
    return synth.template_json(stack)


def resources(template: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in template["Resources"].items() if v["Type"] == kind}


def stages(template: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    (pipeline,) = resources(template, "AWS::CodePipeline::Pipeline").values()
    assert pipeline["Properties"]["PipelineType"] == "V2"
    return {stage["Name"]: stage["Actions"] for stage in pipeline["Properties"]["Stages"]}


def buildspec_of(template: dict[str, Any], action: dict[str, Any]) -> dict[str, Any]:
    project = template["Resources"][action["Configuration"]["ProjectName"]["Ref"]]
    return dict(json.loads(project["Properties"]["Source"]["BuildSpec"]))


def test_stage_order_self_mutates_before_deploying(template: dict[str, Any]) -> None:
    assert list(stages(template)) == ["Source", "Build", "UpdatePipeline", "Assets", *PIPELINE_DEPLOYMENTS]


def test_self_mutation_uses_the_pinned_cli(template: dict[str, Any]) -> None:
    (action,) = stages(template)["UpdatePipeline"]
    assert action["Name"] == "SelfMutate"
    spec = buildspec_of(template, action)
    version = json.loads((ROOT / "package.json").read_text())["devDependencies"]["aws-cdk"]
    assert cdk_cli_version() == version
    assert spec["phases"]["install"]["commands"] == [f"npm install -g aws-cdk@{version}"]
    assert spec["phases"]["build"]["commands"] == [f"cdk -a . deploy {STACK_ID} --require-approval=never --verbose"]


def test_synth_runs_make_synth_into_cdk_out(template: dict[str, Any]) -> None:
    (action,) = stages(template)["Build"]
    spec = buildspec_of(template, action)
    assert spec["phases"]["build"]["commands"] == ["make synth"] == list(SYNTH_COMMANDS)
    assert spec["artifacts"]["base-directory"] == "cdk.out"


def deployed_stacks(actions: list[dict[str, Any]]) -> set[str]:
    return {a["Configuration"]["StackName"] for a in actions if a["ActionTypeId"]["Provider"] == "CloudFormation"}


def test_manual_approval_before_every_stage_after_the_first(
    template: dict[str, Any], stack: DeployPipelineStack
) -> None:
    all_stages = stages(template)
    first, *later = stack.stages
    assert not any(a["ActionTypeId"]["Category"] == "Approval" for a in all_stages[first.deployment.name])
    for stage in later:
        actions = all_stages[stage.deployment.name]
        approvals = [a for a in actions if a["ActionTypeId"]["Category"] == "Approval"]
        assert [a["Name"] for a in approvals] == [approval_step(stage.deployment)]
        assert approvals[0]["RunOrder"] < min(a["RunOrder"] for a in actions if a not in approvals)


def test_each_stage_deploys_its_deployment_under_the_workstation_stack_names(
    template: dict[str, Any], stack: DeployPipelineStack
) -> None:
    all_stages = stages(template)
    for stage in stack.stages:
        stacks: DeploymentStacks = stage.stacks
        names = {s.stack_name for s in stacks.all}
        assert deployed_stacks(all_stages[stage.deployment.name]) == names
        assert names == {
            f"EdgeDiffusion-{stage.deployment.name}-{part}"
            for part in ("Network", "Cluster", "Inventory", "Observability")
        }


def test_a_stage_has_the_config_a_workstation_deploy_of_the_same_file_gets(stack: DeployPipelineStack) -> None:
    """Both read cdk.json and deployments/<name>.json, nothing else: the same config, so
    ``add_deployment_stacks`` builds the same stacks (the stage's come from that function)."""
    for stage in stack.stages:
        name = stage.deployment.name
        alone = load_plan({**plan_context(), "deployment": name, "pipeline": {}}, FIXTURE_DEPLOYMENTS)
        assert alone.workstation is not None
        # Everything but the pipeline's own key, which the workstation synth left empty on purpose.
        assert replace(alone.workstation.config, pipeline=stage.deployment.config.pipeline) == stage.deployment.config
        assert isinstance(stage.stacks, DeploymentStacks) and stage.stacks.deployment == stage.deployment


def test_pipeline_deployments_refuse_command_line_overrides() -> None:
    from plan.config import ConfigError

    with pytest.raises(ConfigError, match="no -c overrides for staging"):
        load_plan({**plan_context(), "deployment": "staging", "clientCidrs": "10.0.0.0/8"}, FIXTURE_DEPLOYMENTS)


def test_pipeline_artifacts_are_kms_encrypted(template: dict[str, Any]) -> None:
    (pipeline,) = resources(template, "AWS::CodePipeline::Pipeline").values()
    assert pipeline["Properties"]["ArtifactStore"]["EncryptionKey"]["Type"] == "KMS"
    for project in resources(template, "AWS::CodeBuild::Project").values():
        assert "EncryptionKey" in project["Properties"]


def test_no_pull_request_project_for_an_s3_source(template: dict[str, Any]) -> None:
    webhooks = [p for p in resources(template, "AWS::CodeBuild::Project").values() if "Triggers" in p["Properties"]]
    assert webhooks == []


def test_context_file_is_committed_and_empty() -> None:
    assert json.loads((ROOT / "cdk.context.json").read_text()) == {}
    tracked = subprocess.run(
        ["git", "ls-files", "--error-unmatch", "cdk.context.json"], cwd=ROOT, capture_output=True, check=False
    )
    assert tracked.returncode == 0


# --- pull-request diffs (a GitHub source), in a small stack of their own -----------------------


@pytest.fixture(scope="module")
def pr_template() -> dict[str, Any]:
    import aws_cdk as cdk
    from aws_cdk.assertions import Template
    from cdk_nag import AwsSolutionsChecks

    from stacks.ci_storage import CiStorage
    from stacks.pr_diff import PullRequestDiff, acknowledge_pr_diff_findings

    context = {**cdk_json_context(), "pipeline": {"source": "codeconnections", "connectionArn": CONNECTION}}
    context["pipeline"]["repository"] = "acme/edge-diffusion"
    context["pipeline"]["githubTokenSecret"] = "edge-diffusion/github-token"
    config = load_config(context)
    app = cdk.App(context={k: v for k, v in cdk_json_context().items() if k.startswith("@")})
    stack = cdk.Stack(app, "PrDiff", env=cdk.Environment(account=config.account, region=config.region))
    storage = CiStorage(stack, "Storage")
    diff = PullRequestDiff(
        stack,
        "PullRequestDiff",
        pipeline=config.pipeline,
        stack_selectors=[STACK_ID, f"{STACK_ID}/**"],
        encryption_key=storage.key,
        log_group=storage.log_group,
    )
    acknowledge_pr_diff_findings(diff)
    cdk.Validations.of(app).add_plugins(AwsSolutionsChecks(app))
    app.synth()  # raises on any unacknowledged cdk-nag finding
    return dict(Template.from_stack(stack).to_json())


def pr_project(template: dict[str, Any]) -> dict[str, Any]:
    (project,) = [p for p in resources(template, "AWS::CodeBuild::Project").values() if "Triggers" in p["Properties"]]
    return project


def test_pull_request_webhook_filter(pr_template: dict[str, Any]) -> None:
    triggers = pr_project(pr_template)["Properties"]["Triggers"]
    assert triggers["Webhook"] is True
    (group,) = triggers["FilterGroups"]
    filters = {f["Type"]: f["Pattern"] for f in group}
    assert (
        set(filters["EVENT"].split(", "))
        == {e.value for e in PR_EVENTS}
        == {
            "PULL_REQUEST_CREATED",
            "PULL_REQUEST_UPDATED",
            "PULL_REQUEST_REOPENED",
        }
    )
    assert filters["BASE_REF"] == "refs/heads/main"
    assert triggers["PullRequestBuildPolicy"]["RequiresCommentApproval"] == "FORK_PULL_REQUESTS"


def test_pull_request_source_reports_through_the_connection(pr_template: dict[str, Any]) -> None:
    source = pr_project(pr_template)["Properties"]["Source"]
    assert source["Type"] == "GITHUB" and source["Location"] == "https://github.com/acme/edge-diffusion.git"
    assert source["ReportBuildStatus"] is True
    assert source["Auth"] == {"Type": "CODECONNECTIONS", "Resource": CONNECTION}
    spec = json.loads(source["BuildSpec"])
    (diff,) = [c for c in spec["phases"]["build"]["commands"] if "cdk diff" in c]
    assert "--no-change-set" in diff


def test_pull_request_role_can_only_assume_the_lookup_role(pr_template: dict[str, Any]) -> None:
    statements = [
        s
        for p in resources(pr_template, "AWS::IAM::Policy").values()
        for s in p["Properties"]["PolicyDocument"]["Statement"]
    ]
    sts = [s for s in statements if any(str(a).startswith("sts:") for a in _list(s["Action"]))]
    assert [(s["Action"], s["Resource"]) for s in sts] == [
        ("sts:AssumeRole", lookup_role_arn("111111111111", "us-west-2"))
    ]
    allowed = {a.split(":")[0] for s in statements for a in _list(s["Action"])}
    assert allowed <= {"logs", "codebuild", "kms", "sts", "codeconnections", "codestar-connections", "secretsmanager"}
    assert not any(a.startswith(("cloudformation:", "iam:", "s3:Put")) for s in statements for a in _list(s["Action"]))
    env = {v["Name"]: v for v in pr_project(pr_template)["Properties"]["Environment"]["EnvironmentVariables"]}
    assert env["GITHUB_TOKEN"]["Type"] == "SECRETS_MANAGER"
    assert env["STACKS"]["Value"] == f"{STACK_ID} {STACK_ID}/**"


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]
