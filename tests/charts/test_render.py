"""``python -m charts.render`` (make manifests): one YAML file per chart, one-line config errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import ROOT

ENV = {**os.environ, "JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION": "20"}


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "charts.render", *args], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120
    )


def test_render_writes_one_yaml_file_per_chart_in_apply_order(tmp_path: Path) -> None:
    out = tmp_path / "manifests"
    (out / "stale").mkdir(parents=True)  # replaced, not merged
    result = run("--out", str(out), "-c", "accelerators=nvidia,cpu")
    assert result.returncode == 0, result.stderr
    files = sorted(p.name for p in out.iterdir())
    charts = [name.split("-", 1)[1].removesuffix(".yaml") for name in files]
    assert set(charts) == {
        "karpenter",
        "device-plugins",
        "serving",
        "autoscaling",
        "model-build-queue",
        "model-builds",
        "inventory",
        "network-policies",
    }
    assert charts.index("karpenter") < charts.index("serving") < charts.index("autoscaling")
    assert charts.index("model-build-queue") < charts.index("model-builds")  # the queue exists first
    assert charts.index("serving") < charts.index("network-policies")  # the namespace exists first
    kinds = {doc["kind"] for name in files for doc in yaml.safe_load_all((out / name).read_text()) if doc}
    assert {"NodePool", "Deployment", "ScaledObject", "Job", "Queue", "Ingress", "NetworkPolicy"} <= kinds
    serving = [d for d in yaml.safe_load_all((out / files[charts.index("serving")]).read_text()) if d]
    assert not [d for d in serving if d["kind"] == "Deployment" and "neuron" in d["metadata"]["name"]]


def test_render_config_error_is_one_line() -> None:
    result = run("--out", "/nonexistent/never-written", "-c", "accelerators=tpu")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "accelerators" in result.stderr and "tpu" in result.stderr
