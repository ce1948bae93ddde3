#!/usr/bin/env python3
"""CDK entrypoint: `cdk synth` / `cdk deploy` run this file (see cdk.json).

It also runs on its own, without the CDK CLI: `python app.py [-c key=value ...]` reads
cdk.json's context and the overrides, and synthesizes into cdk.out. A configuration error
stops synth with one line on stderr naming the key, the bad value and what is allowed,
and exit code 2; never a traceback.
"""

from __future__ import annotations

import sys

from spec.config import ConfigError, cli_context
from spec.deployments import load_release


def main(argv: list[str]) -> int:
    try:
        context = cli_context(argv)
        load_release(context)  # fail fast on bad config, before the CDK and every stack are imported
        from composition.app import build_app

        app, _ = build_app(context)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    app.synth()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
