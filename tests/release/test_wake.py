"""The wake path of a placement at minReplicas 0, end to end as a model, from the app's own code and
manifests: a device's inventory call (``api.handle``) records DeviceDemand as EMF lines, which
CloudWatch turns into datapoints; the rendered ScaledObject's ``demand`` trigger is read the way
KEDA's aws-cloudwatch scaler reads it; KEDA scales the Deployment 0 -> 1; the pod turns ready after
a cold start; the publisher (``runtime.inventory.publisher.cycle``) lists it; the client
(``runtime.client``) ranks it first. Meanwhile the inventory lists nothing in that Local Zone and the
client uses the Region; after ``scaleToZeroAfterSeconds`` without demand KEDA takes it back to 0
and the publisher removes its entry.

Modelled, with where each rule comes from:

* CloudWatch Logs' EMF extraction: each directive's metrics, once per dimension set, with the
  dimension values and the metric's value read from the document's top-level members, at
  ``_aws.Timestamp`` (ms) (the Embedded Metric Format specification). Datapoints are found only
  under their exact dimension set.
* KEDA's aws-cloudwatch scaler (pkg/scalers/aws_cloudwatch_scaler.go): GetMetricData over
  [end - metricCollectionTime, end) with end = now - metricEndTimeOffset truncated to
  metricStatPeriod, ScanBy TimestampDescending, the newest datapoint (Values[0]), or
  minMetricValue when there is none. A trigger is active when its value exceeds
  activationTargetMetricValue; at 0 replicas an active trigger scales to 1, and the last replica
  goes once no trigger was active for cooldownPeriod (pkg/scaling/executor/scale_scaledobjects.go);
  above 0 the HPA asks ceil(value / target) pods per AverageValue trigger.
* The cold start of a new node and pod: 445 s (docs/scaling.md, section 2).

Not modelled: the EMF extraction delay and CloudWatch's ingestion delay (each only postpones the
wake by the same seconds), and the Region's placement, which always serves (minReplicas 1).
"""

from __future__ import annotations

import copy
import io
import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import httpx
import pytest

from plan import contract
from plan.config import AppConfig
from runtime.client.client import EdgeDiffusionClient
from runtime.inventory import api
from runtime.inventory.cluster import ServingState
from runtime.inventory.endpoint import Endpoint
from runtime.inventory.publisher import InventoryPublisher, cycle
from runtime.inventory.settings import PublisherSettings
from stacks.inventory import demand_environment
from tests.charts.conftest import Rendered, render
from tests.conftest import cdk_json_context
from tests.runtime.inventory.conftest import table  # noqa: F401 - the moto endpoint table fixture

LAX: Final = "us-west-2-lax-1a"
REGION: Final = "us-west-2"
DEVICES: Final = "203.0.113.0/24"  # the networks of the devices near lax
NEAR_LAX: Final = "203.0.113.77"
ELSEWHERE: Final = "192.0.2.9"
COLD_START_S: Final = 445  # docs/scaling.md section 2: Karpenter, node, image pull, model load, warm-up
STEP_S: Final = 15  # the publisher's heartbeat and the ScaledObject's pollingInterval in this model
T0: Final = 1_800_000_000  # a whole minute
ALB: Final = "k8s-edgediff-stablediff-0123456789.us-west-2.elb.amazonaws.com"
LAX_NODE_IP: Final = "198.51.100.20"
NODE_PORT: Final = 30080
CONTEXT: Final = {
    **cdk_json_context(),
    "accelerators": ["nvidia"],
    "localZones": [{"name": LAX, "instanceFamilies": ["g5"], "deviceCidrs": [DEVICES]}],
    "serving": {"minReplicas": 0, "scaleToZeroAfterSeconds": 900, "placements": {"nvidia": {"minReplicas": 1}}},
}


@pytest.fixture(scope="module")
def rendered() -> Rendered:
    return render(CONTEXT)


def lax_placement(config: AppConfig) -> str:
    (name,) = [p.name for p in _placements(config) if p.location.zone == LAX]
    return name


def _placements(config: AppConfig) -> Any:
    from plan import topology

    return topology.placements(config)


