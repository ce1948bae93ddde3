"""runtime.bench --phases: phase hooks on the server's backend, the table, and the CLI end to end (tiny)."""

from __future__ import annotations

import pytest

from plan import contract
from runtime.bench import phases
from runtime.bench.__main__ import BenchSettings, main
from runtime.server.backends import BatchParams, ImageSpec
from runtime.server.settings import Settings

STEPS = 3


@pytest.fixture(scope="module")
def backend() -> phases.DiffusersBackend:
    return phases.load_backend(Settings(model_id="tiny", torch_threads=1, metrics_sink="none"))


def test_hooks_time_each_phase_and_leave_the_pipeline_as_it_was(backend: phases.DiffusersBackend) -> None:
    pipe = backend.pipe
    params = BatchParams(STEPS, 7.5, 64, 64)
    with phases.PhaseTimer(pipe, lambda: None) as timer:
        with timer.call() as times:
            images = backend.generate(params, [ImageSpec("a", "", 1), ImageSpec("b", "", 2)], lambda: False)
        assert len(images) == 2
    assert len(times.unet_steps) == STEPS  # DPM-Solver++: one UNet call (on the guided 2x batch) per step
    assert times.text_encoder > 0 and times.vae_decode > 0 and all(s > 0 for s in times.unet_steps)
    assert times.end_to_end >= times.text_encoder + sum(times.unet_steps) + times.vae_decode
    assert "decode" not in vars(pipe.vae)  # the class's decode again
    assert not pipe.unet._forward_hooks and not pipe.unet._forward_pre_hooks
    assert not pipe.text_encoder._forward_hooks and not pipe.text_encoder._forward_pre_hooks


def test_measure_reports_medians_per_batch(backend: phases.DiffusersBackend) -> None:
    lines: list[str] = []
    results = phases.measure(backend, BatchParams(STEPS, 7.5, 64, 64), (1, 2), 2, lines.append)
    assert [r.batch for r in results] == [1, 2] and all(r.calls == 2 and r.unet_steps == STEPS for r in results)
    for r in results:
        assert r.end_to_end_ms > r.text_encoder_ms + r.unet_step_ms + r.vae_decode_ms > 0
        assert r.images_per_s == pytest.approx(r.batch * 1000 / r.end_to_end_ms)
        assert r.other_ms >= 0
    assert len(lines) == 2 and lines[0].startswith("| 1 |")
    table = phases.format_phase_table(results, {1: (2.0, 1.0)})
    rows = table.splitlines()
    assert rows[0] == phases.PHASE_HEAD and rows[1].count("---:") == rows[0].count("|") - 1
    assert rows[2].endswith(f"| 2.000 | 1.00 | {2.0 / results[0].images_per_s:.2f} |")
    assert rows[3].endswith("| n/a | n/a | n/a |")  # batch 2 was not served


def test_summary_takes_medians() -> None:
    samples = [
        phases.PhaseTimes(0.1, [0.2, 0.2], 0.3, 1.0),
        phases.PhaseTimes(0.3, [0.4, 0.4], 0.5, 3.0),
        phases.PhaseTimes(0.2, [0.3, 0.3], 0.4, 2.0),
    ]
    r = phases.summarise(4, samples)
    assert (r.text_encoder_ms, r.unet_step_ms, r.vae_decode_ms, r.end_to_end_ms) == pytest.approx((200, 300, 400, 2000))
    assert r.unet_steps == 2 and r.images_per_s == pytest.approx(2.0)
    assert r.other_ms == pytest.approx(800)  # median of 0.2, 1.4, 0.8 s: each call minus its own phases


def test_phases_settings_become_the_servers() -> None:
    args = BenchSettings.from_args(
        ["--phases", "--model", "sd21-random", "--device", "cuda", "--dtype", "float16", "--height", "128",
         "--width", "256", "--batches", "1,2,4,8"]
    )  # fmt: skip
    assert args.threads == 0  # --phases: the server's own choice of threads
    env = args.server_env()
    assert env[contract.ENV_DEVICE] == "cuda" and env[contract.ENV_DTYPE] == "float16"
    assert (env[contract.ENV_HEIGHT], env[contract.ENV_WIDTH], env[contract.ENV_MAX_BATCH]) == ("128", "256", "8")
    assert env[contract.ENV_AUTH] == "none"
    assert contract.ENV_SCHEDULER not in env  # unset: the server's default for the model, in process and served
    assert args.server_settings().scheduler in (None, "dpmsolver++")
    chosen = BenchSettings.from_args(["--phases", "--model", "sd-turbo-random", "--scheduler", "dpmsolver++"])
    assert chosen.server_env()[contract.ENV_SCHEDULER] == "dpmsolver++"
    assert chosen.server_settings().scheduler == "dpmsolver++"
    assert BenchSettings.from_args([]).threads == 1
    tiny = BenchSettings.from_args(["--phases", "--vae", "tiny"])
    assert tiny.server_settings().vae == "tiny" and tiny.server_env()[contract.ENV_VAE] == "tiny"
    assert env[contract.ENV_VAE] == "full"


