"""ci_build/ buildspecs and build scripts, run the way CodeBuild runs them (one shell per command,
only the working directory and the exported environment carried over: tests.ci_build.buildspec_runner)
against stub aws and docker; whole runs of the image pipeline replayed from nothing."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

import pytest

from plan import images, naming
from plan.config import AppConfig, load_config
from plan.deployments import load_plan
from plan.model_artifacts import MANIFEST_NAME
from runtime.artifacts.promotions import Promotion, record_promotion
from stacks.codebuild_projects import PipelineStep
from stacks.image_pipeline import (
    BUILD_RUN_ORDER,
    BUILD_SPEC,
    IMAGE_STAGES,
    MANIFEST_RUN_ORDER,
    MANIFEST_SPEC,
    RUNTIME_STAGE,
    SERVING_STAGE,
)
from tests.ci_build.buildspec_runner import (
    CACHE_REPOSITORY_URI,
    REPOSITORY_URI,
    Stubs,
    inline_spec,
    load_buildspec,
    make_stubs,
    run_buildspec,
    run_pipeline,
    run_step,
    steps_of,
)
from tests.conftest import FIXTURE_DEPLOYMENTS, ROOT, plan_context

CI = ROOT / "ci_build"
SCRIPTS = ("build-image.sh", "publish-manifests.sh")


def test_runner_does_not_carry_shell_functions(tmp_path: Path) -> None:
    env = {"PATH": os.environ["PATH"]}
    defined = run_buildspec(inline_spec("greet() { echo hi; }", "greet"), env, tmp_path, tmp_path / "s1")
    assert defined.returncode == 127 and defined.failed_command == "greet"
    assert "greet: command not found" in defined.stderr
    exported = run_buildspec(
        inline_spec("greet() { echo hi; }; export -f greet", "greet"), env, tmp_path, tmp_path / "s2"
    )
    assert exported.returncode == 127, "an exported function is not an environment variable CodeBuild promises"
    # Within one command a function works: the runner itself is not what fails.
    assert run_buildspec(inline_spec("greet() { echo hi; }; greet"), env, tmp_path, tmp_path / "s3").stdout == "hi\n"


def test_runner_carries_the_directory_and_exported_variables_only(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    run = run_buildspec(
        inline_spec(
            "export CARRIED=yes; LOCAL=no; set -o pipefail; cd sub",
            'test "${CARRIED}" = yes && test -z "${LOCAL:-}" && test "$(basename "$PWD")" = sub',
            'case "$SHELLOPTS" in *pipefail*) exit 1;; esac',
        ),
        {"PATH": os.environ["PATH"]},
        tmp_path,
        tmp_path / "state",
    )
    assert run.returncode == 0, run.stderr


@pytest.mark.parametrize("path", [BUILD_SPEC, MANIFEST_SPEC])
def test_buildspecs_keep_one_liners_and_call_one_script(path: str) -> None:
    spec = load_buildspec(path)
    assert spec["version"] == 0.2 and spec["env"]["shell"] == "bash"
    commands = [c for phase in spec["phases"].values() for c in phase["commands"]]
    assert all("\n" not in command.strip() for command in commands), "multi-line commands belong in a script"
    assert not any("()" in command or "function " in command for command in commands)
    (build,) = spec["phases"]["build"]["commands"]
    assert build.split()[0] == "bash" and build.split()[1] in {f"ci_build/{s}" for s in SCRIPTS}


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_are_strict_bash(script: str) -> None:
    lines = (CI / script).read_text().splitlines()
    assert lines[0] == "#!/usr/bin/env bash"
    assert "set -euo pipefail" in lines
    subprocess.run(["bash", "-n", str(CI / script)], check=True)


@pytest.fixture
def stubs(tmp_path: Path) -> Stubs:
    return make_stubs(tmp_path)


@pytest.fixture(scope="module")
def config() -> AppConfig:
    return load_config(plan_context())


def tags_of(steps: Iterable[PipelineStep], stage: str, *, build: bool) -> set[str]:
    key = "IMAGE_TAG" if build else "LIST_TAG"
    return {s.env[key] for s in steps if s.stage == stage and s.is_build == build}


def no_promotion_line(config: AppConfig, stubs: Stubs, accelerator: str, device: str) -> str:
    version, model, revision = config.serving.image_version, config.model_id, config.model_revision
    base = naming.models_base_uri(config)
    return (
        f"no promoted {device} model of image version {version} in {stubs.promotions}: once the {accelerator} "
        f"compile job of a deployment you trust has published, run python -m runtime.artifacts promote "
        f"{base}/<its cluster>/{model}/{revision}/{device}/, commit the file and release the pipeline again"
    )


# --- the pipeline's plan ---------------------------------------------------------------------------


def test_runtime_images_and_publisher_come_before_anything_that_needs_a_model(config: AppConfig) -> None:
    steps = steps_of(config)
    assert [s.stage for s in steps] == sorted((s.stage for s in steps), key=IMAGE_STAGES.index)
    runtime = [s for s in steps if s.stage == RUNTIME_STAGE]
    assert {s.dockerfile_target for s in runtime if s.is_build} == {images.RUNTIME_TARGET, images.PUBLISHER_TARGET}
    assert not any(s.reads_model for s in runtime)
    assert {s.run_order for s in steps if s.is_build} == {BUILD_RUN_ORDER}
    assert {s.run_order for s in steps if not s.is_build} == {MANIFEST_RUN_ORDER}
    version = config.serving.image_version
    lists = tags_of(steps, RUNTIME_STAGE, build=False)
    assert lists == {images.runtime_tag(a, version) for a in config.accelerators} | {images.publisher_tag(version)}
    assert {s.env["IF_MISSING"] for s in runtime if not s.is_build} == {"fail"}
    serving = [s for s in steps if s.stage == SERVING_STAGE]
    assert {s.dockerfile_target for s in serving if s.is_build} == {images.SERVE_TARGET}
    assert {s.env["IF_MISSING"] for s in serving if not s.is_build} == {"skip"}


def test_the_publisher_is_built_for_both_arches_without_a_cpu_accelerator(config: AppConfig) -> None:
    steps = steps_of(replace(config, accelerators=("neuron",)))
    publishers = [s for s in steps if s.dockerfile_target == images.PUBLISHER_TARGET]
    assert sorted(s.arch for s in publishers) == ["amd64", "arm64"]
    version = config.serving.image_version
    (joined,) = [s for s in steps if s.env.get("LIST_TAG") == images.publisher_tag(version)]
    assert joined.env["SOURCE_TAGS"].split() == [images.publisher_arch_tag(version, a) for a in ("amd64", "arm64")]
    assert not any(s.env.get("ACCELERATOR") == "cpu" for s in steps if s.dockerfile_target != images.PUBLISHER_TARGET)


# --- pipeline runs, replayed -------------------------------------------------------------------------


def test_first_run_publishes_runtime_images_and_waits_for_the_compile(config: AppConfig, stubs: Stubs) -> None:
    steps = steps_of(config)
    first = run_pipeline(config, stubs)
    runtime = tags_of(steps, RUNTIME_STAGE, build=True) | tags_of(steps, RUNTIME_STAGE, build=False)
    assert set(stubs.published()) == runtime, "runtime and publisher images and their lists, nothing else"
    assert len(stubs.published()) == len(runtime), "each tag pushed once"
    for step in (s for s in steps if s.dockerfile_target == images.SERVE_TARGET):
        assert step.target is not None
        accelerator = step.target.accelerator
        assert first.out(step.action_name).strip().splitlines()[-1] == no_promotion_line(
            config, stubs, accelerator.name, accelerator.device
        )
    for step in (s for s in steps if s.stage == SERVING_STAGE and not s.is_build):
        assert f"{REPOSITORY_URI}:{step.env['LIST_TAG']} not created yet" in first.out(step.action_name)
    # Compile jobs run the runtime list; the inventory chart runs the publisher list: both exist.
    version = config.serving.image_version
    assert {images.runtime_tag(a, version) for a in config.accelerators} <= set(stubs.published())
    assert images.publisher_tag(version) in stubs.published()
    assert not any("--secret" in build for build in stubs.builds())


def test_second_run_after_a_compile_and_its_promotion_builds_that_serving_image(
    config: AppConfig, stubs: Stubs
) -> None:
    run_pipeline(config, stubs)
    sha = stubs.put_model(config, "cpu")
    stubs.promote(config, "cpu")
    second = run_pipeline(config, stubs)
    version = config.serving.image_version
    cpu_arches = [f"{version}-cpu-amd64", f"{version}-cpu-arm64"]
    builds = stubs.builds()
    assert len(builds) == 2 and all("--target serve" in b for b in builds)
    for arch, build in zip(
        ("amd64", "arm64"), sorted(builds, key=lambda b: "--platform linux/arm64" in b), strict=True
    ):
        assert f"--tag {REPOSITORY_URI}:{version}-cpu-{arch} " in build and f"--platform linux/{arch}" in build
        assert f"--build-arg model_manifest_sha256={sha}" in build
        assert "--secret id=aws_credentials,src=" in build
        assert f"--cache-from type=registry,ref={CACHE_REPOSITORY_URI}:cpu-{arch}-runtime" in build
        assert f"--build-arg model_s3_prefix={stubs.model_uri(config, 'cpu').removesuffix('/cpu/')} " in build
        for name in images.BUILD_ARGS:
            assert f"--build-arg {name}=" in build
    assert stubs.creates() == [
        f"docker buildx imagetools create --tag {REPOSITORY_URI}:{version}-cpu "
        + " ".join(f"{REPOSITORY_URI}:{tag}" for tag in cpu_arches)
    ]
    assert {*cpu_arches, f"{version}-cpu"} <= set(stubs.published())
    for secret in (stubs.root / "secrets").read_text().split():
        assert not Path(secret).exists(), "the credentials file is removed after the build"
    assert "already published" in second.out("Runtime-cpu-arm64")
    assert no_promotion_line(config, stubs, "nvidia", "cuda") in second.out("Serve-nvidia-amd64")


def test_a_new_image_version_waits_for_a_model_its_own_runtime_compiled(config: AppConfig, stubs: Stubs) -> None:
    """The model left by the previous version's compile job is not baked into the new immutable tag:
    it is promoted for its own version only, and a hand-made entry for another one fails the build."""
    newer = replace(config, serving=replace(config.serving, image_version="9.9.9"))
    previous = stubs.put_model(newer, "cpu", compiled_by=config.serving.image_version)  # the previous runtime's
    stubs.promote(newer, "cpu")  # recorded for the version that compiled it
    first = run_pipeline(newer, stubs)
    assert no_promotion_line(newer, stubs, "cpu", "cpu") in first.out("Serve-cpu-amd64")
    assert not any("--target serve" in b for b in stubs.builds())
    forged = Promotion(newer.model_id, newer.model_revision, "cpu", "9.9.9", newer.cluster_name, previous)
    record_promotion(stubs.promotions, forged)
    run = run_step(step_named(newer, "Serve-cpu-amd64"), stubs)
    uri = f"{stubs.model_uri(newer, 'cpu')}manifest.json"
    assert (
        run.returncode != 0
        and (
            f"the promoted model at {uri} was compiled by runtime image version '{config.serving.image_version}', "
            "not 9.9.9: promote the one its 9.9.9 compile job published"
        )
        in run.stderr
    )
    assert "9.9.9-cpu-amd64" not in stubs.published()
    stubs.put_model(newer, "cpu")  # the compile job of 9.9.9 ran
    stubs.promote(newer, "cpu")
    run_pipeline(newer, stubs)
    assert {"9.9.9-cpu-amd64", "9.9.9-cpu-arm64", "9.9.9-cpu"} <= set(stubs.published())


def test_third_run_with_nothing_changed_pushes_nothing(config: AppConfig, stubs: Stubs) -> None:
    run_pipeline(config, stubs)
    stubs.put_model(config, "cpu")
    stubs.promote(config, "cpu")
    run_pipeline(config, stubs)
    published = stubs.published()
    third = run_pipeline(config, stubs)
    assert stubs.published() == published
    assert stubs.builds() == [] and stubs.creates() == []
    assert not any(" login " in line or "buildx create" in line for line in stubs.log("docker"))
    for step in steps_of(config):
        run = third.runs[step.action_name]
        assert "already published" in run.stdout or "no promoted" in run.stdout or "not created yet" in run.stdout


# --- failures that must fail -------------------------------------------------------------------------


def step_named(config: AppConfig, name: str) -> PipelineStep:
    return next(s for s in steps_of(config) if s.action_name == name)


def test_a_registry_error_fails_the_build_instead_of_rebuilding(config: AppConfig, stubs: Stubs) -> None:
    (stubs.root / "fault").write_text("ecr")
    run = run_step(step_named(config, "Runtime-cpu-arm64"), stubs)
    assert run.returncode != 0 and "AccessDeniedException" in run.stderr
    assert stubs.builds() == []


def test_an_s3_error_fails_the_serving_build_instead_of_skipping(config: AppConfig, stubs: Stubs) -> None:
    stubs.put_model(config, "cpu")
    stubs.promote(config, "cpu")
    (stubs.root / "fault").write_text("s3")
    run = run_step(step_named(config, "Serve-cpu-arm64"), stubs)
    assert run.returncode != 0 and "AccessDenied" in run.stderr
    assert stubs.builds() == []


def test_a_missing_runtime_arch_image_fails_its_manifest_list(config: AppConfig, stubs: Stubs) -> None:
    version = config.serving.image_version
    (stubs.root / "registry").write_text(f"{version}-cpu-amd64-runtime\n")
    run = run_step(step_named(config, "RuntimeManifest-cpu"), stubs)
    assert run.returncode != 0 and f"{version}-cpu-arm64-runtime not published" in run.stderr
    assert stubs.creates() == []


def test_a_missing_serving_arch_image_skips_its_manifest_list(config: AppConfig, stubs: Stubs) -> None:
    version = config.serving.image_version
    (stubs.root / "registry").write_text(f"{version}-cpu-amd64\n")
    run = run_step(step_named(config, "ServingManifest-cpu"), stubs)
    assert run.returncode == 0, run.stderr
    assert f"{version}-cpu-arm64 not published" in run.stdout and stubs.creates() == []


def test_the_builder_uses_the_pinned_buildkit_image(config: AppConfig, stubs: Stubs) -> None:
    step = step_named(config, "Publisher-arm64")
    assert run_step(step, stubs).returncode == 0
    (create,) = [line for line in stubs.log("docker") if "buildx create" in line]
    assert f"--driver-opt image={step.env['BUILDKIT_IMAGE']} " in create
    assert step.env["BUILDKIT_IMAGE"].startswith("public.ecr.aws/"), "never Docker Hub anonymously"
    (build,) = stubs.builds()
    assert "--target publisher" in build and f":{config.serving.image_version}-publisher-arm64 " in build
    assert step.env["TARGET"] == images.PUBLISHER_TARGET


# --- which compiled model a serving image carries (docs/adr/0016) ------------------------------------


@pytest.fixture(scope="module")
def staging(config: AppConfig) -> AppConfig:
    """The staging deployment's config: the session plan's first pipeline deployment, a cluster of its own."""
    plan = load_plan({**plan_context(), "deployment": "dev"}, FIXTURE_DEPLOYMENTS)
    other = plan.named("staging").config
    assert other.cluster_name != config.cluster_name
    return other


def s3_calls(stubs: Stubs) -> list[str]:
    return [line for line in stubs.log("aws") if line.startswith(("aws s3 ", "aws s3api "))]


def test_a_serving_image_carries_the_promoted_clusters_model_and_reads_no_other_prefix(
    config: AppConfig, staging: AppConfig, stubs: Stubs
) -> None:
    """Two clusters compiled the model; the image is built from the one promoted, read from its prefix only."""
    stubs.put_model(config, "cpu", created_at="compiled on dev")
    promoted_sha = stubs.put_model(config, "cpu", cluster=staging.cluster_name, created_at="compiled on staging")
    stubs.promote(config, "cpu", cluster=staging.cluster_name)
    run_pipeline(config, stubs)
    builds = [b for b in stubs.builds() if "--target serve" in b]
    assert len(builds) == 2, stubs.builds()  # cpu: amd64 and arm64
    staging_artifact = stubs.model_uri(config, "cpu", cluster=staging.cluster_name)
    for build in builds:
        assert f"--build-arg model_manifest_sha256={promoted_sha} " in build
        assert f"--build-arg model_s3_prefix={staging_artifact.removesuffix('/cpu/')} " in build
    key_prefix = staging_artifact.split("/", 3)[3]
    reads = s3_calls(stubs)
    assert reads and all(key_prefix in line for line in reads), reads
    assert not any(f"/{config.cluster_name}/" in line for line in reads)


def test_an_artifact_no_one_promoted_is_never_baked_nor_read(config: AppConfig, stubs: Stubs) -> None:
    """A cluster's own compile, and what compile jobs left under the old shared prefix (any cluster
    could write there), stay out of the serving images until one is promoted."""
    stubs.put_model(config, "cpu")
    stubs.put_model(config, "cpu", base=naming.models_base_uri(config))  # models/<model>/...: the old layout
    run = run_pipeline(config, stubs)
    assert not any("--target serve" in b for b in stubs.builds()), stubs.builds()
    assert s3_calls(stubs) == []
    assert run.out("Serve-cpu-arm64").strip().splitlines()[-1] == no_promotion_line(config, stubs, "cpu", "cpu")


def test_a_promoted_model_changed_in_the_bucket_fails_the_build(
    config: AppConfig, staging: AppConfig, stubs: Stubs
) -> None:
    """The bucket holds other bytes than were promoted (republished, or written by whoever could):
    nothing is built from them, and the build fails naming both digests."""
    stubs.put_model(config, "cpu", cluster=staging.cluster_name, created_at="first compile")
    promoted = stubs.promote(config, "cpu", cluster=staging.cluster_name)
    now = stubs.put_model(config, "cpu", cluster=staging.cluster_name, created_at="changed afterwards")
    run = run_step(step_named(config, "Serve-cpu-arm64"), stubs)
    uri = f"{stubs.model_uri(config, 'cpu', cluster=staging.cluster_name)}{MANIFEST_NAME}"
    assert run.returncode != 0, run.stdout
    assert (
        f"the manifest at {uri} has sha256 {now}, not the promoted {promoted.manifest_sha256}: it changed after it "
        "was promoted; promote it again if you trust it"
    ) in run.stderr
    assert stubs.builds() == []


def test_a_promoted_model_gone_from_the_bucket_fails_the_build(
    config: AppConfig, staging: AppConfig, stubs: Stubs
) -> None:
    stubs.put_model(config, "cpu", cluster=staging.cluster_name)
    stubs.promote(config, "cpu", cluster=staging.cluster_name)
    stubs.model_path(config, "cpu", cluster=staging.cluster_name).unlink()
    stubs.put_model(config, "cpu")  # another cluster's compile does not stand in for it
    run = run_step(step_named(config, "Serve-cpu-amd64"), stubs)
    uri = f"{stubs.model_uri(config, 'cpu', cluster=staging.cluster_name)}{MANIFEST_NAME}"
    assert run.returncode != 0 and f"the promoted model {uri} is not in the bucket" in run.stderr
    assert stubs.builds() == []


def test_a_malformed_promotion_fails_the_serving_build_in_one_line(config: AppConfig, stubs: Stubs) -> None:
    sha = stubs.put_model(config, "cpu")
    entry = {
        "model": config.model_id,
        "revision": config.model_revision,
        "device": "cpu",
        "imageVersion": config.serving.image_version,
        "cluster": "../edge-diffusion",
        "manifestSha256": sha,
    }
    stubs.promotions.write_text(json.dumps({"promoted": [entry]}))
    run = run_step(step_named(config, "Serve-cpu-amd64"), stubs)
    assert run.returncode != 0 and stubs.builds() == []
    assert run.stderr.strip().splitlines() == [
        f"python -m runtime.artifacts.promotions: error: {stubs.promotions}: cluster '../edge-diffusion' is not "
        "allowed; allowed: an EKS cluster name: 1-63 letters, digits or '-', starting with a letter"
    ]
