"""The simulation's defaults are the deployed system's: config, rendered ScaledObjects, server, Karpenter."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from charts.karpenter import DisruptionSettings
from plan import contract
from plan.config import ServingConfig
from runtime.inventory.settings import PublisherSettings
from runtime.server.settings import Settings
from scaling.loop import (
    INVENTORY_HEARTBEAT_S,
    Autoscaling,
    HpaPolicy,
    HpaRules,
    MetricPipeline,
    Nodes,
    PodProfile,
    Wake,
)
from tests.charts.conftest import Rendered, render
from tests.conftest import cdk_json_context


@pytest.fixture(scope="module")
def scaled_objects() -> list[dict[str, Any]]:
    rendered: Rendered = render(cdk_json_context())
    objects = rendered.of_kind("ScaledObject")
    assert objects
    return objects


def rules(rendered: dict[str, Any]) -> HpaRules:
    """The loop's HpaRules from one direction of a rendered HPA behaviour."""
    policies = tuple(HpaPolicy(p["type"], p["value"], p["periodSeconds"]) for p in rendered["policies"])
    return HpaRules(rendered["stabilizationWindowSeconds"], policies, rendered["selectPolicy"])


def test_autoscaling_defaults_are_the_serving_config_defaults() -> None:
    a, serving = Autoscaling(), ServingConfig()
    assert (a.min_replicas, a.max_replicas, a.target_pending_per_replica, a.keda_polling_interval_s) == (
        serving.min_replicas,
        serving.max_replicas,
        serving.target_pending_per_replica,
        serving.keda_polling_interval_s,
    )
    assert a.scale_down.stabilization_window_s == serving.scale_down_window_s


def trigger(scaled: dict[str, Any], name: str) -> dict[str, Any] | None:
    return next((t for t in scaled["spec"]["triggers"] if t["name"] == name), None)


def test_the_simulated_hpa_is_the_rendered_one(scaled_objects: list[dict[str, Any]]) -> None:
    # The chart renders the behaviour and caches metrics; the simulation must run the same loop.
    a = Autoscaling()
    for scaled in scaled_objects:
        spec = scaled["spec"]
        behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
        assert rules(behavior["scaleUp"]) == a.scale_up
        assert rules(behavior["scaleDown"]) == a.scale_down
        assert spec["pollingInterval"] == a.keda_polling_interval_s
        assert spec["minReplicaCount"] in (a.min_replicas, 0) and spec["maxReplicaCount"] == a.max_replicas
        if spec["minReplicaCount"] == 0:  # asleep when idle: KEDA's cooldown is scaleToZeroAfterSeconds
            assert spec["cooldownPeriod"] == a.scale_to_zero_after_s
        pending = trigger(scaled, "pending")
        assert pending is not None and pending["useCachedMetrics"] is a.use_cached_metrics
        assert int(pending["metadata"]["targetMetricValue"]) == a.target_pending_per_replica


def pipeline_of(trigger: dict[str, Any]) -> MetricPipeline:
    meta = trigger["metadata"]
    assert meta["metricStat"] == "Sum" and trigger["metricType"] == "AverageValue"
    return MetricPipeline(
        stat_period_s=int(meta["metricStatPeriod"]),
        end_time_offset_s=int(meta["metricEndTimeOffset"]),
        collection_time_s=int(meta["metricCollectionTime"]),
    )


def test_the_metric_pipelines_are_the_rendered_triggers(scaled_objects: list[dict[str, Any]]) -> None:
    pending, demand = MetricPipeline(), Wake().demand_metric
    asleep = 0
    for scaled in scaled_objects:
        rendered = trigger(scaled, "pending")
        assert rendered is not None and pipeline_of(rendered) == replace(pending, ingest_delay_s=0)
        wake = trigger(scaled, "demand")
        assert (wake is not None) is (scaled["spec"]["minReplicaCount"] == 0)
        if wake is not None:
            asleep += 1
            assert wake["metadata"]["metricName"] == contract.METRIC_DEVICE_DEMAND
            assert wake["metadata"]["activationTargetMetricValue"] == "0"
            assert pipeline_of(wake) == replace(demand, ingest_delay_s=0)
    assert asleep, "the rendered deployment has no placement at minReplicas 0 to compare the wake trigger with"


def test_the_inventory_heartbeat_is_the_publishers_default() -> None:
    assert PublisherSettings.model_fields["interval_s"].default == INVENTORY_HEARTBEAT_S


def test_pod_and_node_defaults_are_the_servers_and_karpenters() -> None:
    server_queue = Settings.model_fields["queue_size"].default
    assert PodProfile().queue_size == server_queue
    after = DisruptionSettings().consolidate_after
    assert after.endswith("m")
    assert Nodes().consolidate_after_s == int(after[:-1]) * 60
