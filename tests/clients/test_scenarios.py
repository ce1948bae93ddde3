"""The Python device client (runtime.client, its public API only) against tests/clients/scenarios.json.

Every scenario's endpoints and inventory API are real loopback HTTP(S) servers (tests/clients/
scripted.py), so the client's own HTTP layer, TLS included, does the work. The TypeScript SDK runs
the same file (sdk/typescript/test/scenarios.test.ts): where the two disagree, one of them fails.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.credentials import Credentials

from runtime.client import (
    ClientError,
    EdgeDiffusionClient,
    GenerationResult,
    ImageRequest,
    NoEndpointError,
    RequestRejectedError,
)
from tests.clients.scripted import Tls, World, load

DOCUMENT = load()
SCENARIOS = {scenario["name"]: scenario for scenario in DOCUMENT["scenarios"]}
ERROR_TYPES: dict[str, type[ClientError]] = {
    "ClientError": ClientError,
    "NoEndpointError": NoEndpointError,
    "RequestRejectedError": RequestRejectedError,
}


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    return Tls.make(tmp_path_factory.mktemp("tls"))


class Warnings(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def warnings() -> Iterator[Warnings]:
    handler = Warnings()
    logger = logging.getLogger("edge_diffusion.client")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


def make_client(scenario: dict[str, Any], world: World, tls: Tls, tmp_path: Path) -> EdgeDiffusionClient:
    inventory = scenario["inventory"]
    options: dict[str, Any] = dict(world.sub(scenario.get("client", {})))
    kwargs: dict[str, Any] = {
        "fallback_urls": options.get("fallback_urls", ()),
        "token": options.get("token"),
        "filters": options.get("filters"),
        "wall_clock": lambda: time.time() + world.offset_s,
    }
    if "tie_ms" in options:
        kwargs["tie_ms"] = options["tie_ms"]
    if "probe_timeout_s" in options:
        kwargs["probe_timeout_s"] = options["probe_timeout_s"]
    if any(spec.get("scheme") == "https" for spec in scenario["servers"].values()):
        kwargs["ca_bundle"] = tls.ca
    if inventory["via"] == "api":
        kwargs |= {
            "inventory_url": world.urls["inventory"],
            "credentials": Credentials("AKIDEXAMPLE", "secret"),
            "region": "us-west-2",
        }
    elif inventory["via"] == "document":
        path = tmp_path / "endpoints.json"
        path.write_text(json.dumps(world.sub(inventory["document"])))
        kwargs["endpoints_file"] = path
    else:
        kwargs["endpoints"] = world.sub(inventory["document"]["endpoints"])
    return EdgeDiffusionClient(**kwargs)


def check(
    expect: dict[str, Any], world: World, outcome: GenerationResult | ClientError, elapsed_s: float, warned: list[str]
) -> None:
    """Every expectation of one call; each list must be complete."""
    if isinstance(outcome, ClientError):
        assert "error" in expect or "error_matches" in expect, f"unexpected error: {outcome}"
        assert isinstance(outcome, ERROR_TYPES[expect.get("error_type", "ClientError")]), repr(outcome)
        if "error" in expect:
            assert str(outcome) == expect["error"]
        if "error_matches" in expect:
            assert re.fullmatch(expect["error_matches"], str(outcome)), str(outcome)
        if "status" in expect:
            assert isinstance(outcome, RequestRejectedError) and outcome.status == expect["status"]
        if "attempts" in expect:
            assert isinstance(outcome, NoEndpointError)
            assert [[a.endpoint.endpoint_id, a.outcome] for a in outcome.attempts] == expect["attempts"]
    else:
        assert "error" not in expect and "error_matches" not in expect, f"served by {outcome.endpoint.endpoint_id}"
        if "served_by" in expect:
            assert outcome.endpoint.endpoint_id == expect["served_by"]
        if "attempts" in expect:
            assert [[a.endpoint.endpoint_id, a.outcome] for a in outcome.attempts] == expect["attempts"]
        if "seed" in expect:
            assert outcome.seed == expect["seed"]
        if "images" in expect:
            assert len(outcome.images) == expect["images"]
            png = base64.b64decode(DOCUMENT["png_base64"])
            assert all(image == png for image in outcome.images)
    posts = [r for r in world.records if r.method == "POST"]
    if "posts" in expect:
        assert [[r.server, r.authorization] for r in posts] == expect["posts"]
    if "body" in expect:
        assert posts and all(json.loads(r.body) == expect["body"] for r in posts)
    if "probed" in expect:
        probed = {r.server for r in world.records if r.method == "GET" and r.path == "/healthz"}
        assert sorted(probed) == sorted(expect["probed"])
    if "token_calls" in expect:
        assert world.token_calls == expect["token_calls"]
    if "inventory_query" in expect:
        assert world.inventory_queries == [expect["inventory_query"]]
    for part in expect.get("warnings", []):
        assert any(part in message for message in warned), f"no warning says {part!r}: {warned}"
    if "max_elapsed_s" in expect:
        assert elapsed_s <= expect["max_elapsed_s"], f"took {elapsed_s:.2f}s"


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_scenario(name: str, tls: Tls, tmp_path: Path, warnings: Warnings) -> None:
    scenario = SCENARIOS[name]
    world = World(png=base64.b64decode(DOCUMENT["png_base64"]))
    world.start(scenario, tls)
    try:
        with make_client(scenario, world, tls, tmp_path) as client:
            for number, call in enumerate(scenario["calls"], 1):
                world.reset()
                warnings.messages.clear()
                world.offset_s = float(call.get("clock_s", 0))
                request = ImageRequest(**call.get("request", {"prompt": "a cat"}))
                began = time.monotonic()
                outcome: GenerationResult | ClientError
                try:
                    outcome = client.generate(request, deadline_s=float(call.get("deadline_s", 10)))
                except ClientError as err:
                    outcome = err
                elapsed = time.monotonic() - began
                expect = world.sub(call["expect"])
                try:
                    check(expect, world, outcome, elapsed, warnings.messages)
                except AssertionError as err:
                    raise AssertionError(f"{name}, call {number}: {err}") from None
    finally:
        world.stop()


def test_the_scenarios_are_well_formed() -> None:
    """Names are unique and every call says what to expect: a scenario that checks nothing cannot fail."""
    names = [scenario["name"] for scenario in DOCUMENT["scenarios"]]
    assert len(names) == len(set(names))
    for scenario in DOCUMENT["scenarios"]:
        for call in scenario["calls"]:
            assert call["expect"], scenario["name"]
            assert {"served_by", "error", "error_matches"} & set(call["expect"]) or "posts" in call["expect"]
