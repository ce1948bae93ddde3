"""The simulation's defaults are the deployed system's: config, rendered ScaledObjects, server, Karpenter."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from charts.karpenter import DisruptionSettings
from runtime.server.settings import Settings
from scaling.model import Autoscaling, MetricPipeline, Nodes, PodModel
from spec.config import ServingConfig
from tests.charts.conftest import Rendered, render
from tests.conftest import cdk_json_context


@pytest.fixture(scope="module")
def scaled_objects() -> list[dict[str, Any]]:
    rendered: Rendered = render(cdk_json_context())
    objects = rendered.of_kind("ScaledObject")
    assert objects
    return objects


def test_autoscaling_defaults_are_the_serving_config_defaults() -> None:
    a, serving = Autoscaling(), ServingConfig()
    assert (a.min_replicas, a.max_replicas, a.target_pending_per_replica) == (
        serving.min_replicas,
        serving.max_replicas,
        serving.target_pending_per_replica,
    )
    assert (a.keda_polling_interval_s, a.keda_cooldown_period_s) == (
        serving.keda_polling_interval_s,
        serving.keda_cooldown_period_s,
    )


def test_the_chart_leaves_the_hpa_behaviour_and_metric_caching_at_their_defaults(
    scaled_objects: list[dict[str, Any]],
) -> None:
    # The simulation's HPA rules are the Kubernetes defaults and it reads CloudWatch on every sync:
    # if the chart starts rendering a behaviour or useCachedMetrics, scaling/model.py must follow.
    for scaled in scaled_objects:
        assert "horizontalPodAutoscalerConfig" not in scaled["spec"].get("advanced", {})
        for trigger in scaled["spec"]["triggers"]:
            assert trigger.get("useCachedMetrics", False) is Autoscaling().use_cached_metrics


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
    server_queue = next(f for f in dataclasses.fields(Settings) if f.name == "queue_size").default
    assert PodModel().queue_size == server_queue
    after = DisruptionSettings().consolidate_after
    assert after.endswith("m")
    assert Nodes().consolidate_after_s == int(after[:-1]) * 60
