#!/usr/bin/env python3
"""CDK entrypoint: `cdk synth` / `cdk deploy` run this file (see cdk.json).

It also runs on its own, without the CDK CLI: `python app.py [-c key=value ...]` reads
cdk.json's context and the overrides, synthesizes into cdk.out (or $CDK_OUTDIR, as the CLI
does) and prints one line saying what it wrote. Bad config stops synth with one line per bad
value on stderr (key, value, what is allowed) and exit code 2; so does a validation finding
(cdk-nag, cfn-lint), one line each, and the rejected templates are not kept. Allowed but weaker
choices (plain HTTP, no auth) print one warning line each.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from plan.config import ConfigError, cli_context, config_warnings
from plan.deployments import Plan, load_plan

ROOT = Path(__file__).resolve().parent
DEFAULT_OUTDIR = ROOT / "cdk.out"
VALIDATION_REPORT = "validation-report.json"  # where CDK writes the policy validation report
# A failed validation reaches Python as a RuntimeError whose message starts with this.
VALIDATION_FAILED = "ValidationFailed"


def main(argv: list[str]) -> int:
    # Node 20 is what the toolchain here runs; jsii prints an 11-line banner on every start otherwise
    # (the Makefile sets the same).
    os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")
    by_cli = bool(os.environ.get("CDK_OUTDIR"))
    outdir = Path(os.environ.get("CDK_OUTDIR") or DEFAULT_OUTDIR).resolve()
    try:
        context = cli_context(argv)
        load_plan(context)  # fail fast on bad config, before the CDK and every stack are imported
        from composition.app import build_app

        outdir.parent.mkdir(parents=True, exist_ok=True)
        # Synthesize beside the output directory and move in only a validated assembly.
        staging = Path(tempfile.mkdtemp(prefix=f".{outdir.name}.", dir=outdir.parent))
        try:
            app, stacks = build_app(context, outdir=str(staging))  # with the CLI's -c values too
            for line in plan_warnings(stacks.plan):
                print(line, file=sys.stderr)
            return synthesize(app, staging, outdir, announce=not by_cli)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    except ConfigError as err:
        for line in err.lines():
            print(line, file=sys.stderr)
        return 2


def plan_warnings(plan: Plan) -> list[str]:
    """Each deployment's config warnings, each text once (naming the deployments when several)."""
    by_text: dict[str, list[str]] = {}
    for deployment in plan.deployments:
        for line in config_warnings(deployment.config):
            by_text.setdefault(line, []).append(deployment.name)
    if len(plan.deployments) <= 1:
        return list(by_text)
    return [f"{line} [{', '.join(names)}]" for line, names in by_text.items()]


def synthesize(app: Any, staging: Path, outdir: Path, *, announce: bool) -> int:
    """Synthesize ``app`` (built with outdir=staging) and publish it to ``outdir`` if it validates."""
    try:
        assembly = app.synth()
    except RuntimeError as err:
        if VALIDATION_FAILED not in str(err):
            raise
        findings = validation_findings(staging)
        for line in findings or [f"error: {str(err).splitlines()[0]}"]:
            print(line, file=sys.stderr)
        return 2
    publish(staging, outdir)
    if announce:
        names = sorted(stack.stack_name for stack in assembly.stacks_recursively)
        noun = "template" if len(names) == 1 else "templates"
        print(f"wrote {len(names)} CloudFormation {noun} to {display(outdir)}/: {', '.join(names)}")
    return 0


def validation_findings(assembly_dir: Path) -> list[str]:
    """One line per finding of every failed validation plugin: rule, construct path, description."""
    lines: list[str] = []
    for report_path in sorted(assembly_dir.rglob(VALIDATION_REPORT)):
        report = json.loads(report_path.read_text())
        for plugin in report.get("pluginReports", []):
            if plugin.get("conclusion") != "failure":
                continue
            name = plugin.get("pluginName", "validation")
            for violation in plugin.get("violations", []):
                rule = violation.get("ruleName", "")
                rule = rule if rule.startswith(name) else f"{name} {rule}"
                for construct in violation.get("violatingConstructs", []) or [{}]:
                    where = construct.get("constructPath", "?")
                    lines.append(f"error: {rule} on {where}: {violation.get('description', '').strip()}")
    return list(dict.fromkeys(lines))


def publish(staging: Path, outdir: Path) -> None:
    """Replace the output directory's assembly with the new one (the CLI's lock files stay)."""
    outdir.mkdir(parents=True, exist_ok=True)
    for old in outdir.iterdir():
        if old.name.endswith(".lock"):
            continue
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old)
        else:
            old.unlink()
    for new in staging.iterdir():
        new.rename(outdir / new.name)


def display(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
