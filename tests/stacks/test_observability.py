"""ObservabilityStack: per deployment, a dashboard and alarms per placement on the metrics the runtime
and Container Insights publish (names and dimensions exactly), an encrypted topic CloudWatch alarms
may publish to, and the configured email subscriptions. A placement at minReplicas 0 sleeps by
design: its alarm is "demanded but not waking", evaluated here on series the way CloudWatch does,
and the dashboard shows it asleep as a state."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import pytest

from charts.autoscaling import metric_dimensions
from plan import contract, topology
from plan.accelerators import ACCELERATORS
from plan.config import AppConfig, load_config
from runtime.server.metrics import Dimensions
from stacks.observability import ObservabilityStack
from stacks.observability.dashboard import NODES_PER_NODEPOOL_NOTE
from stacks.observability.metrics import (
    ASLEEP_LABEL,
    CONTAINER_INSIGHTS_NAMESPACE,
    SERVING_LABEL,
    WAKING_LABEL,
    ready_pods_dimensions,
    serving_dimensions,
)
from tests.conftest import PLAN_ACCOUNT, Synth, cdk_json_context

# A deployment with two Local Zones (one without GPUs), emails and a non-default SLO.
VARIANT = {
    "account": PLAN_ACCOUNT,
    "clusterName": "edge-obs",
    "localZones": [
        {"name": "us-west-2-lax-1a", "instanceFamilies": ["g5", "c7g"]},
        {"name": "us-west-2-den-1a", "instanceFamilies": ["c7g"]},
    ],
    "alarms": {
        "latencyP99SloMs": 4500,
        "serverErrorPercent": 2.5,
        "pendingPodsMinutes": 20,
        "emails": ["ops@example.com", "oncall@example.org"],
    },
}


# The same deployment where every placement but the Region's NVIDIA one sleeps when idle (as dev does).
SLEEPY = {**VARIANT, "serving": {"minReplicas": 0, "placements": {"nvidia": {"minReplicas": 1}}}}


@pytest.fixture(scope="module")
def config() -> AppConfig:
    return load_config({**cdk_json_context(), **VARIANT})


@pytest.fixture(scope="module")
def sleepy_config() -> AppConfig:
    return load_config({**cdk_json_context(), **SLEEPY})


@pytest.fixture(scope="module")
def template(config: AppConfig) -> dict[str, Any]:
    return synthesized(config)


@pytest.fixture(scope="module")
def sleepy_template(sleepy_config: AppConfig) -> dict[str, Any]:
    return synthesized(sleepy_config)


def synthesized(config: AppConfig) -> dict[str, Any]:
    """The stack alone, with cdk-nag: a finding fails the synth (ValidationFailed)."""
    import aws_cdk as cdk
    from cdk_nag import AwsSolutionsChecks

    app = cdk.App(context={k: v for k, v in cdk_json_context().items() if k.startswith("@")})
    stack = ObservabilityStack(
        app, "Observability", config=config, env=cdk.Environment(account=config.account, region=config.region)
    )
    cdk.Validations.of(app).add_plugins(AwsSolutionsChecks(app))
    assembly = app.synth()
    return dict(assembly.get_stack_by_name(stack.stack_name).template)


def resources(template: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in template["Resources"].items() if v["Type"] == kind}


def dashboard_body(template: dict[str, Any]) -> dict[str, Any]:
    """The dashboard JSON, with CloudFormation references (alarm ARNs, Region) as placeholders."""
    (dashboard,) = resources(template, "AWS::CloudWatch::Dashboard").values()
    body = dashboard["Properties"]["DashboardBody"]
    text = "".join(part if isinstance(part, str) else "TOKEN" for part in body["Fn::Join"][1])
    return dict(json.loads(text))


def graphed(body: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, str], dict[str, Any]]]:
    """(namespace, metric name, dimensions, options) of every metric of every graph."""
    for widget in body["widgets"]:
        for row in widget.get("properties", {}).get("metrics", []):
            if isinstance(row[0], dict):  # a math expression
                continue
            *names, options = row if isinstance(row[-1], dict) else (*row, {})
            namespace, metric, *pairs = names
            yield namespace, metric, dict(zip(pairs[::2], pairs[1::2], strict=True)), options


def alarms_by_name(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        a["Properties"]["AlarmName"]: a["Properties"] for a in resources(template, "AWS::CloudWatch::Alarm").values()
    }


def metric_of(alarm: dict[str, Any], metric_id: str | None = None) -> dict[str, Any]:
    """The alarm's metric (or the one named ``metric_id`` of its math), in either template form."""
    if "Metrics" not in alarm:
        return {
            "namespace": alarm["Namespace"],
            "name": alarm["MetricName"],
            "dimensions": {d["Name"]: d["Value"] for d in alarm["Dimensions"]},
            "stat": alarm.get("Statistic", alarm.get("ExtendedStatistic")),
            "period": alarm["Period"],
        }
    stats = [m for m in alarm["Metrics"] if "MetricStat" in m and (metric_id is None or m["Id"] == metric_id)]
    (stat,) = stats
    metric = stat["MetricStat"]["Metric"]
    return {
        "namespace": metric["Namespace"],
        "name": metric["MetricName"],
        "dimensions": {d["Name"]: d["Value"] for d in metric["Dimensions"]},
        "stat": stat["MetricStat"]["Stat"],
        "period": stat["MetricStat"]["Period"],
    }


