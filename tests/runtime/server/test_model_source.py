"""Model sources: a verified local artifact, a tampered one, one for another device, and S3."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pytest
from moto import mock_aws

from plan.model_artifacts import MANIFEST_NAME
from runtime.artifacts.local import write_manifest
from runtime.artifacts.manifest import ArtifactSpec, Shapes, library_versions
from runtime.artifacts.store import artifact_uri, publish
from runtime.server import backends
from runtime.server.backends import BatchParams, ImageSpec
from runtime.server.model_source import ModelSourceError, resolve_model
from runtime.server.settings import Settings


@pytest.fixture(scope="module")
def tiny_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from runtime.server.tiny import build_tiny_pipeline

    root = tmp_path_factory.mktemp("tiny-artifact")
    build_tiny_pipeline().save_pretrained(root)
    spec = ArtifactSpec(
        model_id="tiny",
        revision="main",
        device="cpu",
        shapes=Shapes(64, 64, 1),
        dtype="float32",
        versions=library_versions("cpu"),
    )
    write_manifest(root, spec)
    return root


def test_local_dir_with_manifest_is_verified_and_loads(tiny_artifact: Path) -> None:
    location = resolve_model(Settings(model_id="tiny", model_source=str(tiny_artifact)), "cpu")
    assert location.kind == "dir" and location.manifest is not None and location.manifest.spec.device == "cpu"
    backend = backends.DiffusersBackend(Settings(model_id="tiny", model_source=str(tiny_artifact)), "cpu")
    backend.load()
    (image,) = backend.generate(BatchParams(2, 7.5, 64, 64), [ImageSpec("a", "", 1)], lambda: False)
    assert image.shape == (64, 64, 3) and np.isfinite(image).all()


def test_manifest_for_another_device_model_or_revision_is_refused(tiny_artifact: Path) -> None:
    with pytest.raises(ModelSourceError, match="compiled for 'cpu'"):
        resolve_model(Settings(model_id="tiny", model_source=str(tiny_artifact)), "cuda")
    with pytest.raises(ModelSourceError, match="other/model"):
        resolve_model(Settings(model_id="other/model", model_source=str(tiny_artifact)), "cpu")
    with pytest.raises(ModelSourceError, match="revision"):
        resolve_model(Settings(model_id="tiny", model_revision="v2", model_source=str(tiny_artifact)), "cpu")


def test_tampered_local_artifact_is_refused(tiny_artifact: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny_artifact, copy)
    weights = next(copy.rglob("unet/*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x00")
    with pytest.raises(ModelSourceError, match="unet/"):
        resolve_model(Settings(model_id="tiny", model_source=str(copy)), "cpu")


def test_s3_artifact_is_downloaded_verified_and_cached(tiny_artifact: Path, tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(var, "testing")
    with mock_aws():
        boto3.client("s3").create_bucket(Bucket="edge-models")
        uri = artifact_uri("s3://edge-models/compiled", "tiny", "main", "cpu")
        publish(tiny_artifact, uri)
        settings = Settings(model_id="tiny", model_source=uri, model_cache_dir=str(tmp_path))
        location = resolve_model(settings, "cpu")
        assert location.path is not None and location.path.is_relative_to(tmp_path)
        assert (location.path / MANIFEST_NAME).is_file()
        assert location.manifest is not None and location.manifest.spec.model_id == "tiny"
        with pytest.raises(ModelSourceError, match="no manifest"):
            resolve_model(settings.replace(model_source="s3://edge-models/nothing-here"), "cpu")


@pytest.mark.parametrize("model_id", ["tiny", "sd21-random", "sd21-768-random"])
def test_built_in_models_resolve_without_a_source(model_id: str) -> None:
    location = resolve_model(Settings(model_id=model_id), "cpu")
    assert (location.kind, location.model_id, location.path, location.manifest) == ("builtin", model_id, None, None)
    hub = resolve_model(Settings(model_id="org/sd21-random"), "cpu")  # only the exact names are built in
    assert hub.kind == "hub"
