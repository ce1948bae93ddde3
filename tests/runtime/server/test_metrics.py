"""CloudWatch metrics: the EMF record, PutMetricData against moto, one publish per interval, request
outcomes counted by status at the edge of the app, and the cold start once."""

from __future__ import annotations

import asyncio
import io
import json
from typing import Any

import boto3
import pytest
from moto import mock_aws

from plan import contract
from runtime.server.metrics import (
    AnswerCounter,
    CloudWatchAggregator,
    CloudWatchSink,
    Dimensions,
    EmfSink,
    Interval,
    compress,
)

DIMS = Dimensions("sd-cuda-usw2-lax-1a", "cuda", "us-west-2-lax-1a")
OUTCOMES = {contract.METRIC_REQUESTS, contract.METRIC_REJECTED_REQUESTS, contract.METRIC_SERVER_ERRORS}


def test_emf_record_names_namespace_dimensions_and_values() -> None:
    stream = io.StringIO()
    agg = CloudWatchAggregator(EmfSink(DIMS, stream), pending=lambda: 3, interval_s=60, clock=lambda: 1_700_000_000.0)
    for ms in (100.0, 200.0, 300.0):
        agg.record_request(ms, images=2)
    for status in (200, 200, 200, 429, 422, 500, 503, 504, 499):
        agg.record_answer(status)
    agg.record_cold_start(42.5)
    agg.sample_pending()
    agg.flush()
    (line,) = stream.getvalue().splitlines()
    doc = json.loads(line)
    meta = doc["_aws"]
    assert meta["Timestamp"] == 1_700_000_000_000
    (directive,) = meta["CloudWatchMetrics"]
    assert directive["Namespace"] == contract.METRIC_NAMESPACE
    # Dashboards and alarms read the current set, KEDA the legacy one every image version publishes.
    assert directive["Dimensions"] == [list(contract.METRIC_DIMENSIONS), list(contract.LEGACY_METRIC_DIMENSIONS)]
    names = {m["Name"] for m in directive["Metrics"]}
    assert names == {
        contract.METRIC_PENDING_REQUESTS,
        contract.METRIC_IMAGES_GENERATED,
        contract.METRIC_INFERENCE_LATENCY_MS,
        contract.METRIC_COLD_START_SECONDS,
        *OUTCOMES,
    }
    units = {m["Name"]: m["Unit"] for m in directive["Metrics"]}
    assert units[contract.METRIC_COLD_START_SECONDS] == "Seconds" and units[contract.METRIC_REQUESTS] == "Count"
    for dim in {*contract.METRIC_DIMENSIONS, *contract.LEGACY_METRIC_DIMENSIONS}:  # a string member each
        assert isinstance(doc[dim], str)
    assert doc[contract.DIMENSION_LOCATION] == "us-west-2-lax-1a"
    assert doc[contract.METRIC_PENDING_REQUESTS] == 3
    assert doc[contract.METRIC_IMAGES_GENERATED] == 6
    assert doc[contract.METRIC_INFERENCE_LATENCY_MS] == [100.0, 200.0, 300.0]
    assert doc[contract.METRIC_REQUESTS] == 9  # every answer, whatever its status
    assert doc[contract.METRIC_REJECTED_REQUESTS] == 1  # 429 only (a 422 is the client's mistake)
    assert doc[contract.METRIC_SERVER_ERRORS] == 3  # 500, 503, 504
    assert doc[contract.METRIC_COLD_START_SECONDS] == 42.5
    agg.flush()  # the next interval starts empty: zero outcomes are datapoints, the cold start is not repeated
    second = json.loads(stream.getvalue().splitlines()[1])
    assert second[contract.METRIC_IMAGES_GENERATED] == 0 and contract.METRIC_INFERENCE_LATENCY_MS not in second
    assert all(second[name] == 0 for name in OUTCOMES) and contract.METRIC_COLD_START_SECONDS not in second


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
            agg.record_answer(200 if i % 10 else 429)
        agg.record_cold_start(12.0)
        agg.sample_pending()
        agg.flush()
        assert calls == ["put"]  # 250 requests, one API call
        listed = client.list_metrics(Namespace=contract.METRIC_NAMESPACE)["Metrics"]
        assert {m["MetricName"] for m in listed} == {
            contract.METRIC_PENDING_REQUESTS,
            contract.METRIC_IMAGES_GENERATED,
            contract.METRIC_INFERENCE_LATENCY_MS,
            contract.METRIC_COLD_START_SECONDS,
            *OUTCOMES,
        }
        published = {tuple(sorted(d["Name"] for d in m["Dimensions"])) for m in listed}
        assert published == {
            tuple(sorted(contract.METRIC_DIMENSIONS)),
            tuple(sorted(contract.LEGACY_METRIC_DIMENSIONS)),
        }
        for m in listed:
            assert all(DIMS.as_dict()[d["Name"]] == d["Value"] for d in m["Dimensions"])
        data = CloudWatchSink(DIMS, "us-west-2", client=client).metric_data(
            Interval(pending_samples=[1, 3], latencies_ms=[10.0, 10.0, 20.0], images=3), 1_700_000_000.0
        )
        by_name = {d["MetricName"]: d for d in data}
        assert by_name[contract.METRIC_PENDING_REQUESTS]["Value"] == 2
        assert by_name[contract.METRIC_INFERENCE_LATENCY_MS]["Values"] == [10.0, 10.0, 20.0]
        assert contract.METRIC_COLD_START_SECONDS not in by_name  # only in the interval that turned ready
        stats = client.get_metric_statistics(
            Namespace=contract.METRIC_NAMESPACE,
            MetricName=contract.METRIC_REJECTED_REQUESTS,
            Dimensions=[{"Name": k, "Value": DIMS.as_dict()[k]} for k in contract.METRIC_DIMENSIONS],
            StartTime="2000-01-01T00:00:00Z",
            EndTime="2100-01-01T00:00:00Z",
            Period=60,
            Statistics=["Sum"],
        )
        assert sum(p["Sum"] for p in stats["Datapoints"]) == 25


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


