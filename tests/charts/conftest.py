"""Chart fixtures: the app's charts synthesized once per session (a few seconds, no CDK app),
and the validation tally printed at the end of the run and written to dist/."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.charts.validate import Tally
from tests.conftest import ROOT, cdk_json_context

REPORT = ROOT / "dist" / "chart-validation.json"
_TALLY = Tally()


@dataclass(frozen=True)
class Rendered:
    """The synthesized charts: chart id -> its objects (plain dicts, as written to YAML)."""

    config: Any  # plan.config.AppConfig
    objects: dict[str, list[dict[str, Any]]]

    def all(self) -> list[tuple[str, dict[str, Any]]]:
        return [(chart, obj) for chart, objs in self.objects.items() for obj in objs]

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [obj for _, obj in self.all() if obj["kind"] == kind]

    def named(self, kind: str, name: str) -> dict[str, Any]:
        matches = [obj for obj in self.of_kind(kind) if obj["metadata"]["name"] == name]
        assert len(matches) == 1, f"{kind}/{name}: {len(matches)} objects"
        return matches[0]


def render(context: dict[str, Any]) -> Rendered:
    """Synthesize the charts exactly as ``make manifests`` does and read back the YAML files."""
    import yaml

    from charts.render import render as render_files
    from plan.deployments import load_plan

    with tempfile.TemporaryDirectory() as out:
        files = render_files(context, Path(out) / "manifests")
        objects = {
            path.stem.split("-", 1)[1]: [doc for doc in yaml.safe_load_all(path.read_text()) if doc] for path in files
        }
    return Rendered(config=load_plan(context).selected.config, objects=objects)  # the config render.py renders


@pytest.fixture(scope="session")
def rendered() -> Rendered:
    return render(cdk_json_context())


@pytest.fixture(scope="session")
def tally() -> Tally:
    return _TALLY


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _TALLY.objects:
        return
    summary = _TALLY.summary()
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    terminalreporter.section("chart validation")
    for key, value in summary.items():
        terminalreporter.write_line(f"{key}: {value}")
    for rule, reason in sorted(_TALLY.rules_skipped.items(), key=lambda item: (item[0].crd, item[0].path)):
        terminalreporter.write_line(f"skipped {rule.crd} {rule.path}: {reason}")
    terminalreporter.write_line(f"written to {Path(REPORT).relative_to(ROOT)}")
