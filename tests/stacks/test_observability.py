"""ObservabilityStack: per deployment, a dashboard and alarms per placement on the metrics the runtime
and Container Insights publish (names and dimensions exactly), an encrypted topic CloudWatch alarms
may publish to, and the configured email subscriptions."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
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
    CONTAINER_INSIGHTS_NAMESPACE,
    DEVICE_UTILIZATION,
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


@pytest.fixture(scope="module")
def config() -> AppConfig:
    return load_config({**cdk_json_context(), **VARIANT})


@pytest.fixture(scope="module")
def template(config: AppConfig) -> dict[str, Any]:
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
    (emf,) = EmfSink(dims).record(interval, 0.0)["_aws"]["CloudWatchMetrics"]
    server = {d["MetricName"] for d in server_data}
    assert {m["Name"] for m in emf["Metrics"]} == server, "both sinks publish the same metrics"
    assert [set(group) for group in emf["Dimensions"]] == [
        set(contract.METRIC_DIMENSIONS),
        set(contract.LEGACY_METRIC_DIMENSIONS),
    ]
    assert all(published[name] == {frozenset(g) for g in emf["Dimensions"]} for name in server)
    return published


def test_every_edge_diffusion_metric_read_is_published_with_that_dimension_set(template: dict[str, Any]) -> None:
    """A metric is only found with its exact dimension set: read nothing the runtime does not write."""
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
    assert set(DEVICE_UTILIZATION) == set(ACCELERATORS)


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
