"""The device client without servers: inventory parsing, ranking, failover rules, signing, CLI errors."""

from __future__ import annotations

import base64
import json
import logging
from pathlib import Path
from typing import Any

import httpx
import pytest

from plan import contract
from runtime.client import client as c
from runtime.client.auth import cognito_credentials
from runtime.client.cli import main
from runtime.inventory.endpoint import Endpoint

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


def tls_entry(name: str) -> dict[str, Any]:
    """An https entry: a token may go to it (the fake transport does no TLS)."""
    return entry(name, 1, url=f"https://{name}.test:1")


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


@pytest.mark.parametrize("failure", ["429", "500", "501", "503", "507", "599", "reset", "timeout", "garbage"])
def test_fails_over_on_errors_timeouts_429_and_any_5xx(failure: str, monkeypatch: pytest.MonkeyPatch) -> None:
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


@pytest.mark.parametrize("status", ["400", "404", "422", "499"])
def test_a_rejected_request_fails_at_once_without_failover(status: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(c, "rank", lambda probes, tie_ms: [p.endpoint for p in probes])  # a first
    net = FakeNet({"a": status, "b": "ok"})
    with pytest.raises(c.RequestRejectedError, match=rf"^request rejected \({status}\): {status} says no$"):
        make_client(net, "a", "b").generate(c.ImageRequest(prompt="a cat"))
    assert net.posts == ["a"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'["steps", "too many"]', "['steps', 'too many']"),
        (b'"steps:  too\\n many"', "steps: too many"),
        (b"42", "42"),
        (b"null", "None"),
        (b'{"error": "", "detail": [1, 2]}', "[1, 2]"),
        (b'{"field": "steps"}', "{'field': 'steps'}"),
    ],
)
def test_an_error_body_that_is_json_but_no_object_is_still_one_line(body: bytes, message: str) -> None:
    """The server's reason however its JSON is shaped: never an AttributeError from the parser."""
    answer = httpx.Response(422, content=body, headers={"content-type": "application/json"})

    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"status": "alive"}) if request.url.path == contract.HEALTH_PATH else answer

    client = c.EdgeDiffusionClient(endpoints=[entry("a", 1)], http=httpx.Client(transport=httpx.MockTransport(handle)))
    with pytest.raises(c.RequestRejectedError) as err:
        client.generate(c.ImageRequest(prompt="a cat"))
    assert (err.value.status, str(err.value)) == (422, f"request rejected (422): {message}")


def test_unreachable_endpoints_are_not_tried_and_png_responses_work() -> None:
    net = FakeNet({"a": "down", "b": "png"})
    result = make_client(net, "a", "b").generate(c.ImageRequest(prompt="a cat"))
    assert net.posts == ["b"] and result.images == [PNG] and result.seed == 9
    assert [p.rtt_ms is None for p in result.probes] == [True, False]


def test_all_failing_gives_one_error_naming_each_attempt() -> None:
    net = FakeNet({"a": "503", "b": "429"})
    with pytest.raises(c.NoEndpointError) as err:
        make_client(net, "a", "b").generate(c.ImageRequest(prompt="a cat"))
    message = str(err.value)
    assert "sd/a (http://a.test:1): 503" in message and "sd/b (http://b.test:1): 429" in message
    assert len(err.value.attempts) == 2 and "\n" not in message


def test_nothing_is_tried_after_the_deadline() -> None:
    net = FakeNet({"a": "503", "b": "ok"})
    now = [0.0]

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == contract.IMAGES_PATH:
            now[0] += 13.0  # a's 503 came after the whole deadline
        return net(request)

    client = c.EdgeDiffusionClient(
        endpoints=[entry("a", 1, cost_weight=60), entry("b", 1)],  # a first: the same latency, cheaper
        http=httpx.Client(transport=httpx.MockTransport(handle)),
        clock=lambda: now[0],
    )
    with pytest.raises(c.NoEndpointError) as err:
        client.generate(c.ImageRequest(prompt="a cat"), deadline_s=12)
    assert net.posts == ["a"]
    assert str(err.value) == "no endpoint produced an image within 12s (edge/serving/sd/a (http://a.test:1): 503)"


