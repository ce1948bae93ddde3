"""Artifacts in a local directory: hashing, writing and verifying the manifest, and a local store.

A directory is an artifact when its manifest lists exactly its files (the manifest itself
aside) with their sizes and sha256; ``verify_dir`` names the first file that differs.
Files are replaced atomically (temp file + rename), so a crash never leaves half a file.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from plan.model_artifacts import MANIFEST_NAME
from runtime.artifacts.manifest import ArtifactError, ArtifactSpec, FileEntry, Manifest, PublishResult

_CHUNK: Final = 1024 * 1024


def file_digest(path: Path) -> tuple[str, int]:
    """sha256 hex and size of one file, read in chunks (UNet weights are gigabytes)."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def list_files(root: Path) -> list[str]:
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
    return tuple(FileEntry(rel, *file_digest(root / rel)) for rel in list_files(root))


def write_manifest(root: Path, spec: ArtifactSpec) -> Manifest:
    """Hash ``root`` and write its manifest atomically."""
    manifest = Manifest(spec=spec, files=scan_dir(root), created_at=datetime.now(UTC).isoformat(timespec="seconds"))
    atomic_write(root / MANIFEST_NAME, manifest.to_json().encode())
    return manifest


def read_manifest(root: Path) -> Manifest:
    path = root / MANIFEST_NAME
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        raise ArtifactError(f"{path}: no manifest (not a compiled artifact, or an incomplete copy)") from None
    return Manifest.from_json(text, origin=str(path))


def entry_problem(root: Path, entry: FileEntry) -> str | None:
    """None when the file matches its entry, else why not."""
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
    """Check ``root`` against its manifest; raise ArtifactError naming the first bad file (by path)."""
    root = Path(root)
    manifest = read_manifest(root)
    listed = {f.path: f for f in manifest.files}
    for rel in sorted(set(listed) | set(list_files(root))):
        entry = listed.get(rel)
        problem = "is not listed in the manifest" if entry is None else entry_problem(root, entry)
        if problem:
            raise ArtifactError(f"{root}: file {rel!r} {problem}")
    return manifest


def atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_unlisted(root: Path, manifest: Manifest) -> tuple[str, ...]:
    """Delete files under ``root`` that ``manifest`` does not list; their relative paths."""
    listed = {f.path for f in manifest.files}
    stale = tuple(rel for rel in list_files(root) if rel not in listed)
    for rel in stale:
        (root / rel).unlink()
    return stale


def find_published_dir(root: Path, spec: ArtifactSpec) -> Manifest | None:
    """The manifest of a complete artifact compiled from ``spec`` at ``root``, else None."""
    if not (root / MANIFEST_NAME).is_file():
        return None
    try:
        manifest = verify_dir(root)
    except ArtifactError:
        return None
    return manifest if manifest.matches(spec) else None


def publish_dir(local_dir: Path, manifest: Manifest, dest: Path) -> PublishResult:
    """Copy a verified artifact into ``dest``: old manifest off, files, stale files out, manifest last."""
    dest.mkdir(parents=True, exist_ok=True)
    (dest / MANIFEST_NAME).unlink(missing_ok=True)
    sent: list[str] = []
    reused: list[str] = []
    for entry in manifest.files:
        if entry_problem(dest, entry) is None:
            reused.append(entry.path)
            continue
        target = dest / entry.path
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.partial")
        shutil.copyfile(local_dir / entry.path, tmp)
        os.replace(tmp, target)
        sent.append(entry.path)
    stale = remove_unlisted(dest, manifest)
    atomic_write(dest / MANIFEST_NAME, (local_dir / MANIFEST_NAME).read_bytes())
    return PublishResult(str(dest), tuple(sent), tuple(reused), stale)