def topic_ref(template: dict[str, Any]) -> dict[str, str]:
    (logical_id,) = resources(template, "AWS::SNS::Topic")
    return {"Ref": logical_id}


# --- where the stack is, and what it is called ---------------------------------------------------


def test_every_deployment_has_its_observability_stack(synth: Synth) -> None:
    deployments = [synth.stacks.workstation, *synth.stacks.pipeline.values()]
    assert len(deployments) == 3
    for stacks in deployments:
        stack = stacks.observability
        assert isinstance(stack, ObservabilityStack)
        assert stack.stack_name == f"EdgeDiffusion-{stacks.deployment.name}-Observability"
        assert stack in stacks.all
        config = stacks.deployment.config
        template = synth.template_json(stack)
        assert len(resources(template, "AWS::CloudWatch::Dashboard")) == 1
        assert len(alarms_by_name(template)) == 4 * len(topology.placements(config)) + 1
        # Metrics by name only: nothing of another stack is imported.
        assert "Fn::ImportValue" not in json.dumps(template)


def test_names_are_per_deployment_and_alarms_share_the_prefix_the_key_policy_allows(
    config: AppConfig, template: dict[str, Any]
) -> None:
    (dashboard,) = resources(template, "AWS::CloudWatch::Dashboard").values()
    assert dashboard["Properties"]["DashboardName"] == "edge-obs-serving"
    (topic,) = resources(template, "AWS::SNS::Topic").values()
    assert topic["Properties"]["TopicName"] == "edge-obs-alarms"
    assert all(name.startswith("edge-obs-") for name in alarms_by_name(template))
    assert all(len(name) <= 255 for name in alarms_by_name(template))


# --- metric names and dimensions are the publishers' ---------------------------------------------


def test_serving_dimensions_are_what_the_server_and_keda_use(config: AppConfig) -> None:
    for placement in topology.placements(config):
        location = placement.location.metric_value(config)
        published = Dimensions(placement=placement.name, device=placement.accelerator.device, location=location)
        dashboards = serving_dimensions(placement, config)
        assert dashboards == {name: published.as_dict()[name] for name in contract.METRIC_DIMENSIONS}
        keda = metric_dimensions(placement, config)  # the legacy set, which every image version publishes
        assert keda == {name: published.as_dict()[name] for name in contract.LEGACY_METRIC_DIMENSIONS}
        ready = ready_pods_dimensions(placement, config)
        assert ready[contract.DIMENSION_ACCELERATOR] == placement.accelerator.name, "the Service label, not the device"
        assert set(ready) == set(contract.METRIC_DIMENSIONS)


