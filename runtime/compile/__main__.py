"""``python -m runtime.compile``: parse the settings, run the job, print one summary line."""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Mapping, Sequence

from runtime.artifacts.manifest import ArtifactError
from runtime.compile.export import CompileError
from runtime.compile.job import run
from runtime.compile.settings import CompileConfig
from runtime.settings import SettingsError, error_exit


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """CLI entry point; returns the exit code (in-process callers such as tests use this)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        cfg = CompileConfig.from_args(argv, environ)
    except SettingsError as exc:
        return error_exit(CompileConfig.PROG, exc)
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        outcome = run(cfg)
    except (ArtifactError, CompileError, BotoCoreError, ClientError, OSError) as exc:
        return error_exit(CompileConfig.PROG, f"{type(exc).__name__}: {exc}", code=1)
    print(outcome.summary())
    return 0


def _terminate(signum: int, frame: object) -> None:
    """SIGTERM (the job deleted, a node drained) unwinds the job, so a publish releases its lock.
    As PID 1 of its container the process would otherwise ignore it until SIGKILL."""
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _terminate)
    sys.exit(main())
