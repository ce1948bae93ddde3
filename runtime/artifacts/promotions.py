"""Promoted models: the compiled artifacts the serving images may be built from, by manifest sha256.

Each cluster's compile jobs publish under a prefix of their own (``models/<cluster>/``), and every
deployment runs the same serving images, so which cluster's artifact those images carry is a
decision: it is recorded in the pipeline's source (``plan.model_artifacts.PROMOTIONS_FILE``),
reviewed and versioned like the code the images run. One entry per model, revision, device and
image version names the cluster whose artifact is promoted and the sha256 of its manifest; the
manifest names the sha256 of every file. ``python -m runtime.artifacts promote <artifact URI>``
records an entry; the image build (``ci_build/build-image.sh``) looks its artifact up here, reads
only that cluster's prefix and builds only from the promoted bytes
(docs/adr/0016-serving-images-bake-only-promoted-models.md).

``python3 -m runtime.artifacts.promotions lookup FILE --model M --revision R --device D
--image-version V`` prints ``<cluster> <manifest sha256>``, or nothing when none is promoted; a
malformed file exits 1 with one line. Standard library only: the CodeBuild host runs it with its
own python3, before anything is installed.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, NoReturn

from plan.model_artifacts import CLUSTER_ALLOWED, CLUSTER_RE, PROMOTED_KEY, PROMOTION_KEYS
from runtime.artifacts.manifest import (
    MODEL_ID_ALLOWED,
    REVISION_ALLOWED,
    ArtifactError,
    check_device,
    is_model_id,
    is_revision,
)
from runtime.errors import error_exit

PROG: Final = "python -m runtime.artifacts.promotions"
SHA256_RE: Final = re.compile(r"^[0-9a-f]{64}$")
SHA256_ALLOWED: Final = "64 lowercase hex digits"


def _matches(pattern: re.Pattern[str], value: object) -> bool:
    return isinstance(value, str) and bool(pattern.match(value))


class PromotionError(ValueError):
    """The promotions file cannot be used; the message is one line naming the file and the value."""


@dataclass(frozen=True)
class Promotion:
    """One promoted artifact: which cluster's compile of a model, revision, device and image
    version the serving image of that version carries, pinned by its manifest's sha256."""

    model_id: str
    revision: str
    device: str
    image_version: str
    cluster: str
    manifest_sha256: str

    def __post_init__(self) -> None:
        checks = (
            ("model", self.model_id, is_model_id(self.model_id), MODEL_ID_ALLOWED),
            ("revision", self.revision, is_revision(self.revision), REVISION_ALLOWED),
            ("imageVersion", self.image_version, is_revision(self.image_version), REVISION_ALLOWED),
            ("cluster", self.cluster, _matches(CLUSTER_RE, self.cluster), CLUSTER_ALLOWED),
            ("manifestSha256", self.manifest_sha256, _matches(SHA256_RE, self.manifest_sha256), SHA256_ALLOWED),
        )
        for name, value, ok, allowed in checks:
            if not ok:
                raise PromotionError(f"{name} {value!r} is not allowed; allowed: {allowed}")
        try:
            check_device(self.device)
        except (ArtifactError, TypeError) as exc:
            raise PromotionError(str(exc)) from None

    @property
    def key(self) -> tuple[str, str, str, str]:
        """What one entry is for: a file holds at most one promotion per key."""
        return (self.model_id, self.revision, self.device, self.image_version)

    def describe(self) -> str:
        return f"{self.model_id}@{self.revision} {self.device} of image version {self.image_version}"

    def to_json(self) -> dict[str, str]:
        return {key: str(getattr(self, name)) for name, key in PROMOTION_KEYS.items()}

    @classmethod
    def from_json(cls, raw: object) -> Promotion:
        if not isinstance(raw, dict):
            raise PromotionError(f"entry {raw!r} is not an object of {', '.join(PROMOTION_KEYS.values())}")
        unknown = sorted(set(raw) - set(PROMOTION_KEYS.values()))
        missing = [key for key in PROMOTION_KEYS.values() if key not in raw]
        if unknown or missing:
            what = f"unknown key {unknown[0]!r}" if unknown else f"no {missing[0]!r}"
            allowed = ", ".join(PROMOTION_KEYS.values())
            raise PromotionError(f"entry {json.dumps(raw)} has {what}; allowed keys: {allowed}")
        return cls(**{name: raw[key] for name, key in PROMOTION_KEYS.items()})