class Timed:
    """httpx transport on a fake clock: an answer to ``path`` costs ``cost_s[path]`` seconds (a
    ReadTimeout past the request's read limit), and every request's (path, connect, read) limits are
    noted: what the client allowed it."""

    def __init__(self, net: Any, cost_s: dict[str, float]) -> None:
        self.net, self.cost_s = net, cost_s
        self.now = 0.0
        self.limits: list[tuple[str, float, float]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        limit = request.extensions["timeout"]
        self.limits.append((request.url.path, limit["connect"], limit["read"]))
        cost = self.cost_s.get(request.url.path, 0.0)
        if cost > limit["read"]:
            self.now += limit["read"]
            raise httpx.ReadTimeout("timed out", request=request)
        self.now += cost
        return self.net(request)

    def client(self, **kwargs: Any) -> c.EdgeDiffusionClient:
        from botocore.credentials import Credentials

        return c.EdgeDiffusionClient(
            http=httpx.Client(transport=httpx.MockTransport(self)),
            clock=lambda: self.now,
            wall_clock=lambda: T_NOW,
            credentials=Credentials("AKIDEXAMPLE", "secret"),
            **kwargs,
        )


TOKEN_ROUTE = "/v1" + contract.TOKEN_PATH


def test_one_deadline_bounds_the_inventory_the_token_the_probes_and_the_attempt() -> None:
    """Each request waits at most what is left of the 10 s: the inventory 10 s (its own cap is 15),
    the token 8 s (its own is 10), each probe its 3 s timeout, and the attempt the 4.5 s left."""
    net = Net({"a": "ok"}, inventory={"auth": "token", "endpoints": [tls_entry("a")]}, tokens=["t1"])
    timed = Timed(net, {"/v1/endpoints": 2.0, TOKEN_ROUTE: 3.0, contract.HEALTH_PATH: 0.25})
    result = timed.client(inventory_url=INVENTORY_URL, probe_timeout_s=3.0).generate(
        c.ImageRequest(prompt="a cat"), deadline_s=10
    )
    assert result.endpoint.endpoint_id.endswith("/a") and net.posts == [("a", "Bearer t1")]
    assert [(path, read) for path, _, read in timed.limits] == [
        ("/v1/endpoints", 10.0),
        (TOKEN_ROUTE, 8.0),
        (contract.HEALTH_PATH, 3.0),
        (contract.HEALTH_PATH, 3.0),
        (contract.IMAGES_PATH, 4.5),
    ]
    assert all(connect == read for _, connect, read in timed.limits)


@pytest.mark.parametrize(
    ("deadline_s", "why"),
    [
        (1.0, "the deadline passed before any attempt"),  # the deadline cut the probe: it says nothing of a
        (10.0, "edge/serving/sd/a (http://a.test:1): not tried, /healthz ReadTimeout; no endpoint was reachable"),
    ],
)
def test_a_probe_slower_than_what_is_left_ends_at_the_deadline(deadline_s: float, why: str) -> None:
    timed = Timed(FakeNet({"a": "ok"}), {contract.HEALTH_PATH: 5.0})
    with pytest.raises(c.NoEndpointError) as err:
        timed.client(endpoints=[entry("a", 1)], probe_timeout_s=2.0).generate(
            c.ImageRequest(prompt="a cat"), deadline_s=deadline_s
        )
    assert str(err.value) == f"no endpoint produced an image within {deadline_s:g}s ({why})"
    assert timed.now == min(deadline_s, 2.0) and timed.limits == [(contract.HEALTH_PATH,) + (timed.now,) * 2]


def test_an_inventory_that_took_the_whole_deadline_leaves_no_time_for_a_token() -> None:
    net = Net({"a": "ok"}, inventory={"auth": "token", "endpoints": [tls_entry("a")]}, tokens=["t1"])
    timed = Timed(net, {"/v1/endpoints": 10.0})
    with pytest.raises(c.ClientError) as err:
        timed.client(inventory_url=INVENTORY_URL).generate(c.ImageRequest(prompt="a cat"), deadline_s=10)
    assert str(err.value) == (
        "token route https://api.execute-api.us-west-2.amazonaws.com/v1/token not asked: the deadline passed"
    )
    assert net.token_calls == [] and net.posts == []


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
    assert "one of --inventory-url, --endpoints-file or --fallback-url is required" in capsys.readouterr().err
    assert main(["a cat", "--endpoints-file", str(broken), "--inventory-url", "https://x"]) == 2
    assert "not both" in capsys.readouterr().err
    out = tmp_path / "missing" / "dir" / "x.png"
    assert main(["a cat", "--endpoints-file", str(broken), "-o", str(out)]) == 2  # before any generation
    assert capsys.readouterr().err.strip() == (
        f"{prog}: error: --output '{out}': directory '{out.parent}' does not exist"
    )
    assert main(["a cat", "--fallback-url", "ftp://x"]) == 2
    assert (
        capsys.readouterr()
        .err.strip()
        .startswith(f"{prog}: error: argument --fallback-url: 'ftp://x' is not allowed: 'ftp://x' is not an http(s)")
    )
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


# --- Region last, fallback URLs, filters ------------------------------------------------------


class Net:
    """httpx transport of a small world: the inventory and token routes, and endpoints by host."""

    def __init__(self, behaviour: dict[str, str], inventory: object = None, tokens: list[str] | None = None) -> None:
        self.behaviour, self.inventory = behaviour, inventory
        self.tokens = list(tokens or [])
        self.posts: list[tuple[str, str | None]] = []  # (host, Authorization)
        self.token_calls: list[httpx.Request] = []
        self.contacted: set[str] = set()  # every endpoint host that got a request, probes included

    def __call__(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host.split(".")[0]
        if host == "api":
            if request.url.path.endswith(contract.TOKEN_PATH):
                self.token_calls.append(request)
                if not self.tokens:
                    return httpx.Response(403, json={"message": "User is not authorized"})
                token = self.tokens.pop(0)
                return httpx.Response(200, json={"token": token, "expiresAt": T_NOW + 900})
            if self.inventory is None:
                return httpx.Response(502, json={"message": "Internal server error"})
            return httpx.Response(200, json=self.inventory)
        self.contacted.add(host)
        action = self.behaviour[host]
        if request.url.path == contract.HEALTH_PATH:
            if action == "down":
                raise httpx.ConnectError("refused", request=request)
            return httpx.Response(200, json={"status": "alive"})
        authorization = request.headers.get("Authorization")
        self.posts.append((host, authorization))
        if action.startswith("token:"):
            if authorization != f"Bearer {action.removeprefix('token:')}":
                return httpx.Response(401, json={"error": "token: expired (exp is in the past); get a new token"})
            action = "ok"
        if action == "ok":
            return httpx.Response(200, json={"images": [base64.b64encode(PNG).decode()], "seed": 7})
        if action == "reset":
            raise httpx.RemoteProtocolError("server disconnected", request=request)
        return httpx.Response(int(action), json={"error": f"{action} says no"})


T_NOW = 1_800_000_000.0
INVENTORY_URL = "https://api.execute-api.us-west-2.amazonaws.com/v1/endpoints"


def region_entry(accelerator: str) -> dict[str, Any]:
    return entry(
        f"region-{accelerator}",
        443,
        url="https://alb.test",
        location="us-west-2",
        accelerator=accelerator,
        kind=contract.ENDPOINT_KIND_REGION,
    )


def world_client(net: Net, **kwargs: Any) -> c.EdgeDiffusionClient:
    from botocore.credentials import Credentials

    kwargs.setdefault("credentials", Credentials("AKIDEXAMPLE", "secret"))
    return c.EdgeDiffusionClient(
        http=httpx.Client(transport=httpx.MockTransport(net)), wall_clock=lambda: T_NOW, tie_ms=0.0, **kwargs
    )


def test_region_entries_come_after_every_local_zone_endpoint_and_fallbacks_last() -> None:
    probes = [
        c.Probe(Endpoint.from_entry(region_entry("nvidia")), 1.0),  # the nearest, yet last of the inventory
        c.Probe(ep("far"), 80.0),
        c.Probe(ep("near"), 10.0),
    ]
    client = c.EdgeDiffusionClient(endpoints=[], fallback_urls=["https://backup.test"])
    assert [e.endpoint_id.removeprefix("edge/serving/sd/") for e in client.order(probes)] == [
        "near",
        "far",
        "region-nvidia",
        "fallback https://backup.test",
    ]


def test_a_dead_local_zone_fails_over_to_the_region_then_the_fallback() -> None:
    net = Net({"lz": "reset", "alb": "503", "backup": "ok"})
    inventory = {"auth": "none", "endpoints": [entry("lz", 1), region_entry("nvidia"), region_entry("neuron")]}
    result = world_client(net, endpoints=inventory["endpoints"], fallback_urls=["http://backup.test"]).generate(
        c.ImageRequest(prompt="a cat")
    )
    assert [host for host, _ in net.posts] == ["lz", "alb", "backup"]  # the ALB once, not once per accelerator
    assert result.endpoint.endpoint_id == "fallback http://backup.test"
    assert [a.outcome for a in result.attempts] == ["connection error: RemoteProtocolError", "503", "ok"]


def test_an_accelerator_filter_keeps_that_accelerators_region_entry() -> None:
    client = c.EdgeDiffusionClient(
        endpoints=[region_entry("neuron"), region_entry("nvidia")], filters={"accelerator": "nvidia"}
    )
    endpoints, _ = client.load_inventory()
    assert [e.endpoint_id for e in endpoints] == ["edge/serving/sd/region-nvidia"]


def test_a_filter_matching_nothing_says_which_and_what_there_is() -> None:
    client = c.EdgeDiffusionClient(
        endpoints=[entry("a", 1, accelerator="neuron"), entry("b", 1, accelerator="cpu")],
        filters={"accelerator": "nvidia"},
    )
    with pytest.raises(c.NoEndpointError) as err:
        client.generate(c.ImageRequest(prompt="a cat"))
    assert (
        str(err.value) == "no endpoint matches --accelerator nvidia (the inventory lists 2: accelerators: cpu, neuron)"
    )


def test_fallback_urls_serve_when_the_inventory_is_down(caplog: pytest.LogCaptureFixture) -> None:
    net = Net({"backup": "token:t1"}, inventory=None, tokens=["t1"])
    with caplog.at_level(logging.WARNING, logger="edge_diffusion.client"):
        result = world_client(net, inventory_url=INVENTORY_URL, fallback_urls=["https://backup.test"]).generate(
            c.ImageRequest(prompt="a cat")
        )
    assert result.endpoint.url == "https://backup.test"
    assert "answered 502" in caplog.text and "trying the fallback URLs" in caplog.text
    assert net.posts == [("backup", "Bearer t1")]  # the token route still answered: the token goes along


def test_no_inventory_at_all_only_fallback_urls() -> None:
    net = Net({"backup": "ok"})
    result = world_client(net, fallback_urls=["https://backup.test"]).generate(c.ImageRequest(prompt="a cat"))
    assert result.endpoint.url == "https://backup.test" and result.probes == ()
    assert net.posts == [("backup", None)]


def test_all_down_is_one_line_naming_every_endpoint_and_why() -> None:
    net = Net({"lz": "503", "gone": "down", "alb": "reset", "backup": "500"})
    endpoints = [entry("lz", 1), entry("gone", 1), region_entry("nvidia")]
    with pytest.raises(c.NoEndpointError) as err:
        world_client(net, endpoints=endpoints, fallback_urls=["https://backup.test"]).generate(
            c.ImageRequest(prompt="a cat")
        )
    assert str(err.value) == (
        "no endpoint produced an image within 120s ("
        "edge/serving/sd/lz (http://lz.test:1): 503; "
        "edge/serving/sd/region-nvidia (https://alb.test): connection error: RemoteProtocolError; "
        "fallback https://backup.test: 500; "
        "edge/serving/sd/gone (http://gone.test:1): not tried, /healthz ConnectError)"
    )


# --- tokens ----------------------------------------------------------------------------------


def test_a_token_is_fetched_signed_when_the_inventory_requires_one_and_sent_to_every_endpoint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(c, "rank", lambda probes, tie_ms: [p.endpoint for p in probes])  # a first
    endpoints = [tls_entry("a"), tls_entry("b")]
    net = Net({"a": "503", "b": "token:t1"}, inventory={"auth": "token", "endpoints": endpoints}, tokens=["t1"])
    client = world_client(net, inventory_url=INVENTORY_URL)
    result = client.generate(c.ImageRequest(prompt="a cat"))
    assert result.endpoint.endpoint_id.endswith("/b")
    assert net.posts == [("a", "Bearer t1"), ("b", "Bearer t1")]
    (call,) = net.token_calls
    assert str(call.url) == "https://api.execute-api.us-west-2.amazonaws.com/v1/token"
    assert call.headers["Authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/")
    client.generate(c.ImageRequest(prompt="a cat"))
    assert len(net.token_calls) == 1  # cached until shortly before it expires


def test_no_token_is_fetched_when_the_inventory_says_none() -> None:
    net = Net({"a": "ok"}, inventory={"auth": "none", "endpoints": [entry("a", 1)]})
    world_client(net, inventory_url=INVENTORY_URL).generate(c.ImageRequest(prompt="a cat"))
    assert net.token_calls == [] and net.posts == [("a", None)]


def test_a_refused_fetched_token_is_renewed_and_retried_once_on_the_same_endpoint() -> None:
    net = Net({"a": "token:t2"}, inventory={"auth": "token", "endpoints": [tls_entry("a")]}, tokens=["t1", "t2"])
    result = world_client(net, inventory_url=INVENTORY_URL).generate(c.ImageRequest(prompt="a cat"))
    assert net.posts == [("a", "Bearer t1"), ("a", "Bearer t2")]
    assert [a.outcome for a in result.attempts] == ["401: token renewed", "ok"]


def test_a_refused_explicit_token_fails_at_once_with_the_servers_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(c, "rank", lambda probes, tie_ms: [p.endpoint for p in probes])  # a first
    net = Net({"a": "token:other", "b": "ok"})
    with pytest.raises(c.RequestRejectedError, match=r"^request rejected \(401\): token: expired"):
        world_client(net, endpoints=[tls_entry("a"), tls_entry("b")], token="mine").generate(
            c.ImageRequest(prompt="a cat")
        )
    assert net.posts == [("a", "Bearer mine")]  # every endpoint checks the same key: no failover


def test_the_cached_token_is_renewed_shortly_before_it_expires() -> None:
    from runtime.client.auth import TokenSource

    now = [T_NOW]
    answers = iter([("t1", T_NOW + 900), ("t2", T_NOW + 1800)])

    def handle(request: httpx.Request) -> httpx.Response:
        token, expires = next(answers)
        return httpx.Response(200, json={"token": token, "expiresAt": expires})

    source = TokenSource(
        token_url="https://api.test/v1/token",
        http=httpx.Client(transport=httpx.MockTransport(handle)),
        clock=lambda: now[0],
    )
    assert source.get() == "t1"
    now[0] = T_NOW + 839
    assert source.get() == "t1"
    now[0] = T_NOW + 841  # within a minute of exp
    assert source.get() == "t2"


def jwt_with(claims: dict[str, Any]) -> str:
    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'RS256'})}.{part(claims)}.c2ln"


