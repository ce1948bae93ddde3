"""The Bottlerocket data-volume snapshot stage of the image pipeline (nodeImage.buildSnapshot): a
project that may launch, stop, snapshot and terminate only one kind of tagged instance, and a
builder network with no route out but its VPC endpoints."""

from __future__ import annotations

import json
from typing import Any

import aws_cdk as cdk
import pytest
from cdk_nag import AwsSolutionsChecks

from plan import versions
from plan.bottlerocket import BOTTLEROCKET_ECR_ACCOUNTS
from plan.config import AppConfig, load_config
from stacks.codebuild_projects import ECR_PUSH_ACTIONS
from stacks.image_pipeline import RUNTIME_STAGE, SERVING_STAGE, ImagePipelineStack
from stacks.registry import RegistryStack
from stacks.snapshot_builder import (
    DATA_VOLUME_SNAPSHOT_PARAMETER,
    SNAPSHOT_ACTION,
    SNAPSHOT_ENDPOINTS,
    SNAPSHOT_RUN_ORDER,
    SNAPSHOT_SPEC,
    SNAPSHOT_STAGE,
    SNAPSHOT_TAG_KEY,
    SNAPSHOT_TAG_VALUE,
    SnapshotProps,
)
from tests.conftest import cdk_json_context, plan_context
from tests.stacks.pipeline_templates import action_projects, as_list, pipeline_stages, policy_statements_of, resources


@pytest.fixture(scope="module")
def snapshot_config() -> AppConfig:
    return load_config({**plan_context(), "nodeImage": {"family": "bottlerocket", "buildSnapshot": True}})


@pytest.fixture(scope="module")
def snapshot_template(snapshot_config: AppConfig) -> dict[str, Any]:
    """The image pipeline with the snapshot stage, synthesized alone with cdk-nag (a finding fails it)."""
    app = cdk.App(context={k: v for k, v in cdk_json_context().items() if k.startswith("@")})
    env = cdk.Environment(account=snapshot_config.account, region=snapshot_config.region)
    registry = RegistryStack(app, "Registry", config=snapshot_config, env=env)
    stack = ImagePipelineStack(app, "Images", config=snapshot_config, repository=registry.repository, env=env)
    cdk.Validations.of(app).add_plugins(AwsSolutionsChecks(app))
    return dict(app.synth().get_stack_by_name(stack.stack_name).template)


def snapshot_project(template: dict[str, Any]) -> dict[str, Any]:
    action, project = action_projects(template)[SNAPSHOT_ACTION]
    assert action["RunOrder"] == SNAPSHOT_RUN_ORDER
    return project


def statements_by_sid(template: dict[str, Any], project: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["Sid"]: s for s in policy_statements_of(template, project) if "Sid" in s}


def test_the_snapshot_stage_follows_the_serving_images(snapshot_template: dict[str, Any]) -> None:
    assert list(pipeline_stages(snapshot_template)) == ["Source", RUNTIME_STAGE, SERVING_STAGE, SNAPSHOT_STAGE]
    (action,) = pipeline_stages(snapshot_template)[SNAPSHOT_STAGE]["Actions"]
    assert action["Name"] == SNAPSHOT_ACTION


def test_the_snapshot_project_runs_the_script_unprivileged(
    snapshot_template: dict[str, Any], snapshot_config: AppConfig
) -> None:
    project = snapshot_project(snapshot_template)["Properties"]
    assert project["Source"]["BuildSpec"] == SNAPSHOT_SPEC
    assert project["Environment"]["PrivilegedMode"] is False and project["Environment"]["ComputeType"] == (
        "BUILD_GENERAL1_SMALL"
    )
    env = {v["Name"]: v["Value"] for v in project["Environment"]["EnvironmentVariables"]}
    assert env["SNAPSHOT_PARAMETER"] == DATA_VOLUME_SNAPSHOT_PARAMETER
    assert (
        env["AMI_PARAMETER"]
        == f"/aws/service/bottlerocket/aws-k8s-{versions.KUBERNETES_VERSION}/x86_64/latest/image_id"
    )
    assert {"Ref": next(k for k in resources(snapshot_template, "AWS::EC2::Subnet"))} == env["SUBNET_ID"]
    assert env["INSTANCE_PROFILE"] == {"Ref": next(iter(resources(snapshot_template, "AWS::IAM::InstanceProfile")))}


