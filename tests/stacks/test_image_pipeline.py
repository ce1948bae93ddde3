"""ImagePipelineStack: the runtime images, the publisher and their manifest lists in a stage before
any serving build; x86 and Graviton projects per image; least-privilege ECR/S3 per project;
encrypted artifacts, retained logs, the S3 source trigger."""

from __future__ import annotations

import json
from typing import Any

import pytest

from plan import images, topology, versions
from plan.accelerators import ACCELERATORS
from plan.config import AppConfig, load_config
from stacks.image_pipeline import (
    BOTTLEROCKET_ECR_ACCOUNTS,
    BUILD_RUN_ORDER,
    BUILD_SPEC,
    DATA_VOLUME_SNAPSHOT_PARAMETER,
    ECR_PUSH_ACTIONS,
    MANIFEST_RUN_ORDER,
    MANIFEST_SPEC,
    RUNTIME_STAGE,
    SERVING_STAGE,
    SNAPSHOT_ACTION,
    SNAPSHOT_ENDPOINTS,
    SNAPSHOT_SPEC,
    SNAPSHOT_STAGE,
    SNAPSHOT_TAG_KEY,
    SNAPSHOT_TAG_VALUE,
    ImagePipelineProps,
    ImagePipelineStack,
    PipelineStep,
)
from tests.conftest import RELEASE_ACCOUNT, Synth, release_context

STACK_ID = "EdgeDiffusion-ImagePipeline"
ENVIRONMENT_TYPES = {"amd64": "LINUX_CONTAINER", "arm64": "ARM_CONTAINER"}
BUILD_IMAGES = {"amd64": versions.CODEBUILD_X86_IMAGE, "arm64": versions.CODEBUILD_ARM_IMAGE}


@pytest.fixture(scope="module")
def config() -> AppConfig:
    return load_config(release_context())


@pytest.fixture(scope="module")
def stack(synth: Synth) -> ImagePipelineStack:
    found = synth.app.node.find_child(STACK_ID)
    assert isinstance(found, ImagePipelineStack)
    return found


@pytest.fixture(scope="module")
def template(synth: Synth, stack: ImagePipelineStack) -> dict[str, Any]:
    return synth.template_json(stack)


def resources(template: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in template["Resources"].items() if v["Type"] == kind}


def project_env(project: dict[str, Any]) -> dict[str, Any]:
    return {v["Name"]: v["Value"] for v in project["Properties"]["Environment"]["EnvironmentVariables"]}


