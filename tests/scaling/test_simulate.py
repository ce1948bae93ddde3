"""python -m scaling.simulate: files, one-line refusals, the breaking-point hand-off."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from plan.config import ServingConfig
from runtime.bench.breaking_point import Verdict, to_json
from runtime.bench.load import LevelResult
from scaling.engine import run
from scaling.loop import Autoscaling, ColdStart, PodProfile, Simulation, SimulationError, pod_from_breaking_point
from scaling.simulate import PREVIOUS_DEFAULTS, RECOMMENDED, main, phase_sweep, sweep_table
from scaling.traffic import Step


def test_the_default_run_writes_the_table_and_the_png(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--out-dir", str(tmp_path), "--duration-s", "3600"]) == 0
    text = (tmp_path / "scaling-simulation.md").read_text()
    png = (tmp_path / "images" / "scaling-simulation.png").read_bytes()
    assert png.startswith(b"\x89PNG")
    for r in RECOMMENDED:
        assert f"`{r.key}` = {r.shown}" in text
    rows = [line for line in text.splitlines() if line.startswith("| 10x step |")]
    labels = ["previous defaults", "defaults", "defaults + snapshot"]
    assert [row.split(" | ")[1] for row in rows] == labels
    sweep = [line for line in text.splitlines() if line.startswith(tuple(f"| {label} | " for label in labels))]
    assert [int(row.split(" | ")[1]) for row in sweep] == [5, 25, 25]  # no caching: only the HPA's phase varies
    assert "| 10x step |" in capsys.readouterr().out


def test_the_recommendation_is_the_serving_config_default() -> None:
    serving = ServingConfig()
    assert {r.attr: r.value for r in RECOMMENDED} == {r.attr: getattr(serving, r.attr) for r in RECOMMENDED}
    assert PREVIOUS_DEFAULTS.target_pending_per_replica != serving.target_pending_per_replica


def test_the_phase_sweep_runs_every_sync_and_poll_phase_on_the_grid() -> None:
    # No cold start: a step at 600 s is readable from 780 s; a sync at phase 0, 3, ..., 12 s acts
    # 0, 3, ..., 12 s after that, and with cached metrics a poll at phase p must come first.
    instant = ColdStart(0, 0, 0, 0, 0, 0)
    pod = PodProfile(images_per_s=2.0, concurrency=4.0, p90_ms=1000.0)
    uncached = Autoscaling(max_replicas=10, target_pending_per_replica=4, use_cached_metrics=False)
    sim = Simulation(autoscaling=uncached, cold_start=instant, pod=pod)
    step = Step(1.0, 3.0, 600.0)
    by_phase = []
    for phase in (0.0, 3.0, 6.0, 9.0, 12.0):
        (absorption,) = run(
            replace(sim, autoscaling=replace(uncached, hpa_sync_phase_s=phase)), step, 3600.0
        ).absorptions
        assert absorption.capacity_s == 180.0 + phase
        by_phase.append(absorption.absorbed_s)
    assert phase_sweep(sim, step, 3600.0) == by_phase
    cached = phase_sweep(replace(sim, autoscaling=replace(uncached, use_cached_metrics=True)), step, 3600.0)
    absorbed = [t for t in cached if t is not None]
    uncached_absorbed = [t for t in by_phase if t is not None]
    assert len(absorbed) == 25 and len(uncached_absorbed) == 5
    assert min(absorbed) == min(uncached_absorbed)  # a poll in step with the sync adds nothing
    assert max(absorbed) > max(uncached_absorbed)  # a poll just missed adds up to 15 s


def test_the_sweep_table_summarises_absorbed_runs() -> None:
    last = sweep_table([("a", [100.0, None, 300.0])]).splitlines()[-1]
    assert last == "| a | 3 | 100 s | 200 s | 300 s | 1 |"


def test_one_trace_one_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--trace", "step", "--factor", "4", "--target", "2", "--snapshot", "--duration-s", "1800"]) == 0
    out = capsys.readouterr().out
    assert "| 4x step | configured |" in out


def _row(capsys: pytest.CaptureFixture[str], argv: list[str]) -> list[str]:
    assert main(["--duration-s", "3600", *argv]) == 0
    return capsys.readouterr().out.splitlines()[-1].split(" | ")


def test_the_scale_down_window_sets_when_pods_go(capsys: pytest.CaptureFixture[str]) -> None:
    # After a flash crowd pods go one window after the demand fell: a shorter one saves node-hours.
    short, long = (_row(capsys, ["--trace", "flash", "--scale-down-window-s", c]) for c in ("0", "3600"))
    assert float(short[7]) < float(long[7])


def test_polling_paces_scale_out_only_with_cached_metrics(capsys: pytest.CaptureFixture[str]) -> None:
    absorb = {
        (cached, polling): _row(capsys, ["--trace", "step", cached, "--polling-s", polling])[2]
        for cached in ("--cached-metrics", "--no-cached-metrics")
        for polling in ("15", "60")
    }
    assert absorb["--no-cached-metrics", "15"] == absorb["--no-cached-metrics", "60"]
    slow, fast = (float(absorb["--cached-metrics", p].removesuffix(" s")) for p in ("60", "15"))
    assert slow > fast


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--target", "0"], "'0' is not allowed; allowed: a number > 0"),
        (["--trace", "sawtooth"], "invalid choice: 'sawtooth'"),
        (["--scale-down-window-s", "-1"], "'-1' is not allowed; allowed: a number >= 0"),
        (
            ["--trace", "step", "--cooldown-s", "3601"],  # the old name of the option still works
            "scaleDownWindowSeconds: 3601 is not allowed; allowed: 0 to 3600",
        ),
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
    pod = pod_from_breaking_point(path, PodProfile(queue_size=10))
    assert (pod.images_per_s, pod.concurrency, pod.p90_ms, pod.queue_size) == (5.0, 1.0, 200.0, 10)


def test_a_breaking_point_without_a_sustainable_step_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "none.json"
    path.write_text(json.dumps({"images_per_s_per_pod": 0.0}))
    with pytest.raises(SimulationError, match="has no sustainable step"):
        pod_from_breaking_point(path)
    assert main(["--breaking-point", str(tmp_path / "missing.json")]) == 2