def test_dashboard_graphs_each_placement_on_the_published_dimensions(
    config: AppConfig, template: dict[str, Any]
) -> None:
    body = dashboard_body(template)
    metrics = list(graphed(body))
    for placement in topology.placements(config):
        serving = serving_dimensions(placement, config)
        workload = {"ClusterName": "edge-obs", "Namespace": topology.NAMESPACE, "PodName": placement.name}
        mine = {(ns, name, json.dumps(dims, sort_keys=True)): opts for ns, name, dims, opts in metrics}

        def stats(namespace: str, name: str, dims: dict[str, str], mine: dict[Any, Any] = mine) -> Any:
            return mine[(namespace, name, json.dumps(dims, sort_keys=True))]

        for name in (
            contract.METRIC_REQUESTS,
            contract.METRIC_PENDING_REQUESTS,
            contract.METRIC_REJECTED_REQUESTS,
            contract.METRIC_SERVER_ERRORS,
        ):
            assert stats("EdgeDiffusion", name, serving)["stat"] == "Sum", name
        latency = {
            opts["stat"]
            for ns, name, dims, opts in metrics
            if (ns, name, dims) == ("EdgeDiffusion", contract.METRIC_INFERENCE_LATENCY_MS, serving)
        }
        assert latency == {"p50", "p99"}
        ready = ready_pods_dimensions(placement, config)
        assert stats("EdgeDiffusion", contract.METRIC_READY_SERVING_PODS, ready)
        assert stats("ContainerInsights", "replicas_desired", workload)["stat"] == "Maximum"
        assert stats("ContainerInsights", "replicas_ready", workload)["stat"] == "Maximum"
        assert stats("ContainerInsights", "pod_status_pending", workload)["stat"] == "Sum"
        cold_start = stats("EdgeDiffusion", contract.METRIC_COLD_START_SECONDS, serving)
        assert (cold_start["stat"], cold_start["yAxis"]) == ("Maximum", "right")
        device = {"nvidia": "pod_gpu_utilization", "neuron": "pod_neuroncore_utilization", "cpu": "pod_cpu_utilization"}
        assert stats("ContainerInsights", device[placement.accelerator.name], workload) is not None
    # Requests/s is the Sum over the period divided by the period.
    expressions = [
        row[0]["expression"]
        for w in body["widgets"]
        for row in w.get("properties", {}).get("metrics", [])
        if isinstance(row[0], dict)
    ]
    assert expressions == ["requests / PERIOD(requests)"] * len(topology.placements(config))
    # Nothing graphed outside the two namespaces, nor for a placement that does not exist.
    names = {p.name for p in topology.placements(config)}
    for namespace, _, dims, _ in metrics:
        assert namespace in {contract.METRIC_NAMESPACE, CONTAINER_INSIGHTS_NAMESPACE}
        named = next(
            dims[k]
            for k in (contract.DIMENSION_PLACEMENT, "PodName", contract.DIMENSION_CLUSTER, "ClusterName")
            if k in dims
        )
        assert named in names | {"edge-obs"}, dims


def published_dimension_sets() -> dict[str, set[frozenset[str]]]:
    """Metric name -> the dimension-name sets it is published under, as the server's two sinks and
    the inventory publisher write them (the current names and the legacy ones)."""
    from runtime.inventory.cluster import PodCount
    from runtime.inventory.metrics import metric_data
    from runtime.server.metrics import CloudWatchSink, EmfSink, Interval

    interval = Interval(pending_samples=[1.0], latencies_ms=[10.0], images=1, requests=2, server_errors=1)
    interval.cold_start_s = 42.0
    dims = Dimensions(placement="d", device="cuda", location="us-west-2")
    published: dict[str, set[frozenset[str]]] = {}
    server_data = CloudWatchSink(dims, region=None, client=object()).metric_data(interval, 0.0)
    publisher_data = metric_data([PodCount("s", "nvidia", "us-west-2", 1)], 1, "c")
    for datum in (*server_data, *publisher_data):
        published.setdefault(datum["MetricName"], set()).add(frozenset(x["Name"] for x in datum["Dimensions"]))
    # The inventory API's demand lines (EMF, as CloudWatch Logs extracts them).
    from runtime.inventory.api import DeviceDemand

    for doc in DeviceDemand("c", "us-west-2", {"us-west-2-lax-1a": ()}).documents({}, 0.0):
        for directive in doc["_aws"]["CloudWatchMetrics"]:
            for metric in directive["Metrics"]:
                for group in directive["Dimensions"]:
                    published.setdefault(metric["Name"], set()).add(frozenset(group))
    (emf,) = EmfSink(dims).record(interval, 0.0)["_aws"]["CloudWatchMetrics"]
    server = {d["MetricName"] for d in server_data}
    assert {m["Name"] for m in emf["Metrics"]} == server, "both sinks publish the same metrics"
    assert [set(group) for group in emf["Dimensions"]] == [
        set(contract.METRIC_DIMENSIONS),
        set(contract.LEGACY_METRIC_DIMENSIONS),
    ]
    assert all(published[name] == {frozenset(g) for g in emf["Dimensions"]} for name in server)
    return published


