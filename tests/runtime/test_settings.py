"""runtime.settings: one way to read flags and environment, and one wording for a refused value."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pytest

from runtime.settings import (
    BOOLEAN,
    TEXT,
    ProgramSettings,
    SettingsError,
    error_exit,
    integer,
    many_of,
    number,
    one_of,
    refusal,
    setting,
)

ENV_SIZE = "TEST_SIZE"
ENV_KIND = "TEST_KIND"


@dataclass(frozen=True)
class Example(ProgramSettings):
    PROG: ClassVar[str] = "python -m example"

    target: str = setting(TEXT, flag="target")
    size: int = setting(integer(1, 8), env=ENV_SIZE, flag="--size", default=2)
    kind: str = setting(one_of(("cuda", "cpu")), env=ENV_KIND, flag="--kind", aliases=("--old-kind",), default="cpu")
    ratio: float = setting(number(0, exclusive=True), flag="--ratio", default=1.0)
    fast: bool = setting(BOOLEAN, flag="--fast", default=False)
    tags: tuple[str, ...] = setting(many_of(("a", "b")), flag="--tags", default=("a",))
    region: str | None = setting(TEXT, env="TEST_REGION", default=None)

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