def test_an_expired_explicit_token_is_refused_before_any_request() -> None:
    net = Net({"a": "ok"})
    client = world_client(net, endpoints=[entry("a", 1)], token=jwt_with({"exp": T_NOW - 5}))
    with pytest.raises(c.ClientError, match=r"^the token given expired at 2027-01-15 07:59:55Z: get a new one$"):
        client.generate(c.ImageRequest(prompt="a cat"))
    assert net.posts == []


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (httpx.Response(403, json={"message": "Forbidden"}), "token route https://api.test/v1/token answered 403"),
        (httpx.Response(200, json={"token": "t"}), "did not answer {token, expiresAt}"),
        (httpx.Response(200, json={"token": "t", "expiresAt": 5}), "an unusable token (expiresAt=5)"),
    ],
)
def test_token_route_failures_are_one_line(answer: httpx.Response, message: str) -> None:
    from runtime.client.auth import TokenError, TokenSource

    http = httpx.Client(transport=httpx.MockTransport(lambda request: answer))
    source = TokenSource(token_url="https://api.test/v1/token", http=http, clock=lambda: T_NOW)
    with pytest.raises(TokenError) as err:
        source.get()
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_token_route_failure_stops_the_client_before_any_request() -> None:
    net = Net({"a": "ok"}, inventory={"auth": "token", "endpoints": [entry("a", 1)]}, tokens=[])
    client = world_client(net, inventory_url=INVENTORY_URL, region="us-west-2", token_url="https://api.test/v1/gone")
    with pytest.raises(c.ClientError, match=r"^token route https://api\.test/v1/gone did not answer"):
        client.generate(c.ImageRequest(prompt="a cat"))
    assert net.posts == []


