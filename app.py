#!/usr/bin/env python3
"""CDK entrypoint: `cdk synth` / `cdk deploy` run this file (see cdk.json).

It also runs on its own, without the CDK CLI: `python app.py [-c key=value ...]` reads
cdk.json's context and the overrides, and synthesizes into cdk.out. A configuration error
stops synth with one line on stderr naming the key, the bad value and what is allowed,
and exit code 2; never a traceback.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from stacks.config import ConfigError, load_config

HERE = Path(__file__).resolve().parent


def cli_context(argv: list[str]) -> dict[str, object]:
    """cdk.json context plus ``-c key=value`` / ``--context key=value`` from ``argv``."""
    context: dict[str, object] = dict(json.loads((HERE / "cdk.json").read_text()).get("context", {}))
    args = iter(argv)
    for arg in args:
        if arg in ("-c", "--context"):
            pair = next(args, "")
        elif arg.startswith(("-c=", "--context=")):
            pair = arg.split("=", 1)[1]
        else:
            raise ConfigError("argument", arg, "-c key=value (or --context key=value)")
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError("argument", pair, "-c key=value (or --context key=value)")
        context[key] = value
    return context


def main(argv: list[str]) -> int:
    try:
        context = cli_context(argv)
        load_config(context)  # fail fast on bad config, before the CDK and every stack are imported
        from stacks.composition import build_app

        app, _ = build_app(context)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    app.synth()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