def read_promotions(path: Path) -> tuple[Promotion, ...]:
    """Every promotion of the file, validated; a PromotionError names the file and the first problem."""
    try:
        doc: Any = json.loads(path.read_text())
    except FileNotFoundError:
        raise PromotionError(f"{path}: no such file (the pipeline's source keeps one, even empty)") from None
    except (OSError, ValueError) as exc:
        raise PromotionError(f"{path}: not a readable JSON file ({exc})") from None
    if not isinstance(doc, dict) or set(doc) != {PROMOTED_KEY} or not isinstance(doc[PROMOTED_KEY], list):
        raise PromotionError(f'{path}: allowed: {{"{PROMOTED_KEY}": [entries]}}')
    try:
        promotions = tuple(Promotion.from_json(raw) for raw in doc[PROMOTED_KEY])
    except PromotionError as exc:
        raise PromotionError(f"{path}: {exc}") from None
    seen: set[tuple[str, str, str, str]] = set()
    for promotion in promotions:
        if promotion.key in seen:
            raise PromotionError(f"{path}: {promotion.describe()} is promoted twice; allowed: one entry each")
        seen.add(promotion.key)
    return promotions


def find_promotion(
    promotions: Iterable[Promotion], model_id: str, revision: str, device: str, image_version: str
) -> Promotion | None:
    wanted = (model_id, revision, device, image_version)
    return next((p for p in promotions if p.key == wanted), None)


def with_promotion(promotions: Iterable[Promotion], promotion: Promotion) -> tuple[Promotion, ...]:
    """``promotions`` with ``promotion`` in place of any entry for the same key, in key order."""
    kept = [p for p in promotions if p.key != promotion.key]
    return tuple(sorted((*kept, promotion), key=lambda p: p.key))


def write_promotions(path: Path, promotions: Iterable[Promotion]) -> None:
    """The file, one entry per promotion in key order (a stable diff to review)."""
    from runtime.artifacts.local import atomic_write  # not at import: the lookup runs on the build host's python3

    doc = {PROMOTED_KEY: [p.to_json() for p in sorted(promotions, key=lambda p: p.key)]}
    atomic_write(path, (json.dumps(doc, indent=2) + "\n").encode())


def record_promotion(path: Path, promotion: Promotion) -> None:
    """Add or replace ``promotion`` in the file at ``path`` (created when absent)."""
    existing = read_promotions(path) if path.exists() else ()
    write_promotions(path, with_promotion(existing, promotion))


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise PromotionError(" ".join(message.split()))


def main(argv: Sequence[str] | None = None) -> int:
    parser = _Parser(prog=PROG, description="Look up the promoted artifact of one serving image.")
    commands = parser.add_subparsers(dest="command", required=True)
    lookup = commands.add_parser("lookup", help="print '<cluster> <manifest sha256>', or nothing if none")
    lookup.add_argument("file", type=Path)
    for flag in ("--model", "--revision", "--device", "--image-version"):
        lookup.add_argument(flag, required=True)
    try:
        args = parser.parse_args(argv)
    except PromotionError as exc:
        return error_exit(PROG, exc)
    try:
        found = find_promotion(read_promotions(args.file), args.model, args.revision, args.device, args.image_version)
    except PromotionError as exc:
        return error_exit(PROG, exc, code=1)
    if found is not None:
        print(f"{found.cluster} {found.manifest_sha256}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
