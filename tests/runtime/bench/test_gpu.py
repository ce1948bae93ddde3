"""The GPU kit's benchmark (runtime.bench.gpu): its defaults, its refusals, and a run on the CPU with tiny models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runtime.bench import gpu


def test_the_defaults_are_sd21_guided_and_turbo_one_step_at_512_fp16_on_cuda() -> None:
    args = gpu.GpuBenchSettings.from_args([])
    assert (args.device, args.dtype, args.size, args.batches) == ("cuda", "auto", 512, (1, 4, 8))
    (sd, sd_scheduler, sd_modes), (turbo, turbo_scheduler, turbo_modes) = args.runs()
    assert (sd, sd_scheduler, [str(m) for m in sd_modes]) == ("sd21-random", "dpmsolver++", ["20/7.5", "20/7.5/0.5"])
    assert (turbo, turbo_scheduler, [str(m) for m in turbo_modes]) == ("sd-turbo-random", "model", ["1/0", "2/0/0.5"])
    settings = args.server_settings(turbo, turbo_scheduler)
    assert (settings.model_id, settings.scheduler, settings.height, settings.max_batch) == (turbo, "model", 512, 8)
    assert settings.vae == "full"
    assert gpu.GpuBenchSettings.from_args(["--vae", "tiny"]).server_settings(turbo, turbo_scheduler).vae == "tiny"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--sd-modes", "20/7.5,0/1"], "argument --sd-modes: '20/7.5,0/1' is not allowed: mode '0/1': steps must be"),
        (["--turbo-model", "stabilityai/sd-turbo"], "argument --turbo-model: 'stabilityai/sd-turbo' is not allowed"),
        (["--size", "100"], "argument --size: '100' is not allowed; allowed: a multiple of 8 from 64 to 2048"),
        (["--batches", "1,65"], "--batches: 65 is not allowed; allowed: at most 64"),
        (["--device", "neuron"], "argument --device: 'neuron' is not allowed; allowed: cuda, cpu"),
    ],
)
def test_bad_input_is_one_line(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert gpu.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"{gpu.PROG}: error: ") and message in err, err


def test_cuda_without_a_gpu_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    assert gpu.main(["--device", "cuda"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "sees no CUDA device" in err and "use --device cpu" in err


def test_a_cpu_run_prints_the_table_and_writes_the_rows(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out = tmp_path / "rows.json"
    argv = ["--device", "cpu", "--size", "64", "--batches", "1,2", "--calls", "1", "--torch-threads", "1"]
    argv += ["--sd-model", "tiny", "--sd-modes", "3/7.5,2/7.5/0.5", "--turbo-model", "tiny", "--json", str(out)]
    assert gpu.main(argv) == 0
    text = capsys.readouterr().out
    table = text[text.rindex(gpu.HEAD) :].splitlines()
    header = text.splitlines()[0]
    assert header.startswith("device: ") and "(cpu; torch " in header and "float32, 64x64" in header
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in table[2:] if line.startswith("| ")]
    assert [(r[1], r[3], r[4]) for r in rows] == [
        ("3/7.5", "1", "3"),
        ("3/7.5", "2", "3"),
        ("2/7.5/0.5", "1", "1"),
        ("2/7.5/0.5", "2", "1"),
        ("1/0", "1", "1"),
        ("1/0", "2", "1"),
        ("2/0/0.5", "1", "1"),
        ("2/0/0.5", "2", "1"),
    ]
    assert rows[0][-1] == rows[1][-1] == "1.000"  # the reference: SD 2.1's first mode
    doc = json.loads(out.read_text())
    assert doc["size"] == 64 and doc["dtype"] == "float32" and len(doc["rows"]) == 8
    for row in doc["rows"]:
        reference = next(r for r in doc["rows"] if r["mode"] == "3/7.5" and r["batch"] == row["batch"])
        assert row["x_reference"] == pytest.approx(row["end_to_end_ms"] / reference["end_to_end_ms"])
        assert row["images_per_s"] == pytest.approx(row["batch"] * 1000 / row["end_to_end_ms"])
        assert (row["vae_encode_ms"] > 0) == (row["kind"] == "image-to-image")
