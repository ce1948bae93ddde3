"""What the config models are built from: generated keys, checks that say what they allow, refusals.

Each check raises one pydantic error that carries the ``allowed`` text a user reads, and each rule
over several values raises the values it refuses with theirs, so ``plan.config.loading`` turns a
ValidationError into one line per bad value without rewording pydantic's English.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Final, TypeVar

from pydantic import AfterValidator, BeforeValidator, ConfigDict
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError, PydanticKnownError

T = TypeVar("T")
Path = tuple[str | int, ...]

NOT_ALLOWED: Final = "config_not_allowed"  # one value its own check refused; ctx: allowed
REFUSED: Final = "config_refused"  # values a model's rules refused; ctx: refusals
# The key a list item of objects is named by in messages: localZones[us-west-2-lax-1a].instanceFamilies.
ITEM_NAME: Final = "name"


def config_key(name: str) -> str:
    """The key users type for a field: camelCase, ``_s`` spelled out (``token_ttl_s``: ``tokenTtlSeconds``)."""
    return f"{to_camel(name[:-2])}Seconds" if name.endswith("_s") else to_camel(name)


# Every config model: keys generated from the field names, no unknown key, strings trimmed (what
# -c and JSON files give), no NaN. Python code constructs models by field name (validate_by_name);
# plan.config.loading reads context by key only.
MODEL_CONFIG: Final = ConfigDict(
    alias_generator=config_key,
    validate_by_name=True,
    validate_by_alias=True,
    extra="forbid",
    str_strip_whitespace=True,
    allow_inf_nan=False,
)


def not_allowed(allowed: str) -> PydanticCustomError:
    """The error of a value its own check refused: the message is what is allowed."""
    return PydanticCustomError(NOT_ALLOWED, "allowed {allowed}", {"allowed": allowed})


def check(test: Callable[[Any], bool], allowed: str) -> AfterValidator:
    """A validator that keeps a value ``test`` accepts and refuses any other, naming ``allowed``."""

    def run(value: T) -> T:
        if not test(value):
            raise not_allowed(allowed)
        return value

    return AfterValidator(run)


def matching(pattern: re.Pattern[str], allowed: str, *, optional: bool = False) -> AfterValidator:
    """A string matching ``pattern`` (or empty, when ``optional``: an unset value)."""
    return check(lambda value: (optional and value == "") or bool(pattern.fullmatch(value)), allowed)


def choices(values: Sequence[object]) -> str:
    """``a or b``, ``one of a, b, c``: how a message lists the allowed values."""
    names = [str(value) for value in values]
    return " or ".join(names) if len(names) <= 2 else f"one of {', '.join(names)}"


def one_of(values: Sequence[object], allowed: str | None = None) -> AfterValidator:
    return check(lambda value: value in values, allowed or choices(values))


def distinct(values: Sequence[object]) -> bool:
    return len(set(values)) == len(values)


def cidr_prefix(text: str) -> int | None:
    """The prefix length of an IPv4 or IPv6 network with its host bits zero; None for anything else."""
    try:
        return ipaddress.ip_network(text, strict=True).prefixlen
    except ValueError:
        return None


def ip_version(text: str) -> int | None:
    try:
        return ipaddress.ip_network(text).version
    except ValueError:
        return None


def _flag(value: object) -> object:
    """true or false only (JSON booleans, or the words from -c): not pydantic's yes/no/on/off/1/0."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise not_allowed("true or false")


def _not_a_flag(value: object) -> object:
    """A number, not a boolean (pydantic would read true as 1)."""
    if isinstance(value, bool):
        raise PydanticKnownError("int_type")
    return value


Flag = Annotated[bool, BeforeValidator(_flag)]
Integer = Annotated[int, BeforeValidator(_not_a_flag)]
Number = Annotated[float, BeforeValidator(_not_a_flag)]


@dataclass(frozen=True)
class Refusal:
    """A value a rule over several values refuses: where it is, what is allowed, and what else the
    rule read (a bad one of those voids the refusal: the rule judged against its default)."""

    where: Path  # field names and list indexes, from the model whose rule refuses
    value: object
    allowed: str
    reads: tuple[Path, ...] = ()


def refusal(where: str | Path, value: object, allowed: str, *, reads: Iterable[str | Path] = ()) -> Refusal:
    """A :class:`Refusal`; a dotted string names a nested field (``node_image.family``)."""
    return Refusal(_path(where), value, allowed, tuple(_path(read) for read in reads))


def _path(where: str | Path) -> Path:
    return tuple(where.split(".")) if isinstance(where, str) else where


def refuse(refusals: Iterable[Refusal]) -> None:
    """Raise every refusal of one model's rules at once (pydantic stops at a model's first error)."""
    found = tuple(refusals)
    if found:
        raise PydanticCustomError(REFUSED, "{count} values refused", {"count": len(found), "refusals": found})
