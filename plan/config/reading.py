"""Reading CDK context into the shapes the config models take: the text forms of ``-c key=value``.

``cdk.json`` gives JSON types; ``-c`` gives text, so lists also take comma-separated values
(``-c accelerators=nvidia,cpu``), objects take JSON (``-c tls='{"certificateArn": "..."}'``) or one
dotted key at a time (``-c tls.certificateArn=...``), and a Local Zone takes ``zone:g5+g6``. Which
key is a list or an object is read from the models (``plan.config.schema``): no table of keys here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from plan.config.errors import ConfigError
from plan.config.models import AppConfig
from plan.config.rules import ITEM_NAME
from plan.config.schema import Slot, child, fields, slot
from plan.config.sections import LocalZoneConfig

# The committed context every entry point starts from (cdk.json sits at the repository root).
CDK_JSON: Final = Path(__file__).resolve().parents[2] / "cdk.json"
# Our keys are camelCase, or ``object.sub``; the CDK's own are ``@aws-cdk/...`` and ``aws:cdk:...``.
_OUR_KEY: Final = re.compile(r"^[a-z][a-zA-Z0-9]*(\.[A-Za-z0-9][\w.-]*)?$")
ROOT: Final = slot(AppConfig)
ZONE_FORMS: Final = 'a zone name, "zone:g5+g6", or {"name": ..., "instanceFamilies": [...]}'


def cli_context(argv: Sequence[str]) -> dict[str, object]:
    """cdk.json context plus ``-c key=value`` / ``--context key=value`` from ``argv``."""
    context: dict[str, object] = dict(json.loads(CDK_JSON.read_text()).get("context", {}))
    args = iter(argv)
    for arg in args:
        if arg in ("-c", "--context"):
            pair = next(args, "")
        elif arg.startswith(("-c=", "--context=")):
            pair = arg.split("=", 1)[1]
        else:
            raise ConfigError("argument", arg, "-c key=value (or --context key=value)")
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError("argument", pair, "-c key=value (or --context key=value)")
        context[key] = value
    return context


def is_config_key(key: str) -> bool:
    """Whether a context key is ours (camelCase, or ``object.sub``), not the CDK's (``@aws-cdk/...``)."""
    return bool(_OUR_KEY.match(key))


def context_keys() -> tuple[str, ...]:
    """The top-level context keys users may set, in the models' order."""
    return tuple(fields(AppConfig))


def object_keys() -> tuple[str, ...]:
    """The keys whose value is an object: they also take ``key.sub=value``."""
    return tuple(key for key in context_keys() if (found := child(ROOT, key)) and found.is_object)


def read_context(context: Mapping[str, object]) -> tuple[dict[str, Any], list[ConfigError]]:
    """Our keys of ``context``, dotted keys folded into their objects and text made lists and
    objects; with one error per value that could not be read (its key left out)."""
    errors: list[ConfigError] = []
    merged: dict[str, Any] = {}
    dotted: list[tuple[str, str, object]] = []
    for key, raw in context.items():
        if not is_config_key(key):
            continue
        top, dot, sub = key.partition(".")
        if dot:
            dotted.append((top, sub, raw))
        else:
            merged[key] = raw
    objects = object_keys()
    for top, sub, raw in dotted:  # after the object itself, so they win
        if top not in objects:
            errors.append(ConfigError(f"{top}.{sub}", raw, f"dotted keys of objects only: {', '.join(objects)}"))
            continue
        try:
            merged[top] = {**_as_object(top, merged.get(top, {})), sub: raw}
        except ConfigError as err:
            errors.append(err)
            merged.pop(top, None)
    return _shape_object(ROOT, merged, "", errors), errors


def _shape(where: Slot, raw: object, key: str, errors: list[ConfigError]) -> object:
    """``raw`` in the shape ``where`` takes: lists from text, objects from JSON, zones from ``zone:g5``."""
    if where.kind is LocalZoneConfig:
        raw = _zone(key, raw)
    if where.is_model:
        return _shape_object(where, _as_object(key, raw), key, errors)
    if where.is_mapping:
        return _as_object(key, raw) if isinstance(raw, str) else raw
    if where.is_list:
        item = child(where, 0)
        assert item is not None
        return [_shape(item, value, key, errors) for value in _as_list(key, raw)]
    return raw


def _shape_object(where: Slot, raw: Mapping[str, Any], key: str, errors: list[ConfigError]) -> dict[str, Any]:
    shaped: dict[str, Any] = {}
    for sub, value in raw.items():
        inner = child(where, sub)
        if inner is None:  # an unknown key: the model names the known ones
            shaped[sub] = value
            continue
        try:
            shaped[sub] = _shape(inner, value, f"{key}.{sub}" if key else sub, errors)
        except ConfigError as err:
            errors.append(err)
    return shaped


def _as_list(key: str, raw: object) -> list[Any]:
    """Lists come as JSON lists from cdk.json and as JSON or comma-separated text from -c."""
    if isinstance(raw, list | tuple):
        return list(raw)
    if isinstance(raw, str):
        text = raw.strip()
        if text.startswith("["):
            try:
                parsed = json.loads(text)
            except json.JSONDecodeError as err:
                raise ConfigError(key, raw, f"a JSON list or comma-separated values ({err.msg})") from None
            if isinstance(parsed, list):
                return parsed
        return [item.strip() for item in text.split(",") if item.strip()]
    raise ConfigError(key, raw, "a list or comma-separated values")


def _as_object(key: str, raw: object) -> dict[str, Any]:
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError:
            raise ConfigError(key, raw, "a JSON object") from None
    if not isinstance(raw, Mapping):
        raise ConfigError(key, raw, "a JSON object")
    return dict(raw)


def _zone(key: str, raw: object) -> object:
    """A Local Zone is a name, ``name:family+family`` on the command line, or a JSON object."""
    if isinstance(raw, str):
        name, _, families = raw.partition(":")
        zone: dict[str, object] = {ITEM_NAME: name.strip()}
        listed = [family.strip() for family in families.split("+") if family.strip()]
        return {**zone, "instanceFamilies": listed} if listed else zone
    if isinstance(raw, Mapping) and isinstance(raw.get(ITEM_NAME), str):
        return raw
    raise ConfigError(key, raw, ZONE_FORMS)
