"""Loading the config: context in, an ``AppConfig`` or every bad value as one line each out.

pydantic stops a model at its first failing level: a rule over several values runs only once
every value it reads is valid. To report every bad value in one run, each bad value found is
reported and left out (its default takes its place) and the models validate again, a few times
at most; a rule that read a value already reported is dropped, since it judged a default.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from typing import Any, Final

from pydantic import TypeAdapter, ValidationError
from pydantic_core import ErrorDetails

from plan.config.errors import ConfigError, raise_collected
from plan.config.models import AppConfig
from plan.config.reading import context_keys, read_context
from plan.config.rules import ITEM_NAME, NOT_ALLOWED, REFUSED, Path, Refusal, config_key
from plan.config.schema import DICT_KEY, allowed_text, fields, walk

# Each pass gets one level further: values, then an object's rules, then AppConfig's.
MAX_PASSES: Final = 6
_ADAPTER: Final = TypeAdapter(AppConfig)
_UNKNOWN_KEY: Final = ("unexpected_keyword_argument", "extra_forbidden")


def load_config(context: Mapping[str, object]) -> AppConfig:
    """Build and validate the config from CDK context (all of it: cdk.json plus -c).

    Raises ConfigError for one bad value, ConfigErrors (a ConfigError) for several.
    """
    config, found = config_errors(context)
    raise_collected(found)
    assert config is not None
    return config


def config_errors(context: Mapping[str, object]) -> tuple[AppConfig | None, list[ConfigError]]:
    """Parse and validate ``context``; every error found, and the config when there were none."""
    data, found = read_context(context)
    data = copy.deepcopy(data)
    for _ in range(MAX_PASSES):
        try:
            config = _ADAPTER.validate_python(data, by_alias=True, by_name=False)
        except ValidationError as err:
            if not _report(err, data, found):
                break
        else:
            return (None if found else config), _in_key_order(found)
    return None, _in_key_order(found)


def _report(err: ValidationError, data: dict[str, Any], found: list[ConfigError]) -> bool:
    """Add the news of one pass to ``found`` and leave its bad values out of ``data``; whether any was."""
    failed = {error.key for error in found}
    drops: list[Path] = []
    for item in err.errors():
        for where, value, allowed, reads in _problems(item):
            key = display_key(where, data)
            if not _covered(key, failed) and not any(_touches(display_key(read, data), failed) for read in reads):
                found.append(ConfigError(key, value, allowed))
            drops.append(where)
    return _drop_all(data, drops)


def _problems(error: ErrorDetails) -> Iterator[tuple[Path, object, str, tuple[Path, ...]]]:
    """Each bad value of one pydantic error: where, the value, what is allowed, what else was read."""
    loc: Path = tuple(error["loc"])
    ctx = error.get("ctx") or {}
    if error["type"] == REFUSED:
        refusals: tuple[Refusal, ...] = ctx["refusals"]
        for refused in refusals:
            reads = tuple(loc + _keys(read) for read in refused.reads)
            yield loc + _keys(refused.where), refused.value, refused.allowed, reads
    elif error["type"] == NOT_ALLOWED:
        yield loc, _shown(error["input"]), str(ctx["allowed"]), ()
    elif loc and loc[-1] == DICT_KEY:
        yield loc, loc[-2], allowed_text(walk(AppConfig, loc)), ()
    elif error["type"] in _UNKNOWN_KEY:
        parent = walk(AppConfig, loc[:-1])
        known = ", ".join(fields(parent.kind)) if parent and parent.is_model else ""
        yield loc, error["input"], (f"one of {known}" if loc[:-1] else f"a known key: {known}"), ()
    else:
        yield loc, _shown(error["input"]), allowed_text(walk(AppConfig, loc)), ()


def _keys(where: Path) -> Path:
    """Field names as the keys users type (pydantic's locations use those); a mapping's own key (a
    placement such as ``nvidia-us-west-2-lax-1a``, never a Python identifier with a dash) as it is."""
    return tuple(config_key(part) if isinstance(part, str) and part.isidentifier() else part for part in where)


def _shown(value: object) -> object:
    """A list as the text it would be on the command line."""
    if isinstance(value, list | tuple) and all(isinstance(item, str) for item in value):
        return ",".join(value)
    return value


def display_key(where: Path, data: object) -> str:
    """The key a message names: ``serving.maxBatch``; a list item by its list (``clientCidrs``),
    a field of an item by the item's name (``localZones[us-west-2-lax-1a].instanceFamilies``)."""
    parts: list[str] = []
    node = data
    for i, part in enumerate(where):
        rest = where[i + 1 :]
        if isinstance(part, int):
            if not rest or rest[0] in (ITEM_NAME, DICT_KEY):
                break
            item = node[part] if isinstance(node, list) and part < len(node) else None
            name = item.get(ITEM_NAME) if isinstance(item, Mapping) else None
            parts[-1] += f"[{name if isinstance(name, str) else part}]"
        elif rest[:1] == (DICT_KEY,):  # a bad key of a mapping: named by the mapping
            break
        else:
            parts.append(str(part))
        node = _step(node, part)
    return ".".join(parts)


def _step(node: object, part: str | int) -> object:
    if isinstance(node, Mapping):
        return node.get(part)
    if isinstance(node, list) and isinstance(part, int) and part < len(node):
        return node[part]
    return None


def _covered(key: str, failed: set[str]) -> bool:
    """Whether ``key`` or an object or list it is part of was reported already."""
    return any(key == f or key.startswith((f"{f}.", f"{f}[")) for f in failed)


def _touches(key: str, failed: set[str]) -> bool:
    """Whether a value a rule read was reported: it, a part of it, or what it is part of."""
    return _covered(key, failed) or any(f.startswith((f"{key}.", f"{key}[")) for f in failed)


def _drop_all(data: dict[str, Any], drops: list[Path]) -> bool:
    """Leave out each bad value (deepest list items first, so indexes hold); whether any was."""
    changed = False
    for where in sorted(
        set(drops), key=lambda path: [(0, p) if isinstance(p, int) else (1, p) for p in path], reverse=True
    ):
        changed |= _drop(data, where)
    return changed


def _drop(data: dict[str, Any], where: Path) -> bool:
    """Remove the value at ``where``: the deepest list item on the way, else the last key."""
    path = list(where[:-1] if where and where[-1] == DICT_KEY else where)
    cut = max((i for i, part in enumerate(path) if isinstance(part, int)), default=len(path) - 1)
    if cut < 0:
        return False
    parent: object = data
    for part in path[:cut]:
        parent = _step(parent, part)
    last = path[cut]
    if isinstance(parent, list) and isinstance(last, int) and last < len(parent):
        del parent[last]
        return True
    if isinstance(parent, dict) and last in parent:
        del parent[last]
        return True
    return False


def _in_key_order(found: list[ConfigError]) -> list[ConfigError]:
    """Errors in the order of the keys in the models (the README's table), each message once."""
    order = {key: i for i, key in enumerate(context_keys())}

    def rank(error: ConfigError) -> tuple[int, int]:
        top, _, sub = error.key.partition(".")
        top = top.split("[", 1)[0]
        section = walk(AppConfig, (top,))
        subs = list(fields(section.kind)) if section and section.is_model else []
        return order.get(top, len(order)), subs.index(sub) if sub in subs else len(subs)

    unique = {str(error): error for error in found}
    return sorted(unique.values(), key=rank)
