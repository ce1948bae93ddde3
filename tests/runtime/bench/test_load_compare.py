"""The served-versus-in-process comparison's options: which thread counts and client counts it measures."""

from __future__ import annotations

import pytest

from runtime.bench import load


@pytest.mark.parametrize(("cpus", "counts"), [(1, (1,)), (2, (1, 2)), (4, (1, 2, 3, 4)), (16, (1, 2, 3, 4, 8, 15, 16))])
def test_in_process_tries_every_small_thread_count_and_the_large_ones(cpus: int, counts: tuple[int, ...]) -> None:
    assert load.thread_counts(cpus) == counts


def test_levels_are_client_counts_and_a_bad_one_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert load._levels("1,8,16") == (1, 8, 16)
    assert load.main(["--concurrency", "8,0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "invalid --concurrency '8,0'" in err and "8,16" in err


def test_the_server_is_started_as_make_serve_starts_it() -> None:
    from pathlib import Path

    serve = next(line for line in Path("Makefile").read_text().splitlines() if "-m runtime.server --model tiny" in line)
    assert all(arg in serve for arg in load.SERVE_ARGS)
    assert all(f"{name}={value}" in serve for name, value in load.SERVE_ENV.items())
