"""Walking the config models by key: the type and the bounds behind ``alarms.latencyP99SloMs``.

Reading ``-c`` text, wording an error and writing the README's table all ask the models the
same questions (is this key a list, an object, what are its bounds), so the answers come from
the fields themselves and no second table of keys exists.
"""

from __future__ import annotations

import types
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Union, get_args, get_origin

import annotated_types
from pydantic.fields import FieldInfo

DICT_KEY = "[key]"  # pydantic's location part for a dictionary key


@dataclass(frozen=True)
class Slot:
    """What one key holds: its type without Annotated and Optional, and the constraints on it."""

    kind: Any  # int, str, a model class, tuple[...] or Mapping[...]
    constraints: tuple[Any, ...] = ()

    @property
    def is_model(self) -> bool:
        return isinstance(self.kind, type) and hasattr(self.kind, "__pydantic_fields__")

    @property
    def is_list(self) -> bool:
        return get_origin(self.kind) is tuple

    @property
    def is_mapping(self) -> bool:
        return get_origin(self.kind) in (Mapping, dict)

    @property
    def is_object(self) -> bool:
        """Takes ``key.sub=value`` on the command line: a model or a mapping."""
        return self.is_model or self.is_mapping

    def bound(self, kind: type, attr: str) -> Any:
        """The value of one annotated_types constraint (``Ge``, ``ge``), or None."""
        found = [c for c in self.constraints if isinstance(c, kind)]
        return getattr(found[-1], attr) if found else None


def slot(annotation: Any, constraints: tuple[Any, ...] = ()) -> Slot:
    """The :class:`Slot` of a type: Annotated metadata and an ``X | None`` unwrapped."""
    found = list(constraints)
    while True:
        if get_origin(annotation) is Annotated:
            annotation, *meta = get_args(annotation)
            found += [m for item in meta for m in (item.metadata if isinstance(item, FieldInfo) else [item])]
        elif get_origin(annotation) in (Union, types.UnionType):
            annotation = next(arg for arg in get_args(annotation) if arg is not type(None))
        else:
            return Slot(annotation, tuple(found))


def fields(model: Any) -> dict[str, FieldInfo]:
    """A model's fields by the key users type."""
    return {info.alias or name: info for name, info in model.__pydantic_fields__.items()}


def field_slot(info: FieldInfo) -> Slot:
    return slot(info.annotation, tuple(info.metadata))


def child(parent: Slot, part: str | int) -> Slot | None:
    """The slot one step below ``parent``: a model's key, a list's item, a mapping's value or key."""
    if parent.is_model and isinstance(part, str):
        info = fields(parent.kind).get(part)
        return field_slot(info) if info else None
    if parent.is_list and isinstance(part, int):
        return slot(get_args(parent.kind)[0])
    if parent.is_mapping:
        key_type, value_type = get_args(parent.kind)
        return slot(key_type if part == DICT_KEY else value_type)
    return None


def walk(root: Any, path: tuple[str | int, ...]) -> Slot | None:
    """The slot at ``path`` (keys and indexes, pydantic's ``loc``) from the model ``root``."""
    here: Slot | None = slot(root)
    for part in path:
        if here is None:
            return None
        here = child(here, part)
    return here


def leaves(model: Any, prefix: str = "") -> Iterator[tuple[str, FieldInfo]]:
    """Every key a user sets, dotted below objects that are models: ``tls.certificateArn``."""
    for key, info in fields(model).items():
        inner = field_slot(info)
        if inner.is_model:
            yield from leaves(inner.kind, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", info


def allowed_text(where: Slot | None) -> str:
    """What a key allows, said from its type and bounds (when no check of its own said it)."""
    if where is None:
        return "a known key"
    kind = where.kind
    if kind is bool:
        return "true or false"
    if kind in (int, float):
        return _number_text(where)
    if kind is str:
        return "a non-empty string" if (where.bound(annotated_types.MinLen, "min_length") or 0) > 0 else "a string"
    if where.is_list:
        return "a list or comma-separated values"
    if where.is_object:
        return "a JSON object"
    return f"a value of type {getattr(kind, '__name__', kind)}"


def _number_text(where: Slot) -> str:
    noun = "an integer" if where.kind is int else "a number"
    low, high = where.bound(annotated_types.Ge, "ge"), where.bound(annotated_types.Le, "le")
    above = where.bound(annotated_types.Gt, "gt")
    step = where.bound(annotated_types.MultipleOf, "multiple_of")
    if step is not None:
        noun = f"a multiple of {step}"
    if low is not None and high is not None:
        return f"{noun} from {_num(low)} to {_num(high)}"
    if above is not None:
        return f"{noun} above {_num(above)}" + (f" up to {_num(high)}" if high is not None else "")
    if low is not None:
        return f"{noun} of at least {_num(low)}"
    return noun


def _num(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"
