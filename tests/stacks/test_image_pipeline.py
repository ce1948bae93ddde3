"""ImagePipelineStack: x86 and Graviton build projects per accelerator, manifest lists after the builds,
least-privilege ECR/S3, encrypted artifacts, retained logs, the S3 source trigger."""

from __future__ import annotations

import json
from typing import Any

import pytest

from spec import images, naming, versions
from spec.accelerators import ACCELERATORS
from spec.config import AppConfig, load_config
from stacks.deploy_pipeline import region_stage_config
from stacks.image_pipeline import (
    BUILD_RUN_ORDER,
    MANIFEST_RUN_ORDER,
    ImagePipelineStack,
    build_action_name,
    manifest_action_name,
)
from tests.conftest import Synth, cdk_json_context

STACK_ID = "EdgeDiffusion-ImagePipeline"
ENVIRONMENT_TYPES = {"amd64": "LINUX_CONTAINER", "arm64": "ARM_CONTAINER"}
BUILD_IMAGES = {"amd64": versions.CODEBUILD_X86_IMAGE, "arm64": versions.CODEBUILD_ARM_IMAGE}


@pytest.fixture(scope="module")
def config() -> AppConfig:
    return load_config(cdk_json_context())


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


def projects_by_env(template: dict[str, Any], key: str) -> dict[str, dict[str, Any]]:
    return {
        project_env(p)[key]: p for p in resources(template, "AWS::CodeBuild::Project").values() if key in project_env(p)
    }


