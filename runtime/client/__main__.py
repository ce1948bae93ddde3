"""``python -m runtime.client PROMPT -o out.png --inventory-url URL | --endpoints-file FILE | --fallback-url URL``.

The command line itself is ``runtime.client.cli``; this entry point first checks that the client's
dependencies (httpx; pydantic-settings for the command line) are there, so a Python without them
gets one line saying how to get them, not a traceback.
"""

from __future__ import annotations

import sys
from typing import Final

PROG: Final = "python -m runtime.client"
MISSING: Final = (
    "{prog}: error: the client needs {name}: run it with .venv/bin/python (make deps), "
    "or pip install -r runtime/requirements-client.txt"
)


def run() -> int:
    try:
        import httpx  # noqa: F401 - only checked here; runtime.client.client uses it
        import pydantic_settings  # noqa: F401 - runtime.settings reads the command line with it
    except ImportError as err:
        print(MISSING.format(prog=PROG, name=(err.name or "httpx").replace("_", "-")), file=sys.stderr)
        return 2
    from runtime.client.cli import main

    return main()


if __name__ == "__main__":
    sys.exit(run())
