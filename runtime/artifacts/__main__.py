"""``python -m runtime.artifacts fetch SOURCE DEST`` (download + verify), ``verify DIR``, or
``promote S3_URI [--promotions FILE]`` (record a cluster's artifact as the one the serving images of
its image version are built from: ``runtime.artifacts.promotions``).

For image builds that bake a model into a layer, and for operators: one summary line, or exit 1
with a one-line error (2 for bad arguments).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Final, NoReturn

from plan.model_artifacts import PROMOTIONS_FILE
from runtime.artifacts.local import verify_dir
from runtime.artifacts.manifest import Artifact, ArtifactError
from runtime.artifacts.promotions import Promotion, PromotionError, record_promotion
from runtime.artifacts.s3 import promotion_of, s3_client
from runtime.artifacts.store import fetch_verified
from runtime.errors import SettingsError, error_exit  # not runtime.settings: this runs where only the AWS CLI is

PROG: Final = "python -m runtime.artifacts"


class OneLineParser(argparse.ArgumentParser):
    """argparse (for its subcommands) whose errors are a SettingsError: one line, no usage dump."""

    def error(self, message: str) -> NoReturn:
        raise SettingsError(" ".join(message.split()))


def build_parser() -> OneLineParser:
    parser = OneLineParser(prog=PROG, description="Fetch or verify a compiled model artifact.")
    commands = parser.add_subparsers(dest="command", required=True)
    fetch = commands.add_parser("fetch", help="download an s3:// prefix (or check a local dir) and verify it")
    fetch.add_argument("source")
    fetch.add_argument("dest", type=Path)
    verify = commands.add_parser("verify", help="verify a local directory against its manifest")
    verify.add_argument("path", type=Path)
    promote = commands.add_parser(
        "promote", help="let the serving images be built from this s3://<bucket>/models/<cluster>/... artifact"
    )
    promote.add_argument("uri", metavar="S3_URI")
    promote.add_argument(
        "--promotions", type=Path, default=Path(PROMOTIONS_FILE), help=f"the file to record it in ({PROMOTIONS_FILE})"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SettingsError as exc:
        return error_exit(PROG, exc)
    if args.command == "promote":
        return promote(args.uri, args.promotions)
    try:
        if args.command == "fetch":
            artifact = fetch_verified(args.source, args.dest)
        else:
            artifact = Artifact(args.path, verify_dir(args.path))
    except ArtifactError as exc:
        return error_exit(PROG, exc, code=1)
    m = artifact.manifest
    print(f"verified {m.spec.describe()} in {artifact.path}: {len(m.files)} files, {m.total_size} bytes")
    return 0


def promote(uri: str, promotions: Path) -> int:
    """Record the complete artifact at ``uri`` (read with the caller's AWS credentials) in ``promotions``."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        promotion: Promotion = promotion_of(uri, s3_client())
        record_promotion(promotions, promotion)
    except (ArtifactError, PromotionError, OSError) as exc:
        return error_exit(PROG, exc, code=1)
    except (BotoCoreError, ClientError) as exc:  # credentials, access denied: name the AWS error
        return error_exit(PROG, f"{type(exc).__name__}: {exc}", code=1)
    print(
        f"promoted {promotion.describe()} from cluster {promotion.cluster} "
        f"(manifest sha256 {promotion.manifest_sha256}) in {promotions}: commit it, then release the image pipeline"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
