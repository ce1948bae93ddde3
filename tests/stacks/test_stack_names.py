"""One home for the stacks' names: composition builds the stacks under the names plan.deployments
gives, and the Makefile's cdk commands ask ``python -m plan.deployments`` for the same names."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from plan import deployments
from plan.deployments import build_stack_names, load_plan, stack_names
from tests.conftest import FIXTURE_DEPLOYMENTS, PIPELINE_DEPLOYMENTS, PLAN_ACCOUNT, ROOT, Synth, cdk_json_context


def cdk_commands(target: str, *variables: str) -> list[list[str]]:
    """The words after ``cdk`` of each ``cdk`` command ``make -n <target>`` prints."""
    run = subprocess.run(["make", "-n", target, *variables], cwd=ROOT, capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr
    words = [line.split() for line in run.stdout.splitlines()]
    return [w[1:] for w in words if w and Path(w[0]).name == "cdk"]


def stacks_of(command: list[str]) -> list[str]:
    arguments = command[1:]
    return arguments[: next(i for i, word in enumerate(arguments) if word.startswith("-"))]


def test_composition_names_the_stacks_as_plan_deployments_does(synth: Synth) -> None:
    built = synth.stacks
    assert tuple(s.stack_name for s in (built.build.registry, built.build.images)) == build_stack_names()
    for stacks in [built.workstation, *built.pipeline.values()]:
        names = stack_names(stacks.deployment)
        assert {s.stack_name for s in stacks.all} == set(names)
        assert names.index(stacks.network.stack_name) < names.index(stacks.cluster.stack_name)
        assert names.index(stacks.inventory.stack_name) < names.index(stacks.cluster.stack_name)


def test_make_deploy_deploys_the_build_stacks_then_the_deployment_s() -> None:
    plan = load_plan({**cdk_json_context(), "deployment": "dev"})
    commands = cdk_commands("deploy", "DEPLOYMENT=dev")
    assert [c[0] for c in commands] == ["deploy", "deploy"]
    assert [tuple(stacks_of(c)) for c in commands] == [build_stack_names(), stack_names(plan.selected)]
    assert stack_names(plan.selected) == tuple(
        f"EdgeDiffusion-dev-{part}" for part in ("Network", "Inventory", "Cluster", "Observability")
    )


def test_make_diff_diffs_what_make_deploy_deploys() -> None:
    (diff,) = cdk_commands("diff", "DEPLOYMENT=dev")
    deployed = [stack for command in cdk_commands("deploy", "DEPLOYMENT=dev") for stack in stacks_of(command)]
    assert diff[0] == "diff" and stacks_of(diff) == deployed


def test_make_deploy_refuses_a_deployment_the_pipeline_deploys(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``make deploy`` and ``make diff`` ask ``--workstation-stacks``: for a pipeline deployment it
    names no stack (make stops) and says in one line who deploys it."""
    real = deployments.load_plan
    monkeypatch.setattr(deployments, "load_plan", lambda context: real(context, FIXTURE_DEPLOYMENTS))
    pipeline = json.dumps({"deployments": list(PIPELINE_DEPLOYMENTS)})
    context = ["-c", f"account={PLAN_ACCOUNT}", "-c", f"pipeline={pipeline}"]
    name = PIPELINE_DEPLOYMENTS[0]
    assert deployments.main(["--workstation-stacks", "-c", f"deployment={name}", *context]) == 2
    out: Any = capsys.readouterr()
    assert out.out == ""
    (line,) = out.err.strip().splitlines()
    assert line.startswith(f"error: the deploy pipeline deploys {name} (pipeline.deployments)")
    assert deployments.main(["--stacks", "-c", f"deployment={name}", *context]) == 0  # make destroy's
    assert capsys.readouterr().out.split()[0].startswith(f"EdgeDiffusion-DeployPipeline/{name}/")