# --- CloudWatch: EMF lines in, KEDA's read out -----------------------------------------------------


@dataclass
class CloudWatch:
    """Datapoints extracted from EMF log lines: (seconds, namespace, name, dimensions, value)."""

    points: list[tuple[float, str, str, frozenset[tuple[str, str]], float]] = field(default_factory=list)

    def put_log(self, text: str) -> None:
        for line in text.splitlines():
            doc = json.loads(line)
            meta = doc["_aws"]
            when = meta["Timestamp"] / 1000
            for directive in meta["CloudWatchMetrics"]:
                for dimension_set in directive["Dimensions"]:
                    dims = frozenset((name, str(doc[name])) for name in dimension_set)
                    for metric in directive["Metrics"]:
                        value = float(doc[metric["Name"]])
                        self.points.append((when, directive["Namespace"], metric["Name"], dims, value))

    def keda_read(self, metadata: Mapping[str, str], now: float) -> float:
        """The value KEDA's aws-cloudwatch scaler gets for a trigger's metadata at ``now``."""
        assert metadata["metricStat"] == "Sum"
        period = int(metadata["metricStatPeriod"])
        end = math.floor((now - int(metadata["metricEndTimeOffset"])) / period) * period
        start = end - int(metadata["metricCollectionTime"])
        dims = frozenset(zip(metadata["dimensionName"].split(";"), metadata["dimensionValue"].split(";"), strict=True))
        wanted = (metadata["namespace"], metadata["metricName"], dims)
        for bucket in range(end - period, start - 1, -period):  # newest first
            values = [
                v for t, ns, name, d, v in self.points if (ns, name, d) == wanted and bucket <= t < bucket + period
            ]
            if values:
                return sum(values)
        return float(metadata["minMetricValue"])


@dataclass
class Keda:
    """One ScaledObject's replica decisions, polled every ``STEP_S``."""

    spec: Mapping[str, Any]
    replicas: int = 0
    last_active: float | None = None

    def poll(self, cloudwatch: CloudWatch, now: float) -> int:
        values = {t["name"]: cloudwatch.keda_read(t["metadata"], now) for t in self.spec["triggers"]}
        active = any(
            values[t["name"]] > float(t["metadata"]["activationTargetMetricValue"]) for t in self.spec["triggers"]
        )
        if active:
            self.last_active = now
            wanted = max(
                math.ceil(values[t["name"]] / float(t["metadata"]["targetMetricValue"]))
                for t in self.spec["triggers"]
                if t["metricType"] == "AverageValue"
            )
            self.replicas = min(self.spec["maxReplicaCount"], max(1, self.spec["minReplicaCount"], wanted))
        elif self.replicas > 0 and self.spec["minReplicaCount"] == 0:
            assert self.last_active is not None
            if now - self.last_active >= self.spec["cooldownPeriod"]:
                self.replicas = 0
        return self.replicas


# --- the cluster the publisher reads ---------------------------------------------------------------


def endpoint_slice(service: str, node: str, ready: bool) -> dict[str, Any]:
    return {
        "metadata": {"name": f"{service}-x", "labels": {"kubernetes.io/service-name": service}},
        "endpoints": [{"nodeName": node, "conditions": {"ready": ready}, "targetRef": {"uid": f"{service}-pod"}}],
    }