@pytest.mark.parametrize("which", ["template", "sleepy_template"])
def test_every_edge_diffusion_metric_read_is_published_with_that_dimension_set(
    which: str, request: pytest.FixtureRequest
) -> None:
    """A metric is only found with its exact dimension set: read nothing the runtime does not write."""
    template = request.getfixturevalue(which)
    published = published_dimension_sets()
    assert {
        contract.METRIC_REQUESTS,
        contract.METRIC_REJECTED_REQUESTS,
        contract.METRIC_SERVER_ERRORS,
        contract.METRIC_COLD_START_SECONDS,
    } <= set(published)
    read = [(name, set(dims)) for ns, name, dims, _ in graphed(dashboard_body(template)) if ns == "EdgeDiffusion"]
    for alarm in alarms_by_name(template).values():
        stats = (
            [alarm]
            if "Metrics" not in alarm
            else [m["MetricStat"]["Metric"] for m in alarm["Metrics"] if "MetricStat" in m]
        )
        for stat in stats:
            if stat["Namespace"] == "EdgeDiffusion":
                read.append((stat["MetricName"], {d["Name"] for d in stat["Dimensions"]}))
    assert read
    for name, dims in read:
        assert name in published, f"{name} is read but never published"
        assert frozenset(dims) in published[name], f"{name} read with {sorted(dims)}, published with {published[name]}"


def test_every_accelerator_has_its_device_utilization_metric() -> None:
    assert {name: a.utilization_metric for name, a in ACCELERATORS.items()} == {
        "nvidia": "pod_gpu_utilization",
        "neuron": "pod_neuroncore_utilization",
        "cpu": "pod_cpu_utilization",
    }


def test_the_dashboard_says_nodes_per_nodepool_have_no_cloudwatch_source(template: dict[str, Any]) -> None:
    body = dashboard_body(template)
    texts = [w["properties"]["markdown"] for w in body["widgets"] if w["type"] == "text"]
    assert NODES_PER_NODEPOOL_NOTE in texts
    assert ("ContainerInsights", "cluster_node_count", {"ClusterName": "edge-obs"}) in [
        (ns, name, dims) for ns, name, dims, _ in graphed(body)
    ]
    (status,) = [w for w in body["widgets"] if w["type"] == "alarm"]
    assert len(status["properties"]["alarms"]) == len(resources(template, "AWS::CloudWatch::Alarm"))


# --- alarms -----------------------------------------------------------------------------------------


def test_p99_latency_alarm_per_placement(config: AppConfig, template: dict[str, Any]) -> None:
    alarms = alarms_by_name(template)
    for placement in topology.placements(config):
        alarm = alarms[f"edge-obs-{placement.name}-p99-latency"]
        assert metric_of(alarm) == {
            "namespace": "EdgeDiffusion",
            "name": contract.METRIC_INFERENCE_LATENCY_MS,
            "dimensions": serving_dimensions(placement, config),
            "stat": "p99",
            "period": 60,
        }
        assert alarm["Threshold"] == 4500
        assert alarm["ComparisonOperator"] == "GreaterThanThreshold"
        assert (alarm["DatapointsToAlarm"], alarm["EvaluationPeriods"]) == (3, 5)
        assert alarm["TreatMissingData"] == "notBreaching"


def test_5xx_rate_alarm_is_metric_math_over_requests(config: AppConfig, template: dict[str, Any]) -> None:
    alarms = alarms_by_name(template)
    for placement in topology.placements(config):
        alarm = alarms[f"edge-obs-{placement.name}-5xx-rate"]
        (expression,) = [m for m in alarm["Metrics"] if "Expression" in m]
        assert expression["ReturnData"] is True
        assert expression["Expression"] == "IF(requests > 0, 100 * errors / requests, 0)"
        dims = serving_dimensions(placement, config)
        assert metric_of(alarm, "requests")["name"] == contract.METRIC_REQUESTS
        assert metric_of(alarm, "errors")["name"] == contract.METRIC_SERVER_ERRORS
        for metric_id in ("requests", "errors"):
            assert metric_of(alarm, metric_id)["dimensions"] == dims
            assert metric_of(alarm, metric_id)["stat"] == "Sum"
        assert alarm["Threshold"] == 2.5 and alarm["ComparisonOperator"] == "GreaterThanThreshold"
        assert alarm["TreatMissingData"] == "notBreaching"