# --- TLS and plain http ------------------------------------------------------------------------


def test_plain_http_endpoints_are_used_with_one_warning_each(caplog: pytest.LogCaptureFixture) -> None:
    net = Net({"a": "ok"})
    client = world_client(net, endpoints=[entry("a", 1)])
    with caplog.at_level(logging.WARNING, logger="edge_diffusion.client"):
        client.generate(c.ImageRequest(prompt="a cat"))
        client.generate(c.ImageRequest(prompt="a cat"))
    assert caplog.text.count("http://a.test:1 is plain http (no TLS)") == 1


ALLOWED = "allowed: https, or http to a loopback address (127.0.0.0/8, ::1, localhost) for development"


@pytest.mark.parametrize(
    ("loopback", "host"), [("127.0.0.1", "127"), ("127.8.9.10", "127"), ("[::1]", "::1"), ("LocalHost", "localhost")]
)
def test_a_token_skips_plain_http_off_loopback_and_fails_over_to_https_then_loopback(
    loopback: str, host: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(c, "rank", lambda probes, tie_ms: [p.endpoint for p in probes])  # inventory order
    endpoints = [entry("plain", 1), tls_entry("tls")]  # the plain one first: it would be tried first
    inventory = {"auth": "token", "endpoints": endpoints}
    net = Net({"plain": "ok", "tls": "503", host: "ok"}, inventory=inventory, tokens=["t1"])
    client = world_client(net, inventory_url=INVENTORY_URL, fallback_urls=[f"http://{loopback}:7860"])
    with caplog.at_level(logging.WARNING, logger="edge_diffusion.client"):
        result = client.generate(c.ImageRequest(prompt="a cat"))
        client.generate(c.ImageRequest(prompt="a cat"))
    assert net.posts[:2] == [("tls", "Bearer t1"), (host, "Bearer t1")]
    assert "plain" not in net.contacted  # not even probed
    assert result.endpoint.url == f"http://{loopback}:7860"
    assert [p.endpoint.endpoint_id for p in result.probes] == ["edge/serving/sd/tls"]
    skipped = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert skipped == [  # one line, once per client
        "edge/serving/sd/plain (http://plain.test:1) skipped: plain http to a non-loopback host would expose "
        f"the bearer token ({ALLOWED})"
    ]


@pytest.mark.parametrize(("token", "hint"), [(None, ""), ("mine", " (or give no token, if these endpoints need none)")])
def test_every_candidate_refused_is_one_line_and_nothing_is_sent(token: str | None, hint: str) -> None:
    endpoints = [entry("lz", 1), {**region_entry("nvidia"), "url": "http://alb.test"}]
    net = Net({}, inventory={"auth": "token", "endpoints": endpoints}, tokens=["t1"])
    client = world_client(net, inventory_url=INVENTORY_URL, fallback_urls=["http://backup.test:80"], token=token)
    with pytest.raises(c.NoEndpointError) as err:
        client.generate(c.ImageRequest(prompt="a cat"))
    assert str(err.value) == (
        "refused to send the bearer token over plain http to http://lz.test:1, http://alb.test, "
        f"http://backup.test:80; {ALLOWED}{hint}"
    )
    assert net.contacted == set() and net.posts == []


def test_auth_none_lets_plain_http_serve_without_a_token(caplog: pytest.LogCaptureFixture) -> None:
    net = Net({"a": "503", "backup": "ok"}, inventory={"auth": "none", "endpoints": [entry("a", 1)]}, tokens=["t1"])
    client = world_client(net, inventory_url=INVENTORY_URL, fallback_urls=["http://backup.test:80"])
    with caplog.at_level(logging.WARNING, logger="edge_diffusion.client"):
        result = client.generate(c.ImageRequest(prompt="a cat"))
    assert net.posts == [("a", None), ("backup", None)] and net.token_calls == []
    assert result.endpoint.url == "http://backup.test:80"
    assert "skipped" not in caplog.text and caplog.text.count("is plain http (no TLS)") == 2


def test_a_token_fetched_after_a_401_is_not_sent_over_plain_http(monkeypatch: pytest.MonkeyPatch) -> None:
    """The inventory says none, a plain-http endpoint answers 401: the token the client then fetches
    goes on to the next (https) endpoint, never back to the plain-http one."""
    monkeypatch.setattr(c, "rank", lambda probes, tie_ms: [p.endpoint for p in probes])  # a first
    endpoints = [entry("a", 1), tls_entry("b")]
    net = Net({"a": "token:t1", "b": "token:t1"}, inventory={"auth": "none", "endpoints": endpoints}, tokens=["t1"])
    result = world_client(net, inventory_url=INVENTORY_URL).generate(c.ImageRequest(prompt="a cat"))
    assert net.posts == [("a", None), ("b", "Bearer t1")]
    assert result.endpoint.endpoint_id.endswith("/b")


def test_a_token_renewed_for_plain_http_with_nothing_else_left_says_so() -> None:
    net = Net({"a": "token:t1"}, inventory={"auth": "none", "endpoints": [entry("a", 1)]}, tokens=["t1"])
    with pytest.raises(c.NoEndpointError) as err:
        world_client(net, inventory_url=INVENTORY_URL).generate(c.ImageRequest(prompt="a cat"))
    assert net.posts == [("a", None)]
    assert str(err.value) == (
        "no endpoint produced an image within 120s (edge/serving/sd/a (http://a.test:1): 401: token renewed; "
        "edge/serving/sd/a (http://a.test:1): not tried, plain http would expose the bearer token)"
    )


def test_a_skipped_endpoint_is_named_when_the_others_fail() -> None:
    net = Net({"tls": "503"}, inventory={"auth": "token", "endpoints": [entry("plain", 1), tls_entry("tls")]})
    with pytest.raises(c.NoEndpointError) as err:
        world_client(net, inventory_url=INVENTORY_URL, token="mine").generate(c.ImageRequest(prompt="a cat"))
    assert net.posts == [("tls", "Bearer mine")] and "plain" not in net.contacted
    assert str(err.value) == (
        "no endpoint produced an image within 120s (edge/serving/sd/tls (https://tls.test:1): 503; "
        "edge/serving/sd/plain (http://plain.test:1): not tried, plain http would expose the bearer token)"
    )


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://api.example.com/v1/endpoints", True),
        ("HTTPS://api.example.com", True),
        ("http://127.0.0.1:8080", True),
        ("http://127.255.255.254", True),
        ("http://[::1]:7860", True),
        ("http://localhost", True),
        ("http://api.example.com", False),
        ("http://128.0.0.1", False),
        ("http://10.0.0.1:7860", False),
        ("http://0.0.0.0:7860", False),
        ("http://[::]:7860", False),
        ("http://[::ffff:127.0.0.1]", False),  # loopback only by mapping: not written as loopback
        ("http://127.1", False),  # a shorthand the resolver may expand; the URL does not say loopback
        ("http://localhost.example.com", False),
        ("http://127.0.0.1.example.com", False),
        ("ftp://127.0.0.1", False),
    ],
)
def test_which_urls_may_carry_a_token(url: str, allowed: bool) -> None:
    from runtime.client.auth import carries_credentials

    assert carries_credentials(url) is allowed


