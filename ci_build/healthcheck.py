"""Docker HEALTHCHECK of the serving image: exit 0 when the server answers 2xx on a path.

    python healthcheck.py /healthz

Standard library only (runs in every image); the port is the server's own setting
(EDGE_DIFFUSION_PORT, default 7860 as in plan.contract.PORT). When the server terminates TLS
(a certificate file or secret is configured) the check speaks HTTPS to loopback without
verifying the certificate: it asks whether this container's own process answers, and the
certificate names the endpoint's DNS name, not 127.0.0.1. Devices always verify.
"""

from __future__ import annotations

import os
import ssl
import sys
import urllib.error
import urllib.request

DEFAULT_PORT = 7860
TIMEOUT_S = 4.0
# The server's TLS settings (plan.contract.ENV_TLS_*): any of them set means it serves HTTPS.
TLS_ENV = ("EDGE_DIFFUSION_TLS_CERT_FILE", "EDGE_DIFFUSION_TLS_SECRET_ID")


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not argv[0].startswith("/"):
        print("usage: healthcheck.py /path", file=sys.stderr)
        return 2
    port = int(os.environ.get("EDGE_DIFFUSION_PORT") or DEFAULT_PORT)
    tls = any(os.environ.get(name) for name in TLS_ENV)
    url = f"{'https' if tls else 'http'}://127.0.0.1:{port}{argv[0]}"
    context = None
    if tls:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # loopback liveness of our own process; see the docstring
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S, context=context) as response:  # noqa: S310
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
