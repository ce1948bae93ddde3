"""Every autoscaling knob of ``serving`` changes the rendered ScaledObjects, within what KEDA accepts."""

from __future__ import annotations

from typing import Any

import pytest

from charts.autoscaling import AutoscalingSettings
from plan import contract, topology
from plan.accelerators import ACCELERATORS
from plan.config import AppConfig
from plan.deployments import load_plan
from plan.topology import Placement
from tests.charts import validate
from tests.charts.conftest import Rendered, render
from tests.charts.validate import Tally
from tests.conftest import cdk_json_context

# Not the defaults (plan/config/sections.py ServingConfig): each differs, so each must show in the manifest.
CHANGED = {
    "minReplicas": 2,
    "maxReplicas": 9,
    "targetPendingPerReplica": 5,
    "kedaPollingIntervalSeconds": 45,
    "scaleDownWindowSeconds": 120,
}
# autoscaling/v2 HPAScalingRules limits, as the released KEDA CRD enforces them (its kustomize patch
# adds min 0 / max 3600 to stabilizationWindowSeconds; third_party/keda/SOURCES.md) and as the
# vendored CRD's descriptions state them (periodSeconds 1..1800, value > 0).
MAX_WINDOW_S = 3600
MAX_PERIOD_S = 1800


@pytest.fixture(scope="module")
def changed() -> Rendered:
    return render({**cdk_json_context(), "serving": CHANGED})