def test_inventory_and_token_urls_over_plain_http_elsewhere_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    from runtime.client.auth import TokenError, TokenSource

    with pytest.raises(c.ClientError) as err:
        c.EdgeDiffusionClient(inventory_url="http://api.example.com/v1/endpoints")
    assert str(err.value) == (
        f"inventory URL 'http://api.example.com/v1/endpoints' refused: its answer decides where tokens go; {ALLOWED}"
    )
    with pytest.raises(c.ClientError) as err:
        c.EdgeDiffusionClient(inventory_url=INVENTORY_URL, token_url="http://api.example.com/v1/token")
    assert str(err.value) == f"token URL 'http://api.example.com/v1/token' refused: it hands out tokens; {ALLOWED}"
    with pytest.raises(TokenError, match=r"^token route http://api\.test/v1/token refused: tokens come only over"):
        TokenSource(token_url="http://api.test/v1/token")
    c.EdgeDiffusionClient(inventory_url="http://127.0.0.1:8080/v1/endpoints").close()  # development: allowed
    assert main(["a cat", "--inventory-url", "http://api.example.com/v1/endpoints"]) == 2
    assert capsys.readouterr().err.strip() == (
        "python -m runtime.client: error: argument --inventory-url: 'http://api.example.com/v1/endpoints' is not "
        f"allowed: its answer decides where tokens go; {ALLOWED}"
    )


