"""Compiled-model artifacts: the manifest, its verification, and its storage (S3 or a local dir).

The compile job (`python -m runtime.compile`) writes a model directory, describes it in a
manifest (`contract.MANIFEST_NAME`) and publishes it under `<base>/<model>/<revision>/<chip>/`.
Serving pods fetch that prefix and refuse to load anything whose bytes differ from the manifest,
so a half-copied or tampered model never reaches a GPU.

Invariant: the manifest is written LAST. A prefix without a manifest is incomplete (an upload
was interrupted) and is redone by the next compile run; readers treat it as missing.

Public API (the server uses the first two):

- `fetch_verified(source, cache_dir) -> Artifact`: `source` is `s3://bucket/prefix` or a local
  directory. S3 is downloaded into `cache_dir` (files already there with the right checksum are
  kept, so a restarted pod does not download again) and verified; a local directory is verified
  in place and `cache_dir` is not touched. `Artifact.path` is the directory to load from,
  `Artifact.manifest` says what it is. Raises `ArtifactError` (one-line message) on any problem.
- `verify_dir(path) -> Manifest`: check every file's size and sha256 against the manifest
  (and that no unlisted file is present); the error names the first mismatching file.
- `write_manifest(path, spec) -> Manifest`, `read_manifest(path) -> Manifest`.
- `artifact_uri(base, model_id, revision, chip) -> str`: where a build lives.
- `find_published(dest, spec) -> Manifest | None`: a complete artifact matching `spec` at `dest`.
- `publish(local_dir, dest) -> PublishResult`: upload/copy, manifest last; files already
  present remotely with the same sha256 (object metadata) are not sent again.
- `BuildSpec`: what identifies a build (model id, revision, chip, shapes, dtype, library versions).

CLI, for image builds that bake a model into a layer and for operators:
`python -m runtime.artifacts fetch s3://bucket/prefix/ DIR` (download + verify) and
`python -m runtime.artifacts verify DIR`; one summary line, exit 1 with a one-line error.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path, PurePosixPath
from typing import Any, Final, TypeAlias

from spec.contract import ACCELERATORS, MANIFEST_NAME

S3Client: TypeAlias = Any  # a boto3 S3 client; boto3 is imported lazily, only when S3 is used

MANIFEST_FORMAT: Final = 1
SHA256_METADATA_KEY: Final = "sha256"  # S3 object metadata (x-amz-meta-sha256) set on upload
DTYPES: Final = ("float16", "bfloat16", "float32")
_CHUNK: Final = 1024 * 1024
_MODEL_ID_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
_REVISION_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_BUCKET_RE: Final = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_SHA256_RE: Final = re.compile(r"^[0-9a-f]{64}$")
# Library versions recorded per chip: an artifact compiled under other versions may not load.
_BASE_LIBRARIES: Final = ("torch", "diffusers", "transformers")
_NEURON_LIBRARIES: Final = ("optimum-neuron", "torch-neuronx", "neuronx-cc")


class ArtifactError(Exception):
    """A model artifact is missing, incomplete, malformed or does not match its manifest."""


@dataclass(frozen=True)
class Shapes:
    """Image size and batch size; static (compiled in) for neuron, the defaults otherwise."""

    height: int
    width: int
    batch_size: int


@dataclass(frozen=True)
class FileEntry:
    """One file of an artifact, by POSIX path relative to the artifact root."""

    path: str
    sha256: str
    size: int


@dataclass(frozen=True)
class BuildSpec:
    """What identifies a build: two builds with equal specs are interchangeable."""

    model_id: str
    revision: str
    chip: str
    shapes: Shapes
    dtype: str
    versions: Mapping[str, str]
    options: Mapping[str, str] = field(default_factory=dict)  # e.g. {"inductor_cache": "true"}

    def __post_init__(self) -> None:
        if self.chip not in ACCELERATORS:
            raise ArtifactError(f"chip {self.chip!r} is not one of {', '.join(ACCELERATORS)}")
        if self.dtype not in DTYPES:
            raise ArtifactError(f"dtype {self.dtype!r} is not one of {', '.join(DTYPES)}")
        check_model_id(self.model_id)
        check_revision(self.revision)

    def identity(self) -> dict[str, Any]:
        """The JSON-comparable fields that decide whether a published build can be reused."""
        return {
            "model_id": self.model_id,
            "revision": self.revision,
            "chip": self.chip,
            "shapes": {"height": self.shapes.height, "width": self.shapes.width, "batch_size": self.shapes.batch_size},
            "dtype": self.dtype,
            "versions": dict(sorted(self.versions.items())),
            "options": dict(sorted(self.options.items())),
        }

    def describe(self) -> str:
        """One human line, e.g. `tiny@main cpu 64x64 batch 1 float32`."""
        s = self.shapes
        return f"{self.model_id}@{self.revision} {self.chip} {s.width}x{s.height} batch {s.batch_size} {self.dtype}"


@dataclass(frozen=True)
class Manifest:
    """A build's spec plus the size and sha256 of every file (sorted by path)."""

    spec: BuildSpec
    files: tuple[FileEntry, ...]
    created_at: str = ""

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)

    def matches(self, spec: BuildSpec) -> bool:
        return self.spec.identity() == spec.identity()

    def to_json(self) -> str:
        doc = {"format": MANIFEST_FORMAT, **self.spec.identity(), "created_at": self.created_at}
        doc["files"] = [{"path": f.path, "sha256": f.sha256, "size": f.size} for f in self.files]
        return json.dumps(doc, indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes, origin: str = MANIFEST_NAME) -> Manifest:
        """Parse and validate; `origin` names the manifest in error messages."""
        try:
            doc = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ArtifactError(f"{origin}: not valid JSON ({exc})") from None
        try:
            if not isinstance(doc, dict):
                raise TypeError("top level is not an object")
            if doc.get("format") != MANIFEST_FORMAT:
                raise ValueError(f"format {doc.get('format')!r}, expected {MANIFEST_FORMAT}")
            shapes = doc["shapes"]
            spec = BuildSpec(
                model_id=_str(doc["model_id"]),
                revision=_str(doc["revision"]),
                chip=_str(doc["chip"]),
                shapes=Shapes(_int(shapes["height"]), _int(shapes["width"]), _int(shapes["batch_size"])),
                dtype=_str(doc["dtype"]),
                versions={_str(k): _str(v) for k, v in doc["versions"].items()},
                options={_str(k): _str(v) for k, v in doc.get("options", {}).items()},
            )
            files = tuple(
                FileEntry(_safe_relpath(_str(f["path"])), _sha(f["sha256"]), _int(f["size"])) for f in doc["files"]
            )
        except ArtifactError as exc:
            raise ArtifactError(f"{origin}: {exc}") from None
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            detail = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
            raise ArtifactError(f"{origin}: malformed manifest ({detail})") from None
        paths = [f.path for f in files]
        if len(set(paths)) != len(paths):
            raise ArtifactError(f"{origin}: malformed manifest (duplicate file paths)")
        return cls(
            spec=spec, files=tuple(sorted(files, key=lambda f: f.path)), created_at=str(doc.get("created_at", ""))
        )


