"""What a compiled artifact is: its artifact spec, its files, and the manifest JSON describing both.

A manifest (``plan.model_artifacts.MANIFEST_NAME``) records what identifies an artifact (model id,
revision, device, shapes, dtype, library versions, options) and the size and sha256 of every
file. Parsing validates every field, so a malformed or hostile manifest (``..`` paths, bad
digests) is refused with a one-line ``ArtifactError`` before any file is touched.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path, PurePosixPath
from typing import Any, Final

from plan import contract
from plan.model_artifacts import MANIFEST_NAME

MANIFEST_FORMAT: Final = 2  # 2 names the torch device "device"; older manifests are refused (compile again)
DTYPES: Final = ("float16", "bfloat16", "float32")
MODEL_ID_ALLOWED: Final = "a Hub id like 'org/name' or a plain name like 'tiny'"
REVISION_ALLOWED: Final = "letters, digits, '.', '_' or '-' (no '/')"
_MODEL_ID_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
_REVISION_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_SHA256_RE: Final = re.compile(r"^[0-9a-f]{64}$")
# Library versions recorded per device: an artifact compiled under other versions may not load.
_BASE_LIBRARIES: Final = ("torch", "diffusers", "transformers")
_NEURON_LIBRARIES: Final = ("optimum-neuron", "torch-neuronx", "neuronx-cc")


class ArtifactError(Exception):
    """A model artifact is missing, incomplete, malformed or does not match its manifest."""


def is_model_id(model_id: object) -> bool:
    """A Hub id (``org/name``) or a bare name like ``tiny``: it becomes part of an S3 key."""
    return isinstance(model_id, str) and bool(_MODEL_ID_RE.match(model_id)) and ".." not in model_id


def is_revision(revision: object) -> bool:
    """A branch, tag or commit without '/', so ``<model>/<revision>/<device>`` stays unambiguous."""
    return isinstance(revision, str) and bool(_REVISION_RE.match(revision)) and ".." not in revision


def check_model_id(model_id: str) -> str:
    if not is_model_id(model_id):
        raise ArtifactError(f"model id {model_id!r} is not allowed; allowed: {MODEL_ID_ALLOWED}")
    return model_id


def check_revision(revision: str) -> str:
    if not is_revision(revision):
        raise ArtifactError(f"revision {revision!r} is not allowed; allowed: {REVISION_ALLOWED}")
    return revision


def check_device(device: str) -> str:
    if device not in contract.DEVICES:
        raise ArtifactError(f"device {device!r} is not allowed; allowed: {', '.join(contract.DEVICES)}")
    return device


def library_versions(device: str) -> dict[str, str]:
    """Installed versions that an artifact for ``device`` depends on (absent packages are omitted)."""
    names = _BASE_LIBRARIES + (_NEURON_LIBRARIES if device == "neuron" else ())
    found: dict[str, str] = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


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
class ArtifactSpec:
    """What identifies a compiled artifact: two artifacts with equal specs are interchangeable."""

    model_id: str
    revision: str
    device: str
    shapes: Shapes
    dtype: str
    versions: Mapping[str, str]
    options: Mapping[str, str] = field(default_factory=dict)  # e.g. {"inductor_cache": "true"}

    def __post_init__(self) -> None:
        check_device(self.device)
        if self.dtype not in DTYPES:
            raise ArtifactError(f"dtype {self.dtype!r} is not allowed; allowed: {', '.join(DTYPES)}")
        check_model_id(self.model_id)
        check_revision(self.revision)

    def identity(self) -> dict[str, Any]:
        """The JSON-comparable fields that decide whether a published artifact can be reused."""
        return {
            "model_id": self.model_id,
            "revision": self.revision,
            "device": self.device,
            "shapes": {"height": self.shapes.height, "width": self.shapes.width, "batch_size": self.shapes.batch_size},
            "dtype": self.dtype,
            "versions": dict(sorted(self.versions.items())),
            "options": dict(sorted(self.options.items())),
        }

    def differences(self, other: ArtifactSpec) -> list[str]:
        """The identity fields where ``other`` differs (options and versions by key, e.g. ``options.tiny_vae``)."""
        mine, theirs = self.identity(), other.identity()
        out: list[str] = []
        for name, value in mine.items():
            if name in ("options", "versions"):
                keys = sorted(set(value) | set(theirs[name]))
                out += [f"{name}.{key}" for key in keys if value.get(key) != theirs[name].get(key)]
            elif value != theirs[name]:
                out.append(name)
        return out

    def describe(self) -> str:
        """One human line, e.g. ``tiny@main cpu 64x64 batch 1 float32``."""
        s = self.shapes
        return f"{self.model_id}@{self.revision} {self.device} {s.width}x{s.height} batch {s.batch_size} {self.dtype}"


@dataclass(frozen=True)
class Manifest:
    """An artifact's spec plus the size and sha256 of every file (sorted by path)."""

    spec: ArtifactSpec
    files: tuple[FileEntry, ...]
    created_at: str = ""

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)

    def matches(self, spec: ArtifactSpec) -> bool:
        return self.spec.identity() == spec.identity()

    def to_json(self) -> str:
        doc = {"format": MANIFEST_FORMAT, **self.spec.identity(), "created_at": self.created_at}
        doc["files"] = [{"path": f.path, "sha256": f.sha256, "size": f.size} for f in self.files]
        return json.dumps(doc, indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes, origin: str = MANIFEST_NAME) -> Manifest:
        """Parse and validate; ``origin`` names the manifest in error messages."""
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
            spec = ArtifactSpec(
                model_id=_str(doc["model_id"]),
                revision=_str(doc["revision"]),
                device=_str(doc["device"]),
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
    """What a publish did: files sent, files already there, stale files removed."""

    destination: str
    sent: tuple[str, ...]
    reused: tuple[str, ...]
    removed: tuple[str, ...]


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
    """Reject absolute paths and ``..``: a manifest must never make us write outside the artifact."""
    p = PurePosixPath(path)
    if not path or p.is_absolute() or ".." in p.parts or "\\" in path or str(p) != path or path == ".":
        raise ValueError(f"unsafe file path {path!r}")
    return path
