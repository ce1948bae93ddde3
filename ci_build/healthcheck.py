"""Docker HEALTHCHECK of the serving image: exit 0 when the server answers 2xx on a path.

    python healthcheck.py /healthz

Standard library only (runs in every image); the port is the server's own setting
(EDGE_DIFFUSION_PORT, default 7860 as in spec.contract.PORT).
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

DEFAULT_PORT = 7860
TIMEOUT_S = 4.0


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not argv[0].startswith("/"):
        print("usage: healthcheck.py /path", file=sys.stderr)
        return 2
    port = int(os.environ.get("EDGE_DIFFUSION_PORT") or DEFAULT_PORT)
    url = f"http://127.0.0.1:{port}{argv[0]}"
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            status = int(response.status)
    except urllib.error.HTTPError as err:
        status = err.code
    except OSError as err:
        print(f"healthcheck: {url}: {err}", file=sys.stderr)
        return 1
    if 200 <= status < 300:
        return 0
    print(f"healthcheck: {url} answered {status}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