@dataclass(frozen=True)
class Artifact:
    """A verified model directory, ready to load."""

    path: Path
    manifest: Manifest


@dataclass(frozen=True)
class PublishResult:
    """What `publish` did: files sent, files already there, stale files removed."""

    destination: str
    sent: tuple[str, ...]
    reused: tuple[str, ...]
    removed: tuple[str, ...]


# --- validation helpers --------------------------------------------------------------------


def _str(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {value!r}")
    return value


def _int(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise TypeError(f"expected a non-negative integer, got {value!r}")
    return value


def _sha(value: object) -> str:
    if not isinstance(value, str) or not _SHA256_RE.match(value):
        raise ValueError(f"bad sha256 {value!r}")
    return value


def _safe_relpath(path: str) -> str:
    """Reject absolute paths and `..`: a manifest must never make us write outside `dest`."""
    p = PurePosixPath(path)
    if not path or p.is_absolute() or ".." in p.parts or "\\" in path or str(p) != path or path == ".":
        raise ValueError(f"unsafe file path {path!r}")
    return path


def check_model_id(model_id: str) -> str:
    """A Hub id (`org/name`) or a bare name like `tiny`; it becomes part of an S3 key."""
    if not _MODEL_ID_RE.match(model_id) or ".." in model_id:
        raise ArtifactError(f"model id {model_id!r} is not a Hub id like 'org/name' or a plain name like 'tiny'")
    return model_id


def check_revision(revision: str) -> str:
    """A branch, tag or commit without '/', so `<model>/<revision>/<chip>` stays unambiguous."""
    if not _REVISION_RE.match(revision) or ".." in revision:
        raise ArtifactError(f"revision {revision!r} must be letters, digits, '.', '_' or '-' (no '/')")
    return revision


def library_versions(chip: str) -> dict[str, str]:
    """Installed versions that an artifact for `chip` depends on (absent packages are omitted)."""
    names = _BASE_LIBRARIES + (_NEURON_LIBRARIES if chip == "neuron" else ())
    found: dict[str, str] = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


# --- local directories ---------------------------------------------------------------------


def file_digest(path: Path) -> tuple[str, int]:
    """sha256 hex and size of one file, read in chunks (UNet weights are gigabytes)."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _list_files(root: Path) -> list[str]:
    """Relative POSIX paths of regular files under root, minus the manifest, sorted."""
    out = []
    for p in root.rglob("*"):
        if p.is_file():
            rel = p.relative_to(root).as_posix()
            if rel != MANIFEST_NAME:
                out.append(rel)
    return sorted(out)


def scan_dir(root: Path) -> tuple[FileEntry, ...]:
    """Hash every file under root (except the manifest)."""
    if not root.is_dir():
        raise ArtifactError(f"{root}: not a directory")
    return tuple(FileEntry(rel, *file_digest(root / rel)) for rel in _list_files(root))


def write_manifest(root: Path, spec: BuildSpec) -> Manifest:
    """Hash `root` and write its manifest atomically (temp file + rename)."""
    manifest = Manifest(spec=spec, files=scan_dir(root), created_at=datetime.now(UTC).isoformat(timespec="seconds"))
    _atomic_write(root / MANIFEST_NAME, manifest.to_json().encode())
    return manifest


def read_manifest(root: Path) -> Manifest:
    path = root / MANIFEST_NAME
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        raise ArtifactError(f"{path}: no manifest (not a compiled artifact, or an incomplete copy)") from None
    return Manifest.from_json(text, origin=str(path))


def _check_entry(root: Path, entry: FileEntry) -> str | None:
    """None when the file matches, else why not."""
    path = root / entry.path
    if not path.is_file():
        return "is missing"
    size = path.stat().st_size
    if size != entry.size:
        return f"has size {size}, manifest says {entry.size}"
    sha, _ = file_digest(path)
    if sha != entry.sha256:
        return f"has sha256 {sha[:12]}..., manifest says {entry.sha256[:12]}..."
    return None


def verify_dir(root: Path | str) -> Manifest:
    """Check `root` against its manifest; raise ArtifactError naming the first bad file (by path)."""
    root = Path(root)
    manifest = read_manifest(root)
    listed = {f.path: f for f in manifest.files}
    for rel in sorted(set(listed) | set(_list_files(root))):
        entry = listed.get(rel)
        problem = "is not listed in the manifest" if entry is None else _check_entry(root, entry)
        if problem:
            raise ArtifactError(f"{root}: file {rel!r} {problem}")
    return manifest


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --- locations -----------------------------------------------------------------------------


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/a/b` -> (`bucket`, `a/b/`): the prefix is '' or ends with '/'."""
    if not is_s3(uri):
        raise ArtifactError(f"{uri!r} is not an s3:// URI")
    bucket, _, prefix = uri[len("s3://") :].partition("/")
    if not _BUCKET_RE.match(bucket) or ".." in bucket:
        raise ArtifactError(f"{uri!r}: bucket name {bucket!r} is not a valid S3 bucket name")
    prefix = prefix.strip("/")
    if any(part in ("", ".", "..") for part in prefix.split("/")) and prefix:
        raise ArtifactError(f"{uri!r}: prefix must not contain empty, '.' or '..' segments")
    return bucket, f"{prefix}/" if prefix else ""


def artifact_uri(base: str, model_id: str, revision: str, chip: str) -> str:
    """Where a build lives: `<base>/<model>/<revision>/<chip>/` (S3 URI or local path)."""
    check_model_id(model_id)
    check_revision(revision)
    if chip not in ACCELERATORS:
        raise ArtifactError(f"chip {chip!r} is not one of {', '.join(ACCELERATORS)}")
    tail = f"{model_id}/{revision}/{chip}/"
    if is_s3(base):
        bucket, prefix = parse_s3_uri(base)
        return f"s3://{bucket}/{prefix}{tail}"
    return str(Path(base) / model_id / revision / chip) + os.sep


def _s3_client() -> S3Client:
    import boto3

    return boto3.client("s3")


def _is_not_found(exc: Exception) -> bool:
    from botocore.exceptions import ClientError

    if not isinstance(exc, ClientError):
        return False
    code = str(exc.response.get("Error", {}).get("Code", ""))
    return code in ("404", "NoSuchKey", "NotFound")


def _list_keys(s3: S3Client, bucket: str, prefix: str) -> dict[str, int]:
    """Every key under prefix with its size."""
    keys: dict[str, int] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            keys[obj["Key"]] = int(obj["Size"])
    return keys


def read_remote_manifest(uri: str, s3: S3Client | None = None) -> Manifest | None:
    """The manifest at an S3 prefix, or None when there is none (never published or interrupted)."""
    s3 = s3 or _s3_client()
    bucket, prefix = parse_s3_uri(uri)
    try:
        body = s3.get_object(Bucket=bucket, Key=prefix + MANIFEST_NAME)["Body"].read()
    except Exception as exc:
        if _is_not_found(exc):
            return None
        raise
    return Manifest.from_json(body, origin=f"s3://{bucket}/{prefix}{MANIFEST_NAME}")


def find_published(dest: str, spec: BuildSpec, s3: S3Client | None = None) -> Manifest | None:
    """A complete artifact at `dest` built from an identical spec, or None (so: build it).

    Complete means a readable manifest whose spec matches and whose every file is present
    with the recorded size (S3) or verifies fully (local). An unreadable manifest counts as
    absent: the next publish overwrites it.
    """
    if is_s3(dest):
        s3 = s3 or _s3_client()
        try:
            manifest = read_remote_manifest(dest, s3)
        except ArtifactError:
            return None
        if manifest is None or not manifest.matches(spec):
            return None
        bucket, prefix = parse_s3_uri(dest)
        keys = _list_keys(s3, bucket, prefix)
        if any(keys.get(prefix + f.path) != f.size for f in manifest.files):
            return None
        return manifest
    root = Path(dest)
    if not (root / MANIFEST_NAME).is_file():
        return None
    try:
        manifest = verify_dir(root)
    except ArtifactError:
        return None
    return manifest if manifest.matches(spec) else None


# --- publish -------------------------------------------------------------------------------


def publish(local_dir: Path, dest: str, s3: S3Client | None = None) -> PublishResult:
    """Copy a verified local artifact to `dest` (S3 URI or directory), manifest last.

    Order: (1) remove any manifest at dest, so a reader never pairs an old manifest with new
    files; (2) send every file not already there with the same sha256; (3) delete files the
    new manifest does not list; (4) write the manifest. A crash anywhere before (4) leaves
    no manifest, and the next run resumes, skipping files that already made it.
    """
    manifest = verify_dir(local_dir)
    if is_s3(dest):
        return _publish_s3(local_dir, manifest, dest, s3 or _s3_client())
    return _publish_local(local_dir, manifest, Path(dest))


def _publish_s3(local_dir: Path, manifest: Manifest, dest: str, s3: S3Client) -> PublishResult:
    bucket, prefix = parse_s3_uri(dest)
    s3.delete_object(Bucket=bucket, Key=prefix + MANIFEST_NAME)
    existing = _list_keys(s3, bucket, prefix)
    sent: list[str] = []
    reused: list[str] = []
    for entry in manifest.files:
        key = prefix + entry.path
        if existing.get(key) == entry.size and _remote_sha(s3, bucket, key) == entry.sha256:
            reused.append(entry.path)
            continue
        s3.upload_file(
            str(local_dir / entry.path), bucket, key, ExtraArgs={"Metadata": {SHA256_METADATA_KEY: entry.sha256}}
        )
        sent.append(entry.path)
    wanted = {prefix + f.path for f in manifest.files} | {prefix + MANIFEST_NAME}
    stale = sorted(k for k in existing if k not in wanted)
    for start in range(0, len(stale), 1000):
        batch = stale[start : start + 1000]
        s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True})
    s3.put_object(
        Bucket=bucket,
        Key=prefix + MANIFEST_NAME,
        Body=(local_dir / MANIFEST_NAME).read_bytes(),
        ContentType="application/json",
    )
    removed = tuple(k[len(prefix) :] for k in stale)
    return PublishResult(f"s3://{bucket}/{prefix}", tuple(sent), tuple(reused), removed)


