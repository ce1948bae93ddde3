"""The device client without servers: inventory parsing, ranking, failover rules, signing, CLI errors."""

from __future__ import annotations

import base64
import json
import logging
from pathlib import Path
from typing import Any

import httpx
import pytest

from runtime.client import client as c
from runtime.client.__main__ import main
from runtime.client.auth import cognito_credentials
from runtime.inventory.endpoint import Endpoint
from spec import contract

PNG = b"\x89PNG\r\n\x1a\nfake"


def entry(name: str, port: int, **changes: Any) -> dict[str, Any]:
    base = {
        "endpoint_id": f"edge/serving/sd/{name}",
        "url": f"http://{name}.test:{port}",
        "location": "us-west-2-lax-1a",
        "accelerator": "nvidia",
        "model": "m",
        "cost_weight": 50,
    }
    return {**base, **changes}


MALFORMED = [
    "not an object",
    {"endpoint_id": "x", "location": "l", "accelerator": "a"},  # no url
    entry("bad-scheme", 1, url="ftp://h:1"),
    entry("bad-port", 1, url="http://h:99999"),
    entry("no-host", 1, url="http://:80"),
    entry("bad-cost", 1, cost_weight="cheap"),
    entry("empty-id", 1, endpoint_id=""),
    {**entry("null-location", 1), "location": None},
]


def test_malformed_entries_are_skipped_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    good = entry("good", 1)
    with caplog.at_level(logging.WARNING, logger="edge_diffusion.client"):
        endpoints, skipped = c.parse_inventory({"endpoints": [*MALFORMED, good, dict(good)]})
    assert [e.endpoint_id for e in endpoints] == ["edge/serving/sd/good"]  # the duplicate URL once
    assert len(skipped) == len(MALFORMED) == len(caplog.records)
    assert "entry 0 skipped: entry is str, not an object" in skipped[0]
    assert "url=None" in skipped[1] and "ftp://" in skipped[2] and "bad port" in skipped[3]
    assert all("\n" not in message for message in skipped)


@pytest.mark.parametrize("document", [None, 42, {"endpoints": "x"}, {"items": []}])
def test_a_document_without_a_list_gives_no_endpoints_and_one_warning(document: object) -> None:
    endpoints, skipped = c.parse_inventory(document)
    assert endpoints == [] and len(skipped) == 1


def ep(name: str, cost: int = 50) -> Endpoint:
    return Endpoint.from_entry(entry(name, 1, cost_weight=cost))


def test_rank_by_latency_then_cheaper_accelerator_within_the_tie_window() -> None:
    probes = [
        c.Probe(ep("far"), 80.0),
        c.Probe(ep("near-costly", cost=50), 11.0),
        c.Probe(ep("near-cheap", cost=60), 12.0),  # same 5 ms bucket: the cheaper one (higher weight) wins
        c.Probe(ep("down"), None, "ConnectError"),
        c.Probe(ep("mid"), 30.0),
    ]
    assert [e.endpoint_id.rsplit("/", 1)[1] for e in c.rank(probes)] == ["near-cheap", "near-costly", "mid", "far"]


class FakeNet:
    """httpx transport: per-host behaviour for /healthz and /v1/images."""

    def __init__(self, behaviour: dict[str, Any]) -> None:
        self.behaviour = behaviour
        self.posts: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host.split(".")[0]
        action = self.behaviour[host]
        if request.url.path == contract.HEALTH_PATH:
            if action == "down":
                raise httpx.ConnectError("refused", request=request)
            return httpx.Response(200, json={"status": "alive"})
        assert request.url.path == contract.IMAGES_PATH
        self.posts.append(host)
        body = json.loads(request.content)
        assert body["response_format"] == "json" and body["prompt"] == "a cat"
        if action == "ok":
            images = [base64.b64encode(PNG).decode()]
            return httpx.Response(
                200,
                json={"images": images, "seed": 7, "timings": {"inference_ms": 3.0}},
                headers={contract.REQUEST_ID_HEADER: "req-1"},
            )
        if action == "png":
            return httpx.Response(200, content=PNG, headers={"content-type": "image/png", "X-Seed": "9"})
        if action == "reset":
            raise httpx.RemoteProtocolError("server disconnected", request=request)
        if action == "timeout":
            raise httpx.ReadTimeout("slow", request=request)
        if action == "garbage":
            return httpx.Response(200, json={"images": ["***"]})
        return httpx.Response(int(action), json={"error": f"{action} says no", "field": "steps"})


def make_client(net: FakeNet, *names: str) -> c.EdgeDiffusionClient:
    # Probe order is fixed by giving each host a distinct fake latency through the clock.
    return c.EdgeDiffusionClient(
        endpoints=[entry(n, 1) for n in names], http=httpx.Client(transport=httpx.MockTransport(net)), tie_ms=0.0
    )


@pytest.mark.parametrize("failure", ["429", "500", "503", "reset", "timeout", "garbage"])
def test_fails_over_on_errors_timeouts_and_429(failure: str, monkeypatch: pytest.MonkeyPatch) -> None:
    net = FakeNet({"a": failure, "b": "ok"})
    client = make_client(net, "a", "b")
    monkeypatch.setattr(c, "rank", lambda probes, tie_ms: [p.endpoint for p in probes])  # a first
    result = client.generate(c.ImageRequest(prompt="a cat"), deadline_s=10)
    assert net.posts == ["a", "b"]
    assert result.images == [PNG] and result.endpoint.endpoint_id.endswith("/b")
    assert [a.outcome.split(":")[0] for a in result.attempts][1] == "ok"
    assert result.attempts[0].outcome.startswith(
        {"reset": "connection error", "garbage": "bad response"}.get(failure, failure)
    )
    assert (result.seed, result.request_id, result.server_timings) == (7, "req-1", {"inference_ms": 3.0})
    assert set(result.timings) == {"inventory_s", "probe_s", "generate_s", "total_s"}