def test_the_project_launches_only_tagged_imdsv2_encrypted_instances_of_one_kind(
    snapshot_template: dict[str, Any],
) -> None:
    by_sid = statements_by_sid(snapshot_template, snapshot_project(snapshot_template))
    tag = {f"aws:RequestTag/{SNAPSHOT_TAG_KEY}": SNAPSHOT_TAG_VALUE}
    launch = by_sid["LaunchTaggedInstance"]
    assert launch["Action"] == "ec2:RunInstances"
    conditions = launch["Condition"]["StringEquals"]
    assert {k: conditions[k] for k in tag} == tag
    assert conditions["ec2:MetadataHttpTokens"] == "required"
    assert conditions["ec2:InstanceType"] == SnapshotProps().instance_type
    (profile,) = resources(snapshot_template, "AWS::IAM::InstanceProfile")
    assert conditions["ec2:InstanceProfile"] == {"Fn::GetAtt": [profile, "Arn"]}
    volumes = by_sid["LaunchEncryptedVolumes"]
    assert volumes["Condition"] == {"StringEquals": tag, "Bool": {"ec2:Encrypted": "true"}}
    network = json.dumps(by_sid["LaunchInBuilderNetwork"]["Resource"])
    assert ":subnet/" in network and ":security-group/" in network and "*" not in network
    for sid in ("StopAndTerminateTagged", "SnapshotTaggedVolume"):
        assert by_sid[sid]["Condition"] == {"StringEquals": {f"aws:ResourceTag/{SNAPSHOT_TAG_KEY}": SNAPSHOT_TAG_VALUE}}
    assert sorted(by_sid["StopAndTerminateTagged"]["Action"]) == ["ec2:StopInstances", "ec2:TerminateInstances"]
    assert by_sid["CreateTaggedSnapshot"]["Condition"] == {"StringEquals": tag}
    assert by_sid["TagOnCreate"]["Condition"] == {
        "StringEquals": {"ec2:CreateAction": ["RunInstances", "CreateSnapshot"]}
    }
    assert by_sid["RunShellOnTaggedInstance"]["Condition"] == {
        "StringEquals": {f"ssm:resourceTag/{SNAPSHOT_TAG_KEY}": SNAPSHOT_TAG_VALUE}
    }
    assert json.dumps(by_sid["RunShellDocument"]["Resource"]).endswith('::document/AWS-RunShellScript"]]}')


