"""Settings of every runtime program: environment variables and command-line flags, read one way.

Pods are configured through the environment only (the charts set ``plan.contract``'s ``ENV_*``
variables); people and ``make`` use flags. Each program declares its settings once, as a frozen
dataclass deriving from ``ProgramSettings`` whose fields are ``setting(rule, env=..., flag=...)``.
A flag wins over its variable, which wins over the default. A value the program cannot run with
is a ``SettingsError`` whose message is one line: where the value came from, the value, and what
is allowed. Standard library only: the serving image carries this file.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Final, NoReturn, Self

_SPEC_KEY: Final = "edge_diffusion_setting"
_MAX_SHOWN_CHARS: Final = 120  # a refused value is quoted, not dumped


class SettingsError(ValueError):
    """A setting cannot be used; the message is one line naming it, its value and what is allowed."""


class InvalidValueError(ValueError):
    """Raised by a rule's converter; its message, when there is one, adds why beyond "not allowed"."""


def refusal(where: str, value: object, allowed: str, detail: str = "") -> SettingsError:
    """The one wording of a refused value: ``where: 'value' is not allowed[: detail]; allowed: ...``."""
    shown = repr(value)
    if len(shown) > _MAX_SHOWN_CHARS:
        shown = shown[: _MAX_SHOWN_CHARS - 3] + "..."
    why = f": {' '.join(detail.split())}" if detail else ""
    return SettingsError(f"{where}: {shown} is not allowed{why}; allowed: {allowed}")


@dataclass(frozen=True)
class Rule:
    """How a raw string becomes a value (``convert``) and which values may be used (``accept``).

    ``accept`` also checks values set in code (``Settings(max_batch=0)``), so a bound is written
    once whichever way a setting arrives; ``allowed`` says it in words for the error message.
    """

    allowed: str
    convert: Callable[[str], Any]
    accept: Callable[[Any], bool] = lambda value: True

    def parse(self, raw: str) -> Any:
        value = self.convert(raw)
        if not self.accept(value):
            raise InvalidValueError()
        return value


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _range_words(minimum: float | None, maximum: float | None, exclusive: bool) -> str:
    if minimum is not None and maximum is not None:
        return f"from {minimum:g} to {maximum:g}"
    if minimum is not None:
        return f"{'>' if exclusive else '>='} {minimum:g}"
    return f"<= {maximum:g}" if maximum is not None else ""


def integer(minimum: int | None = None, maximum: int | None = None, *, multiple: int = 1) -> Rule:
    def accept(value: Any) -> bool:
        if not _is_int(value):
            return False
        in_range = (minimum is None or value >= minimum) and (maximum is None or value <= maximum)
        return in_range and value % multiple == 0

    kind = f"a multiple of {multiple}" if multiple > 1 else "an integer"
    return Rule(f"{kind} {_range_words(minimum, maximum, False)}".strip(), _convert_int, accept)


def number(
    minimum: float | None = None, maximum: float | None = None, *, exclusive: bool = False, unit: str = ""
) -> Rule:
    """A float; ``exclusive`` makes ``minimum`` itself refused (timeouts must be > 0)."""

    def accept(value: Any) -> bool:
        if not _is_number(value) or value != value:  # NaN compares unequal to itself
            return False
        low_ok = minimum is None or (value > minimum if exclusive else value >= minimum)
        return low_ok and (maximum is None or value <= maximum)

    words = f"a number{f' of {unit}' if unit else ''} {_range_words(minimum, maximum, exclusive)}"
    return Rule(words.strip(), _convert_float, accept)


def one_of(values: Sequence[str], aliases: Mapping[str, str] | None = None) -> Rule:
    """One of ``values`` (case-insensitive when they are all lower case), or an alias of one."""
    aliases = dict(aliases or {})
    fold = all(v == v.lower() for v in values)

    def convert(raw: str) -> str:
        key = raw.strip().lower() if fold else raw.strip()
        return aliases.get(key, key)

    allowed = ", ".join(values) + (f" (or {', '.join(aliases)})" if aliases else "")
    return Rule(allowed, convert, lambda value: value in values)


