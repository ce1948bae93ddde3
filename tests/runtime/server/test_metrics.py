"""CloudWatch metrics: the EMF record, PutMetricData against moto, one publish per interval."""

from __future__ import annotations

import io
import json
from typing import Any

import boto3
from moto import mock_aws

from runtime.server.metrics import CloudWatchAggregator, CloudWatchSink, Dimensions, EmfSink, Interval, compress
from spec import contract

DIMS = Dimensions("sd-cuda-usw2-lax-1a", "cuda", "us-west-2-lax-1a")


def test_emf_record_names_namespace_dimensions_and_values() -> None:
    stream = io.StringIO()
    agg = CloudWatchAggregator(EmfSink(DIMS, stream), pending=lambda: 3, interval_s=60, clock=lambda: 1_700_000_000.0)
    for ms in (100.0, 200.0, 300.0):
        agg.record_request(ms, images=2)
    agg.sample_pending()
    agg.flush()
    (line,) = stream.getvalue().splitlines()
    doc = json.loads(line)
    meta = doc["_aws"]
    assert meta["Timestamp"] == 1_700_000_000_000
    (directive,) = meta["CloudWatchMetrics"]
    assert directive["Namespace"] == contract.METRIC_NAMESPACE
    assert directive["Dimensions"] == [list(contract.METRIC_DIMENSIONS)]
    names = {m["Name"] for m in directive["Metrics"]}
    assert names == {
        contract.METRIC_PENDING_REQUESTS,
        contract.METRIC_IMAGES_GENERATED,
        contract.METRIC_INFERENCE_LATENCY_MS,
    }
    for dim in contract.METRIC_DIMENSIONS:  # every dimension is a string member of the record
        assert isinstance(doc[dim], str)
    assert doc[contract.DIMENSION_LOCATION] == "us-west-2-lax-1a"
    assert doc[contract.METRIC_PENDING_REQUESTS] == 3
    assert doc[contract.METRIC_IMAGES_GENERATED] == 6
    assert doc[contract.METRIC_INFERENCE_LATENCY_MS] == [100.0, 200.0, 300.0]
    agg.flush()  # the next interval starts empty
    second = json.loads(stream.getvalue().splitlines()[1])
    assert second[contract.METRIC_IMAGES_GENERATED] == 0 and contract.METRIC_INFERENCE_LATENCY_MS not in second


def test_compress_keeps_at_most_100_values_and_the_mean() -> None:
    values = [float(i) for i in range(1000)]
    v, c = compress(values)
    assert len(v) == len(c) == 100 and sum(c) == 1000
    assert abs(sum(a * b for a, b in zip(v, c, strict=True)) / 1000 - 499.5) < 1e-9


def test_cloudwatch_sink_with_moto_one_call_per_interval(monkeypatch: Any) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-west-2")
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(var, "testing")
    with mock_aws():
        client = boto3.client("cloudwatch", region_name="us-west-2")
        calls: list[str] = []
        client.meta.events.register("before-call.cloudwatch.PutMetricData", lambda **kw: calls.append("put"))
        agg = CloudWatchAggregator(CloudWatchSink(DIMS, "us-west-2", client=client), pending=lambda: 2)
        for i in range(250):
            agg.record_request(50.0 + i, images=1)
        agg.sample_pending()
        agg.flush()
        assert calls == ["put"]  # 250 requests, one API call
        listed = client.list_metrics(Namespace=contract.METRIC_NAMESPACE)["Metrics"]
        assert {m["MetricName"] for m in listed} == {
            contract.METRIC_PENDING_REQUESTS,
            contract.METRIC_IMAGES_GENERATED,
            contract.METRIC_INFERENCE_LATENCY_MS,
        }
        for m in listed:
            assert {d["Name"]: d["Value"] for d in m["Dimensions"]} == DIMS.as_dict()
        data = CloudWatchSink(DIMS, "us-west-2", client=client).metric_data(
            Interval(pending_samples=[1, 3], latencies_ms=[10.0, 10.0, 20.0], images=3), 1_700_000_000.0
        )
        by_name = {d["MetricName"]: d for d in data}
        assert by_name[contract.METRIC_PENDING_REQUESTS]["Value"] == 2
        assert by_name[contract.METRIC_INFERENCE_LATENCY_MS]["Values"] == [10.0, 10.0, 20.0]


def test_publisher_thread_publishes_per_interval_not_per_request() -> None:
    published: list[Interval] = []

    class Recorder:
        def publish(self, interval: Interval, timestamp: float) -> None:
            published.append(interval)

    agg = CloudWatchAggregator(Recorder(), pending=lambda: 1, interval_s=0.3, sample_s=0.05)
    agg.start()
    try:
        for _ in range(200):
            agg.record_request(5.0, images=1)
        import time

        time.sleep(0.8)
    finally:
        agg.stop()
    assert 2 <= len(published) <= 4  # two or three intervals plus the final flush, not 200
    assert sum(i.images for i in published) == 200
    assert all(i.pending == 1 for i in published if i.pending_samples)


def test_failing_sink_never_raises() -> None:
    class Broken:
        def publish(self, interval: Interval, timestamp: float) -> None:
            raise ConnectionError("no route to monitoring.us-west-2.amazonaws.com")

    agg = CloudWatchAggregator(Broken(), pending=lambda: 0)
    agg.record_request(1.0, 1)
    agg.flush()
    assert agg.failures == 1
