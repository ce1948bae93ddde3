"""``python -m runtime.client PROMPT -o out.png --inventory-url URL | --endpoints-file FILE | --fallback-url URL``.

The command line itself is ``runtime.client.cli``; this entry point first checks that the client's
one dependency is there, so a Python without it gets one line saying how to get it, not a traceback.
"""

from __future__ import annotations

import sys
from typing import Final

PROG: Final = "python -m runtime.client"
MISSING_HTTPX: Final = (
    f"{PROG}: error: the client needs httpx: run it with .venv/bin/python (make deps), "
    "or pip install -r runtime/requirements-client.txt"
)


def run() -> int:
    try:
        import httpx  # noqa: F401 - only checked here; runtime.client.client uses it
    except ImportError:
        print(MISSING_HTTPX, file=sys.stderr)
        return 2
    from runtime.client.cli import main

    return main()


if __name__ == "__main__":
    sys.exit(run())
