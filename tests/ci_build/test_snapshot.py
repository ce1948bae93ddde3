"""The data-volume snapshot stage: ci_build/buildspec-snapshot.yml and build-data-volume-snapshot.sh,
run the way CodeBuild runs them against stub aws (EC2 instances, volumes, snapshots, SSM Run Command
and parameters modelled in tests.ci_build.buildspec_runner). Every AWS call is asserted, and the
instance is terminated on every path that launched one."""

from __future__ import annotations

import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from plan.config import AppConfig, load_config
from stacks.codebuild_projects import PipelineStep
from stacks.image_pipeline import ImagePipelineProps, pipeline_steps
from stacks.snapshot_builder import (
    DATA_VOLUME_SNAPSHOT_PARAMETER,
    SNAPSHOT_SPEC,
    SNAPSHOT_STAGE,
    SNAPSHOT_TAG_KEY,
    SNAPSHOT_TAG_VALUE,
    SnapshotHost,
    SnapshotProps,
)
from tests.ci_build.buildspec_runner import (
    CACHE_REPOSITORY_URI,
    REPOSITORY_URI,
    BuildspecRun,
    Stubs,
    load_buildspec,
    make_stubs,
    run_step,
)
from tests.conftest import ROOT, plan_context

SCRIPT = ROOT / "ci_build" / "build-data-volume-snapshot.sh"
HOST = SnapshotHost(subnet_id="subnet-0builder", security_group_id="sg-0builder", instance_profile="builder-profile")
# No waiting between polls; a short SSM deadline so the offline case ends quickly.
FAST = SnapshotProps(poll_seconds=0, ssm_online_timeout_s=2)


@pytest.fixture(scope="module")
def config() -> AppConfig:
    context = plan_context()
    return load_config({**context, "nodeImage": {"family": "bottlerocket", "buildSnapshot": True}})


@pytest.fixture
def stubs(tmp_path: Path) -> Stubs:
    return make_stubs(tmp_path)


def snapshot_step(config: AppConfig) -> PipelineStep:
    steps = pipeline_steps(
        config,
        repository_uri=REPOSITORY_URI,
        cache_repository_uri=CACHE_REPOSITORY_URI,
        snapshot_host=HOST,
        props=ImagePipelineProps(snapshot=FAST),
    )
    (step,) = [s for s in steps if s.stage == SNAPSHOT_STAGE]
    return step


def publish_serving_images(config: AppConfig, stubs: Stubs, accelerators: tuple[str, ...] | None = None) -> None:
    version = config.serving.image_version
    names = accelerators if accelerators is not None else config.accelerators
    (stubs.root / "registry").write_text("".join(f"{version}-{a}\n" for a in names))


def calls(stubs: Stubs, prefix: str) -> list[str]:
    return [line for line in stubs.log("aws") if line.startswith(f"aws {prefix}")]


def assert_every_instance_terminated(stubs: Stubs) -> None:
    instances = stubs.ec2().get("instances", {})
    assert all(i["state"] == "terminated" for i in instances.values()), instances


# --- the plan ------------------------------------------------------------------------------------


def test_the_stage_comes_last_only_when_configured(config: AppConfig) -> None:
    steps = pipeline_steps(
        config, repository_uri=REPOSITORY_URI, cache_repository_uri=CACHE_REPOSITORY_URI, snapshot_host=HOST
    )
    assert steps[-1].stage == SNAPSHOT_STAGE and [s.stage for s in steps].count(SNAPSHOT_STAGE) == 1
    without = replace(config, node_image=replace(config.node_image, build_snapshot=False))
    plain = pipeline_steps(without, repository_uri=REPOSITORY_URI, cache_repository_uri=CACHE_REPOSITORY_URI)
    assert SNAPSHOT_STAGE not in {s.stage for s in plain}
    assert [s.action_name for s in plain] == [s.action_name for s in steps[:-1]]


def test_the_snapshot_holds_each_serving_image_for_its_nodes_architecture(config: AppConfig) -> None:
    env = snapshot_step(config).env
    version = config.serving.image_version
    assert env["SERVING_IMAGES"].split() == [
        f"{version}-nvidia=linux/amd64",
        f"{version}-neuron=linux/amd64",
        f"{version}-cpu=linux/arm64",
    ]
    assert env["SNAPSHOT_PARAMETER"] == DATA_VOLUME_SNAPSHOT_PARAMETER
    assert env["AMI_PARAMETER"].startswith("/aws/service/bottlerocket/aws-k8s-")


def test_buildspec_keeps_one_liners_and_calls_the_script() -> None:
    spec = load_buildspec(SNAPSHOT_SPEC)
    assert spec["version"] == 0.2 and spec["env"]["shell"] == "bash"
    (build,) = spec["phases"]["build"]["commands"]
    assert build == "bash ci_build/build-data-volume-snapshot.sh"


