"""The README's table of config keys is written from the models, and README.md holds the current one."""

from __future__ import annotations

import pytest

from plan.config import reference_table
from plan.config.models import AppConfig
from plan.config.reference import BEGIN, END, MAX_ROW, README, readme_table
from plan.config.schema import leaves

REGENERATE = ".venv/bin/python -m plan.config --reference --write"


def test_the_readme_holds_the_table_the_models_write() -> None:
    held = readme_table(README.read_text())
    assert held is not None, f"README.md has no {BEGIN} ... {END} block: add the markers, then run {REGENERATE}"
    if held != reference_table():
        pytest.fail(f"README.md's table of config keys is stale: run {REGENERATE}\n\n{reference_table()}")


def test_every_key_has_a_default_and_a_one_line_meaning() -> None:
    for key, info in leaves(AppConfig):
        assert info.description and "\n" not in info.description, key
        assert "|" not in info.description, key  # a table cell


def test_every_row_reads_at_once() -> None:
    long = [row for row in reference_table().splitlines() if len(row) > MAX_ROW]
    assert not long, f"rows over {MAX_ROW} characters (move the explanation to docs/configuration.md): {long}"


def test_the_table_names_every_key_once_in_the_models_order() -> None:
    keys = [row.split("`")[1] for row in reference_table().splitlines()[2:]]
    assert keys == [key for key, _ in leaves(AppConfig)]
    assert len(set(keys)) == len(keys)
    assert {"tls.certificateArn", "serving.scaleDownWindowSeconds", "auth.tokenTtlSeconds", "localZones"} <= set(keys)
