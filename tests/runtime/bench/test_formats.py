"""The response-format benchmark (runtime.bench.formats): its pictures, its table and its refusals."""

from __future__ import annotations

import numpy as np
import pytest

from runtime.bench import formats
from runtime.server.codec import OUTPUT_FORMATS


def test_the_pictures_are_unit_floats_and_the_scene_compresses_better_than_noise() -> None:
    noise, scene = formats.picture("noise", 128), formats.picture("scene", 128)
    for image in (noise, scene):
        assert image.shape == (128, 128, 3) and image.dtype == np.float32
        assert image.min() >= 0.0 and image.max() <= 1.0
    assert np.array_equal(scene, formats.picture("scene", 128))  # the same picture every run
    results = {r.picture: r for r in formats.measure([128], formats=["png"], min_seconds=0.0, min_calls=1)}
    assert results["scene"].size_bytes < 0.8 * results["noise"].size_bytes


def test_the_table_has_a_row_per_size_and_picture_and_a_column_pair_per_format() -> None:
    results = formats.measure([64, 128], min_seconds=0.0, min_calls=1)
    lines = formats.table(results, 90).splitlines()
    assert lines[0] == "| size | picture | png ms | KiB | jpeg q90 ms | KiB | webp q90 ms | KiB |"
    rows = [line.split(" | ") for line in lines[2:]]
    assert [(row[0], row[1]) for row in rows] == [
        ("| 64x64", "noise"),
        ("| 64x64", "scene"),
        ("| 128x128", "noise"),
        ("| 128x128", "scene"),
    ]
    assert all(len(row) == 2 + 2 * len(OUTPUT_FORMATS) and float(row[2]) > 0 for row in rows)


@pytest.mark.parametrize(
    ("argv", "why"),
    [
        (["--sizes", "64,x"], "--sizes '64,x': allowed sides from 64 to 2048 in multiples of 8"),
        (["--sizes", "100"], "--sizes '100': [100] not allowed"),
        (["--quality", "0"], "argument --quality: '0' is not allowed"),
    ],
)
def test_bad_arguments_are_one_line_errors(argv: list[str], why: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert formats.main(argv) == 2
    err = capsys.readouterr().err
    assert why in err and err.count("\n") == 1, err


def test_a_run_prints_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert formats.main(["--sizes", "64", "--seconds", "0.01"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("| size | picture | png ms") and "| 64x64 | scene |" in out