def test_a_location_without_a_ready_pod_alarms_and_missing_data_counts(
    config: AppConfig, template: dict[str, Any]
) -> None:
    alarms = alarms_by_name(template)
    for placement in topology.placements(config):
        alarm = alarms[f"edge-obs-{placement.name}-no-ready-pod"]
        metric = metric_of(alarm)
        assert (metric["name"], metric["dimensions"], metric["stat"]) == (
            contract.METRIC_READY_SERVING_PODS,
            ready_pods_dimensions(placement, config),
            "Maximum",
        )
        assert alarm["ComparisonOperator"] == "LessThanThreshold" and alarm["Threshold"] == 1
        assert alarm["TreatMissingData"] == "breaching"


def test_pods_pending_for_the_configured_minutes_alarm(config: AppConfig, template: dict[str, Any]) -> None:
    alarms = alarms_by_name(template)
    for placement in topology.placements(config):
        alarm = alarms[f"edge-obs-{placement.name}-pods-pending"]
        assert metric_of(alarm) == {
            "namespace": "ContainerInsights",
            "name": "pod_status_pending",
            "dimensions": {"ClusterName": "edge-obs", "Namespace": topology.NAMESPACE, "PodName": placement.name},
            "stat": "Maximum",
            "period": 60,
        }
        assert alarm["EvaluationPeriods"] == 20 and "DatapointsToAlarm" not in alarm  # every minute of 20
        assert alarm["ComparisonOperator"] == "GreaterThanOrEqualToThreshold" and alarm["Threshold"] == 1


def test_an_empty_inventory_alarms(template: dict[str, Any]) -> None:
    alarm = alarms_by_name(template)["edge-obs-inventory-empty"]
    assert metric_of(alarm)["name"] == contract.METRIC_INVENTORY_ENDPOINTS
    assert metric_of(alarm)["dimensions"] == {"Cluster": "edge-obs"}
    assert alarm["ComparisonOperator"] == "LessThanThreshold" and alarm["Threshold"] == 1
    assert alarm["TreatMissingData"] == "breaching"


def test_every_alarm_notifies_the_topic_when_it_fires_and_clears(config: AppConfig, template: dict[str, Any]) -> None:
    alarms = alarms_by_name(template)
    # nvidia in the Region and lax (g5), neuron in the Region, cpu in the Region, lax and den (c7g).
    assert [p.name.removeprefix("stable-diffusion-") for p in topology.placements(config)] == [
        "nvidia",
        "nvidia-us-west-2-lax-1a",
        "neuron",
        "cpu",
        "cpu-us-west-2-lax-1a",
        "cpu-us-west-2-den-1a",
    ]
    assert len(alarms) == 4 * 6 + 1
    for alarm in alarms.values():
        assert alarm["AlarmActions"] == [topic_ref(template)]
        assert alarm["OKActions"] == [topic_ref(template)]


# --- placements at minReplicas 0: demanded but not waking ------------------------------------------

Series = Mapping[str, Sequence[float | None]]  # metric name -> one value per minute (None: no datapoint)


class Value:
    """One datapoint of a metric math series: None is no datapoint, which propagates (CloudWatch
    aligns series by timestamp, so an operation on a missing point yields none)."""

    def __init__(self, value: float | None) -> None:
        self.value = value

    def _compare(self, other: float, test: Callable[[float, float], bool]) -> Value:
        return Value(None if self.value is None else float(test(self.value, other)))

    def __lt__(self, other: float) -> Value:
        return self._compare(other, lambda a, b: a < b)

    def __gt__(self, other: float) -> Value:
        return self._compare(other, lambda a, b: a > b)

    def __ge__(self, other: float) -> Value:
        return self._compare(other, lambda a, b: a >= b)

    def __eq__(self, other: object) -> Value:  # type: ignore[override]
        return self._compare(float(other), lambda a, b: a == b)  # type: ignore[arg-type]

    def __bool__(self) -> bool:  # AND: a missing or false left side is the result
        return bool(self.value)


