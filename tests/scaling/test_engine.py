"""The whole loop against hand-computed timelines (syncs on the minute, so every delay is exact)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from scaling.engine import Placement, _Node, _place, initial_replicas, run
from scaling.loop import Autoscaling, ColdStart, PodProfile, Simulation
from scaling.traffic import Cosine, FlashCrowd, Pulse, Ramp, Step

INSTANT = ColdStart(
    karpenter_decision_s=0, node_launch_s=0, image_pull_s=0, image_pull_from_snapshot_s=0, model_load_s=0, warmup_s=0
)
POD = PodProfile(images_per_s=2.0, concurrency=4.0, p90_ms=1000.0)
# Every HPA sync reads CloudWatch (no caching), on the minute: the delays are the metric's alone.
ALIGNED = Autoscaling(
    min_replicas=1, max_replicas=10, target_pending_per_replica=4, hpa_sync_phase_s=0, use_cached_metrics=False
)


def sim(**changes: Any) -> Simulation:
    return replace(Simulation(autoscaling=ALIGNED, cold_start=INSTANT, pod=POD), **changes)


def test_constant_load_below_the_target_never_scales() -> None:
    # 1 request/s holds 1 * c / mu = 2 pending: under target 4, so one pod all along.
    result = run(sim(), Step(1.0, 1.0, 600.0), 7200.0)
    assert set(result.series.replicas) == {1}
    assert result.refused == 0.0
    assert max(result.series.p90_ms) == POD.p90_ms


def test_a_step_with_no_launch_delay_is_met_after_exactly_the_metric_delay() -> None:
    # The step at 600 s: the pod's publish at 660 s (its samples from 600 s on) lands in the period
    # [660, 720); KEDA reads it once end = (now - 60) truncated to 60 s reaches 720, at 780 s, and
    # the HPA syncs then (phase 0): 60 s interval + 60 s period + 60 s end offset = 180 s.
    result = run(sim(), Step(1.0, 3.0, 600.0), 3600.0)
    (absorption,) = result.absorptions
    assert absorption.capacity_s == 180.0
    first_scale = next(t for t, r in zip(result.series.t, result.series.replicas, strict=True) if r > 1)
    assert first_scale == 780.0


def test_with_cached_metrics_the_poll_adds_its_wait() -> None:
    # Polls every 60 s at 30 s past the minute: the first poll after 780 s is at 810 s.
    cached = replace(ALIGNED, use_cached_metrics=True, keda_polling_interval_s=60, keda_poll_phase_s=30)
    (absorption,) = run(sim(autoscaling=cached), Step(1.0, 3.0, 600.0), 3600.0).absorptions
    assert absorption.capacity_s == 210.0


def test_a_poll_in_step_with_the_syncs_adds_nothing() -> None:
    # Polls every 15 s on the minute, like the syncs: the poll at 780 s feeds the sync at 780 s.
    cached = replace(ALIGNED, use_cached_metrics=True, keda_polling_interval_s=15, keda_poll_phase_s=0)
    (absorption,) = run(sim(autoscaling=cached), Step(1.0, 3.0, 600.0), 3600.0).absorptions
    assert absorption.capacity_s == 180.0


def test_the_cold_start_chain_adds_up_and_the_snapshot_removes_the_pull() -> None:
    cold = ColdStart()  # 5 + 65 + 300 + 45 + 30 = 445 s on a new node
    (slow,) = run(sim(cold_start=cold), Step(1.0, 3.0, 600.0), 3600.0).absorptions
    (fast,) = run(sim(cold_start=replace(cold, snapshot=True)), Step(1.0, 3.0, 600.0), 3600.0).absorptions
    assert slow.capacity_s == 180.0 + 445.0
    assert fast.capacity_s == 180.0 + 445.0 - 300.0 + 30.0
    assert slow.refused > fast.refused > 0


def test_an_empty_node_not_yet_consolidated_skips_launch_and_pull() -> None:
    cold = ColdStart()
    config = sim(cold_start=cold)
    empty = _Node(launched_s=0.0, image_at_s=100.0, busy=False, empty_since_s=500.0)
    reused = _place(600.0, [empty], config)
    assert reused.ready_s == 600.0 + cold.model_load_s + cold.warmup_s
    launched = _place(600.0, [], config)
    assert launched.ready_s == 600.0 + cold.new_node_s


def test_initial_replicas_are_the_hpa_steady_state() -> None:
    # 5 requests/s hold 5 * 4 / 2 = 10 pending: ceil(10 / 4) = 3 pods.
    assert initial_replicas(sim(), 5.0) == 3
    assert initial_replicas(sim(), 0.0) == 1


@pytest.mark.parametrize(
    "trace",
    [Ramp(0.5, 6.0, 300.0, 600.0), FlashCrowd(0.5, 6.0, 300.0, 60.0, 300.0, 120.0), Cosine(3.0, 2.5, 1800.0)],
    ids=["ramp", "flash", "cosine"],
)
def test_every_request_is_served_refused_or_still_pending(trace: Ramp | FlashCrowd | Cosine) -> None:
    result = run(sim(cold_start=ColdStart()), trace, 3600.0)
    s = result.series
    assert max(s.replicas) > 1 and min(s.replicas[-600:]) < max(s.replicas)  # scaled out and back in
    pending_change = s.backlog[-1] - result.start_backlog
    assert sum(s.demand) == pytest.approx(sum(s.served) + sum(s.refused) + pending_change)
    assert max(s.ready) <= ALIGNED.max_replicas


def asleep(**changes: Any) -> Simulation:
    return sim(autoscaling=replace(ALIGNED, min_replicas=0, **changes))


def test_demand_wakes_a_placement_at_zero_and_it_sleeps_after_the_cooldown() -> None:
    # DeviceDemand from t=600 lands in [600, 660), reaches CloudWatch 60 s later; the demand trigger reads
    # the newest whole minute (end offset 0), so the poll at 667.5 (tick 668) sees it: 0 -> 1 there.
    trace = Pulse(1.0, 600.0, 1200.0)
    placement = Placement(asleep(), 0.0, asleep=True)
    for t in range(3600):
        placement.record_demand(float(t), trace.rate(t))
        placement.tick(float(t), trace.rate(t))
    s = placement.series
    assert placement.woken_s == [668.0]
    assert s.ready[667] == 0 and s.ready[668] == 1  # the cold start is instant here
    assert sum(s.refused[600:668]) == pytest.approx(68.0)  # no pod: every request of those 68 s refused
    # Last demand in [1140, 1200): the newest datapoint until t=1380, active at the poll of 1367.5; the
    # cooldown (900 s) has passed at the first poll after 2268: 2272.5 (tick 2273).
    assert placement.slept_s == [2273.0]
    assert s.replicas[2272] == 1 and s.replicas[2273] == 0
    (node,) = placement.nodes
    assert node.removed_s == 2273.0 + 600.0  # Karpenter consolidates the empty node after 10 min


def test_a_placement_at_zero_with_no_demand_costs_nothing() -> None:
    result = run(asleep(), Pulse(1.0, 7200.0, 7300.0), 3600.0)
    assert result.node_seconds == 0 and max(result.series.replicas) == 0


def test_utilization_saturates_so_it_asks_for_at_most_double_per_round() -> None:
    step = Step(1.0, 8.0, 600.0)  # one pod (2 images/s) holds 1/s; 8/s needs 4
    by_pending = run(sim(), step, 1800.0).series.replicas
    by_util = run(
        sim(autoscaling=replace(ALIGNED, signals=("utilization",), utilization_target_percent=50)), step, 1800.0
    )
    first_rise = next(n for n in by_util.series.replicas if n > 1)
    assert first_rise == 2  # one saturated pod reads 100 %: ceil(100 / 50)
    assert next(n for n in by_pending if n > 1) >= 4  # the queue shows the whole shortfall at once


@pytest.mark.parametrize("target_ms", [800, 1200])
def test_a_latency_target_under_the_flat_p90_runs_to_max_replicas_whatever_the_load(target_ms: int) -> None:
    # Below its sustainable concurrency the pod's p90 is flat (1000 ms here). A Value target scales the
    # current count by p90 / target at every sync: under the flat p90 that is more pods whatever the load,
    # up to maxReplicas; above it, back to one.
    a = replace(ALIGNED, signals=("latency",), latency_target_ms=target_ms)
    result = run(sim(autoscaling=a), Step(0.5, 1.0, 600.0), 1800.0)
    assert result.series.replicas[-1] == (a.max_replicas if target_ms < 1000 else 1)