def behavior(scaled: dict[str, Any]) -> dict[str, Any]:
    behaviour: dict[str, Any] = scaled["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    return behaviour


def test_every_knob_shows_in_the_scaled_objects(changed: Rendered) -> None:
    scaled_objects = changed.of_kind("ScaledObject")
    assert scaled_objects
    for scaled in scaled_objects:
        spec = scaled["spec"]
        assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (2, 9)
        (trigger,) = spec["triggers"]
        assert trigger["metadata"]["targetMetricValue"] == "5"
        # The HPA reads KEDA's cached value, so the polling interval is how often CloudWatch is read.
        assert spec["pollingInterval"] == 45
        assert trigger["useCachedMetrics"] is True
        # The cooldown is the HPA's scale-down window (KEDA's cooldownPeriod acts only at 0 replicas).
        assert behavior(scaled)["scaleDown"]["stabilizationWindowSeconds"] == 120
        assert "cooldownPeriod" not in spec


def test_the_defaults_render_the_settings_scale_up_and_the_config_window(rendered: Rendered) -> None:
    settings, knobs = AutoscalingSettings(), rendered.config.serving
    for scaled in rendered.of_kind("ScaledObject"):
        b = behavior(scaled)
        assert b["scaleUp"]["stabilizationWindowSeconds"] == settings.scale_up_stabilization_s
        assert [(p["type"], p["value"], p["periodSeconds"]) for p in b["scaleUp"]["policies"]] == [
            (p.kind, p.value, p.period_s) for p in settings.scale_up_policies
        ]
        assert [(p["type"], p["value"], p["periodSeconds"]) for p in b["scaleDown"]["policies"]] == [
            (p.kind, p.value, p.period_s) for p in settings.scale_down_policies
        ]
        assert b["scaleDown"]["stabilizationWindowSeconds"] == knobs.scale_down_window_s
        assert scaled["spec"]["pollingInterval"] == knobs.keda_polling_interval_s


@pytest.mark.parametrize("which", ["defaults", "changed"])
def test_the_behaviour_is_within_what_the_hpa_accepts(rendered: Rendered, changed: Rendered, which: str) -> None:
    chart = rendered if which == "defaults" else changed
    tally = Tally()  # not the session's: that one counts the app's charts once
    for scaled in chart.of_kind("ScaledObject"):
        assert validate.validate_custom(scaled) == []
        assert validate.evaluate_cel(scaled, tally) == []
        for direction in ("scaleUp", "scaleDown"):
            rules = behavior(scaled)[direction]
            assert 0 <= rules["stabilizationWindowSeconds"] <= MAX_WINDOW_S
            assert rules["selectPolicy"] in {"Max", "Min", "Disabled"}
            for policy in rules["policies"]:
                assert policy["type"] in {"Pods", "Percent"}
                assert policy["value"] > 0 and 0 < policy["periodSeconds"] <= MAX_PERIOD_S
    assert tally.cel_evaluations > 0  # the CRD's minReplicaCount <= maxReplicaCount rule ran


def test_the_vendored_crd_refuses_a_misspelt_behaviour(rendered: Rendered) -> None:
    # The validation above can fail: the closed CRD schema names every behaviour field.
    scaled = rendered.of_kind("ScaledObject")[0]
    broken = {**scaled, "spec": {**scaled["spec"], "advanced": {"horizontalPodAutoscalerConfig": {"behaviour": {}}}}}
    assert any("behaviour" in error for error in validate.validate_custom(broken))


def keda_admission_warnings(scaled: dict[str, Any]) -> list[str]:
    """The warnings KEDA 2.20.2's ScaledObject webhook returns on create and update, as it decides them
    (apis/keda/v1alpha1/scaledobject_webhook.go, verifyScaledObjects): kubectl prints each one on
    every apply, and the operator records it as an event."""
    spec = scaled["spec"]
    min_replicas = spec.get("minReplicaCount", 0)
    idle_not_zero = spec.get("idleReplicaCount") != 0
    cached = any(trigger.get("useCachedMetrics") for trigger in spec["triggers"])
    warnings = []
    if "pollingInterval" in spec and min_replicas > 0 and idle_not_zero and not cached:
        warnings.append("PollingInterval is configured but is not relevant")
    if "cooldownPeriod" in spec and min_replicas > 0 and idle_not_zero:
        warnings.append("CooldownPeriod is configured but is not relevant")
    return warnings


@pytest.mark.parametrize("which", ["defaults", "changed"])
def test_keda_accepts_the_scaled_objects_without_a_warning(rendered: Rendered, changed: Rendered, which: str) -> None:
    """Every field set acts: none that KEDA's webhook calls irrelevant at these replica counts."""
    chart = rendered if which == "defaults" else changed
    scaled_objects = chart.of_kind("ScaledObject")
    assert scaled_objects
    for scaled in scaled_objects:
        assert keda_admission_warnings(scaled) == [], scaled["metadata"]["name"]
    # The check can fail: the same object with KEDA's own cooldownPeriod, or without cached metrics.
    spec = scaled_objects[0]["spec"]
    assert keda_admission_warnings({"spec": {**spec, "cooldownPeriod": 300}})
    uncached = [{**trigger, "useCachedMetrics": False} for trigger in spec["triggers"]]
    assert keda_admission_warnings({"spec": {**spec, "triggers": uncached}})


# Every signal, the Local Zone, Neuron and CPU placements asleep when idle, the Region's NVIDIA
# placement at 2 on utilization alone: each trigger shape, at 0 and at >= 1.
SLEEPING = {
    "minReplicas": 0,
    "scaleToZeroAfterSeconds": 1200,
    "signals": ["pending", "utilization", "latency"],
    "utilizationTargetPercent": 65,
    "latencyTargetMs": 5000,
    "placements": {"nvidia": {"minReplicas": 2, "signals": ["utilization"]}},
}
PODS_DIMENSIONS = {*contract.METRIC_DIMENSIONS, *contract.LEGACY_METRIC_DIMENSIONS}


@pytest.fixture(scope="module")
def sleeping() -> tuple[Rendered, AppConfig]:
    context = {**cdk_json_context(), "serving": SLEEPING}
    return render(context), load_plan(context).selected.config


def placement_of(scaled: dict[str, Any], config: AppConfig) -> Placement:
    (placement,) = [p for p in topology.placements(config) if p.name == scaled["metadata"]["name"]]
    return placement


def by_name(scaled: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {trigger["name"]: trigger for trigger in scaled["spec"]["triggers"]}


def test_a_sleeping_placement_wakes_on_demand_its_pods_do_not_publish(sleeping: tuple[Rendered, AppConfig]) -> None:
    rendered, config = sleeping
    asleep = [s for s in rendered.of_kind("ScaledObject") if s["spec"]["minReplicaCount"] == 0]
    assert {placement_of(s, config).node_pool_name for s in asleep} == {"nvidia-us-west-2-lax-1a", "neuron", "cpu"}
    for scaled in asleep:
        placement, spec = placement_of(scaled, config), scaled["spec"]
        assert spec["cooldownPeriod"] == spec["initialCooldownPeriod"] == 1200
        assert "fallback" not in spec  # a trigger in fallback counts as active: it would wake it for good
        assert list(by_name(scaled)) == ["demand", "pending", "utilization", "latency"]
        demand = by_name(scaled)["demand"]
        meta = demand["metadata"]
        assert (meta["namespace"], meta["metricName"], meta["metricStat"]) == (
            contract.METRIC_NAMESPACE,
            contract.METRIC_DEVICE_DEMAND,
            "Sum",
        )
        dimensions = dict(zip(meta["dimensionName"].split(";"), meta["dimensionValue"].split(";"), strict=True))
        assert dimensions == {"Cluster": config.cluster_name, "Location": placement.location.metric_value(config)}
        # Not the pods' own: no dimension set the runtime publishes has Cluster.
        assert not set(dimensions) <= PODS_DIMENSIONS
        assert meta["activationTargetMetricValue"] == "0" and demand["metricType"] == "AverageValue"
        assert int(meta["targetMetricValue"]) >= AutoscalingSettings().demand_target  # one pod, never more
    lax = rendered.named("ScaledObject", "stable-diffusion-nvidia-us-west-2-lax-1a")
    assert by_name(lax)["demand"]["metadata"]["dimensionValue"].endswith(";us-west-2-lax-1a")


def test_a_placement_at_one_or_more_has_no_demand_trigger(sleeping: tuple[Rendered, AppConfig]) -> None:
    rendered, _ = sleeping
    scaled = rendered.named("ScaledObject", "stable-diffusion-nvidia")
    spec = scaled["spec"]
    assert spec["minReplicaCount"] == 2
    assert list(by_name(scaled)) == ["utilization"]
    assert "cooldownPeriod" not in spec and "initialCooldownPeriod" not in spec
    assert spec["fallback"] == {"failureThreshold": AutoscalingSettings().fallback_failures, "replicas": 2}


def test_each_signal_renders_its_own_trigger(sleeping: tuple[Rendered, AppConfig]) -> None:
    rendered, config = sleeping
    expected_utilization = {
        "nvidia": "pod_gpu_utilization",
        "neuron": "pod_neuroncore_utilization",
        "cpu": "pod_cpu_utilization",
    }
    assert {name: a.utilization_metric for name, a in ACCELERATORS.items()} == expected_utilization
    for scaled in rendered.of_kind("ScaledObject"):
        placement, triggers = placement_of(scaled, config), by_name(scaled)
        utilization = triggers["utilization"]
        meta = utilization["metadata"]
        assert (meta["namespace"], meta["metricName"], meta["metricStat"]) == (
            "ContainerInsights",
            expected_utilization[placement.accelerator.name],
            "Average",
        )
        assert meta["dimensionName"] == "ClusterName;Namespace;PodName"
        assert meta["dimensionValue"] == f"{config.cluster_name};{topology.NAMESPACE};{placement.name}"
        assert utilization["metricType"] == "Value"  # a per-pod level: the HPA scales the count by value / target
        assert meta["targetMetricValue"] == meta["activationTargetMetricValue"] == "65"
        if "latency" in triggers:
            latency = triggers["latency"]
            meta = latency["metadata"]
            assert (meta["metricName"], meta["metricStat"], latency["metricType"]) == (
                contract.METRIC_INFERENCE_LATENCY_MS,
                "p90",
                "Value",
            )
            assert meta["dimensionValue"] == triggers["pending"]["metadata"]["dimensionValue"]
            assert meta["targetMetricValue"] == "5000"
        if "pending" in triggers:
            meta = triggers["pending"]["metadata"]
            assert (meta["metricName"], meta["metricStat"]) == (contract.METRIC_PENDING_REQUESTS, "Sum")
            assert triggers["pending"]["metricType"] == "AverageValue"
            assert meta["activationTargetMetricValue"] == "0"


def test_every_trigger_is_what_the_cloudwatch_scaler_accepts(sleeping: tuple[Rendered, AppConfig]) -> None:
    """KEDA 2.20.2 pkg/scalers/aws_cloudwatch_scaler.go (awsCloudwatchMetadata.Validate,
    checkMetricStatPeriod) and scaletriggers_types.go (ValidateTriggers): the rules it refuses on."""
    rendered, _ = sleeping
    for scaled in rendered.of_kind("ScaledObject"):
        names = [trigger["name"] for trigger in scaled["spec"]["triggers"]]
        assert len(names) == len(set(names))  # webhook: trigger names unique
        for trigger in scaled["spec"]["triggers"]:
            meta = trigger["metadata"]
            assert all(isinstance(value, str) for value in meta.values())
            assert {"targetMetricValue", "minMetricValue", "awsRegion"} <= set(meta)  # required by the scaler
            assert len(meta["dimensionName"].split(";")) == len(meta["dimensionValue"].split(";"))
            period, window = int(meta["metricStatPeriod"]), int(meta["metricCollectionTime"])
            assert period in {1, 5, 10, 30, 60} or period % 60 == 0
            assert window > 0 and window % period == 0
            assert int(meta["metricEndTimeOffset"]) >= 0
            assert trigger["metricType"] in {"AverageValue", "Value"}


def test_the_sleeping_shapes_validate_and_draw_no_keda_warning(sleeping: tuple[Rendered, AppConfig]) -> None:
    rendered, _ = sleeping
    tally = Tally()
    for scaled in rendered.of_kind("ScaledObject"):
        assert validate.validate_custom(scaled) == []
        assert validate.evaluate_cel(scaled, tally) == []
        assert keda_admission_warnings(scaled) == [], scaled["metadata"]["name"]
    assert tally.cel_evaluations > 0
