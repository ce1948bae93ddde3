"""cdk-nag (through cdk.Validations) and cfn-lint over the synthesized app: zero findings."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, Synth

CFN_LINT = Path(sys.executable).parent / "cfn-lint"
VALIDATION_REPORT = "validation-report.json"  # CDK writes the policy validation report here
ACKNOWLEDGED = "aws:cdk:acknowledged-rules"


def report_of(outdir: Path) -> dict[str, Any]:
    (path,) = outdir.rglob(VALIDATION_REPORT)
    return dict(json.loads(path.read_text()))


def test_every_stack_of_mine_is_synthesized(synth: Synth) -> None:
    names = {path.name for path in synth.template_files()}
    for stack in (synth.stacks.network, synth.stacks.registry, synth.stacks.cluster):
        assert stack.template_file in names


def test_validation_plugins_report_no_unacknowledged_findings(synth: Synth) -> None:
    """The session synth did not fail (a failing plugin makes app.synth() raise) and says why."""
    report = report_of(synth.outdir)
    assert report["pluginReports"], "the validation report lists the plugins that ran"
    for plugin in report["pluginReports"]:
        unacknowledged = sorted({v["ruleName"] for v in plugin["violations"]})
        assert plugin["conclusion"] == "success" and not unacknowledged, (plugin["pluginName"], unacknowledged)


def test_every_acknowledgement_carries_a_reason(synth: Synth) -> None:
    acknowledged: dict[str, str] = {}
    for metadata_file in synth.outdir.rglob("*.metadata.json"):
        for path, entries in json.loads(metadata_file.read_text()).items():
            for entry in entries:
                if entry["type"] == ACKNOWLEDGED:
                    acknowledged.update({f"{path} {rule}": reason for rule, reason in entry["data"].items()})
    nag_ids = [key for key in acknowledged if "AwsSolutions-" in key]
    assert nag_ids, "cdk-nag acknowledgements are recorded in the assembly"
    short = {key: reason for key, reason in acknowledged.items() if len(reason.split()) < 5}
    assert not short, f"acknowledgements need a reason a reviewer can check: {short}"


def test_cdk_nag_through_validations_fails_synth_on_a_finding(tmp_path: Path) -> None:
    """Canary: the registration build_app uses turns a finding into a failed synth and a report
    entry, so a successful session synth with an empty report means zero findings."""
    import aws_cdk as cdk
    from aws_cdk import aws_sqs as sqs
    from cdk_nag import AwsSolutionsChecks

    app = cdk.App(outdir=str(tmp_path))
    stack = cdk.Stack(app, "Canary")
    sqs.Queue(stack, "NoTlsNoDlq")  # AwsSolutions-SQS3 and SQS4
    cdk.Validations.of(app).add_plugins(AwsSolutionsChecks(app))
    with pytest.raises(Exception, match="ValidationFailed"):
        app.synth()
    rules = {v["ruleName"] for p in report_of(tmp_path)["pluginReports"] for v in p["violations"]}
    assert {"AwsSolutions-SQS3", "AwsSolutions-SQS4"} <= rules


def test_cfn_lint_finds_no_errors_in_any_template(synth: Synth) -> None:
    templates = [str(path) for path in synth.template_files()]
    assert templates
    result = subprocess.run(
        [str(CFN_LINT), "--non-zero-exit-code", "error", *templates],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
        check=False,
    )
    lines = result.stdout.splitlines()
    errors = [f"{line} ({where})" for line, where in zip(lines, [*lines[1:], ""], strict=True) if line[:1] == "E"]
    assert not errors, "\n".join(errors)
    assert result.returncode == 0, result.stderr or result.stdout


def _open_security_group_app(outdir: Path) -> Any:
    """An app with one unacknowledged finding (AwsSolutions-EC23), nag registered as build_app does."""
    import aws_cdk as cdk
    from aws_cdk import aws_ec2 as ec2
    from cdk_nag import AwsSolutionsChecks

    app = cdk.App(outdir=str(outdir))
    stack = cdk.Stack(app, "Open")
    vpc = ec2.Vpc(stack, "Vpc", max_azs=1, nat_gateways=0, restrict_default_security_group=False)
    group = ec2.SecurityGroup(stack, "Group", vpc=vpc, description="open")
    group.add_ingress_rule(ec2.Peer.any_ipv4(), ec2.Port.tcp(30000), "everyone")
    cdk.Validations.of(app).add_plugins(AwsSolutionsChecks(app))
    return app


def test_a_validation_failure_prints_one_line_per_finding_and_keeps_no_template(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """app.py's synth: exit 2, one ``error:`` line per finding naming rule and construct, and the
    rejected assembly is neither published to the output directory nor left in the staging one."""
    import app as entry

    staging, outdir = tmp_path / "staging", tmp_path / "cdk.out"
    staging.mkdir()
    outdir.mkdir()
    (outdir / "Previous.template.json").write_text("{}")  # the last good synth stays as it was
    code = entry.synthesize(_open_security_group_app(staging), staging, outdir, announce=True)
    assert code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    ec23 = [line for line in lines if "AwsSolutions-EC23" in line]
    assert ec23 and all(line.startswith("error: ") for line in lines), lines
    assert "Open/Group/Resource" in ec23[0] and "0.0.0.0/0" in ec23[0]
    assert "Traceback" not in "\n".join(lines)
    assert sorted(p.name for p in outdir.iterdir()) == ["Previous.template.json"]


def test_a_validated_synth_replaces_the_output_directory_and_says_what_it_wrote(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import aws_cdk as cdk

    import app as entry

    staging, outdir = tmp_path / "staging", tmp_path / "cdk.out"
    staging.mkdir()
    outdir.mkdir()
    (outdir / "Stale.template.json").write_text("{}")  # a stack of an earlier config
    (outdir / "synth.lock").write_text("")  # the CLI's lock stays
    app = cdk.App(outdir=str(staging))
    cdk.CfnOutput(cdk.Stack(app, "Fine"), "Out", value="1")
    assert entry.synthesize(app, staging, outdir, announce=True) == 0
    names = {p.name for p in outdir.iterdir()}
    assert "Fine.template.json" in names and "synth.lock" in names and "Stale.template.json" not in names
    (line,) = capsys.readouterr().out.strip().splitlines()
    assert line.startswith("wrote 1 CloudFormation template to ") and line.endswith(": Fine")
