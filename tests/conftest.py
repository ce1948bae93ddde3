"""Shared fixtures. The CDK app is synthesized once per test session: an EKS app costs
~20 s to synthesize here, so every CDK test reads templates from one cloud assembly."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def cdk_json_context() -> dict[str, Any]:
    """The context the CDK CLI would pass from cdk.json (tests run without the CLI)."""
    return dict(json.loads((ROOT / "cdk.json").read_text())["context"])


# The session's plan: the committed config with a real-looking account, a deploy pipeline
# deploying staging and production (tests/fixtures/deployments), and the workstation's dev
# deployment beside it: both deploy paths in one synthesis.
PLAN_ACCOUNT = "123456789012"
PIPELINE_DEPLOYMENTS = ("staging", "production")
FIXTURE_DEPLOYMENTS = ROOT / "tests" / "fixtures" / "deployments"


def plan_context() -> dict[str, Any]:
    """The context of the session's synthesis (cdk.json plus what ``-c`` would set)."""
    pipeline = {**dict(cdk_json_context().get("pipeline", {})), "deployments": list(PIPELINE_DEPLOYMENTS)}
    return {**cdk_json_context(), "account": PLAN_ACCOUNT, "pipeline": pipeline}


@dataclass
class Synth:
    """One synthesized app: its stacks, and their templates read from the cloud assembly."""

    app: Any
    stacks: Any
    assembly: Any
    outdir: Path
    _templates: dict[str, Any] = field(default_factory=dict)

    def template_json(self, stack: Any) -> dict[str, Any]:
        path = self.outdir / stack.template_file
        if not path.exists():  # stacks inside a Stage live in a nested assembly
            path = next(self.outdir.rglob(stack.template_file))
        return json.loads(path.read_text())

    def template(self, stack: Any) -> Any:
        from aws_cdk.assertions import Template

        key = stack.node.path
        if key not in self._templates:
            self._templates[key] = Template.from_json(self.template_json(stack))
        return self._templates[key]

    def template_files(self) -> list[Path]:
        return sorted(self.outdir.rglob("*.template.json"))


@pytest.fixture(scope="session")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Synth:
    from composition.app import build_app

    outdir = tmp_path_factory.mktemp("cdk.out")
    app, stacks = build_app(plan_context(), outdir=str(outdir), deployments_dir=FIXTURE_DEPLOYMENTS)
    assembly = app.synth()
    return Synth(app=app, stacks=stacks, assembly=assembly, outdir=outdir)
