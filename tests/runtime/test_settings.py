"""runtime.settings: one way to read flags and environment, and one wording for a refused value."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, ClassVar

import pytest
from pydantic import Field

from runtime.settings import InvalidValueError, ProgramSettings, Setting, SettingsError, error_exit, refusal, setting

ENV_SIZE = "TEST_SIZE"
ENV_KIND = "TEST_KIND"


def _even(value: int) -> bool:
    if value % 2:
        raise InvalidValueError("odd")
    return True


class Example(ProgramSettings):
    PROG: ClassVar[str] = "python -m example"
    DESCRIPTION: ClassVar[str] = "An example program."

    target: str = setting(flag="target")
    size: int = setting(env=ENV_SIZE, flag="--size", default=2, ge=1, le=8, help="how many")
    kind: str = setting(env=ENV_KIND, flag="--kind", aliases=("--old-kind",), default="cpu", choices=("cuda", "cpu"))
    ratio: float = setting(flag="--ratio", default=1.0, gt=0)
    fast: bool = setting(flag="--fast", default=False)
    tags: tuple[str, ...] = setting(flag="--tags", default=("a",), choices=("a", "b"), min_length=1)
    counts: tuple[Annotated[int, Field(ge=1)], ...] = setting(flag="--counts", default=(1,))
    wait_s: float = setting(env="TEST_WAIT_S", default=1.0, ge=0.5, le=60, unit="seconds")
    even: int = setting(flag="--even", default=2, check=_even)
    weights: Mapping[str, int] = setting(env="TEST_WEIGHTS", default_factory=dict, allowed="a JSON object of integers")
    urls: tuple[str, ...] = setting(flag="--url", repeatable=True, default=())
    out: Path = setting(flag="--out", aliases=("-o",), default=Path("x.png"))
    region: str | None = setting(env="TEST_REGION", default=None)

    def check(self) -> None:
        if self.fast and self.kind == "cpu":
            raise refusal("--fast", self.fast, "only with --kind cuda")


def refused(argv: list[str], env: dict[str, str] | None = None) -> str:
    with pytest.raises(SettingsError) as err:
        Example.from_args(argv, env or {})
    message = str(err.value)
    assert "\n" not in message
    return message


def test_flag_over_environment_over_default() -> None:
    assert Example.from_args(["t"], {}).size == 2
    assert Example.from_args(["t"], {ENV_SIZE: "4"}).size == 4
    assert Example.from_args(["t", "--size", "6"], {ENV_SIZE: "4"}).size == 6
    assert Example.from_args(["t"], {ENV_SIZE: "  "}).size == 2  # empty: unset
    parsed = Example.from_args(["t", "--fast", "--kind", "CUDA", "--tags", "b, a"], {"TEST_REGION": "us-west-2"})
    assert (parsed.target, parsed.fast, parsed.kind, parsed.tags, parsed.region) == (
        "t",
        True,
        "cuda",
        ("b", "a"),
        "us-west-2",
    )
    assert Example.from_args(["t", "--no-fast"], {}).fast is False


def test_a_refusal_names_where_the_value_came_from_the_value_and_what_is_allowed() -> None:
    assert refused(["t", "--size", "9"]) == "argument --size: '9' is not allowed; allowed: an integer from 1 to 8"
    assert refused(["t"], {ENV_SIZE: "big"}) == (
        f"environment {ENV_SIZE}: 'big' is not allowed; allowed: an integer from 1 to 8"
    )
    assert refused(["t", "--old-kind", "tpu"]) == "argument --old-kind: 'tpu' is not allowed; allowed: cuda, cpu"
    assert refused(["t", "--ratio", "0"]).endswith("allowed: a number > 0")
    assert refused(["t", "--tags", "c"]).endswith("allowed: a comma-separated list of a, b")
    assert refused(["t", "--fast"]) == "--fast: True is not allowed; allowed: only with --kind cuda"


def test_missing_unknown_and_programmatic_values_are_one_line_too() -> None:
    assert refused([]) == "the following arguments are required: target"
    assert refused(["t", "--frobnicate"]) == "unrecognized arguments: --frobnicate"
    with pytest.raises(SettingsError, match=rf"^{ENV_SIZE}: 0 is not allowed; allowed: an integer from 1 to 8$"):
        Example(target="t", size=0)
    with pytest.raises(SettingsError, match="--ratio: nan is not allowed"):
        Example(target="t", ratio=float("nan"))
    assert Example(target="t").replace(size=3).size == 3


def test_long_values_are_quoted_not_dumped(capsys: pytest.CaptureFixture[str]) -> None:
    message = refused(["t"], {ENV_SIZE: "9" * 500})
    assert len(message) < 200 and "..." in message
    assert error_exit("python -m example", SettingsError("a\nb")) == 2
    assert capsys.readouterr().err == "python -m example: error: a b\n"


def test_allowed_words_come_from_the_field() -> None:
    assert refused(["t", "--counts", "1,0"]) == (
        "argument --counts: '1,0' is not allowed; allowed: a comma-separated list of integers >= 1"
    )
    assert refused(["t"], {"TEST_WAIT_S": "61"}) == (
        "environment TEST_WAIT_S: '61' is not allowed; allowed: a number of seconds from 0.5 to 60"
    )
    assert refused(["t"], {"TEST_WAIT_S": "nan"}).startswith("environment TEST_WAIT_S: 'nan' is not allowed")
    assert refused(["t", "--even", "3"]) == "argument --even: '3' is not allowed: odd; allowed: an integer"
    assert refused(["t"], {"TEST_WEIGHTS": "{"}) == (
        "environment TEST_WEIGHTS: '{' is not allowed; allowed: a JSON object of integers"
    )
    assert refused(["t"], {"TEST_WEIGHTS": '{"a": "b"}'}).startswith("environment TEST_WEIGHTS: ")
    assert refused(["t", "--no-fast=yes"]) == "argument --fast/--no-fast: ignored explicit argument 'yes'"
    assert refused(["t", "--size"]) == "argument --size: expected one argument"
    assert refused(["t", "--size", "--fast"]) == "argument --size: expected one argument"
    assert refused(["t", "u"]) == "unrecognized arguments: u"


def test_flag_spellings() -> None:
    parsed = Example.from_args(["--size=3", "-o", "y.png", "--url", "a", "--url", "b", "--even", "-4", "--", "-t"], {})
    assert (parsed.target, parsed.size, parsed.out, parsed.urls, parsed.even) == (
        "-t",
        3,
        Path("y.png"),
        ("a", "b"),
        -4,
    )
    assert Example.from_args(["t"], {"TEST_WEIGHTS": '{"nvidia": 50}'}).weights == {"nvidia": 50}


def test_help_lists_every_flag_with_its_variable(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        Example.from_args(["--help"], {})
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m example [options] target\n\nAn example program.\n")
    assert "  --size SIZE             how many; allowed: an integer from 1 to 8; default: 2; env TEST_SIZE\n" in out
    assert (
        "  --kind KIND, --old-kind KIND\n                          allowed: cuda, cpu; default: cpu; env TEST_KIND\n"
        in out
    )
    assert "  --fast, --no-fast       default: false\n" in out
    assert "  --url URLS              allowed: a comma-separated list of non-empty strings; repeatable\n" in out
    assert out.endswith(
        "environment only:\n"
        "  TEST_WAIT_S             allowed: a number of seconds from 0.5 to 60; default: 1\n"
        "  TEST_WEIGHTS            allowed: a JSON object of integers\n"
        "  TEST_REGION\n"
    )


def test_a_model_built_while_reading_another_reads_neither_flags_nor_environment() -> None:
    class Outer(ProgramSettings):
        size: int = setting(env=ENV_SIZE, flag="--size", default=2)

        def check(self) -> None:
            assert Example(target="t").size == 2  # not Outer's --size, not the environment

    assert Outer.from_args(["--size", "5"], {ENV_SIZE: "7"}).size == 5


def programs() -> list[type[ProgramSettings]]:
    from runtime.bench.__main__ import BenchSettings
    from runtime.bench.breaking_point import BreakingPointSettings
    from runtime.bench.load import CompareSettings
    from runtime.client.cli import GenerateCommand
    from runtime.compile.settings import CompileConfig
    from runtime.inventory.settings import PublisherSettings
    from runtime.server.settings import Settings

    return [
        Settings,
        CompileConfig,
        PublisherSettings,
        GenerateCommand,
        BenchSettings,
        BreakingPointSettings,
        CompareSettings,
    ]


@pytest.mark.parametrize("program", programs(), ids=lambda p: p.PROG)
def test_every_program_helps_with_every_flag_and_variable(program: type[ProgramSettings]) -> None:
    from plan import contract
    from runtime.client import cli

    text = program.help_text()
    assert text.startswith(f"usage: {program.PROG} ")
    ours = {cli.ENV_TOKEN, cli.ENV_FALLBACK_URLS, cli.ENV_CA_BUNDLE}  # the device client's own
    variables = {value for name, value in vars(contract).items() if name.startswith("ENV_")} | ours
    for name, info in program.model_fields.items():
        spec = next((m for m in info.metadata if isinstance(m, Setting)), None)
        if spec is None:
            continue
        assert spec.flags or spec.env, name
        for flag in spec.flags:
            assert flag in text, flag
        if spec.env:
            assert spec.env in variables, f"{name}: {spec.env} is not a plan.contract variable"
            assert spec.env in text, spec.env
