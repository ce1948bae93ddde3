"""The README's configuration table, written from the models: key, default, meaning.

Each row is a field's key, default and description, so the table cannot drift from what the
config accepts; tests/plan/test_reference.py fails when README.md holds another version
(``python -m plan.config --reference --write`` rewrites it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from pydantic.fields import FieldInfo

from plan.config.models import AppConfig
from plan.config.schema import leaves
from plan.config.sections import LocalZoneConfig
from plan.readme_blocks import README as README
from plan.readme_blocks import Block

BLOCK: Final = Block("config-keys")
BEGIN: Final = BLOCK.begin
END: Final = BLOCK.end
HEADER: Final = ("| key | default | meaning |", "|---|---|---|")
MAX_ROW: Final = 200  # characters: a row a reader takes in at once (longer explanations go to docs/)


def reference_table() -> str:
    """The markdown table of every key a user sets, in the models' order."""
    rows = [f"| `{key}` | {default_text(info)} | {info.description or ''} |" for key, info in leaves(AppConfig)]
    return "\n".join((*HEADER, *rows))


def default_text(info: FieldInfo) -> str:
    """A field's default as a user would type it with ``-c``; none for an empty one."""
    value = info.get_default(call_default_factory=True)
    if isinstance(value, LocalZoneConfig):
        value = (value,)
    if isinstance(value, tuple):
        value = ",".join(_zone_text(item) if isinstance(item, LocalZoneConfig) else str(item) for item in value)
    if value is None or value == "" or (isinstance(value, Mapping) and not value):
        return "none"
    if isinstance(value, bool):
        value = str(value).lower()
    return f"`{value}`"


def _zone_text(zone: LocalZoneConfig) -> str:
    return f"{zone.name}:{'+'.join(zone.instance_families)}"


def readme_table(text: str) -> str | None:
    """What README.md holds between the markers, or None without them."""
    return BLOCK.held(text)


def with_table(text: str, table: str) -> str:
    """README.md's text with ``table`` between the markers."""
    return BLOCK.written(text, table)