def metric_math(expression: str, inputs: Mapping[str, float | None]) -> float | None:
    """One period of the CloudWatch metric math this stack uses: IF, FILL, AND, comparisons."""

    def fill(value: Value, default: float) -> Value:
        return value if value.value is not None else Value(default)

    def if_(condition: Value, then: float, otherwise: float) -> Value:
        return Value(None if condition.value is None else (then if condition.value else otherwise))

    names: dict[str, Any] = {"IF": if_, "FILL": fill, **{k: Value(v) for k, v in inputs.items()}}
    result = eval(expression.replace(" AND ", " and "), {"__builtins__": {}}, names)
    return result.value if isinstance(result, Value) else float(result)


def aggregate(values: Sequence[float | None], stat: str) -> float | None:
    assert stat in ("Sum", "Maximum"), stat
    present = [v for v in values if v is not None]
    if not present:
        return None
    return float(sum(present)) if stat == "Sum" else float(max(present))


def alarm_state(alarm: dict[str, Any], minutes: Series) -> str:
    """ALARM or OK after the last minute of ``minutes``: each of the alarm's evaluation periods
    (its Period, ending now) aggregated with its statistic, its math applied, compared with the
    threshold, and a period without a datapoint read as its TreatMissingData says."""
    if "Metrics" in alarm:
        stats = {m["Id"]: m["MetricStat"] for m in alarm["Metrics"] if "MetricStat" in m}
        (returned,) = [m for m in alarm["Metrics"] if m.get("ReturnData", True)]
        expression = returned.get("Expression", returned["Id"])
        period_s = {stat["Period"] for stat in stats.values()}.pop()
    else:
        stats = {"m": {"Metric": {"MetricName": alarm["MetricName"]}, "Stat": alarm["Statistic"]}}
        expression, period_s = "m", alarm["Period"]
    width = period_s // 60
    length = len(next(iter(minutes.values())))
    breaching = []
    for index in range(alarm["EvaluationPeriods"]):
        end = length - index * width
        window = range(max(0, end - width), end)
        inputs = {
            metric_id: aggregate([minutes[stat["Metric"]["MetricName"]][i] for i in window], stat["Stat"])
            for metric_id, stat in stats.items()
        }
        value = inputs[expression] if expression in inputs else metric_math(expression, inputs)
        if value is None:
            breaching.append(alarm["TreatMissingData"] == "breaching")
            continue
        threshold = alarm["Threshold"]
        breaching.append(
            {
                "GreaterThanOrEqualToThreshold": value >= threshold,
                "GreaterThanThreshold": value > threshold,
                "LessThanThreshold": value < threshold,
            }[alarm["ComparisonOperator"]]
        )
    return "ALARM" if sum(breaching) >= alarm.get("DatapointsToAlarm", alarm["EvaluationPeriods"]) else "OK"


def every(minutes: int, value: float | None, each: int = 1) -> list[float | None]:
    """``value`` in every ``each``-th minute of ``minutes``, no datapoint in the others."""
    return [value if i % each == 0 else None for i in range(minutes)]


DEMAND = contract.METRIC_DEVICE_DEMAND
READY = contract.METRIC_READY_SERVING_PODS


