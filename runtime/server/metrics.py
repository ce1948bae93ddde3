"""Prometheus metrics for scraping, and CloudWatch metrics for KEDA, aggregated in-process.

The request path only touches in-memory counters. A background thread samples the pending
work once a second and, every interval, writes ONE aggregated record per interval: an
Embedded Metric Format line on stdout (the log agent turns it into metrics) or one batched
PutMetricData call. Names, namespace and dimensions come from plan.contract, which the
charts' KEDA triggers import. Every interval carries the request outcomes (answered, 429,
5xx: zero is a datapoint too, so alarms see a healthy pod as healthy); the interval in which
the server turned ready also carries its cold start.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import IO, Any, Final, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from plan import contract

log = logging.getLogger(__name__)

MAX_VALUES_PER_METRIC: Final = 100  # EMF accepts at most 100 values per metric per record
PENDING_SAMPLE_S: Final = 1.0
REJECTION_REASONS: Final = (
    "queue_full",
    "deadline",
    "disconnected",
    "invalid",
    "draining",
    "not_ready",
    "error",
)


class PromMetrics:
    """The Prometheus instruments; one registry per app so test servers never collide."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        latency_buckets = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
        self.request_duration = Histogram(
            contract.PROM_REQUEST_DURATION,
            "Time from request accepted to response ready, by outcome.",
            ["outcome"],
            buckets=latency_buckets,
            registry=r,
        )
        self.queue_wait = Histogram(
            contract.PROM_QUEUE_WAIT,
            "Time a request waited before its batch started.",
            buckets=latency_buckets,
            registry=r,
        )
        self.inference_duration = Histogram(
            contract.PROM_INFERENCE_DURATION,
            "Duration of one batched pipeline call.",
            buckets=latency_buckets,
            registry=r,
        )
        self.batch_size = Histogram(
            contract.PROM_BATCH_SIZE,
            "Images per pipeline call.",
            buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64),
            registry=r,
        )
        self.queue_depth = Gauge(contract.PROM_QUEUE_DEPTH, "Requests waiting for a batch.", registry=r)
        self.in_flight = Gauge(contract.PROM_IN_FLIGHT, "Requests in the running batch.", registry=r)
        self.images_generated = Counter(contract.PROM_IMAGES_GENERATED, "Images returned to clients.", registry=r)
        self.rejections = Counter(
            contract.PROM_REJECTIONS, "Requests refused or abandoned, by reason.", ["reason"], registry=r
        )
        for reason in REJECTION_REASONS:
            self.rejections.labels(reason=reason)
        self.ready = Gauge(contract.PROM_READY, "1 when /readyz answers 200.", registry=r)
        self.startup = Gauge(
            contract.PROM_STARTUP_SECONDS, "Seconds from process start to each startup phase.", ["phase"], registry=r
        )


@dataclass
class Interval:
    """What one publishing interval saw (all that leaves the process for CloudWatch)."""

    pending_samples: list[float] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    images: int = 0
    requests: int = 0  # image requests answered, whatever the status
    rejected: int = 0  # of which 429 (queue full)
    server_errors: int = 0  # of which 5xx
    cold_start_s: float | None = None  # set in the interval the server turned ready

    def counts(self) -> dict[str, float]:
        """The request-outcome metrics of this interval, by contract name."""
        return {
            contract.METRIC_REQUESTS: float(self.requests),
            contract.METRIC_REJECTED_REQUESTS: float(self.rejected),
            contract.METRIC_SERVER_ERRORS: float(self.server_errors),
        }

    @property
    def pending(self) -> float:
        """Mean pending requests over the interval (one datapoint per pod per interval)."""
        return sum(self.pending_samples) / len(self.pending_samples) if self.pending_samples else 0.0


def compress(values: list[float], limit: int = MAX_VALUES_PER_METRIC) -> tuple[list[float], list[float]]:
    """(values, counts) with at most `limit` entries: exact when few, else equal-count quantile bins."""
    if not values:
        return [], []
    ordered = sorted(values)
    if len(ordered) <= limit:
        return ordered, [1.0] * len(ordered)
    out_v, out_c = [], []
    n = len(ordered)
    for i in range(limit):
        lo, hi = i * n // limit, (i + 1) * n // limit
        chunk = ordered[lo:hi]
        out_v.append(sum(chunk) / len(chunk))
        out_c.append(float(len(chunk)))
    return out_v, out_c


