"""Settings of every runtime program: pydantic-settings models read from flags and environment.

Pods are configured through the environment only (the charts set ``plan.contract``'s ``ENV_*``
variables); people and ``make`` use flags. A program declares its settings once, as a
``ProgramSettings`` (a pydantic-settings ``BaseSettings``) whose fields are
``name: type = setting(env=..., flag=..., ge=..., choices=..., help=...)``: the type, the bounds,
the allowed values, the variable, the flag and the help of a setting live in that one call.
A flag wins over its variable, which wins over the default (values set in code, as in
``Settings(port=0)``, over both). A value the program cannot run with, from a flag, a variable or code, is a
``SettingsError`` whose message is one line: where the value came from, the value, and what is
allowed, in words derived from the field. The command line is read here (no argparse), so
every error, an unknown flag included, is that one line.
"""

from __future__ import annotations

import json
import os
import re
import sys
import textwrap
import types
from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Final, Self, Union, get_args, get_origin

from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from runtime.errors import SettingsError, error_exit  # noqa: F401 (re-exported: every program imports them from here)

_MAX_SHOWN_CHARS: Final = 120  # a refused value is quoted, not dumped
_TRUE: Final = ("1", "true", "yes", "on")
_FALSE: Final = ("0", "false", "no", "off")


class InvalidValueError(ValueError):
    """Raised by a setting's ``parse`` or ``check``; its message, when there is one, says why."""


def refusal(where: str, value: object, allowed: str, detail: str = "") -> SettingsError:
    """The one wording of a refused value: ``where: 'value' is not allowed[: detail]; allowed: ...``."""
    shown = repr(value)
    if len(shown) > _MAX_SHOWN_CHARS:
        shown = shown[: _MAX_SHOWN_CHARS - 3] + "..."
    why = f": {' '.join(detail.split())}" if detail else ""
    return SettingsError(f"{where}: {shown} is not allowed{why}; allowed: {allowed}")


@dataclass(frozen=True)
class Setting:
    """Where a field is read from and what its raw text may be, beyond its type and bounds.

    ``flags[0]`` is its flag (without dashes: positional), later ones former spellings; a
    ``repeatable`` flag adds to its list each time (a list's text is comma- or space-separated).
    ``choices`` (and ``synonyms`` of them) are matched case-insensitively when all lower case.
    ``parse`` turns text into a value instead of the type's reading; ``check`` refuses a value
    by returning False or raising ``InvalidValueError(why)``. ``allowed`` replaces the words
    derived from the type and bounds; ``unit`` names a number's (``a number of seconds``).
    """

    env: str | None
    flags: tuple[str, ...]
    help: str
    choices: tuple[str, ...]
    synonyms: Mapping[str, str]
    unit: str
    allowed: str
    parse: Callable[[str], Any] | None
    check: Callable[[Any], bool] | None
    repeatable: bool
    metavar: str

    @property
    def name(self) -> str:
        """How operators set it: the variable when there is one (pods), else the flag."""
        return self.env or self.flags[0]

    @property
    def positional(self) -> bool:
        return bool(self.flags) and not self.flags[0].startswith("-")

    def choice(self, text: str) -> str:
        key = text.lower() if all(c == c.lower() for c in self.choices) else text
        return self.synonyms.get(key, key)


def setting(
    *,
    env: str | None = None,
    flag: str | None = None,
    aliases: Sequence[str] = (),
    help: str = "",
    choices: Sequence[str] = (),
    synonyms: Mapping[str, str] | None = None,
    unit: str = "",
    allowed: str = "",
    parse: Callable[[str], Any] | None = None,
    check: Callable[[Any], bool] | None = None,
    repeatable: bool = False,
    metavar: str = "",
    default: Any = ...,  # pydantic's "required"
    default_factory: Callable[[], Any] | None = None,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    multiple_of: int | None = None,
    min_length: int | None = None,
) -> Any:
    """A settings field read from ``env`` and/or ``flag`` (a flag without dashes is positional).

    Without ``default`` or ``default_factory`` the setting is required. ``ge``, ``gt``, ``le``,
    ``multiple_of`` and ``min_length`` are pydantic's constraints (``min_length`` of a list).
    """
    bounds: dict[str, Any] = {"ge": ge, "gt": gt, "le": le, "multiple_of": multiple_of, "min_length": min_length}
    info: FieldInfo = (
        Field(default, description=help or None, **bounds)
        if default_factory is None
        else Field(default_factory=default_factory, description=help or None, **bounds)
    )
    info.metadata.append(
        Setting(
            env=env,
            flags=((flag,) if flag else ()) + tuple(aliases),
            help=help,
            choices=tuple(choices),
            synonyms=dict(synonyms or {}),
            unit=unit,
            allowed=allowed,
            parse=parse,
            check=check,
            repeatable=repeatable,
            metavar=metavar,
        )
    )
    return info