def test_only_placements_at_min_replicas_0_trade_the_no_ready_pod_alarm_for_demanded_not_waking(
    sleepy_config: AppConfig, sleepy_template: dict[str, Any]
) -> None:
    alarms = alarms_by_name(sleepy_template)
    assert len(alarms) == 4 * len(topology.placements(sleepy_config)) + 1
    for placement in topology.placements(sleepy_config):
        location = placement.location.metric_value(sleepy_config)
        asleep_by_design = sleepy_config.serving.min_replicas_of(placement.node_pool_name) == 0
        assert asleep_by_design == (placement.node_pool_name != "nvidia")
        assert (f"edge-obs-{placement.name}-no-ready-pod" in alarms) is not asleep_by_design
        assert (f"edge-obs-{placement.name}-demanded-not-waking" in alarms) is asleep_by_design
        if not asleep_by_design:
            continue
        alarm = alarms[f"edge-obs-{placement.name}-demanded-not-waking"]
        assert metric_of(alarm, "demand") == {
            "namespace": "EdgeDiffusion",
            "name": DEMAND,
            "dimensions": {"Cluster": "edge-obs", "Location": location},
            "stat": "Sum",
            "period": 900,
        }
        assert metric_of(alarm, "ready") == {
            "namespace": "EdgeDiffusion",
            "name": READY,
            "dimensions": ready_pods_dimensions(placement, sleepy_config),
            "stat": "Maximum",
            "period": 900,
        }
        # Two windows of 15 minutes, each longer than the 445 s cold start; no data is no verdict.
        assert (alarm["EvaluationPeriods"], alarm["TreatMissingData"]) == (2, "notBreaching")
        assert alarm["AlarmActions"] == [topic_ref(sleepy_template)] == alarm["OKActions"]


def test_demanded_not_waking_is_ok_asleep_and_fires_when_demand_finds_no_pod_past_a_cold_start(
    sleepy_config: AppConfig, sleepy_template: dict[str, Any]
) -> None:
    alarms = alarms_by_name(sleepy_template)
    lax = alarms["edge-obs-stable-diffusion-nvidia-us-west-2-lax-1a-demanded-not-waking"]
    hour = 60
    # Asleep, nobody asks: no demand datapoint at all, the publisher reports 0 ready pods.
    assert alarm_state(lax, {DEMAND: every(hour, None), READY: every(hour, 0)}) == "OK"
    # Asleep with neither metric (a new deployment, or nothing published yet): no verdict, OK.
    assert alarm_state(lax, {DEMAND: every(hour, None), READY: every(hour, None)}) == "OK"
    # Devices ask every 5 minutes for 30 minutes and no pod turns ready: it does not wake.
    assert alarm_state(lax, {DEMAND: every(30, 1, each=5), READY: every(30, 0)}) == "ALARM"
    # The same demand, and a pod ready after a cold start of 8 minutes: it woke, no alarm.
    assert alarm_state(lax, {DEMAND: every(30, 1, each=5), READY: [0.0] * 8 + [1.0] * 22}) == "OK"
    # Demand only in the last window: the pod has not had a whole window yet.
    assert alarm_state(lax, {DEMAND: [None] * 20 + every(10, 1, each=5), READY: every(30, 0)}) == "OK"
    # The publisher down (no ReadyServingPods) while devices ask: not read as no pod (inventory-empty's case).
    assert alarm_state(lax, {DEMAND: every(30, 1, each=5), READY: every(30, None)}) == "OK"
    # The alarm it replaces would fire on a placement asleep by design, which is why it is replaced.
    regional = alarms["edge-obs-stable-diffusion-nvidia-no-ready-pod"]
    assert alarm_state(regional, {DEMAND: every(hour, None), READY: every(hour, 0)}) == "ALARM"


def test_a_placement_at_min_replicas_1_with_no_ready_pod_alarms_as_before(
    config: AppConfig, template: dict[str, Any], sleepy_template: dict[str, Any]
) -> None:
    for alarms in (alarms_by_name(template), alarms_by_name(sleepy_template)):
        regional = alarms["edge-obs-stable-diffusion-nvidia-no-ready-pod"]
        assert alarm_state(regional, {READY: every(5, 0)}) == "ALARM"
        assert alarm_state(regional, {READY: every(5, None)}) == "ALARM"  # the publisher down counts
        assert alarm_state(regional, {READY: [0.0, 0.0, 1.0, 0.0, 0.0]}) == "OK"
        assert alarm_state(regional, {READY: every(5, 1)}) == "OK"
    # Every placement of the always-serving deployment keeps it.
    assert all(f"edge-obs-{p.name}-no-ready-pod" in alarms_by_name(template) for p in topology.placements(config))