class MetricsSink(Protocol):
    def publish(self, interval: Interval, timestamp: float) -> None: ...


@dataclass(frozen=True)
class Dimensions:
    """The values of the contract's metric dimensions for this pod.

    The ``Accelerator`` dimension carries the torch device (cuda | neuron | cpu), as the charts'
    KEDA triggers expect (``charts.autoscaling.metric_dimensions``).
    """

    placement: str
    device: str
    location: str

    def as_dict(self) -> dict[str, str]:
        """Every dimension this pod publishes, the legacy one included (one EMF record holds all)."""
        return {
            contract.DIMENSION_PLACEMENT: self.placement,
            contract.LEGACY_DIMENSION_DEPLOYMENT: self.placement,
            contract.DIMENSION_ACCELERATOR: self.device,
            contract.DIMENSION_LOCATION: self.location,
        }

    def sets(self) -> list[list[dict[str, str]]]:
        """The dimension sets each metric is published under: the current and the legacy one
        (``contract.LEGACY_METRIC_DIMENSIONS``, which KEDA reads during a rollout from older images)."""
        values = self.as_dict()
        return [
            [{"Name": name, "Value": values[name]} for name in names]
            for names in (contract.METRIC_DIMENSIONS, contract.LEGACY_METRIC_DIMENSIONS)
        ]


class EmfSink:
    """One Embedded Metric Format JSON line per interval on stdout."""

    def __init__(self, dimensions: Dimensions, stream: IO[str] | None = None) -> None:
        self.dimensions = dimensions
        self.stream = stream

    def record(self, interval: Interval, timestamp: float) -> dict[str, Any]:
        metrics: list[dict[str, str]] = [{"Name": contract.METRIC_PENDING_REQUESTS, "Unit": "Count"}]
        doc: dict[str, Any] = {**self.dimensions.as_dict(), contract.METRIC_PENDING_REQUESTS: interval.pending}
        metrics.append({"Name": contract.METRIC_IMAGES_GENERATED, "Unit": "Count"})
        doc[contract.METRIC_IMAGES_GENERATED] = float(interval.images)
        values, _ = compress(interval.latencies_ms)
        if values:
            metrics.append({"Name": contract.METRIC_INFERENCE_LATENCY_MS, "Unit": "Milliseconds"})
            doc[contract.METRIC_INFERENCE_LATENCY_MS] = values
        for name, value in interval.counts().items():
            metrics.append({"Name": name, "Unit": "Count"})
            doc[name] = value
        if interval.cold_start_s is not None:
            metrics.append({"Name": contract.METRIC_COLD_START_SECONDS, "Unit": "Seconds"})
            doc[contract.METRIC_COLD_START_SECONDS] = interval.cold_start_s
        doc["_aws"] = {
            "Timestamp": int(timestamp * 1000),
            "CloudWatchMetrics": [
                {
                    "Namespace": contract.METRIC_NAMESPACE,
                    "Dimensions": [list(contract.METRIC_DIMENSIONS), list(contract.LEGACY_METRIC_DIMENSIONS)],
                    "Metrics": metrics,
                }
            ],
        }
        return doc

    def publish(self, interval: Interval, timestamp: float) -> None:
        stream = self.stream or sys.stdout
        stream.write(json.dumps(self.record(interval, timestamp), separators=(",", ":")) + "\n")
        stream.flush()


