"""Where the model comes from: a model built in code, a local directory, an S3 prefix, or the HF cache.

Built-in models (``runtime.server.models``: ``tiny``, ``sd21-random``, ``sd21-768-random``) are
built from their configuration with random weights. A directory baked into the image (a Docker
layer, so a new node pulls it with the image) is loaded as is, and verified
first when it carries a manifest; an `s3://` prefix written by the compile job is always
downloaded and verified against its manifest (runtime.artifacts) before anything reads it. A
manifest that names another model, revision or device than configured is refused: a pod must
never serve something other than what its Kubernetes Deployment says.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from plan import contract
from plan.model_artifacts import MANIFEST_NAME
from runtime.artifacts.local import verify_dir
from runtime.artifacts.manifest import ArtifactError, ArtifactSpec, Manifest
from runtime.artifacts.s3 import is_s3
from runtime.artifacts.store import fetch_verified
from runtime.server.models import build_pipeline, built_in
from runtime.server.settings import Settings

log = logging.getLogger(__name__)


class ModelSourceError(RuntimeError):
    """The configured model cannot be found or does not match what was configured."""


@dataclass(frozen=True)
class ModelLocation:
    """A resolved model: built in code, a local directory (with its manifest if verified), or a Hub id."""

    kind: str  # "builtin" | "dir" | "hub"
    model_id: str
    revision: str | None = None
    path: Path | None = None
    manifest: Manifest | None = None  # set when the directory was verified

    def load_diffusers(self, torch_dtype: Any) -> Any:
        """A diffusers StableDiffusionPipeline (safety checker off: the server filters nothing)."""
        if self.kind == "builtin":
            return build_pipeline(self.model_id, dtype=torch_dtype)
        from diffusers import StableDiffusionPipeline

        common: dict[str, Any] = {"torch_dtype": torch_dtype, "safety_checker": None, "requires_safety_checker": False}
        if self.kind == "dir":
            return StableDiffusionPipeline.from_pretrained(str(self.path), **common)
        return StableDiffusionPipeline.from_pretrained(self.model_id, revision=self.revision, **common)


def resolve_model(settings: Settings, device: str) -> ModelLocation:
    """Resolve settings to a loadable location, downloading and verifying S3 artifacts."""
    source = settings.model_source
    if not source:
        if built_in(settings.model_id) is not None:
            return ModelLocation(kind="builtin", model_id=settings.model_id)
        return ModelLocation(kind="hub", model_id=settings.model_id, revision=settings.model_revision)
    manifest: Manifest | None
    try:
        if is_s3(source):
            cache = Path(settings.model_cache_dir) / hashlib.sha256(source.encode()).hexdigest()[:16]
            log.info("downloading %s to %s", source, cache)
            artifact = fetch_verified(source, cache)
            path, manifest = artifact.path, artifact.manifest
        else:
            path = Path(source)
            if not path.is_dir():
                raise ModelSourceError(f"{contract.ENV_MODEL_SOURCE}={source!r} is not a directory or s3:// URI")
            if (path / MANIFEST_NAME).is_file():
                manifest = verify_dir(path)
            else:
                log.warning("%s has no %s: loading it unverified", path, MANIFEST_NAME)
                manifest = None
    except ArtifactError as exc:
        raise ModelSourceError(str(exc)) from None
    if manifest is not None:
        check_manifest(manifest.spec, settings, device)
        log.info("verified %s: %s", source, manifest.spec.describe())
    return ModelLocation(
        kind="dir", model_id=settings.model_id, revision=settings.model_revision, path=path, manifest=manifest
    )


def check_manifest(spec: ArtifactSpec, settings: Settings, device: str) -> None:
    """Refuse an artifact compiled for another model, revision or device."""
    if spec.model_id != settings.model_id:
        raise ModelSourceError(
            f"artifact is model {spec.model_id!r} but {contract.ENV_MODEL_ID} is {settings.model_id!r}"
        )
    if settings.model_revision and spec.revision != settings.model_revision:
        raise ModelSourceError(
            f"artifact is revision {spec.revision!r} but {contract.ENV_MODEL_REVISION} is {settings.model_revision!r}"
        )
    if spec.device != device:
        raise ModelSourceError(f"artifact is compiled for {spec.device!r} but this pod runs on {device!r}")
