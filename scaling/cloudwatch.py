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


@dataclass
class PendingMetric:
    config: MetricPipeline
    points: dict[int, list[tuple[float, float]]] = field(default_factory=lambda: defaultdict(list))

    def put(self, timestamp: float, value: float) -> None:
        bucket = math.floor(timestamp / self.config.stat_period_s) * self.config.stat_period_s
        self.points[bucket].append((timestamp + self.config.ingest_delay_s, value))

    def query(self, now: float) -> float:
        c = self.config
        end = math.floor((now - c.end_time_offset_s) / c.stat_period_s) * c.stat_period_s
        start = end - c.collection_time_s
        for bucket in range(end - c.stat_period_s, start - 1, -c.stat_period_s):
            visible = [v for available, v in self.points.get(bucket, ()) if available <= now]
            if visible:
                return sum(visible)
        return 0.0


SumMetric = PendingMetric  # DeviceDemand: the same Sum per period


@dataclass
class AverageMetric(PendingMetric):
    """Accelerator utilization: the pods' values of a period averaged (the Average statistic)."""

    def query(self, now: float) -> float:
        c = self.config
        end = math.floor((now - c.end_time_offset_s) / c.stat_period_s) * c.stat_period_s
        start = end - c.collection_time_s
        for bucket in range(end - c.stat_period_s, start - 1, -c.stat_period_s):
            visible = [v for available, v in self.points.get(bucket, ()) if available <= now]
            if visible:
                return sum(visible) / len(visible)
        return 0.0


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
        c = self.config
        end = math.floor((now - c.end_time_offset_s) / c.stat_period_s) * c.stat_period_s
        start = end - c.collection_time_s
        for bucket in range(end - c.stat_period_s, start - 1, -c.stat_period_s):
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