def test_script_is_strict_bash() -> None:
    lines = SCRIPT.read_text().splitlines()
    assert lines[0] == "#!/usr/bin/env bash" and "set -euo pipefail" in lines
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


# --- a build, every call ---------------------------------------------------------------------------


def test_a_build_launches_pulls_stops_snapshots_publishes_and_terminates(config: AppConfig, stubs: Stubs) -> None:
    publish_serving_images(config, stubs)
    step = snapshot_step(config)
    run = run_step(step, stubs)
    assert run.returncode == 0, run.stderr
    state = stubs.ec2()
    ((instance_id, instance),) = state["instances"].items()
    ((snapshot_id, snapshot),) = state["snapshots"].items()
    assert run.stdout.strip().splitlines()[-1] == snapshot_id, "the last line is the snapshot id"
    assert f"nodeImage.dataVolumeSnapshotId={snapshot_id}" in run.stdout
    assert state["parameters"] == {DATA_VOLUME_SNAPSHOT_PARAMETER: snapshot_id}

    # Launched: the Bottlerocket AMI, in the builder subnet, IMDSv2, encrypted volumes, tagged.
    (run_instances,) = calls(stubs, "ec2 run-instances")
    assert "--count 1" in run_instances
    assert instance["image"] == "ami-0bottlerocket00001"
    assert (instance["subnet"], instance["security_groups"], instance["profile"]) == (
        "subnet-0builder",
        ["sg-0builder"],
        "Name=builder-profile",
    )
    assert instance["type"] == FAST.instance_type
    assert instance["metadata"]["HttpTokens"] == "required" and instance["metadata"]["HttpPutResponseHopLimit"] == "1"
    devices = {d["DeviceName"]: d["Ebs"] for d in instance["devices"]}
    assert set(devices) == {"/dev/xvda", "/dev/xvdb"}
    assert all(ebs["Encrypted"] is True and ebs["DeleteOnTermination"] is True for ebs in devices.values())
    assert devices["/dev/xvdb"]["VolumeSize"] == FAST.volume_gib
    assert set(instance["tags"]) == {"instance", "volume", "network-interface"}
    assert all(tags[SNAPSHOT_TAG_KEY] == SNAPSHOT_TAG_VALUE for tags in instance["tags"].values())
    assert "[settings.host-containers.admin]\nenabled = true" in instance["user_data"]

    # Waited for, then driven through SSM: kubelet stopped, each image pulled for its platform.
    assert calls(stubs, "ec2 wait instance-running") == [f"aws ec2 wait instance-running --instance-ids {instance_id}"]
    assert calls(stubs, "ssm describe-instance-information")
    commands = [c["command"] for c in state["commands"].values()]
    assert commands[0] == "apiclient exec admin sheltie systemctl stop kubelet"
    version = config.serving.image_version
    ctr = "apiclient exec admin sheltie ctr -a /run/containerd/containerd.sock -n k8s.io images pull"
    expected = [(f"{version}-nvidia", "amd64"), (f"{version}-neuron", "amd64"), (f"{version}-cpu", "arm64")]
    assert len(commands) == 1 + len(expected)
    for command, (tag, arch) in zip(commands[1:], expected, strict=True):
        assert command.startswith(f"{ctr} --label io.cri-containerd.image=managed --platform linux/{arch} ")
        assert command.endswith(f" {REPOSITORY_URI}:{tag}") and "--user AWS:token " in command
    assert all(c["timeout"] == [str(FAST.command_timeout_s)] for c in state["commands"].values())
    assert "token" not in " ".join(c["comment"] for c in state["commands"].values()), "the token is not in comments"

    # Stopped before the snapshot, of the data volume, holding every pull; tagged with its content.
    assert snapshot["instance_state"] == "stopped" and snapshot["volume"] == instance["volume"]
    assert len(snapshot["pulled"]) == len(expected)
    assert snapshot["tags"][SNAPSHOT_TAG_KEY] == SNAPSHOT_TAG_VALUE
    assert snapshot["tags"]["edge-diffusion.aws/image-version"] == version
    assert len(snapshot["tags"]["edge-diffusion.aws/images-sha256"]) == 64
    assert instance["state"] == "terminated"
    (terminate,) = calls(stubs, "ec2 terminate-instances")
    assert terminate == f"aws ec2 terminate-instances --instance-ids {instance_id}"
    # Ordering of the lifecycle.
    lifecycle = [
        line.split()[2]
        for line in stubs.log("aws")
        if line.split()[1] == "ec2"
        and line.split()[2] in {"run-instances", "stop-instances", "create-snapshot", "terminate-instances"}
    ]
    assert lifecycle == ["run-instances", "stop-instances", "create-snapshot", "terminate-instances"]