def test_a_rejected_request_fails_at_once_without_failover() -> None:
    net = FakeNet({"a": "422", "b": "ok"})
    with pytest.raises(c.RequestRejectedError, match=r"^request rejected \(422\): 422 says no$"):
        make_client(net, "a").generate(c.ImageRequest(prompt="a cat"))
    assert net.posts == ["a"]


def test_unreachable_endpoints_are_not_tried_and_png_responses_work() -> None:
    net = FakeNet({"a": "down", "b": "png"})
    result = make_client(net, "a", "b").generate(c.ImageRequest(prompt="a cat"))
    assert net.posts == ["b"] and result.images == [PNG] and result.seed == 9
    assert [p.rtt_ms is None for p in result.probes] == [True, False]


def test_all_failing_gives_one_error_naming_each_attempt() -> None:
    net = FakeNet({"a": "503", "b": "429"})
    with pytest.raises(c.NoEndpointError) as err:
        make_client(net, "a", "b").generate(c.ImageRequest(prompt="a cat"))
    assert "a: 503" in str(err.value) and "b: 429" in str(err.value) and len(err.value.attempts) == 2


def test_nothing_is_tried_after_the_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    net = FakeNet({"a": "503", "b": "ok"})
    now = [0.0]

    def clock() -> float:
        now[0] += 1.0  # every reading of the clock costs one second
        return now[0]

    client = c.EdgeDiffusionClient(
        endpoints=[entry("a", 1), entry("b", 1)], http=httpx.Client(transport=httpx.MockTransport(net)), clock=clock
    )
    with pytest.raises(c.NoEndpointError, match="within 12s"):
        client.generate(c.ImageRequest(prompt="a cat"), deadline_s=12)
    assert net.posts == ["a"]


def test_no_usable_endpoint_is_an_error_not_a_crash() -> None:
    client = c.EdgeDiffusionClient(endpoints=MALFORMED)  # type: ignore[arg-type]
    with pytest.raises(c.NoEndpointError, match="lists no usable endpoint"):
        client.generate(c.ImageRequest(prompt="a cat"))


def test_inventory_requests_are_sigv4_signed_with_filters() -> None:
    from botocore.credentials import Credentials

    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"endpoints": [entry("a", 1)]})

    client = c.EdgeDiffusionClient(
        inventory_url="https://abc123.execute-api.us-west-2.amazonaws.com/v1/endpoints",
        filters={"location": "us-west-2-lax-1a"},
        credentials=Credentials("AKIDEXAMPLE", "secret", "token"),
        http=httpx.Client(transport=httpx.MockTransport(handle)),
    )
    endpoints, _ = client.load_inventory()
    assert [e.endpoint_id for e in endpoints] == ["edge/serving/sd/a"]
    auth = seen[0].headers["Authorization"]
    assert auth.startswith("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/") and "/us-west-2/execute-api/aws4_request" in auth
    assert seen[0].headers["X-Amz-Security-Token"] == "token"
    assert seen[0].url.params["location"] == "us-west-2-lax-1a"


def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "none.json"
    prog = "python -m runtime.client"
    assert main(["a cat", "--endpoints-file", str(missing)]) == 1
    assert capsys.readouterr().err.strip() == (
        f"{prog}: error: cannot read endpoints file {missing}: No such file or directory"
    )
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    assert main(["a cat", "--endpoints-file", str(broken)]) == 1
    assert capsys.readouterr().err.strip().startswith(f"{prog}: error: endpoints file {broken} is not JSON")
    assert main(["a cat", "--endpoints-file", str(broken), "--deadline", "0"]) == 2  # a bad flag: refused up front
    assert capsys.readouterr().err.strip() == (
        f"{prog}: error: argument --deadline: '0' is not allowed; allowed: a number of seconds > 0"
    )
    assert main(["a cat"]) == 2
    assert "exactly one of --inventory-url or --endpoints-file" in capsys.readouterr().err
    with c.EdgeDiffusionClient(endpoints_file=broken) as client, pytest.raises(c.ClientError) as err:
        client.generate(c.ImageRequest(prompt="a cat"), deadline_s=0.0)
    assert "deadline 0.0: allowed a positive number" in str(err.value)


def test_cognito_credentials_sign_inventory_requests(monkeypatch: pytest.MonkeyPatch) -> None:
    import boto3
    from moto import mock_aws

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "testing")
    provider = "cognito-idp.us-west-2.amazonaws.com/us-west-2_example"
    with mock_aws():
        pool = boto3.client("cognito-identity", region_name="us-west-2").create_identity_pool(
            IdentityPoolName="devices", AllowUnauthenticatedIdentities=False
        )
        credentials = cognito_credentials(pool["IdentityPoolId"], provider, "id-token", "us-west-2")
    frozen = credentials.get_frozen_credentials()
    assert frozen.access_key and frozen.secret_key and frozen.token
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"endpoints": []})

    client = c.EdgeDiffusionClient(
        inventory_url="https://abc123.execute-api.us-west-2.amazonaws.com/v1/endpoints",
        credentials=credentials,
        http=httpx.Client(transport=httpx.MockTransport(handle)),
    )
    assert client.load_inventory() == ([], [])
    assert f"Credential={frozen.access_key}/" in seen[0].headers["Authorization"]
