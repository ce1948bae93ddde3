"""One compile run: skip when an identical artifact is published, else compile, manifest, publish."""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

from plan import contract
from plan.model_artifacts import IMAGE_VERSION_OPTION, MANIFEST_NAME
from runtime.artifacts.local import write_manifest
from runtime.artifacts.manifest import ArtifactSpec, Manifest, PublishResult
from runtime.artifacts.s3 import S3Client, is_s3, s3_client
from runtime.artifacts.store import artifact_uri, find_published, publish, published_manifest
from runtime.compile.export import CompileError, artifact_spec, export
from runtime.compile.settings import CompileConfig

log = logging.getLogger(contract.COMPILE_MODULE)


@dataclass(frozen=True)
class Outcome:
    """What a run did, for the one-line summary."""

    destination: str
    spec: ArtifactSpec
    manifest: Manifest
    published: PublishResult | None  # None: skipped, a matching artifact was already there

    def summary(self) -> str:
        m = self.manifest
        if self.published is None:
            return (
                f"skipped: {self.destination} already holds {self.spec.describe()} "
                f"({len(m.files)} files, {m.total_size} bytes, manifest {MANIFEST_NAME})"
            )
        p = self.published
        return (
            f"published {self.spec.describe()} to {self.destination}: {len(m.files)} files, {m.total_size} bytes "
            f"(sent {len(p.sent)}, already there {len(p.reused)}, removed {len(p.removed)})"
        )


def refuse_a_version_recompiled_otherwise(destination: str, spec: ArtifactSpec, s3: S3Client | None) -> None:
    """CompileError when ``destination`` holds this image version's model compiled with other settings.

    That version's serving images are built from the artifact there, and image tags are immutable:
    replacing it would leave built images and the promotion (ci_build/promoted-models.json) describing a
    model the bucket no longer holds, and new settings would never reach an image. Another version's
    artifact is replaced, as a new version's images are built from the new one."""
    version = spec.options.get(IMAGE_VERSION_OPTION)
    current = published_manifest(destination, s3) if version else None
    if current is None or current.spec.options.get(IMAGE_VERSION_OPTION) != version or current.matches(spec):
        return  # nothing there, another version's, or this very spec with files missing: compile it
    raise CompileError(
        f"{destination} holds image version {version}'s model compiled with other settings "
        f"({', '.join(current.spec.differences(spec))}); its images are built from that model and tags are "
        "immutable: compile these settings with a new serving.imageVersion"
    )


def run(cfg: CompileConfig, s3: S3Client | None = None) -> Outcome:
    """Skip if published, else compile into a temp dir, write the manifest, publish (manifest last)."""
    if is_s3(cfg.out) and s3 is None:
        s3 = s3_client()
    destination = artifact_uri(cfg.out, cfg.model_id, cfg.revision, cfg.device)
    spec = artifact_spec(cfg)
    existing = find_published(destination, spec, s3)
    if existing is not None:
        return Outcome(destination, spec, existing, None)
    refuse_a_version_recompiled_otherwise(destination, spec, s3)
    if cfg.work_dir is not None:
        cfg.work_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="edge-diffusion-compile-", dir=cfg.work_dir) as tmp:
        staging = Path(tmp)
        out_dir = staging / "artifact"
        log.info("compiling %s into %s", spec.describe(), out_dir)
        export(cfg, out_dir, staging)
        manifest = write_manifest(out_dir, spec)
        log.info("publishing %d files (%d bytes) to %s", len(manifest.files), manifest.total_size, destination)
        result = publish(out_dir, destination, s3)
    return Outcome(destination, spec, manifest, result)