@dataclass
class Cluster:
    """The rendered Services (the API server gives each a nodePort) and Ingress (the controller
    writes its hostname); the Region's pod always ready, the Local Zone's as KEDA and the cold start say."""

    rendered: Rendered
    lax: str
    pod_since: float | None = None  # when the Local Zone's pod was created; None: no pod

    def scale(self, replicas: int, now: float) -> None:
        if replicas and self.pod_since is None:
            self.pod_since = now
        elif not replicas:
            self.pod_since = None

    def lax_ready(self, now: float) -> bool:
        return self.pod_since is not None and now - self.pod_since >= COLD_START_S

    def state(self, now: float) -> ServingState:
        services = []
        for service in self.rendered.of_kind("Service"):
            if contract.LABEL_ACCELERATOR not in service["metadata"].get("labels", {}):
                continue
            service = copy.deepcopy(service)
            service["spec"]["ports"][0]["nodePort"] = NODE_PORT
            services.append(service)
        (ingress,) = self.rendered.of_kind("Ingress")
        ingress = {**copy.deepcopy(ingress), "status": {"loadBalancer": {"ingress": [{"hostname": ALB}]}}}
        slices = [endpoint_slice("stable-diffusion-nvidia", "regional-1", True)]
        if self.pod_since is not None:
            slices.append(endpoint_slice(self.lax, "lax-1", self.lax_ready(now)))
        nodes: list[dict[str, Any]] = [
            {"metadata": {"name": "regional-1", "labels": {"topology.kubernetes.io/zone": "us-west-2a"}}},
            {
                "metadata": {"name": "lax-1", "labels": {"topology.kubernetes.io/zone": LAX}},
                "status": {"addresses": [{"type": "ExternalIP", "address": LAX_NODE_IP}]},
            },
        ]
        return ServingState(services=services, slices=slices, nodes=nodes, ingresses=[ingress])


# --- the world, step by step -----------------------------------------------------------------------


@dataclass
class World:
    config: AppConfig
    table: Any
    cluster: Cluster
    keda: Keda
    cloudwatch: CloudWatch = field(default_factory=CloudWatch)
    now: float = T0
    replicas: list[tuple[float, int]] = field(default_factory=list)  # (when, replicas) at each change

    def __post_init__(self) -> None:
        settings = PublisherSettings(
            table_name=self.table.name,
            cluster=self.config.cluster_name,
            namespace="edge-diffusion",
            region=REGION,
            default_model=self.config.model_id,
            metrics_sink="none",
        )
        self.settings = settings
        self.publisher = InventoryPublisher(self.table, settings, clock=lambda: self.now)

    def device_call(self, source_ip: str) -> list[Endpoint]:
        """GET /endpoints from a device at ``source_ip``; the demand it records goes to CloudWatch;
        the client's order of what it got (every endpoint answers its health check)."""
        log = io.StringIO()
        demand = api.DeviceDemand.from_env(demand_environment(self.config), log)
        event = {"requestContext": {"identity": {"sourceIp": source_ip, "userArn": "device"}}}
        response = api.handle(event, table=self.table, default_model=self.config.model_id, now=self.now, demand=demand)
        assert response["statusCode"] == 200
        self.cloudwatch.put_log(log.getvalue())
        healthy = httpx.MockTransport(lambda request: httpx.Response(200, json={"status": "ok"}))
        entries = json.loads(response["body"])["endpoints"]
        with EdgeDiffusionClient(endpoints=entries, http=httpx.Client(transport=healthy)) as client:
            endpoints, _ = client.load_inventory()
            return client.order(client.probe_all(endpoints))

    def step(self) -> None:
        """STEP_S seconds on: KEDA polls, the Deployment follows, the publisher reconciles."""
        self.now += STEP_S
        replicas = self.keda.poll(self.cloudwatch, self.now)
        if not self.replicas or self.replicas[-1][1] != replicas:
            self.replicas.append((self.now, replicas))
        self.cluster.scale(replicas, self.now)
        cycle(self.cluster.state(self.now), self.publisher, self.settings, now=self.now)

    def run_until(self, when: float) -> Iterator[float]:
        while self.now + STEP_S <= when:
            self.step()
            yield self.now


def world(rendered: Rendered, endpoints: Any) -> World:
    config = rendered.config
    lax = lax_placement(config)
    scaled = rendered.named("ScaledObject", lax)
    return World(config=config, table=endpoints, cluster=Cluster(rendered, lax), keda=Keda(scaled["spec"]))


def where(endpoints: list[Endpoint]) -> list[str]:
    return [e.location for e in endpoints]


# --- the tests --------------------------------------------------------------------------------------


