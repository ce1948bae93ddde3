"""ImagePipelineStack: the runtime images, the publisher and their manifest lists in a stage before
any serving build; x86 and Graviton projects per image; least-privilege ECR/S3 per project;
encrypted artifacts, retained logs, the S3 source trigger."""

from __future__ import annotations

import json
from typing import Any

import pytest

from plan import images, model_artifacts, topology, versions
from plan.accelerators import ACCELERATORS
from plan.config import AppConfig, load_config
from stacks.codebuild_projects import PipelineStep
from stacks.image_pipeline import (
    BUILD_RUN_ORDER,
    BUILD_SPEC,
    MANIFEST_RUN_ORDER,
    MANIFEST_SPEC,
    RUNTIME_STAGE,
    SCRIPT_COMPUTED_ARGS,
    SERVING_STAGE,
    ImagePipelineStack,
)
from tests.conftest import PLAN_ACCOUNT, ROOT, Synth, plan_context
from tests.stacks.pipeline_templates import (
    action_projects,
    as_list,
    pipeline_stages,
    policy_statements_of,
    project_env,
    resources,
)

STACK_ID = "EdgeDiffusion-ImagePipeline"
ENVIRONMENT_TYPES = {"amd64": "LINUX_CONTAINER", "arm64": "ARM_CONTAINER"}
BUILD_IMAGES = {"amd64": versions.CODEBUILD_X86_IMAGE, "arm64": versions.CODEBUILD_ARM_IMAGE}


@pytest.fixture(scope="module")
def config() -> AppConfig:
    return load_config(plan_context())


@pytest.fixture(scope="module")
def stack(synth: Synth) -> ImagePipelineStack:
    found = synth.app.node.find_child(STACK_ID)
    assert isinstance(found, ImagePipelineStack)
    return found


@pytest.fixture(scope="module")
def template(synth: Synth, stack: ImagePipelineStack) -> dict[str, Any]:
    return synth.template_json(stack)


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
            if name in SCRIPT_COMPUTED_ARGS:  # the promoted model's prefix and digest: the build finds them
                assert name.upper() not in env, name
                continue
            assert env[name.upper()] == value, name
        assert env["MODEL_DEVICE"] == target.accelerator.device
        assert env["IMAGE_TAG"].startswith(f"{config.serving.image_version}-")
        assert env["BUILDKIT_IMAGE"] == versions.BUILDKIT_IMAGE
        assert env["BUILDKIT_IMAGE"].startswith("public.ecr.aws/"), "no anonymous Docker Hub pull"
        assert env["MODELS_BASE_URI"] == f"s3://edge-diffusion-models-{PLAN_ACCOUNT}-us-west-2/models"
        assert env["MODEL_PROMOTIONS"] == model_artifacts.PROMOTIONS_FILE
        assert (ROOT / env["MODEL_PROMOTIONS"]).is_file(), "the build reads it from the pipeline's source"


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


def test_only_serving_builds_read_the_model_bucket_their_devices_artifacts(
    template: dict[str, Any], config: AppConfig
) -> None:
    """A serving build may read its device's artifact of the model under any cluster's prefix (the
    promotion picks one at build time), nothing else of the bucket, and write nothing."""
    for _, project in action_projects(template).values():
        env = project_env(project)
        statements = policy_statements_of(template, project)
        model = [s for s in statements if "edge-diffusion-models" in json.dumps(s)]
        if env.get("TARGET") != images.SERVE_TARGET:
            assert model == [], env.get("IMAGE_TAG", env.get("LIST_TAG"))
            continue
        device = ACCELERATORS[env["ACCELERATOR"]].device
        prefix = f"models/*/{config.model_id}/{config.model_revision}/{device}/"
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
