"""The one-line error of every runtime program: standard library only, so a program that needs no
settings framework (``python -m runtime.artifacts`` in the serving image's build stage, which has
only the AWS CLI) reports errors the same way."""

from __future__ import annotations

import sys


class SettingsError(ValueError):
    """A setting cannot be used; the message is one line naming it, its value and what is allowed."""


def error_exit(prog: str, error: object, code: int = 2) -> int:
    """Print ``prog: error: <one line>`` to stderr and return ``code`` (2: bad settings)."""
    print(f"{prog}: error: {' '.join(str(error).split())}", file=sys.stderr)
    return code
