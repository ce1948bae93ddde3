"""Where artifacts live, S3 or a local directory alike: locate, find, publish, fetch.

Every location is ``plan.model_artifacts.artifact_prefix(base, model, revision, device)``, the
layout the compile job publishes, the image build fetches and the IAM policies are scoped to.
Invariant: the manifest is written LAST. A prefix without a manifest is incomplete (an upload
was interrupted) and is redone by the next compile run; readers treat it as missing.
"""

from __future__ import annotations

from pathlib import Path

from plan.model_artifacts import MANIFEST_NAME, artifact_prefix
from runtime.artifacts.local import find_published_dir, publish_dir, read_manifest, verify_dir
from runtime.artifacts.manifest import (
    Artifact,
    ArtifactError,
    ArtifactSpec,
    Manifest,
    PublishResult,
    check_device,
    check_model_id,
    check_revision,
)
from runtime.artifacts.s3 import (
    S3Client,
    download,
    find_published_s3,
    is_s3,
    normalize_s3_uri,
    publish_s3,
    published_manifest_s3,
    s3_client,
)


def artifact_uri(base: str, model_id: str, revision: str, device: str) -> str:
    """Where an artifact lives: ``<base>/<model>/<revision>/<device>/`` (an S3 URI or a local path)."""
    check_model_id(model_id)
    check_revision(revision)
    check_device(device)
    root = normalize_s3_uri(base) if is_s3(base) else str(Path(base))
    return artifact_prefix(root, model_id, revision, device)


def find_published(dest: str, spec: ArtifactSpec, s3: S3Client | None = None) -> Manifest | None:
    """A complete artifact at ``dest`` compiled from an identical spec, or None (so: compile it).

    Complete means a readable manifest whose spec matches and whose every file is present
    with the recorded size (S3) or verifies fully (local).
    """
    if is_s3(dest):
        return find_published_s3(dest, spec, s3 or s3_client())
    return find_published_dir(Path(dest), spec)


def published_manifest(dest: str, s3: S3Client | None = None) -> Manifest | None:
    """The manifest at ``dest`` whatever its spec (None: none, or unreadable)."""
    if is_s3(dest):
        return published_manifest_s3(dest, s3 or s3_client())
    try:
        return read_manifest(Path(dest)) if (Path(dest) / MANIFEST_NAME).is_file() else None
    except ArtifactError:
        return None


def publish(local_dir: Path, dest: str, s3: S3Client | None = None) -> PublishResult:
    """Copy a verified local artifact to ``dest`` (S3 URI or directory), manifest last.

    Order: (1) remove any manifest at dest, so a reader never pairs an old manifest with new
    files; (2) send every file not already there with the same sha256; (3) delete files the
    new manifest does not list; (4) write the manifest. A crash anywhere before (4) leaves
    no manifest, and the next run resumes, skipping files that already made it.
    """
    manifest = verify_dir(local_dir)
    if is_s3(dest):
        return publish_s3(local_dir, manifest, dest, s3 or s3_client())
    return publish_dir(local_dir, manifest, Path(dest))


def fetch_verified(source: str, cache_dir: Path | str, s3: S3Client | None = None) -> Artifact:
    """Resolve a model source (S3 prefix or local dir) to a verified local directory.

    S3 sources are downloaded into ``cache_dir`` (which this function owns: unlisted files
    there are deleted, and files already there with the right checksum are kept, so a
    restarted pod does not download again); local sources are verified in place.
    """
    if is_s3(source):
        dest = Path(cache_dir)
        return Artifact(dest, download(source, dest, s3))
    root = Path(source)
    return Artifact(root, verify_dir(root))