def _remote_sha(s3: S3Client, bucket: str, key: str) -> str | None:
    try:
        head = s3.head_object(Bucket=bucket, Key=key)
    except Exception as exc:
        if _is_not_found(exc):
            return None
        raise
    value = head.get("Metadata", {}).get(SHA256_METADATA_KEY)
    return str(value) if value else None


def _publish_local(local_dir: Path, manifest: Manifest, dest: Path) -> PublishResult:
    dest.mkdir(parents=True, exist_ok=True)
    (dest / MANIFEST_NAME).unlink(missing_ok=True)
    sent: list[str] = []
    reused: list[str] = []
    for entry in manifest.files:
        if _check_entry(dest, entry) is None:
            reused.append(entry.path)
            continue
        target = dest / entry.path
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.partial")
        shutil.copyfile(local_dir / entry.path, tmp)
        os.replace(tmp, target)
        sent.append(entry.path)
    listed = {f.path for f in manifest.files}
    stale = tuple(rel for rel in _list_files(dest) if rel not in listed)
    for rel in stale:
        (dest / rel).unlink()
    _atomic_write(dest / MANIFEST_NAME, (local_dir / MANIFEST_NAME).read_bytes())
    return PublishResult(str(dest), tuple(sent), tuple(reused), stale)


# --- fetch ---------------------------------------------------------------------------------


