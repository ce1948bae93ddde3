"""python -m scaling.simulate: files, one-line refusals, the breaking-point hand-off."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runtime.bench.breaking_point import Verdict, to_json
from runtime.bench.load import LevelResult
from scaling.model import ModelError, PodModel, pod_from_breaking_point
from scaling.simulate import RECOMMENDED, main


def test_the_default_run_writes_the_table_and_the_png(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--out-dir", str(tmp_path), "--duration-s", "3600"]) == 0
    text = (tmp_path / "scaling-simulation.md").read_text()
    png = (tmp_path / "images" / "scaling-simulation.png").read_bytes()
    assert png.startswith(b"\x89PNG")
    for r in RECOMMENDED:
        assert f"`{r.key}` = {r.value}" in text
    rows = [line for line in text.splitlines() if line.startswith("| 10x step |")]
    assert [row.split(" | ")[1] for row in rows] == ["today's defaults", "recommended", "recommended + snapshot"]
    assert "| 10x step |" in capsys.readouterr().out


def test_one_trace_one_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--trace", "step", "--factor", "4", "--target", "2", "--snapshot", "--duration-s", "1800"]) == 0
    out = capsys.readouterr().out
    assert "| 4x step | configured |" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--target", "0"], "'0' is not allowed; allowed: a number > 0"),
        (["--trace", "sawtooth"], "invalid choice: 'sawtooth'"),
        (
            ["--min-replicas", "5", "--max-replicas", "2"],
            "maxReplicas: 2 is not allowed; allowed: an integer >= minReplicas",
        ),
    ],
)
def test_bad_input_is_one_line(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and err.startswith("python -m scaling.simulate: error: ")


def test_the_pod_comes_from_a_breaking_point_run(tmp_path: Path) -> None:
    steps = [
        LevelResult("step", c, 100, 0, 10.0, [100.0 * c] * 100) for c in (1, 2, 3)
    ]  # 10 images/s each step; p90 100, 200, 300 ms
    result = Verdict(sustainable=steps[1], breaking=steps[2], pods=2)
    path = tmp_path / "bp.json"
    path.write_text(json.dumps(to_json(result, steps, 250.0, [])))
    pod = pod_from_breaking_point(path, PodModel(queue_size=10))
    assert (pod.images_per_s, pod.concurrency, pod.p90_ms, pod.queue_size) == (5.0, 1.0, 200.0, 10)


def test_a_breaking_point_without_a_sustainable_step_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "none.json"
    path.write_text(json.dumps({"images_per_s_per_pod": 0.0}))
    with pytest.raises(ModelError, match="has no sustainable step"):
        pod_from_breaking_point(path)
    assert main(["--breaking-point", str(tmp_path / "missing.json")]) == 2