def test_the_lax_placement_sleeps_and_wakes_on_demand_for_its_location_only(rendered: Rendered) -> None:
    """The manifest the model reads: minReplicaCount 0, the demand trigger on the inventory's metric."""
    config = rendered.config
    spec = rendered.named("ScaledObject", lax_placement(config))["spec"]
    assert (spec["minReplicaCount"], spec["cooldownPeriod"]) == (0, 900)
    demand = next(t for t in spec["triggers"] if t["name"] == "demand")["metadata"]
    assert (demand["namespace"], demand["metricName"]) == (api.METRIC_NAMESPACE, api.METRIC_DEVICE_DEMAND)
    assert dict(zip(demand["dimensionName"].split(";"), demand["dimensionValue"].split(";"), strict=True)) == {
        "Cluster": config.cluster_name,
        "Location": LAX,
    }
    assert float(demand["activationTargetMetricValue"]) == 0  # any call wakes it
    regional = rendered.named("ScaledObject", "stable-diffusion-nvidia")["spec"]
    assert regional["minReplicaCount"] == 1 and "demand" not in {t["name"] for t in regional["triggers"]}


def test_a_device_near_a_sleeping_zone_is_served_by_the_region_wakes_it_and_then_is_served_there(
    rendered: Rendered,
    table: Any,  # noqa: F811 - the fixture
) -> None:
    w = world(rendered, table)
    for _ in w.run_until(T0 + 600):  # an hour of quiet before: asleep, nothing listed in lax
        pass
    assert w.keda.replicas == 0
    start = w.now
    # The device asks: nothing in lax is listed, so it is served by the Region's ALB meanwhile.
    first = w.device_call(NEAR_LAX)
    assert where(first) == [REGION] and first[0].url == f"http://{ALB}"
    listed_at = None
    for now in w.run_until(start + 900):
        order = w.device_call(NEAR_LAX) if (now - start) % 60 == 0 else None  # the device asks each minute
        if order and where(order)[0] == LAX:
            listed_at = listed_at or now
        elif order:
            assert where(order) == [REGION], "nothing in lax while it is not ready"
            assert not w.cluster.lax_ready(now - STEP_S), "a ready pod is listed within one heartbeat"
    # KEDA woke it on the first whole minute holding the call, and it served after the cold start.
    woke = next(when for when, replicas in w.replicas if replicas == 1 and when > start)
    assert woke - start <= 60 + STEP_S
    assert listed_at is not None
    assert COLD_START_S <= listed_at - woke <= COLD_START_S + 60 + STEP_S
    order = w.device_call(NEAR_LAX)
    assert where(order) == [LAX, REGION]  # the client ranks the Local Zone first, the Region after
    assert order[0].url == f"http://{LAX_NODE_IP}:{NODE_PORT}"


def test_without_demand_it_goes_back_to_zero_after_the_configured_time_and_leaves_the_inventory(
    rendered: Rendered,
    table: Any,  # noqa: F811 - the fixture
) -> None:
    w = world(rendered, table)
    w.device_call(NEAR_LAX)
    for _ in w.run_until(T0 + COLD_START_S + 120):
        pass
    assert w.keda.replicas == 1 and where(w.device_call(NEAR_LAX))[0] == LAX
    last_call = w.now
    for now in w.run_until(last_call + 3600):
        if w.keda.replicas == 0:
            break
        # scaleToZeroAfterSeconds (cooldownPeriod) after the trigger last saw the call, not before.
        assert now - last_call < 900 + 180 + 60 + STEP_S
    slept = w.now
    assert w.keda.replicas == 0
    assert slept - last_call >= 900
    # The next heartbeat already removed the entry: the device is served by the Region again.
    assert where(w.device_call(ELSEWHERE)) == [REGION]
    assert not [item for item in table.scan()["Items"] if item[api.ATTR_LOCATION] == LAX]


def test_a_device_outside_the_zone_s_networks_never_wakes_it(
    rendered: Rendered,
    table: Any,  # noqa: F811 - the fixture
) -> None:
    w = world(rendered, table)
    for now in w.run_until(T0 + 1800):
        if now % 60 == 0:
            assert where(w.device_call(ELSEWHERE)) == [REGION]
    assert w.keda.replicas == 0 and w.replicas == [(T0 + STEP_S, 0)]
    demand = {(dict(d)["Location"], v) for _, _, name, d, v in w.cloudwatch.points if name == api.METRIC_DEVICE_DEMAND}
    assert demand == {(REGION, 1.0)}  # the Region's demand only