def download(source: str, dest: Path, s3: S3Client | None = None) -> Manifest:
    """Download the files an S3 manifest lists into `dest`, then the manifest, then verify.

    Files already in `dest` with the listed size and sha256 are kept. Files in `dest` that the
    manifest does not list are removed, so `dest` must be a directory this function owns
    (a per-artifact cache dir), never a shared one.
    """
    s3 = s3 or _s3_client()
    bucket, prefix = parse_s3_uri(source)
    manifest = read_remote_manifest(source, s3)
    if manifest is None:
        raise ArtifactError(
            f"s3://{bucket}/{prefix}{MANIFEST_NAME}: no manifest (nothing published there, or an upload "
            "was interrupted; re-run the compile job)"
        )
    dest.mkdir(parents=True, exist_ok=True)
    (dest / MANIFEST_NAME).unlink(missing_ok=True)
    for entry in manifest.files:
        if _check_entry(dest, entry) is None:
            continue
        target = dest / entry.path
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.partial")
        try:
            s3.download_file(bucket, prefix + entry.path, str(tmp))
        except Exception as exc:
            tmp.unlink(missing_ok=True)
            if _is_not_found(exc):
                raise ArtifactError(f"s3://{bucket}/{prefix}{entry.path}: listed in the manifest but missing") from None
            raise
        os.replace(tmp, target)
    listed = {f.path for f in manifest.files}
    for rel in _list_files(dest):
        if rel not in listed:
            (dest / rel).unlink()
    _atomic_write(dest / MANIFEST_NAME, manifest.to_json().encode())
    return verify_dir(dest)