class CloudWatchSink:
    """One PutMetricData call per interval carrying every metric (values+counts for latency)."""

    def __init__(self, dimensions: Dimensions, region: str | None, client: Any = None) -> None:
        self.dimensions = dimensions
        if client is None:
            import boto3

            client = boto3.client("cloudwatch", region_name=region)  # region from env/IMDS when None
        self.client = client

    def metric_data(self, interval: Interval, timestamp: float) -> list[dict[str, Any]]:
        from datetime import UTC, datetime

        when = datetime.fromtimestamp(timestamp, tz=UTC)
        return [datum for dims in self.dimensions.sets() for datum in self._metric_data(interval, when, dims)]

    @staticmethod
    def _metric_data(interval: Interval, when: Any, dims: list[dict[str, str]]) -> list[dict[str, Any]]:
        """Every metric of the interval under one dimension set."""
        data: list[dict[str, Any]] = [
            {
                "MetricName": contract.METRIC_PENDING_REQUESTS,
                "Dimensions": dims,
                "Timestamp": when,
                "Value": interval.pending,
                "Unit": "Count",
            },
            {
                "MetricName": contract.METRIC_IMAGES_GENERATED,
                "Dimensions": dims,
                "Timestamp": when,
                "Value": float(interval.images),
                "Unit": "Count",
            },
        ]
        values, counts = compress(interval.latencies_ms)
        if values:
            data.append(
                {
                    "MetricName": contract.METRIC_INFERENCE_LATENCY_MS,
                    "Dimensions": dims,
                    "Timestamp": when,
                    "Values": values,
                    "Counts": counts,
                    "Unit": "Milliseconds",
                }
            )
        for name, value in interval.counts().items():
            data.append({"MetricName": name, "Dimensions": dims, "Timestamp": when, "Value": value, "Unit": "Count"})
        if interval.cold_start_s is not None:
            data.append(
                {
                    "MetricName": contract.METRIC_COLD_START_SECONDS,
                    "Dimensions": dims,
                    "Timestamp": when,
                    "Value": interval.cold_start_s,
                    "Unit": "Seconds",
                }
            )
        return data

    def publish(self, interval: Interval, timestamp: float) -> None:
        self.client.put_metric_data(
            Namespace=contract.METRIC_NAMESPACE, MetricData=self.metric_data(interval, timestamp)
        )


class CloudWatchAggregator:
    """Thread-safe accumulation on the request path; publishing on a background thread."""

    def __init__(
        self,
        sink: MetricsSink | None,
        pending: Callable[[], float],
        interval_s: float = float(contract.METRIC_PUBLISH_INTERVAL_S),
        sample_s: float = PENDING_SAMPLE_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.sink = sink
        self._pending = pending
        self.interval_s = interval_s
        self.sample_s = min(sample_s, interval_s)
        self._clock = clock
        self._lock = threading.Lock()
        self._current = Interval()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.published = 0
        self.failures = 0

    def record_request(self, latency_ms: float, images: int) -> None:
        """Called once per completed request: two appends under a lock, no I/O."""
        with self._lock:
            self._current.latencies_ms.append(latency_ms)
            self._current.images += images

    def record_answer(self, status: int) -> None:
        """Called once per answered image request (REST or UI) with the HTTP status it got."""
        with self._lock:
            self._current.requests += 1
            if status == 429:
                self._current.rejected += 1
            elif status >= 500:
                self._current.server_errors += 1

    def record_cold_start(self, seconds: float) -> None:
        """Process start -> ready, published with the current interval (once per process)."""
        with self._lock:
            self._current.cold_start_s = seconds

    def sample_pending(self) -> None:
        value = float(self._pending())
        with self._lock:
            self._current.pending_samples.append(value)

    def flush(self) -> None:
        """Publish what the current interval holds and start a new one (errors are logged, not raised)."""
        with self._lock:
            interval, self._current = self._current, Interval()
        if self.sink is None:
            return
        try:
            self.sink.publish(interval, self._clock())
            self.published += 1
        except Exception as exc:  # a CloudWatch outage must never take the server down
            self.failures += 1
            log.warning("CloudWatch metrics publish failed: %s", exc)

    def _run(self) -> None:
        next_flush = time.monotonic() + self.interval_s
        while not self._stop.wait(self.sample_s):
            self.sample_pending()
            if time.monotonic() >= next_flush:
                self.flush()
                next_flush += self.interval_s * max(1, math.ceil((time.monotonic() - next_flush) / self.interval_s))

    def start(self) -> None:
        if self.sink is None or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="cloudwatch-metrics", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread and publish the partial last interval (called at shutdown)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
            self.sample_pending()
            self.flush()


def build_sink(kind: str, dimensions: Dimensions, region: str | None) -> MetricsSink | None:
    if kind == "emf":
        return EmfSink(dimensions)
    if kind == "cloudwatch":
        return CloudWatchSink(dimensions, region)
    return None


Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class AnswerCounter:
    """ASGI middleware: the status of every answer on `path` goes to `record` (CloudWatchAggregator.record_answer).

    It sits outside the routes, so refusals no handler sees (a bad token, a wrong content type,
    an unhandled error: counted as the 500 the app answers) count like the rest.
    """

    def __init__(self, app: ASGIApp, record: Callable[[int], None], path: str = contract.IMAGES_PATH) -> None:
        self.app = app
        self.record = record
        self.path = path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") != self.path:
            await self.app(scope, receive, send)
            return
        status = 500  # what the outer error middleware answers when the app raises before answering

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            self.record(status)
