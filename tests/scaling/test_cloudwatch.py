"""KEDA's CloudWatch query window (computeQueryWindow + Values[0]) against hand-computed reads."""

from __future__ import annotations

from scaling.cloudwatch import PendingMetric, PercentileMetric, weighted_percentile
from scaling.loop import MetricPipeline


def test_a_point_is_read_once_its_period_ends_a_full_offset_ago() -> None:
    m = PendingMetric(MetricPipeline())
    m.put(60.0, 3.0)  # lands in the period [60, 120)
    m.put(60.0, 2.0)  # a second pod in the same period: Sum
    assert m.query(179.0) == 0.0  # end = (179 - 60) truncated to 60 = 60: periods before 60 only
    assert m.query(180.0) == 5.0  # end = 120: the newest period is [60, 120)


def test_the_newest_period_with_data_wins_and_old_ones_drop_out() -> None:
    m = PendingMetric(MetricPipeline())
    m.put(0.0, 1.0)
    m.put(60.0, 7.0)
    assert m.query(200.0) == 7.0
    m2 = PendingMetric(MetricPipeline())
    m2.put(0.0, 1.0)
    assert m2.query(240.0) == 1.0  # window [0, 180)
    assert m2.query(300.0) == 0.0  # window [60, 240): no data -> minMetricValue 0


def test_ingest_delay_hides_a_point_until_it_is_available() -> None:
    m = PendingMetric(MetricPipeline(ingest_delay_s=90))
    m.put(100.0, 4.0)
    assert m.query(180.0) == 0.0
    assert m.query(190.0) == 4.0


def test_latency_is_the_weighted_p90_of_the_newest_period() -> None:
    m = PercentileMetric(MetricPipeline())
    # Two pods in [60, 120): 80 requests at 1 s, 20 at 9 s -> 90 % of the weight is reached at 9 s.
    m.put(60.0, [(1000.0, 50.0), (9000.0, 10.0)])
    m.put(90.0, [(1000.0, 30.0), (9000.0, 10.0), (5000.0, 0.0)])  # no requests at 5 s: not a value
    assert m.query(179.0) == 0.0
    assert m.query(180.0) == 9000.0
    assert weighted_percentile([(1000.0, 90.0), (9000.0, 10.0)], 90.0) == 1000.0  # exactly 90 % at 1 s