def pipeline_stages(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    (pipeline,) = resources(template, "AWS::CodePipeline::Pipeline").values()
    assert pipeline["Properties"]["PipelineType"] == "V2"
    return {stage["Name"]: stage for stage in pipeline["Properties"]["Stages"]}


def action_projects(template: dict[str, Any]) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """Every CodeBuild action by name: (the action, its project)."""
    out = {}
    for stage in list(pipeline_stages(template).values())[1:]:
        for action in stage["Actions"]:
            out[action["Name"]] = (action, template["Resources"][action["Configuration"]["ProjectName"]["Ref"]])
    return out


def policy_statements_of(template: dict[str, Any], project: dict[str, Any]) -> list[dict[str, Any]]:
    role = project["Properties"]["ServiceRole"]["Fn::GetAtt"][0]
    statements: list[dict[str, Any]] = []
    for policy in resources(template, "AWS::IAM::Policy").values():
        if {"Ref": role} in policy["Properties"]["Roles"]:
            statements += policy["Properties"]["PolicyDocument"]["Statement"]
    return statements


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def ecr_statements(statements: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [s for s in statements if any(a.startswith("ecr:") for a in as_list(s["Action"]))]


def steps(stack: ImagePipelineStack) -> dict[str, PipelineStep]:
    return {step.action_name: step for step in stack.steps}


# --- the shape of the pipeline ---------------------------------------------------------------------


def test_runtime_images_and_the_publisher_have_a_stage_before_the_serving_images(template: dict[str, Any]) -> None:
    stages = pipeline_stages(template)
    assert list(stages) == ["Source", RUNTIME_STAGE, SERVING_STAGE]
    targets = {
        stage: {project_env(project).get("TARGET") for _, project in action_projects_of(template, stage)}
        for stage in (RUNTIME_STAGE, SERVING_STAGE)
    }
    assert targets[RUNTIME_STAGE] == {images.RUNTIME_TARGET, images.PUBLISHER_TARGET, None}  # None: manifests
    assert targets[SERVING_STAGE] == {images.SERVE_TARGET, None}


def action_projects_of(template: dict[str, Any], stage: str) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    names = {action["Name"] for action in pipeline_stages(template)[stage]["Actions"]}
    return [pair for name, pair in action_projects(template).items() if name in names]


def test_manifest_lists_run_after_every_arch_build_of_their_stage(template: dict[str, Any], config: AppConfig) -> None:
    version = config.serving.image_version
    for stage in (RUNTIME_STAGE, SERVING_STAGE):
        pairs = action_projects_of(template, stage)
        built = {project_env(p)["IMAGE_TAG"]: a["RunOrder"] for a, p in pairs if "IMAGE_TAG" in project_env(p)}
        lists = {project_env(p)["LIST_TAG"]: (a, p) for a, p in pairs if "LIST_TAG" in project_env(p)}
        assert set(built.values()) == {BUILD_RUN_ORDER}
        for action, project in lists.values():
            assert action["RunOrder"] == MANIFEST_RUN_ORDER > BUILD_RUN_ORDER
            assert set(project_env(project)["SOURCE_TAGS"].split()) <= set(built), "joins builds of its own stage"
        expected = (
            {images.runtime_tag(a, version) for a in config.accelerators} | {images.publisher_tag(version)}
            if stage == RUNTIME_STAGE
            else {images.image_tag(a, version) for a in config.accelerators}
        )
        assert set(lists) == expected
        assert {project_env(p)["IF_MISSING"] for _, p in lists.values()} == (
            {"fail"} if stage == RUNTIME_STAGE else {"skip"}
        )
        for accelerator in config.accelerators:
            list_tag = (images.runtime_tag if stage == RUNTIME_STAGE else images.image_tag)(accelerator, version)
            arches = images.image_arches(ACCELERATORS[accelerator])
            assert len(project_env(lists[list_tag][1])["SOURCE_TAGS"].split()) == len(arches)


def test_what_runs_before_any_compile_is_made_in_the_runtime_stage(config: AppConfig, template: dict[str, Any]) -> None:
    """What the charts run before any compile exists: the compile jobs' runtime lists and the publisher."""
    lists = {project_env(p).get("LIST_TAG") for _, p in action_projects_of(template, RUNTIME_STAGE)}
    for name in config.accelerators:
        assert topology.runtime_image_uri(config, ACCELERATORS[name]).rpartition(":")[2] in lists
    assert images.publisher_image_uri(config).rpartition(":")[2] in lists


def test_the_template_is_the_plan(stack: ImagePipelineStack, template: dict[str, Any]) -> None:
    plan = steps(stack)
    deployed = action_projects(template)
    assert list(deployed) == list(plan)
    for name, (action, project) in deployed.items():
        assert action["RunOrder"] == plan[name].run_order
        assert project["Properties"]["Source"]["BuildSpec"] == plan[name].buildspec
        assert set(project_env(project)) == set(plan[name].env)


def test_one_build_project_per_image_and_arch_on_the_right_fleet(template: dict[str, Any], config: AppConfig) -> None:
    builds = [(a, p) for a, p in action_projects(template).values() if "TARGET" in project_env(p)]
    by_target: dict[str, set[tuple[str, str]]] = {}
    for _, project in builds:
        env = project_env(project)
        by_target.setdefault(env["TARGET"], set()).add((env["ACCELERATOR"], env["ARCH"]))
        environment = project["Properties"]["Environment"]
        assert environment["Type"] == ENVIRONMENT_TYPES[env["ARCH"]]
        assert environment["Image"] == BUILD_IMAGES[env["ARCH"]]
        assert environment["PrivilegedMode"] is True
        assert "EncryptionKey" in project["Properties"]
        assert project["Properties"]["Source"]["BuildSpec"] == BUILD_SPEC
    expected = {(t.accelerator.name, t.arch) for t in images.image_targets(config.accelerators)}
    assert ("cpu", "arm64") in expected and ("cpu", "amd64") in expected  # the multi-arch accelerator
    assert by_target[images.RUNTIME_TARGET] == by_target[images.SERVE_TARGET] == expected
    assert by_target[images.PUBLISHER_TARGET] == {("cpu", "amd64"), ("cpu", "arm64")}
    for _, project in action_projects(template).values():
        if "LIST_TAG" in project_env(project):
            assert project["Properties"]["Source"]["BuildSpec"] == MANIFEST_SPEC
            assert project["Properties"]["Environment"]["ComputeType"] == "BUILD_GENERAL1_SMALL"


def test_build_projects_set_every_build_arg(template: dict[str, Any], config: AppConfig) -> None:
    for _, project in action_projects(template).values():
        env = project_env(project)
        if "TARGET" not in env:
            continue
        target = next(
            t
            for t in images.image_targets(["cpu", *config.accelerators])
            if (t.accelerator.name, t.arch) == (env["ACCELERATOR"], env["ARCH"])
        )
        for name, value in images.build_arg_values(config, target).items():
            assert env[name.upper()] == value, name
        assert env["MODEL_DEVICE"] == target.accelerator.device
        assert env["IMAGE_TAG"].startswith(f"{config.serving.image_version}-")
        assert env["BUILDKIT_IMAGE"] == versions.BUILDKIT_IMAGE
        assert env["BUILDKIT_IMAGE"].startswith("public.ecr.aws/"), "no anonymous Docker Hub pull"
        assert env["MODEL_S3_PREFIX"] == (
            f"s3://edge-diffusion-models-{RELEASE_ACCOUNT}-us-west-2/models/{config.model_id}/main"
        )


def test_no_project_copies_images_to_other_repositories(template: dict[str, Any]) -> None:
    for _, project in action_projects(template).values():
        assert not any("MIRROR" in name for name in project_env(project))
    assert resources(template, "AWS::ECR::Repository").keys() == {
        k for k in template["Resources"] if k.startswith("BuildCacheRepository")
    }


# --- least privilege ---------------------------------------------------------------------------------


def test_builds_push_to_the_image_and_cache_repositories_only(template: dict[str, Any], config: AppConfig) -> None:
    for _, project in action_projects(template).values():
        env = project_env(project)
        statements = ecr_statements(policy_statements_of(template, project))
        for statement in statements:
            assert statement["Effect"] == "Allow"
            if statement["Resource"] == "*":
                assert as_list(statement["Action"]) == ["ecr:GetAuthorizationToken"]
        (push,) = [s for s in statements if "ecr:PutImage" in as_list(s["Action"])]
        pushed = as_list(push["Resource"])
        assert "ImageRepository" in json.dumps(pushed)
        if "TARGET" in env:
            assert len(pushed) == 2 and "BuildCacheRepository" in json.dumps(pushed)
        else:
            assert len(pushed) == 1 and "BuildCacheRepository" not in json.dumps(statements)
        dlc = [s for s in statements if s.get("Sid") == "PullDeepLearningContainerBase"]
        repository = images.DLC_REPOSITORIES.get(env.get("ACCELERATOR", ""))
        if repository is None or env.get("TARGET") in (None, images.PUBLISHER_TARGET):
            assert dlc == []
        else:
            (statement,) = dlc
            assert "ecr:PutImage" not in as_list(statement["Action"])
            arn = json.dumps(statement["Resource"])
            assert f':ecr:{config.region}:{versions.DLC_REGISTRY_ACCOUNT}:repository/{repository}"' in arn


def test_only_serving_builds_read_the_model_bucket_one_device_prefix(
    template: dict[str, Any], config: AppConfig
) -> None:
    for _, project in action_projects(template).values():
        env = project_env(project)
        statements = policy_statements_of(template, project)
        model = [s for s in statements if "edge-diffusion-models" in json.dumps(s)]
        if env.get("TARGET") != images.SERVE_TARGET:
            assert model == [], env.get("IMAGE_TAG", env.get("LIST_TAG"))
            continue
        device = ACCELERATORS[env["ACCELERATOR"]].device
        prefix = f"models/{config.model_id}/{config.model_revision}/{device}/"
        by_sid = {s.get("Sid"): s for s in statements}
        assert by_sid["ListModelPrefix"]["Action"] == "s3:ListBucket"
        assert by_sid["ListModelPrefix"]["Condition"] == {"StringLike": {"s3:prefix": [f"{prefix}*"]}}
        assert by_sid["ReadModelPrefix"]["Action"] == "s3:GetObject"
        assert json.dumps(by_sid["ReadModelPrefix"]["Resource"]).endswith(f'/{prefix}*"]]}}')
        assert all(not a.startswith(("s3:Put", "s3:Delete")) for s in model for a in as_list(s["Action"]))


# --- storage, logs, source ----------------------------------------------------------------------------


def test_artifacts_are_kms_encrypted_and_logs_retained(template: dict[str, Any], config: AppConfig) -> None:
    (pipeline,) = resources(template, "AWS::CodePipeline::Pipeline").values()
    store = pipeline["Properties"]["ArtifactStore"]
    assert store["EncryptionKey"]["Type"] == "KMS"
    bucket = template["Resources"][store["Location"]["Ref"]]
    (rule,) = bucket["Properties"]["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert rule["ServerSideEncryptionByDefault"]["SSEAlgorithm"] == "aws:kms"
    assert "LoggingConfiguration" in bucket["Properties"]
    (key,) = resources(template, "AWS::KMS::Key").values()
    assert key["Properties"]["EnableKeyRotation"] is True
    (logs,) = resources(template, "AWS::Logs::LogGroup").values()
    assert logs["Properties"]["RetentionInDays"] == config.pipeline.log_retention_days
    prefixes = set()
    for project in resources(template, "AWS::CodeBuild::Project").values():
        cloudwatch = project["Properties"]["LogsConfig"]["CloudWatchLogs"]
        assert cloudwatch["Status"] == "ENABLED" and "GroupName" in cloudwatch
        prefixes.add(cloudwatch["StreamName"])
    assert len(prefixes) == len(resources(template, "AWS::CodeBuild::Project")), "one log prefix per project"


def test_s3_source_starts_the_pipeline_on_upload(template: dict[str, Any], config: AppConfig) -> None:
    (pipeline,) = resources(template, "AWS::CodePipeline::Pipeline").values()
    source = pipeline["Properties"]["Stages"][0]["Actions"][0]
    assert source["ActionTypeId"]["Provider"] == "S3"
    assert source["Configuration"]["PollForSourceChanges"] is False
    assert source["Configuration"]["S3ObjectKey"] == config.pipeline.source_object_key
    bucket = template["Resources"][source["Configuration"]["S3Bucket"]["Ref"]]
    assert bucket["Properties"]["NotificationConfiguration"] == {
        "EventBridgeConfiguration": {"EventBridgeEnabled": True}
    }
    assert bucket["Properties"]["VersioningConfiguration"] == {"Status": "Enabled"}
    (rule,) = resources(template, "AWS::Events::Rule").values()
    pattern = rule["Properties"]["EventPattern"]
    assert pattern["detail-type"] == ["Object Created"]
    assert pattern["detail"]["object"]["key"] == [config.pipeline.source_object_key]
    assert resources(template, "AWS::Lambda::Function") == {}  # no notification custom resource


def test_build_cache_repository_is_separate_and_mutable(template: dict[str, Any]) -> None:
    (cache,) = resources(template, "AWS::ECR::Repository").values()
    assert cache["Properties"]["RepositoryName"].endswith("-buildcache")
    assert cache["Properties"]["ImageTagMutability"] == "MUTABLE"
    assert "LifecyclePolicy" in cache["Properties"]


# --- the data-volume snapshot stage (nodeImage.buildSnapshot) ----------------------------------------


@pytest.fixture(scope="module")
def snapshot_config() -> AppConfig:
    return load_config({**release_context(), "nodeImage": {"family": "bottlerocket", "buildSnapshot": True}})


@pytest.fixture(scope="module")
def snapshot_template(snapshot_config: AppConfig) -> dict[str, Any]:
    """The image pipeline with the snapshot stage, synthesized alone with cdk-nag (a finding fails it)."""
    import aws_cdk as cdk
    from cdk_nag import AwsSolutionsChecks

    from stacks.registry import RegistryStack
    from tests.conftest import cdk_json_context

    app = cdk.App(context={k: v for k, v in cdk_json_context().items() if k.startswith("@")})
    env = cdk.Environment(account=snapshot_config.account, region=snapshot_config.region)
    registry = RegistryStack(app, "Registry", config=snapshot_config, env=env)
    stack = ImagePipelineStack(app, "Images", config=snapshot_config, repository=registry.repository, env=env)
    cdk.Validations.of(app).add_plugins(AwsSolutionsChecks(app))
    return dict(app.synth().get_stack_by_name(stack.stack_name).template)


def snapshot_project(template: dict[str, Any]) -> dict[str, Any]:
    action, project = action_projects(template)[SNAPSHOT_ACTION]
    assert action["RunOrder"] == BUILD_RUN_ORDER
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
    assert conditions["ec2:InstanceType"] == ImagePipelineProps().snapshot_instance_type
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
