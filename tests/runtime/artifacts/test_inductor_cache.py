"""The Inductor cache key: written by the compile job, compared by the pod, refused in one line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from plan import contract
from runtime.artifacts.inductor_cache import (
    CACHE_DIR_ENV,
    KEY_FIELDS,
    InductorCacheError,
    adopt_cache,
    key_difference,
    read_key,
    write_key,
)

A10G = {"torch": "2.13.0+cu128", "cuda": "12.8", "triton": "3.6.0", "gpu": "NVIDIA A10G", "capability": "8.6"}


def artifact_with_cache(tmp_path: Path, key: dict[str, str] | None = A10G) -> Path:
    artifact = tmp_path / "artifact"
    cache = artifact / contract.INDUCTOR_CACHE_DIRNAME
    (cache / "fxgraph").mkdir(parents=True)
    (cache / "fxgraph" / "entry").write_text("kernel")
    (cache / contract.INDUCTOR_MEGA_CACHE_NAME).write_bytes(b"mega")
    if key is not None:
        write_key(cache, key)
    return artifact


def test_the_key_round_trips_and_names_every_field(tmp_path: Path) -> None:
    path = write_key(tmp_path, {**A10G, "extra": "ignored"})
    assert sorted(json.loads(path.read_text())) == sorted(KEY_FIELDS)
    assert read_key(tmp_path) == A10G
    assert read_key(tmp_path / "elsewhere") is None
    with pytest.raises(InductorCacheError, match="lacks gpu"):
        write_key(tmp_path, {name: A10G[name] for name in KEY_FIELDS if name != "gpu"})


def test_key_difference_names_only_what_differs() -> None:
    assert key_difference(A10G, dict(A10G)) is None
    l4 = {**A10G, "gpu": "NVIDIA L4", "capability": "8.9"}
    line = key_difference(A10G, l4)
    assert line == "gpu 'NVIDIA A10G' in the cache, 'NVIDIA L4' here; capability '8.6' in the cache, '8.9' here"
    assert key_difference(A10G, {**A10G, "triton": "absent"}) == "triton '3.6.0' in the cache, 'absent' here"


def test_a_matching_key_uses_a_writable_copy_of_the_cache(tmp_path: Path) -> None:
    environ: dict[str, str] = {}
    loaded: list[Path] = []

    def load(path: Path) -> bool:
        loaded.append(path)
        return path.read_bytes() == b"mega"

    work = tmp_path / "work"
    decision = adopt_cache(artifact_with_cache(tmp_path), work, dict(A10G), environ, load)
    assert decision.used and "\n" not in decision.message
    assert "NVIDIA A10G" in decision.message and "mega-cache loaded" in decision.message
    assert environ[CACHE_DIR_ENV] == str(work)
    assert (work / "fxgraph" / "entry").read_text() == "kernel"
    assert loaded == [work / contract.INDUCTOR_MEGA_CACHE_NAME]


@pytest.mark.parametrize(
    ("here", "key", "says"),
    [
        (
            {**A10G, "gpu": "NVIDIA L4"},
            A10G,
            "inductor cache ignored: gpu 'NVIDIA A10G' in the cache, 'NVIDIA L4' here",
        ),
        ({**A10G, "torch": "2.14.0+cu128"}, A10G, "inductor cache ignored: torch '2.13.0+cu128' in the cache"),
        (A10G, None, f"has no {contract.INDUCTOR_CACHE_KEY_NAME}"),
    ],
)
def test_another_machine_ignores_the_cache_in_one_line(
    tmp_path: Path, here: dict[str, str], key: dict[str, str] | None, says: str
) -> None:
    environ: dict[str, str] = {}

    def load(path: Path) -> Any:
        raise AssertionError("a refused cache is never loaded")

    decision = adopt_cache(artifact_with_cache(tmp_path, key), tmp_path / "work", here, environ, load)
    assert not decision.used and says in decision.message and "\n" not in decision.message
    assert environ == {} and not (tmp_path / "work").exists()


def test_a_corrupt_key_or_no_cache_is_refused(tmp_path: Path) -> None:
    artifact = artifact_with_cache(tmp_path)
    (artifact / contract.INDUCTOR_CACHE_DIRNAME / contract.INDUCTOR_CACHE_KEY_NAME).write_text('{"torch": 2}')
    decision = adopt_cache(artifact, tmp_path / "work", A10G, {})
    assert not decision.used and "not an inductor cache key" in decision.message
    bare = tmp_path / "bare"
    bare.mkdir()
    assert not adopt_cache(bare, tmp_path / "work", A10G, {}).used


def test_the_cold_start_measurement_needs_an_artifact_with_a_cache(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from runtime.compile.cold_start import main

    assert main(["--artifact", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"--artifact {tmp_path}: no {contract.INDUCTOR_CACHE_DIRNAME}/ in it"