def test_a_ca_bundle_that_is_not_a_certificate_is_one_line(tmp_path: Path) -> None:
    bogus = tmp_path / "ca.pem"
    bogus.write_text("not a certificate")
    with pytest.raises(c.ClientError, match=rf"^CA bundle {bogus} is not a PEM certificate file"):
        c.tls_context(bogus)
    with pytest.raises(c.ClientError, match=rf"^CA bundle {tmp_path / 'none.pem'}: no such file$"):
        c.tls_context(tmp_path / "none.pem")


def test_without_httpx_the_command_says_how_to_get_it_in_one_line() -> None:
    import subprocess
    import sys

    from tests.runtime.conftest import ROOT

    probe = (
        "import runpy, sys\n"
        "sys.modules['httpx'] = None\n"  # as if it were not installed
        "sys.argv = ['runtime.client', 'a cat', '--fallback-url', 'https://x.test']\n"
        "runpy.run_module('runtime.client', run_name='__main__', alter_sys=True)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "python -m runtime.client: error: the client needs httpx: run it with .venv/bin/python (make deps), "
        "or pip install -r runtime/requirements-client.txt"
    )


# --- TLS server names -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("server_name", "message"),
    [
        ("198.51.100.20", "server_name='198.51.100.20': needs a DNS name such as lz.example.com"),
        ("*.lz.example.com", "server_name='*.lz.example.com': needs a DNS name"),  # a device sends one name
        ("lz..example.com", "server_name='lz..example.com': needs a DNS name"),
        ("lz.example.com\n", "server_name='lz.example.com\\n': needs a DNS name"),
        (42, "server_name=42: needs a DNS name"),
    ],
)
def test_an_entry_with_a_bad_server_name_is_skipped(server_name: object, message: str) -> None:
    bad = entry("named", 1, url="https://198.51.100.20:30443", server_name=server_name)
    endpoints, skipped = c.parse_inventory({"endpoints": [bad]})
    assert endpoints == [] and len(skipped) == 1
    assert skipped[0].startswith(f"inventory entry 0 skipped: {message}")


