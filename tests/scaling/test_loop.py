"""The simulation's defaults are the deployed system's: config, rendered ScaledObjects, server, Karpenter."""

from __future__ import annotations

from typing import Any

import pytest

from charts.karpenter import DisruptionSettings
from plan.config import ServingConfig
from runtime.server.settings import Settings
from scaling.loop import Autoscaling, HpaPolicy, HpaRules, MetricPipeline, Nodes, PodProfile
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


def test_the_simulated_hpa_is_the_rendered_one(scaled_objects: list[dict[str, Any]]) -> None:
    # The chart renders the behaviour and caches metrics; the simulation must run the same loop.
    a = Autoscaling()
    for scaled in scaled_objects:
        spec = scaled["spec"]
        behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
        assert rules(behavior["scaleUp"]) == a.scale_up
        assert rules(behavior["scaleDown"]) == a.scale_down
        assert spec["pollingInterval"] == a.keda_polling_interval_s
        assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (a.min_replicas, a.max_replicas)
        (trigger,) = spec["triggers"]
        assert trigger["useCachedMetrics"] is a.use_cached_metrics
        assert int(trigger["metadata"]["targetMetricValue"]) == a.target_pending_per_replica


def test_the_metric_pipeline_is_the_rendered_trigger(scaled_objects: list[dict[str, Any]]) -> None:
    m = MetricPipeline()
    for scaled in scaled_objects:
        (trigger,) = scaled["spec"]["triggers"]
        meta = trigger["metadata"]
        assert int(meta["metricStatPeriod"]) == m.stat_period_s
        assert int(meta["metricEndTimeOffset"]) == m.end_time_offset_s
        assert int(meta["metricCollectionTime"]) == m.collection_time_s
        assert meta["metricStat"] == "Sum"
        assert trigger["metricType"] == "AverageValue"


def test_pod_and_node_defaults_are_the_servers_and_karpenters() -> None:
    server_queue = Settings.model_fields["queue_size"].default
    assert PodProfile().queue_size == server_queue
    after = DisruptionSettings().consolidate_after
    assert after.endswith("m")
    assert Nodes().consolidate_after_s == int(after[:-1]) * 60