def many_of(values: Sequence[str]) -> Rule:
    """A comma-separated, ordered selection of ``values``."""

    def convert(raw: str) -> tuple[str, ...]:
        return tuple(part.strip() for part in raw.split(",") if part.strip())

    def accept(value: Any) -> bool:
        return isinstance(value, tuple) and bool(value) and all(v in values for v in value)

    return Rule(f"a comma-separated list of {', '.join(values)}", convert, accept)


def integers(minimum: int) -> Rule:
    """A comma-separated list of integers >= ``minimum``."""

    def convert(raw: str) -> tuple[int, ...]:
        return tuple(_convert_int(part) for part in raw.split(",") if part.strip())

    def accept(value: Any) -> bool:
        return isinstance(value, tuple) and bool(value) and all(_is_int(v) and v >= minimum for v in value)

    return Rule(f"a comma-separated list of integers >= {minimum}", convert, accept)


def _json_int_map(raw: str) -> dict[str, int]:
    try:
        value = json.loads(raw)
    except ValueError:
        raise InvalidValueError() from None
    if not isinstance(value, dict):
        raise InvalidValueError()
    return value


def _convert_int(raw: str) -> int:
    try:
        return int(raw.strip())
    except ValueError:
        raise InvalidValueError() from None


def _convert_float(raw: str) -> float:
    try:
        return float(raw.strip())
    except ValueError:
        raise InvalidValueError() from None


_TRUE: Final = ("1", "true", "yes", "on")
_FALSE: Final = ("0", "false", "no", "off")


def _convert_bool(raw: str) -> bool:
    low = raw.strip().lower()
    if low not in _TRUE + _FALSE:
        raise InvalidValueError()
    return low in _TRUE


def _convert_text(raw: str) -> str:
    if not raw.strip():
        raise InvalidValueError()
    return raw.strip()


BOOLEAN: Final = Rule(", ".join(_TRUE + _FALSE), _convert_bool, lambda value: isinstance(value, bool))
TEXT: Final = Rule("a non-empty string", _convert_text, lambda value: isinstance(value, str) and bool(value))
PATH: Final = Rule("a path", lambda raw: Path(_convert_text(raw)), lambda value: isinstance(value, Path))
JSON_INT_MAP: Final = Rule(
    'a JSON object of integers like {"nvidia": 50}',
    _json_int_map,
    lambda value: isinstance(value, Mapping) and all(_is_int(v) for v in value.values()),
)


@dataclass(frozen=True)
class SettingSpec:
    """Where one setting is read from: ``flags[0]`` is its flag, later ones are former spellings."""

    rule: Rule
    env: str | None
    flags: tuple[str, ...]
    help: str

    @property
    def name(self) -> str:
        """How operators set it: the variable when there is one (pods), else the flag."""
        return self.env or self.flags[0]

    @property
    def positional(self) -> bool:
        return bool(self.flags) and not self.flags[0].startswith("-")


def setting(
    rule: Rule,
    *,
    env: str | None = None,
    flag: str | None = None,
    aliases: Sequence[str] = (),
    help: str = "",
    **default: Any,
) -> Any:
    """A dataclass field read from ``env`` and/or ``flag`` (a flag without dashes is positional).

    ``default=`` or ``default_factory=`` as for ``dataclasses.field``; without either the
    setting is required.
    """
    flags = ((flag,) if flag else ()) + tuple(aliases)
    spec = SettingSpec(rule=rule, env=env, flags=flags, help=help)
    return dataclasses.field(metadata={_SPEC_KEY: spec}, **default)


def _spec(f: dataclasses.Field[Any]) -> SettingSpec | None:
    spec = f.metadata.get(_SPEC_KEY)
    return spec if isinstance(spec, SettingSpec) else None