def test_a_server_name_goes_with_https_only() -> None:
    plain = entry("named", 1, server_name="lz.example.com")  # http://named.test:1
    endpoints, skipped = c.parse_inventory([plain])
    assert endpoints == []
    assert skipped == ["inventory entry 0 skipped: server_name='lz.example.com': only with an https url"]


def test_probes_and_requests_send_the_entrys_server_name_and_others_none() -> None:
    """httpcore passes the sni_hostname extension to SSLContext.wrap_socket(server_hostname=...): the
    name is sent as SNI and verified. Recorded here per request, probes included."""
    seen: list[tuple[str, str, object]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append((request.url.host, request.url.path, request.extensions.get("sni_hostname")))
        if request.url.path == contract.HEALTH_PATH:
            return httpx.Response(200, json={"status": "alive"})
        if request.url.host != "backup.test":
            return httpx.Response(503, json={"error": "busy"})
        return httpx.Response(200, json={"images": [base64.b64encode(PNG).decode()], "seed": 7})

    named = entry("lz", 1, url="https://198.51.100.20:30443", server_name="lz.example.com")
    client = c.EdgeDiffusionClient(
        endpoints=[named, region_entry("nvidia")],
        fallback_urls=["https://backup.test"],
        http=httpx.Client(transport=httpx.MockTransport(answer)),
    )
    result = client.generate(c.ImageRequest(prompt="a cat"), deadline_s=10)  # the other two answer 503
    assert [a.endpoint.url for a in result.attempts] == [
        "https://198.51.100.20:30443",
        "https://alb.test",
        "https://backup.test",
    ]
    by_host = {(host, path): name for host, path, name in seen}
    assert by_host[("198.51.100.20", contract.HEALTH_PATH)] == "lz.example.com"
    assert by_host[("198.51.100.20", contract.IMAGES_PATH)] == "lz.example.com"
    assert by_host[("alb.test", contract.HEALTH_PATH)] is None and by_host[("alb.test", contract.IMAGES_PATH)] is None
    assert by_host[("backup.test", contract.IMAGES_PATH)] is None