def fetch_verified(source: str, cache_dir: Path | str, s3: S3Client | None = None) -> Artifact:
    """Resolve a model source (S3 prefix or local dir) to a verified local directory.

    S3 sources are downloaded into `cache_dir` (which this function owns: unlisted files
    there are deleted); local sources are verified in place.
    """
    if is_s3(source):
        dest = Path(cache_dir)
        return Artifact(dest, download(source, dest, s3))
    root = Path(source)
    return Artifact(root, verify_dir(root))


def main(argv: Sequence[str] | None = None) -> int:
    """`fetch SOURCE DEST` or `verify DIR`; prints what was verified."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m runtime.artifacts", description="Fetch or verify an artifact.")
    sub = parser.add_subparsers(dest="command", required=True)
    fetch = sub.add_parser("fetch", help="download an s3:// prefix (or check a local dir) and verify it")
    fetch.add_argument("source")
    fetch.add_argument("dest", type=Path)
    verify = sub.add_parser("verify", help="verify a local directory against its manifest")
    verify.add_argument("path", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.command == "fetch":
            artifact = fetch_verified(args.source, args.dest)
        else:
            artifact = Artifact(args.path, verify_dir(args.path))
    except ArtifactError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 1
    m = artifact.manifest
    print(f"verified {m.spec.describe()} in {artifact.path}: {len(m.files)} files, {m.total_size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