def _asgi(app: Any, path: str, method: str = "POST") -> int:
    """Drive an ASGI app with one request; the status it answered (or the exception it raised)."""
    answered: list[int] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            answered.append(message["status"])

    scope = {"type": "http", "method": method, "path": path, "headers": []}
    asyncio.run(app(scope, receive, send))
    return answered[0]


def test_answer_counter_records_every_status_on_the_images_path_only() -> None:
    recorded: list[int] = []

    def app_answering(status: int) -> Any:
        async def app(scope: Any, receive: Any, send: Any) -> None:
            await send({"type": "http.response.start", "status": status, "headers": []})
            await send({"type": "http.response.body", "body": b""})

        return app

    for status in (200, 401, 415, 422, 429, 503, 504):
        assert _asgi(AnswerCounter(app_answering(status), recorded.append), contract.IMAGES_PATH) == status
    _asgi(AnswerCounter(app_answering(200), recorded.append), contract.READY_PATH, "GET")  # a probe: not counted
    assert recorded == [200, 401, 415, 422, 429, 503, 504]

    async def raising(scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError("handler bug")

    with pytest.raises(RuntimeError):  # the outer error middleware answers 500 for it: counted as a 500
        _asgi(AnswerCounter(raising, recorded.append), contract.IMAGES_PATH)
    assert recorded[-1] == 500

    agg = CloudWatchAggregator(None, pending=lambda: 0)
    for status in recorded:
        agg.record_answer(status)
    counts = agg._current.counts()
    assert counts == {
        contract.METRIC_REQUESTS: 8,
        contract.METRIC_REJECTED_REQUESTS: 1,
        contract.METRIC_SERVER_ERRORS: 3,
    }