def _setting(info: FieldInfo | None) -> Setting | None:
    return next((m for m in info.metadata if isinstance(m, Setting)), None) if info else None


def _unwrap(annotation: Any) -> tuple[Any, list[Any]]:
    """The type without ``None`` and ``Annotated``, and the metadata ``Annotated`` carried."""
    metadata: list[Any] = []
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation, *extra = get_args(annotation)
            metadata += [m for e in extra for m in (e.metadata if isinstance(e, FieldInfo) else [e])]
        elif origin in (Union, types.UnionType):
            (annotation,) = [a for a in get_args(annotation) if a is not type(None)]
        else:
            return annotation, metadata


def _kind(annotation: Any) -> Any:
    """``tuple`` for lists, ``Mapping`` for JSON objects, else the type itself."""
    tp, _ = _unwrap(annotation)
    origin = get_origin(tp) or tp
    if origin is tuple:
        return tuple
    return Mapping if origin in (dict, Mapping) else origin


def _words(annotation: Any, metadata: Sequence[Any], unit: str, *, plural: bool = False) -> str:
    """What a type and its bounds allow, in words: ``an integer from 1 to 8``, ``a number of seconds > 0``."""
    tp, extra = _unwrap(annotation)
    bounds = {k: getattr(m, k) for m in [*metadata, *extra] for k in ("ge", "gt", "le", "multiple_of") if hasattr(m, k)}
    if tp is bool:
        return ", ".join(_TRUE + _FALSE)
    if tp is int and "multiple_of" in bounds:
        noun = f"{'multiples' if plural else 'a multiple'} of {bounds['multiple_of']}"
    elif tp is int:
        noun = "integers" if plural else "an integer"
    elif tp is float:
        noun = ("numbers" if plural else "a number") + (f" of {unit}" if unit else "")
    elif tp is Path:
        return "paths" if plural else "a path"
    elif (get_origin(tp) or tp) in (dict, Mapping):
        return "JSON objects" if plural else "a JSON object"
    else:
        return "non-empty strings" if plural else "a non-empty string"
    low, high = bounds.get("ge", bounds.get("gt")), bounds.get("le")
    if low is not None and high is not None:
        return f"{noun} from {low:g} to {high:g}"
    if low is not None:
        return f"{noun} {'>' if 'gt' in bounds else '>='} {low:g}"
    return f"{noun} <= {high:g}" if high is not None else noun


def allowed_words(info: FieldInfo) -> str:
    """What a setting allows, as its refusals say it."""
    spec = _setting(info)
    assert spec is not None, "a field read by setting()"
    if spec.allowed:
        return spec.allowed
    listed = ", ".join(spec.choices) + (f" (or {', '.join(spec.synonyms)})" if spec.synonyms else "")
    if _kind(info.annotation) is tuple:
        (item, *_) = get_args(_unwrap(info.annotation)[0])
        return f"a comma-separated list of {listed or _words(item, [], spec.unit, plural=True)}"
    return listed or _words(info.annotation, info.metadata, spec.unit)


def _read(spec: Setting, annotation: Any, raw: str) -> Any:
    """Raw text (a flag's or a variable's) as the value pydantic validates."""
    text = raw.strip()
    kind = _kind(annotation)
    if spec.parse is not None:
        return spec.parse(text)
    if kind is bool:
        if text.lower() not in _TRUE + _FALSE:
            raise InvalidValueError()
        return text.lower() in _TRUE
    if kind is tuple:
        items = tuple(part for part in re.split(r"[\s,]+", text) if part)
        return tuple(spec.choice(item) for item in items) if spec.choices else items
    if kind is Mapping:
        try:
            return json.loads(text)
        except ValueError:
            raise InvalidValueError() from None
    if kind is Path and not text:
        raise InvalidValueError()
    return spec.choice(text) if spec.choices else text


# --- where values come from: flags, then the environment (pydantic-settings sources) ----------------


@dataclass(frozen=True)
class _Invocation:
    """One program start: its settings class, the flags given (field -> (spelling, raw text)), its environment."""

    settings_cls: type[BaseSettings]
    flags: Mapping[str, tuple[str, str]]
    environ: Mapping[str, str]

    def given(self, name: str, spec: Setting) -> tuple[str, str] | None:
        """(where, raw text) of a field's value: the flag given, else the variable set, else None."""
        if name in self.flags:
            spelling, raw = self.flags[name]
            return f"argument {spelling}", raw
        if spec.env and self.environ.get(spec.env, "").strip():
            return f"environment {spec.env}", self.environ[spec.env]
        return None


_INVOCATION: ContextVar[_Invocation | None] = ContextVar("runtime_settings_invocation", default=None)