def test_the_modes_default_to_few_step_the_guided_reference_and_image_to_image() -> None:
    args = BenchSettings.from_args(["--phases"])
    assert [str(m) for m in args.mode_list()] == ["1/0", "2/0", "4/0", "20/7.5", "20/7.5/0.5", "2/0/0.5"]
    assert args.mode_batches == (1,) and args.reference == "20/7.5"
    extra = BenchSettings.from_args(["--phases", "--modes", "1/0,1/0", "--reference", "8/5"])
    assert [str(m) for m in extra.mode_list()] == ["1/0", "8/5"]  # duplicates once; the reference is timed too
    assert BenchSettings.from_args(["--phases", "--modes", "none"]).mode_list() == []


def test_bad_phases_input_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--phases", "--url", "http://127.0.0.1:1"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "python -m runtime.bench: error: --phases starts its own server: it is not allowed with --url"
    ]
    assert main(["--phases", "--height", "100"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "python -m runtime.bench: error: argument --height: '100' is not allowed; "
        "allowed: a multiple of 8 from 64 to 2048"
    )
    assert main(["--phases", "--modes", "1/0,2/0/0.4"]) == 2
    assert capsys.readouterr().err.strip() == (
        "python -m runtime.bench: error: argument --modes: '1/0,2/0/0.4' is not allowed: mode '2/0/0.4': strength "
        "must be above 0 and at most 1, and steps x strength at least 1; allowed: a comma-separated list of "
        "STEPS/GUIDANCE (text to image) or STEPS/GUIDANCE/STRENGTH (image to image), or none"
    )
    assert main(["--phases", "--reference", "none"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("python -m runtime.bench: error: argument --reference: 'none' is not allowed")
    assert main(["--phases", "--mode-batches", "65"]) == 2
    assert capsys.readouterr().err.strip() == (
        "python -m runtime.bench: error: --mode-batches: 65 is not allowed; allowed: at most 64"
    )


def test_phases_cli_end_to_end_on_tiny(capsys: pytest.CaptureFixture[str], tmp_path: object) -> None:
    """In process, then the real server as a subprocess: every batch has a served figure and a ratio.

    Then the generation modes, the reference (not listed in --modes) timed with them.
    """
    argv = ["--phases", "--model", "tiny", "--steps", "2", "--batches", "1,2", "--calls", "1", "--rounds", "2"]
    argv += ["--modes", "1/0,2/7.5/0.5", "--reference", "2/7.5", "--mode-batches", "1"]
    assert main([*argv, "--torch-threads", "1", "--log", f"{tmp_path}/server.log"]) == 0
    out = capsys.readouterr().out
    table = out[out.rindex(phases.PHASE_HEAD) :].split("\n\n")[0].splitlines()
    rows = [line for line in table[2:] if line.startswith("| ")]
    assert [row.split(" | ")[0] for row in rows] == ["| 1", "| 2"]
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        served, mean_batch, ratio = float(cells[8]), float(cells[9]), float(cells[10])
        assert served > 0 and mean_batch >= 1 and ratio == pytest.approx(served / float(cells[7]), rel=0.05)
    modes = out[out.rindex(phases.MODE_HEAD) :].splitlines()
    mode_rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in modes[2:5]]
    assert [(cells[0], cells[1], cells[6]) for cells in mode_rows] == [
        ("1/0", "text-to-image", "1"),
        ("2/7.5/0.5", "image-to-image", "1"),
        ("2/7.5", "text-to-image", "2"),  # the reference, appended
    ]
    reference_ms = float(mode_rows[2][12])
    for cells in mode_rows:
        assert float(cells[14]) == pytest.approx(float(cells[12]) / reference_ms, rel=0.03)  # of 0.1 ms roundings
    assert modes[5].startswith("1 step at guidance 0 vs 2 steps at guidance 7.5, batch 1: ")