def test_the_same_images_again_reuse_the_snapshot_and_launch_nothing(config: AppConfig, stubs: Stubs) -> None:
    publish_serving_images(config, stubs)
    step = snapshot_step(config)
    first = run_step(step, stubs)
    assert first.returncode == 0, first.stderr
    snapshot_id = first.stdout.strip().splitlines()[-1]
    stubs.reset_logs()
    (stubs.root / "ec2.json").write_text(
        (stubs.root / "ec2.json").read_text().replace(f'"{DATA_VOLUME_SNAPSHOT_PARAMETER}"', '"/elsewhere"')
    )
    second = run_step(step, stubs)
    assert second.returncode == 0, second.stderr
    assert f"snapshot {snapshot_id} already holds these images" in second.stdout
    assert second.stdout.strip().splitlines()[-1] == snapshot_id
    assert calls(stubs, "ec2 run-instances") == [] and calls(stubs, "ssm send-command") == []
    assert stubs.ec2()["parameters"][DATA_VOLUME_SNAPSHOT_PARAMETER] == snapshot_id


def test_a_new_image_version_builds_a_new_snapshot(config: AppConfig, stubs: Stubs) -> None:
    publish_serving_images(config, stubs)
    first = run_step(snapshot_step(config), stubs)
    bumped = replace(config, serving=replace(config.serving, image_version="9.9.9"))
    publish_serving_images(bumped, stubs)
    second = run_step(snapshot_step(bumped), stubs)
    assert second.returncode == 0, second.stderr
    assert second.stdout.strip().splitlines()[-1] != first.stdout.strip().splitlines()[-1]
    assert len(stubs.ec2()["snapshots"]) == 2
    assert_every_instance_terminated(stubs)


def test_a_missing_serving_image_waits_without_launching(config: AppConfig, stubs: Stubs) -> None:
    publish_serving_images(config, stubs, accelerators=("nvidia", "cpu"))
    run = run_step(snapshot_step(config), stubs)
    assert run.returncode == 0, run.stderr
    version = config.serving.image_version
    assert f"{REPOSITORY_URI}:{version}-neuron not published yet" in run.stdout
    assert calls(stubs, "ec2") == [] and calls(stubs, "ssm") == []


# --- failures: the build fails, and the instance does not outlive it ------------------------------


def failed(run: BuildspecRun) -> None:
    assert run.returncode != 0 and run.failed_command == "bash ci_build/build-data-volume-snapshot.sh"


def test_a_failed_pull_fails_the_build_and_terminates_the_instance(config: AppConfig, stubs: Stubs) -> None:
    publish_serving_images(config, stubs)
    (stubs.root / "fault").write_text("pull")
    run = run_step(snapshot_step(config), stubs)
    failed(run)
    assert "403 Forbidden" in run.stderr and ": Failed" in run.stderr
    assert_every_instance_terminated(stubs)
    assert stubs.ec2()["snapshots"] == {} and stubs.ec2()["parameters"] == {}
    assert calls(stubs, "ec2 stop-instances") == []


def test_an_instance_that_never_reaches_ssm_is_terminated(config: AppConfig, stubs: Stubs) -> None:
    publish_serving_images(config, stubs)
    (stubs.root / "fault").write_text("ssm-offline")
    run = run_step(snapshot_step(config), stubs)
    failed(run)
    assert "did not come online in SSM" in run.stderr
    assert calls(stubs, "ssm send-command") == []
    assert_every_instance_terminated(stubs)


def test_a_failed_snapshot_fails_the_build_publishes_nothing_and_terminates(config: AppConfig, stubs: Stubs) -> None:
    publish_serving_images(config, stubs)
    (stubs.root / "fault").write_text("snapshot-error")
    run = run_step(snapshot_step(config), stubs)
    failed(run)
    assert ": error" in run.stderr
    assert stubs.ec2()["parameters"] == {}
    assert_every_instance_terminated(stubs)


def test_a_refused_launch_fails_with_nothing_to_terminate(config: AppConfig, stubs: Stubs) -> None:
    publish_serving_images(config, stubs)
    (stubs.root / "fault").write_text("run-instances")
    run = run_step(snapshot_step(config), stubs)
    failed(run)
    assert "UnauthorizedOperation" in run.stderr
    assert calls(stubs, "ec2 terminate-instances") == []
    assert stubs.ec2()["instances"] == {}


def test_a_registry_error_fails_before_launching(config: AppConfig, stubs: Stubs) -> None:
    (stubs.root / "fault").write_text("ecr")
    run = run_step(snapshot_step(config), stubs)
    failed(run)
    assert "AccessDeniedException" in run.stderr
    assert calls(stubs, "ec2") == []