class _Given(PydanticBaseSettingsSource):
    """The raw text of every field given in the invocation under way (none in code: ``Settings(...)``).

    One source holds flags and environment: ``_Invocation.given`` is the precedence, written once,
    and the same lookup tells a refusal where its value came from.
    """

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        invocation, spec = _INVOCATION.get(), _setting(field)
        ours = invocation is not None and invocation.settings_cls is self.settings_cls  # not a model built in check()
        found = invocation.given(field_name, spec) if invocation and ours and spec else None
        return (found[1] if found else None), field_name, False

    def __call__(self) -> dict[str, Any]:
        values = {name: self.get_field_value(info, name)[0] for name, info in self.settings_cls.model_fields.items()}
        return {name: raw for name, raw in values.items() if raw is not None}


# --- the settings base class ---------------------------------------------------------------------


class ProgramSettings(BaseSettings):
    """Base of a program's settings: reading, checking and replacing them.

    Subclasses set ``PROG`` and ``DESCRIPTION`` for ``--help`` and override ``check`` for
    rules across settings. Instances are frozen; ``replace`` makes a checked copy.
    """

    model_config = SettingsConfigDict(frozen=True, str_strip_whitespace=True, str_min_length=1, extra="forbid")

    PROG: ClassVar[str] = ""
    DESCRIPTION: ClassVar[str] = ""

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as err:
            invocation = _INVOCATION.get()
            ours = invocation if invocation and invocation.settings_cls is type(self) else None
            raise _refusal(type(self), err, values, ours) from None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Values set in code, then flags and environment; never a dotenv or secrets directory."""
        return init_settings, _Given(settings_cls)

    @field_validator("*", mode="before")
    @classmethod
    def _from_text(cls, value: Any, info: ValidationInfo) -> Any:
        field = cls.model_fields[info.field_name or ""]
        spec = _setting(field)
        return _read(spec, field.annotation, value) if spec and isinstance(value, str) else value

    @field_validator("*", mode="after")
    @classmethod
    def _allowed(cls, value: Any, info: ValidationInfo) -> Any:
        spec = _setting(cls.model_fields[info.field_name or ""])
        if spec is None or value is None:
            return value
        items = value if isinstance(value, tuple) else (value,)
        if spec.choices and not all(item in spec.choices for item in items):
            raise InvalidValueError()
        if value != value or (spec.check is not None and not spec.check(value)):  # NaN is unequal to itself
            raise InvalidValueError()
        return value

    @model_validator(mode="after")
    def _checked(self) -> Self:
        self.check()
        return self

    def check(self) -> None:
        """Rules across settings; raise SettingsError (via ``refusal``) naming the setting."""

    def replace(self, **changes: Any) -> Self:
        """A copy with ``changes``, checked like any other value."""
        return type(self)(**{**{name: getattr(self, name) for name in type(self).model_fields}, **changes})

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Self:
        """Settings from the environment alone (unset or empty variables keep the default)."""
        return cls._load({}, os.environ if environ is None else environ)

    @classmethod
    def from_args(cls, argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> Self:
        """Flags over environment over defaults; every problem is a one-line SettingsError.

        ``-h``/``--help`` prints ``help_text()`` and exits 0, as argparse does.
        """
        flags = _parse_flags(cls, sys.argv[1:] if argv is None else argv)
        return cls._load(flags, os.environ if environ is None else environ)

    @classmethod
    def _load(cls, flags: Mapping[str, tuple[str, str]], environ: Mapping[str, str]) -> Self:
        token = _INVOCATION.set(_Invocation(cls, flags, environ))
        try:
            return cls()
        finally:
            _INVOCATION.reset(token)

    @classmethod
    def help_text(cls) -> str:
        """Usage, then each setting: its flags, what it allows, its default and its variable."""
        rows, env_only, positional = [("-h, --help", "show this help message and exit")], [], []
        for name, info in cls.model_fields.items():
            spec = _setting(info)
            if spec is None or spec.positional:
                positional += [spec.flags[0]] if spec else []
                continue
            default = None if info.is_required() else info.get_default(call_default_factory=True)
            plain = _kind(info.annotation) in (str, Path, bool) and not (spec.choices or spec.allowed)
            about = [
                spec.help,
                "" if plain else f"allowed: {allowed_words(info)}",
                "required" if info.is_required() else "",
                f"default: {_shown(default)}" if default not in (None, (), {}) else "",
                "repeatable" if spec.repeatable else "",
                f"env {spec.env}" if spec.env and spec.flags else "",
            ]
            text = "; ".join(part for part in about if part)
            if not spec.flags:
                env_only.append((spec.env or name, text))
            elif _kind(info.annotation) is bool:
                rows.append((", ".join(f"{f}, --no-{f[2:]}" for f in spec.flags), text))
            else:
                rows.append((", ".join(f"{f} {spec.metavar or name.upper()}" for f in spec.flags), text))
        lines = [f"usage: {cls.PROG} [options]{''.join(f' {p}' for p in positional)}", ""]
        lines += [cls.DESCRIPTION, ""] if cls.DESCRIPTION else []
        lines += ["positional arguments:", *_columns([(p, "") for p in positional]), ""] if positional else []
        lines += ["options:", *_columns(rows)]
        lines += ["", "environment only:", *_columns(env_only)] if env_only else []
        return "\n".join(lines)


def _shown(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def _columns(rows: Sequence[tuple[str, str]], width: int = 22) -> list[str]:
    """argparse's layout: the flags, then their text from column ``width + 4``, wrapped at 100."""
    out = []
    for left, right in rows:
        wrapped = textwrap.wrap(right, 100 - width - 4)
        first = [f"  {left:<{width}}  {wrapped.pop(0)}"] if wrapped and len(left) <= width else [f"  {left}"]
        out += first + [f"  {'':<{width}}  {line}" for line in wrapped]
    return out