def test_the_dashboard_shows_a_sleeping_placement_as_a_state_and_demand_per_location(
    sleepy_config: AppConfig, sleepy_template: dict[str, Any], template: dict[str, Any]
) -> None:
    body = dashboard_body(sleepy_template)
    graphs = {w["properties"].get("title"): w["properties"] for w in body["widgets"] if w["type"] == "metric"}
    per_location = graphs["Device demand per location (inventory calls)"]["metrics"]
    assert [(row[1], row[3], row[5], row[-1]["stat"]) for row in per_location] == [
        (DEMAND, "edge-obs", location, "Sum")
        for location in ("us-west-2", "us-west-2-lax-1a", "us-west-2-den-1a")  # every serving location
    ]
    states = [
        w["properties"]["metrics"]
        for w in body["widgets"]
        if w["type"] == "metric" and w["properties"]["title"].startswith("State (minReplicas 0")
    ]
    sleeping = [p for p in topology.placements(sleepy_config) if p.node_pool_name != "nvidia"]
    assert len(states) == len(sleeping) == 5
    for rows in states:
        labelled = {row[0]["label"]: row[0]["expression"] for row in rows if isinstance(row[0], dict)}
        assert set(labelled) == {ASLEEP_LABEL, WAKING_LABEL, SERVING_LABEL}
        assert ASLEEP_LABEL == "asleep (0 pods, by design)"
        # Asleep is a state: 1 with no pod and no demand, 0 once devices ask or a pod serves.
        asleep = labelled[ASLEEP_LABEL]
        assert metric_math(asleep, {"ready": 0, "demand": None}) == 1
        assert metric_math(asleep, {"ready": 0, "demand": 3}) == 0
        assert metric_math(asleep, {"ready": 1, "demand": 3}) == 0
        assert metric_math(labelled[WAKING_LABEL], {"ready": 0, "demand": 3}) == 1
        assert metric_math(labelled[SERVING_LABEL], {"ready": 2, "demand": None}) == 1
    # Asleep is never an alarm: the alarm status widget lists no no-ready-pod alarm of a sleeping placement.
    (status,) = [w for w in body["widgets"] if w["type"] == "alarm"]
    assert len(status["properties"]["alarms"]) == len(alarms_by_name(sleepy_template))
    # A deployment where everything always serves shows no sleep state.
    assert not [w for w in dashboard_body(template)["widgets"] if "State (" in w["properties"].get("title", "")]


# --- the topic ----------------------------------------------------------------------------------------


def test_topic_is_encrypted_and_only_this_deployments_alarms_may_use_key_and_topic(
    config: AppConfig, template: dict[str, Any]
) -> None:
    (topic,) = resources(template, "AWS::SNS::Topic").values()
    (key_id,) = resources(template, "AWS::KMS::Key")
    key = template["Resources"][key_id]
    assert topic["Properties"]["KmsMasterKeyId"] == {"Fn::GetAtt": [key_id, "Arn"]}
    assert key["Properties"]["EnableKeyRotation"] is True
    (for_cloudwatch,) = [
        s
        for s in key["Properties"]["KeyPolicy"]["Statement"]
        if s.get("Principal") == {"Service": "cloudwatch.amazonaws.com"}
    ]
    assert sorted(for_cloudwatch["Action"]) == ["kms:Decrypt", "kms:GenerateDataKey*"]
    source_arn = json.dumps(for_cloudwatch["Condition"]["ArnLike"]["aws:SourceArn"])
    assert re.search(rf":cloudwatch:us-west-2:{PLAN_ACCOUNT}:alarm:edge-obs-\*", source_arn)
    assert for_cloudwatch["Condition"]["StringEquals"] == {"aws:SourceAccount": PLAN_ACCOUNT}
    (policy,) = resources(template, "AWS::SNS::TopicPolicy").values()
    statements = policy["Properties"]["PolicyDocument"]["Statement"]
    (publish,) = [s for s in statements if s.get("Principal") == {"Service": "cloudwatch.amazonaws.com"}]
    assert publish["Action"] == "sns:Publish" and publish["Condition"] == for_cloudwatch["Condition"]
    (tls_only,) = [s for s in statements if s["Effect"] == "Deny"]
    assert tls_only["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}


def test_one_email_subscription_per_configured_address(config: AppConfig, template: dict[str, Any]) -> None:
    subscriptions = resources(template, "AWS::SNS::Subscription").values()
    assert sorted(s["Properties"]["Endpoint"] for s in subscriptions) == sorted(config.alarms.emails)
    assert {s["Properties"]["Protocol"] for s in subscriptions} == {"email"}
    assert all(s["Properties"]["TopicArn"] == topic_ref(template) for s in subscriptions)