def _has_default(f: dataclasses.Field[Any]) -> bool:
    return f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are a SettingsError (one line, no usage dump), like any bad value."""

    def error(self, message: str) -> NoReturn:
        raise SettingsError(" ".join(message.split()))


class _Given(argparse.Action):
    """Stores (spelling used, raw string): the value is converted, and refused, by its rule."""

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: str | None = None) -> None:
        setattr(namespace, self.dest, None if values is None else (option_string or self.dest, values))


class _Switch(argparse.BooleanOptionalAction):
    """``--x`` / ``--no-x``, stored like any other flag ("true"/"false" through BOOLEAN)."""

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: str | None = None) -> None:
        negated = bool(option_string and option_string.startswith("--no-"))
        setattr(namespace, self.dest, (option_string, "false" if negated else "true"))


class ProgramSettings:
    """Base of a program's settings dataclass: reading, checking and replacing them.

    Subclasses are ``@dataclass(frozen=True)`` with ``setting(...)`` fields, set ``PROG`` and
    ``DESCRIPTION`` for ``--help``, and override ``check`` for rules across settings.
    """

    PROG: ClassVar[str] = ""
    DESCRIPTION: ClassVar[str] = ""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            spec = _spec(f)
            value = getattr(self, f.name)
            if spec is None or (value is None and f.default is None):
                continue
            if not spec.rule.accept(value):
                raise refusal(spec.name, value, spec.rule.allowed)
        self.check()

    def check(self) -> None:
        """Rules across settings; raise SettingsError (via ``refusal``) naming the setting."""

    def replace(self, **changes: Any) -> Self:
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]

    @classmethod
    def arg_parser(cls) -> OneLineParser:
        """Every flag of the program; ``--help`` names the variable each one overrides."""
        parser = OneLineParser(prog=cls.PROG or None, description=cls.DESCRIPTION or None)
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            spec = _spec(f)
            if spec is None or not spec.flags:
                continue
            text = " ".join(part for part in (spec.help, f"(env {spec.env})" if spec.env else "") if part)
            if spec.positional:
                nargs = "?" if _has_default(f) else None
                parser.add_argument(f.name, metavar=spec.flags[0], action=_Given, nargs=nargs, help=text or None)
            elif spec.rule is BOOLEAN:
                parser.add_argument(*spec.flags, dest=f.name, action=_Switch, help=text or None)
            else:
                parser.add_argument(*spec.flags, dest=f.name, action=_Given, help=text or None)
        return parser

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Self:
        """Settings from the environment alone (unset or empty variables keep the default)."""
        return cls._load(None, os.environ if environ is None else environ)

    @classmethod
    def from_args(cls, argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> Self:
        """Flags over environment over defaults; every problem is a one-line SettingsError."""
        args = cls.arg_parser().parse_args(argv)
        return cls._load(args, os.environ if environ is None else environ)

    @classmethod
    def _load(cls, args: argparse.Namespace | None, environ: Mapping[str, str]) -> Self:
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            spec = _spec(f)
            if spec is None:
                continue
            given = getattr(args, f.name, None) if args is not None else None
            if given is not None:
                option, raw = given
                where = f"argument {option}"
            elif spec.env and environ.get(spec.env, "").strip():
                raw, where = environ[spec.env], f"environment {spec.env}"
            elif _has_default(f):
                continue
            else:
                raise SettingsError(_missing(spec))
            try:
                values[f.name] = spec.rule.parse(raw)
            except ValueError as exc:
                detail = str(exc) if isinstance(exc, InvalidValueError) else ""
                raise refusal(where, raw, spec.rule.allowed, detail) from None
        return cls(**values)


def _missing(spec: SettingSpec) -> str:
    if spec.flags and spec.env:
        return f"{spec.flags[0]} is required (or set {spec.env})"
    return f"{spec.name} is {'not set' if spec.env else 'required'}"


def error_exit(prog: str, error: object, code: int = 2) -> int:
    """Print ``prog: error: <one line>`` to stderr and return ``code`` (2: bad settings)."""
    print(f"{prog}: error: {' '.join(str(error).split())}", file=sys.stderr)
    return code