def _is_value(arg: str) -> bool:
    """An argument that is a value, never a flag: not dashed, or a negative number (``--seed -5``)."""
    if not arg.startswith("-") or arg == "-":
        return True
    try:
        float(arg)
    except ValueError:
        return False
    return True


def _parse_flags(cls: type[ProgramSettings], argv: Sequence[str]) -> dict[str, tuple[str, str]]:
    """Each field given on the command line: (the spelling used, its raw text); booleans are switches."""
    options: dict[str, tuple[str, Setting, bool]] = {}  # spelling -> (field, setting, is a switch)
    positional: list[tuple[str, Setting]] = []
    for name, info in cls.model_fields.items():
        spec = _setting(info)
        if spec is None or not spec.flags:
            continue
        if spec.positional:
            positional.append((name, spec))
            continue
        switch = _kind(info.annotation) is bool
        for flag in spec.flags:
            options[flag] = (name, spec, switch)
            if switch:
                options[f"--no-{flag[2:]}"] = (name, spec, switch)
    given: dict[str, tuple[str, str]] = {}
    loose: list[str] = []
    unknown: list[str] = []
    args = iter(argv)
    for arg in args:
        if _is_value(arg):
            loose.append(arg)
            continue
        if arg == "--":
            loose += list(args)
            break
        if arg in ("-h", "--help"):
            print(cls.help_text())
            raise SystemExit(0)
        spelling, has_inline, inline = arg.partition("=")
        if spelling not in options:
            unknown.append(arg)
            continue
        name, spec, switch = options[spelling]
        if switch:
            if has_inline:
                positive = spelling.replace("--no-", "--", 1)
                raise SettingsError(f"argument {positive}/--no-{positive[2:]}: ignored explicit argument {inline!r}")
            given[name] = (spelling, "false" if spelling.startswith("--no-") else "true")
            continue
        value = inline if has_inline else next(args, None)
        if value is None or not (has_inline or _is_value(value)):
            raise SettingsError(f"argument {spelling}: expected one argument")
        if spec.repeatable and name in given:
            value = f"{given[name][1]} {value}"  # as one list
        given[name] = (spelling, value)
    for (name, spec), arg in zip(positional, loose, strict=False):
        given[name] = (spec.flags[0], arg)
    unknown += loose[len(positional) :]
    if unknown:
        raise SettingsError(f"unrecognized arguments: {' '.join(unknown)}")
    return given


def _missing(spec: Setting) -> str:
    if spec.positional:
        return f"the following arguments are required: {spec.flags[0]}"
    if spec.flags and spec.env:
        return f"{spec.flags[0]} is required (or set {spec.env})"
    return f"{spec.name} is {'not set' if spec.env else 'required'}"


def _refusal(
    cls: type[ProgramSettings], err: ValidationError, values: Mapping[str, Any], invocation: _Invocation | None
) -> SettingsError:
    """pydantic's first error as the one line: the setting, where its value came from, what is allowed."""
    first = err.errors()[0]
    cause = first.get("ctx", {}).get("error")
    if isinstance(cause, SettingsError):  # raised by check()
        return cause
    name = str(first["loc"][0]) if first["loc"] else ""
    info = cls.model_fields.get(name)
    spec = _setting(info)
    if info is None or spec is None:
        return SettingsError(f"{name or cls.__name__}: {' '.join(first['msg'].split())}")
    if first["type"] == "missing":
        return SettingsError(_missing(spec))
    given = invocation.given(name, spec) if invocation else None
    where, value = given or (spec.name, values.get(name, first["input"]))
    detail = str(cause) if isinstance(cause, InvalidValueError) else ""
    return refusal(where, value, allowed_words(info), detail)