def build_projects(template: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    out = {}
    for project in resources(template, "AWS::CodeBuild::Project").values():
        env = project_env(project)
        if "ARCH" in env:
            out[(env["ACCELERATOR"], env["ARCH"])] = project
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


def test_one_project_per_chip_and_arch_on_the_right_fleet(template: dict[str, Any], config: AppConfig) -> None:
    projects = build_projects(template)
    expected = {(t.accelerator.name, t.arch) for t in images.image_targets(config.accelerators)}
    assert set(projects) == expected
    assert ("cpu", "arm64") in expected and ("cpu", "amd64") in expected  # the multi-arch accelerator
    for (_, arch), project in projects.items():
        environment = project["Properties"]["Environment"]
        assert environment["Type"] == ENVIRONMENT_TYPES[arch]
        assert environment["Image"] == BUILD_IMAGES[arch]
        assert environment["PrivilegedMode"] is True
        assert "EncryptionKey" in project["Properties"]
        assert project["Properties"]["Source"]["BuildSpec"] == "ci_build/buildspec-build.yml"


def test_build_projects_set_every_build_arg(template: dict[str, Any], config: AppConfig) -> None:
    for target in images.image_targets(config.accelerators):
        env = project_env(build_projects(template)[(target.accelerator.name, target.arch)])
        for name, value in images.build_arg_values(config, target).items():
            assert env[name.upper()] == value, name
        assert env["MODEL_DEVICE"] == target.accelerator.device
        assert env["IMAGE_VERSION"] == config.serving.image_version
        assert env["BUILDKIT_IMAGE"] == versions.BUILDKIT_IMAGE
        assert (
            env["MODEL_S3_PREFIX"]
            == f"s3://{'edge-diffusion-models-111111111111-us-west-2'}/models/{config.model_id}/main"
        )


def images_stage(template: dict[str, Any]) -> list[dict[str, Any]]:
    (pipeline,) = resources(template, "AWS::CodePipeline::Pipeline").values()
    assert pipeline["Properties"]["PipelineType"] == "V2"
    stages = {stage["Name"]: stage for stage in pipeline["Properties"]["Stages"]}
    assert list(stages) == ["Source", "Images"]
    return list(stages["Images"]["Actions"])


def test_manifest_step_runs_after_every_build_of_its_variant(template: dict[str, Any], config: AppConfig) -> None:
    actions = {action["Name"]: action for action in images_stage(template)}
    for name in config.accelerators:
        accelerator = ACCELERATORS[name]
        manifest = actions[manifest_action_name(accelerator)]
        builds = [
            actions[build_action_name(t)]
            for t in images.image_targets([name])
            if t.accelerator.name == accelerator.name
        ]
        assert len(builds) == len(images.image_arches(accelerator))
        assert all(build["RunOrder"] == BUILD_RUN_ORDER for build in builds)
        assert manifest["RunOrder"] == MANIFEST_RUN_ORDER > max(build["RunOrder"] for build in builds)
        manifest_env = project_env(
            next(
                p
                for k, p in resources(template, "AWS::CodeBuild::Project").items()
                if {"Ref": k} == manifest["Configuration"]["ProjectName"]
            )
        )
        assert manifest_env["ARCHES"].split() == list(images.image_arches(accelerator))
        assert manifest_env["ACCELERATOR"] == accelerator.name


def test_builds_of_different_variants_run_in_parallel(template: dict[str, Any]) -> None:
    builds = [a for a in images_stage(template) if a["Name"].startswith("Build-")]
    assert len(builds) >= 4 and {b["RunOrder"] for b in builds} == {BUILD_RUN_ORDER}


def ecr_statements(statements: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [s for s in statements if any(a.startswith("ecr:") for a in as_list(s["Action"]))]


def test_ecr_permissions_name_repositories(template: dict[str, Any], config: AppConfig) -> None:
    for (accelerator, _), project in build_projects(template).items():
        statements = ecr_statements(policy_statements_of(template, project))
        for statement in statements:
            assert statement["Effect"] == "Allow"
            if statement["Resource"] == "*":
                assert as_list(statement["Action"]) == ["ecr:GetAuthorizationToken"]
        push = [s for s in statements if "ecr:PutImage" in as_list(s["Action"])]
        assert len(push) == 1
        pushed = json.dumps(push[0]["Resource"])
        assert "ImageRepository" in pushed and "BuildCacheRepository" in pushed
        assert len(as_list(push[0]["Resource"])) == 2
        dlc = [s for s in statements if s.get("Sid") == "PullDeepLearningContainerBase"]
        repository = images.DLC_REPOSITORIES.get(accelerator)
        if repository is None:
            assert dlc == []
        else:
            (statement,) = dlc
            assert "ecr:PutImage" not in as_list(statement["Action"])
            arn = json.dumps(statement["Resource"])
            assert f':ecr:{config.region}:{versions.DLC_REGISTRY_ACCOUNT}:repository/{repository}"' in arn


def test_manifest_projects_push_to_the_serving_and_region_stage_repositories(
    template: dict[str, Any], config: AppConfig
) -> None:
    region_repository = naming.image_repository_name(region_stage_config(config))
    for project in projects_by_env(template, "ARCHES").values():
        statements = ecr_statements(policy_statements_of(template, project))
        scoped = [s for s in statements if s["Resource"] != "*"]
        assert len(scoped) == 1
        resources_ = as_list(scoped[0]["Resource"])
        assert len(resources_) == 2 and "ImageRepository" in json.dumps(resources_)
        assert f":repository/{region_repository}" in json.dumps(resources_)
        assert "BuildCacheRepository" not in json.dumps(statements)
        assert project_env(project)["MIRROR_REPOSITORY_URIS"] != ""


def test_model_bucket_read_is_one_device_prefix(template: dict[str, Any], config: AppConfig) -> None:
    for (accelerator, _), project in build_projects(template).items():
        device = next(a.device for a in ACCELERATORS.values() if a.name == accelerator)
        prefix = f"models/{config.model_id}/{config.model_revision}/{device}/"
        statements = {s.get("Sid"): s for s in policy_statements_of(template, project)}
        assert statements["ListModelPrefix"]["Action"] == "s3:ListBucket"
        assert statements["ListModelPrefix"]["Condition"] == {"StringLike": {"s3:prefix": [f"{prefix}*"]}}
        assert statements["ReadModelPrefix"]["Action"] == "s3:GetObject"
        assert json.dumps(statements["ReadModelPrefix"]["Resource"]).endswith(f'/{prefix}*"]]}}')
        writes = [s for s in policy_statements_of(template, project) if "edge-diffusion-models" in json.dumps(s)]
        assert all(not a.startswith(("s3:Put", "s3:Delete")) for s in writes for a in as_list(s["Action"]))


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
    for project in resources(template, "AWS::CodeBuild::Project").values():
        cloudwatch = project["Properties"]["LogsConfig"]["CloudWatchLogs"]
        assert cloudwatch["Status"] == "ENABLED" and "GroupName" in cloudwatch


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
