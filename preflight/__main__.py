"""``python -m preflight [--deployment NAME] [-c key=value ...]`` (``make preflight``).

Loads the deployment's config like ``app.py`` does (cdk.json, deployments/<name>.json, ``-c``),
then runs the read-only checks with your AWS credentials. Exit 0: every check passed or was
skipped; 1: a check failed; 2: the config is invalid. ``--require-account diff|deploy|destroy`` only
checks the config and that its account is not the example (the Makefile runs it before
``cdk diff`` and ``cdk deploy``, which need your account).
"""

from __future__ import annotations

import argparse
import sys

from plan.config import ConfigError, cli_context, config_warnings
from plan.deployments import DEPLOYMENT_KEY, EXAMPLE_ACCOUNT, load_plan
from preflight.checks import FAIL, run_checks, summary


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m preflight", description=__doc__.split("\n\n")[1])
    parser.add_argument("--deployment", help="deployments/<NAME>.json (default: -c deployment=..., else dev)")
    parser.add_argument("-c", "--context", action="append", default=[], metavar="KEY=VALUE", help="a config override")
    parser.add_argument(
        "--require-account",
        choices=("diff", "deploy", "destroy"),
        help="only check the config and that account is yours",
    )
    return parser


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    try:
        context = cli_context([token for pair in args.context for token in ("-c", pair)])
        if args.deployment:
            context[DEPLOYMENT_KEY] = args.deployment
        plan = load_plan(context)
    except ConfigError as err:
        for line in err.lines():
            print(line, file=sys.stderr)
        return 2
    deployment = plan.selected
    if args.require_account:
        if deployment.config.account != EXAMPLE_ACCOUNT:
            return 0
        print(
            f"error: account is the example {EXAMPLE_ACCOUNT}: a {args.require_account} against AWS needs your "
            'account: set "account" in cdk.json, or add CONTEXT="-c account=<your 12-digit account id>"',
            file=sys.stderr,
        )
        return 2
    for line in config_warnings(deployment.config):
        print(line, file=sys.stderr)
    import boto3  # only now: config errors above need no AWS SDK

    results = run_checks(deployment, boto3.Session())
    for result in results:
        print(result.line)
    counts = summary(results)
    print(
        f"preflight {deployment.name} ({deployment.config.account}/{deployment.config.region}): "
        + ", ".join(f"{n} {status}" for status, n in counts.items()),
        file=sys.stderr,
    )
    return 1 if counts[FAIL] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