def test_the_project_passes_only_the_builder_role_and_writes_only_its_parameter(
    snapshot_template: dict[str, Any],
) -> None:
    by_sid = statements_by_sid(snapshot_template, snapshot_project(snapshot_template))
    roles = resources(snapshot_template, "AWS::IAM::Role")
    (builder_role,) = [k for k in roles if k.startswith("SnapshotBuilderInstanceRole")]
    assert by_sid["PassBuilderRole"]["Resource"] == {"Fn::GetAtt": [builder_role, "Arn"]}
    assert by_sid["PassBuilderRole"]["Condition"] == {"StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}}
    assert json.dumps(by_sid["PublishSnapshotId"]["Resource"]).endswith(
        f':parameter{DATA_VOLUME_SNAPSHOT_PARAMETER}"]]}}'
    )
    pull = by_sid["PullServingImages"]
    assert not any(a in ECR_PUSH_ACTIONS for a in as_list(pull["Action"])), "the pull token must not push"
    assert "ImageRepository" in json.dumps(pull["Resource"])
    statements = policy_statements_of(snapshot_template, snapshot_project(snapshot_template))
    wildcard = [s for s in statements if s["Resource"] == "*"]
    assert sorted(a for s in wildcard for a in as_list(s["Action"])) == [
        "ec2:DescribeInstances",
        "ec2:DescribeSnapshots",
        "ecr:GetAuthorizationToken",
        "ssm:DescribeInstanceInformation",
        "ssm:GetCommandInvocation",
    ], "only actions without resource-level permissions on *"


def test_the_builder_subnet_has_no_route_out_but_its_endpoints(snapshot_template: dict[str, Any]) -> None:
    assert resources(snapshot_template, "AWS::EC2::InternetGateway") == {}
    assert resources(snapshot_template, "AWS::EC2::NatGateway") == {}
    assert resources(snapshot_template, "AWS::EC2::Route") == {}
    (subnet,) = resources(snapshot_template, "AWS::EC2::Subnet").values()
    assert subnet["Properties"]["MapPublicIpOnLaunch"] is False
    endpoints = resources(snapshot_template, "AWS::EC2::VPCEndpoint").values()
    names = sorted(json.dumps(e["Properties"]["ServiceName"]).split(".")[-1].rstrip('"]}') for e in endpoints)
    assert len(endpoints) == len(SNAPSHOT_ENDPOINTS) + 1  # + the S3 gateway
    assert all(e["Properties"].get("PrivateDnsEnabled", True) for e in endpoints)
    assert {"ssm", "ssmmessages", "ec2messages", "dkr", "api", "ec2", "s3"} == set(names)
    assert len(resources(snapshot_template, "AWS::EC2::FlowLog")) == 1
    groups = resources(snapshot_template, "AWS::EC2::SecurityGroup")
    (instance_group,) = [g for k, g in groups.items() if k.startswith("SnapshotBuilderInstanceSecurityGroup")]
    assert "SecurityGroupIngress" not in instance_group["Properties"]
    assert [
        (r["IpProtocol"], r["FromPort"], r["ToPort"]) for r in instance_group["Properties"]["SecurityGroupEgress"]
    ] == [("tcp", 443, 443)]
    (ingress,) = resources(snapshot_template, "AWS::EC2::SecurityGroupIngress").values()
    assert ingress["Properties"]["FromPort"] == 443 and "SourceSecurityGroupId" in ingress["Properties"]


def test_the_builder_instance_role_pulls_only_bottlerocket_host_containers(
    snapshot_template: dict[str, Any], snapshot_config: AppConfig
) -> None:
    policies = [
        p
        for k, p in resources(snapshot_template, "AWS::IAM::Policy").items()
        if k.startswith("SnapshotBuilderInstanceRole")
    ]
    statements = {s["Sid"]: s for p in policies for s in p["Properties"]["PolicyDocument"]["Statement"]}
    account = BOTTLEROCKET_ECR_ACCOUNTS[snapshot_config.region]
    pulled = json.dumps(statements["PullBottlerocketHostContainers"]["Resource"])
    for repository in ("bottlerocket-admin", "bottlerocket-control"):
        assert f":ecr:{snapshot_config.region}:{account}:repository/{repository}" in pulled
    assert not any(
        a.startswith(("ec2:Run", "ec2:Terminate", "iam:")) for s in statements.values() for a in as_list(s["Action"])
    )


def test_the_builder_instance_can_boot_bottlerocket_without_a_cluster(snapshot_template: dict[str, Any]) -> None:
    """pluto (bottlerocket-core-kit sources/api/pluto/src/ec2.rs) reads the instance's private DNS name
    with ec2:DescribeInstances at boot, and exits with an error after five minutes of retries without it."""
    policies = [
        p
        for k, p in resources(snapshot_template, "AWS::IAM::Policy").items()
        if k.startswith("SnapshotBuilderInstanceRole")
    ]
    ec2_actions = {
        a
        for p in policies
        for s in p["Properties"]["PolicyDocument"]["Statement"]
        for a in as_list(s["Action"])
        if a.startswith("ec2:")
    }
    assert ec2_actions == {"ec2:DescribeInstances"}  # answered through the builder's ec2 endpoint
