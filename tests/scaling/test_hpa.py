"""The HPA decision against hand-computed syncs (Kubernetes default behaviour)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from scaling.hpa import Hpa
from scaling.loop import KUBERNETES_SCALE_DOWN, KUBERNETES_SCALE_UP, Autoscaling, HpaPolicy, HpaRules

KUBERNETES = Autoscaling(
    min_replicas=1,
    max_replicas=20,
    target_pending_per_replica=4,
    scale_up=KUBERNETES_SCALE_UP,
    scale_down=KUBERNETES_SCALE_DOWN,
)


def hpa(**changes: Any) -> Hpa:
    return Hpa(replace(KUBERNETES, **changes))


def test_within_the_tolerance_nothing_changes() -> None:
    h = hpa()
    assert h.metric_replicas(8.7, 2) == 2  # ratio 1.0875: inside 10 %
    assert h.metric_replicas(9.0, 2) == 3  # ratio 1.125: ceil(9 / 4)
    assert h.metric_replicas(7.3, 2) == 2  # ratio 0.9125
    assert h.metric_replicas(4.0, 2) == 1


def test_scale_up_takes_the_larger_of_doubling_and_four_pods_per_15_s() -> None:
    h = hpa()
    assert h.decide(0.0, 100.0, 1) == 5  # wants 25: max(1 * 2, 1 + 4)
    assert h.decide(15.0, 100.0, 5) == 10  # the 0 s event is out of the 15 s period: max(10, 9)
    h2 = hpa()
    h2.decide(0.0, 100.0, 1)
    assert h2.decide(10.0, 100.0, 5) == 5  # within the period the period-start count is 1 again


def test_max_replicas_caps_the_scale_up() -> None:
    assert hpa(max_replicas=4).decide(0.0, 100.0, 1) == 4


def test_scale_down_waits_for_the_highest_recommendation_of_the_window() -> None:
    h = hpa()
    assert h.decide(0.0, 40.0, 10) == 10
    assert h.decide(15.0, 4.0, 10) == 10  # wants 1; the 0 s recommendation of 10 is within 300 s
    assert h.decide(299.0, 4.0, 10) == 10
    assert h.decide(300.0, 4.0, 10) == 1  # the 0 s one left the window (strictly after the cut-off)


def test_scale_down_policies_limit_the_step() -> None:
    rules = HpaRules(0, (HpaPolicy("Pods", 2, 60),), "Max")
    h = hpa(scale_down=rules)
    assert h.decide(0.0, 4.0, 10) == 8
    assert h.decide(30.0, 4.0, 8) == 8  # 2 removed within the last 60 s
    assert h.decide(61.0, 4.0, 8) == 6


def test_min_replicas_floor() -> None:
    h = hpa(min_replicas=2, scale_down=HpaRules(0, (HpaPolicy("Percent", 100, 15),)))
    assert h.decide(0.0, 0.0, 5) == 2


def test_several_triggers_the_largest_count_wins_each_with_its_own_target() -> None:
    h = Hpa(replace(Autoscaling(), target_pending_per_replica=4, utilization_target_percent=50, latency_target_ms=4000))
    # pending (AverageValue) 4 -> 1; utilization and latency (Value) scale the current count by metric / target
    assert h.desired_of({"pending": 4.0, "utilization": 150.0}, 1) == 3  # 1 pod x 150 / 50
    assert h.desired_of({"pending": 20.0, "latency": 9000.0}, 1) == 5  # pending 20 / 4 beats 1 x 9000 / 4000
    assert h.desired_of({"latency": 9000.0}, 2) == 5  # ceil(2 x 2.25)
    assert h.desired_of({"utilization": 52.0}, 2) == 2  # ratio 1.04: within the tolerance
    assert h.desired_of({"utilization": 100.0}, 2) == 4  # two pods at 100 % against 50 %


def test_the_hpa_never_takes_a_placement_at_min_0_below_one_pod() -> None:
    h = Hpa(replace(Autoscaling(), min_replicas=0, scale_down=HpaRules(0, (HpaPolicy("Percent", 100, 15),))))
    assert h.decide(0.0, 0.0, 3) == 1  # only KEDA takes it to 0
