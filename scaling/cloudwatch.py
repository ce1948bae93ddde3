"""PendingRequests in CloudWatch: what the pods put, and the one value KEDA's query gets back.

Each pod puts the mean of its per-second pending samples once per publish interval; CloudWatch
sums the points of a metric period (Sum statistic); KEDA asks for [end - collection, end) with
``end = (now - endTimeOffset)`` truncated to the period and takes the newest datapoint (ScanBy
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
