"""Metrics in CloudWatch: what is put, and the one value KEDA's query gets back.

PendingRequests: each pod puts the mean of its per-second pending samples once per publish
interval; CloudWatch sums the points of a metric period (Sum statistic). Accelerator utilization
(Container Insights) is read as the Average of the pods' values per period, DeviceDemand (the
inventory API's calls) as their Sum. InferenceLatencyMs: each pod puts its requests' latencies,
CloudWatch answers the p90 of all values in the period. KEDA asks for [end - collection, end) with ``end = (now -
endTimeOffset)`` truncated to the period and takes the newest datapoint (ScanBy
TimestampDescending, Values[0]), or minMetricValue 0 when there is none.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

from scaling.loop import MetricPipeline


def newest_period(config: MetricPipeline, now: float) -> range:
    """The period starts KEDA's query covers, newest first: [end - collection, end) with ``end = now -
    endTimeOffset`` truncated to the period."""
    end = math.floor((now - config.end_time_offset_s) / config.stat_period_s) * config.stat_period_s
    return range(end - config.stat_period_s, end - config.collection_time_s - 1, -config.stat_period_s)


@dataclass
class PendingMetric:
    """Values put per period; the query answers the Sum of the newest period with a visible point."""

    config: MetricPipeline
    points: dict[int, list[tuple[float, float]]] = field(default_factory=lambda: defaultdict(list))

    def put(self, timestamp: float, value: float) -> None:
        bucket = math.floor(timestamp / self.config.stat_period_s) * self.config.stat_period_s
        self.points[bucket].append((timestamp + self.config.ingest_delay_s, value))

    def statistic(self, values: list[float]) -> float:
        return sum(values)

    def query(self, now: float) -> float:
        for bucket in newest_period(self.config, now):
            visible = [v for available, v in self.points.get(bucket, ()) if available <= now]
            if visible:
                return self.statistic(visible)
        return 0.0


SumMetric = PendingMetric  # DeviceDemand: the same Sum per period


@dataclass
class AverageMetric(PendingMetric):
    """Accelerator utilization: the pods' values of a period averaged (the Average statistic)."""

    def statistic(self, values: list[float]) -> float:
        return sum(values) / len(values)


@dataclass
class PercentileMetric:
    """Values with weights (latencies and how many requests had them); the query answers their p-th percentile."""

    config: MetricPipeline
    percentile: float = 90.0
    points: dict[int, list[tuple[float, float, float]]] = field(default_factory=lambda: defaultdict(list))

    def put(self, timestamp: float, values: list[tuple[float, float]]) -> None:
        bucket = math.floor(timestamp / self.config.stat_period_s) * self.config.stat_period_s
        available = timestamp + self.config.ingest_delay_s
        self.points[bucket].extend((available, v, w) for v, w in values if w > 0)

    def query(self, now: float) -> float:
        for bucket in newest_period(self.config, now):
            visible = sorted((v, w) for available, v, w in self.points.get(bucket, ()) if available <= now)
            if visible:
                return weighted_percentile(visible, self.percentile)
        return 0.0


def weighted_percentile(ordered: list[tuple[float, float]], percentile: float) -> float:
    """The smallest value with at least ``percentile`` % of the weight at or below it (values ascending)."""
    total = sum(w for _, w in ordered)
    cut, running = total * percentile / 100, 0.0
    for value, weight in ordered:
        running += weight
        if running >= cut - 1e-12:
            return value
    return ordered[-1][0]
