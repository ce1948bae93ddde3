"""Wake from zero: demand recorded -> metric -> KEDA -> a pod -> the publisher lists it -> devices use it."""

from __future__ import annotations

from dataclasses import replace

import pytest

from scaling.loop import Autoscaling, ColdStart, PodProfile, Simulation, Wake
from scaling.traffic import Pulse, Pulses, Step
from scaling.wake import simulate_wake

INSTANT = ColdStart(
    karpenter_decision_s=0, node_launch_s=0, image_pull_s=0, image_pull_from_snapshot_s=0, model_load_s=0, warmup_s=0
)
POD = PodProfile(images_per_s=2.0, concurrency=4.0, p90_ms=1000.0)
REGION = Simulation(
    autoscaling=Autoscaling(min_replicas=1, max_replicas=1, use_cached_metrics=False, hpa_sync_phase_s=0),
    cold_start=INSTANT,
    pod=POD,
)
ZONE = replace(REGION, autoscaling=replace(REGION.autoscaling, min_replicas=0, max_replicas=4))


def test_the_wake_chain_end_to_end_with_the_region_serving_meanwhile() -> None:
    # Woken at 668 (see test_engine); ready at once; the publisher's heartbeats fall at 7.5 + 15 k, so
    # the first at or after 668 is 667.5 + 15 = 682.5 (tick 683): listed there, the next request uses it.
    w = simulate_wake(ZONE, REGION, Pulse(0.5, 600.0, 1800.0), Step(0.5, 1.0, 0.0), 3600.0)
    assert (w.woken_s, w.ready_s, w.listed_s, w.first_image_s) == (668.0, 668.0, 683.0, 683.0)
    assert w.requests == pytest.approx(0.5 * 83)  # 600..682: the zone's devices went to the Region
    assert w.refused == 0 and w.served_by_region == pytest.approx(w.requests, rel=0.05)
    # 1 images/s on a 2 images/s pod: below its sustainable concurrency, p90 flat at 1000 ms + the path.
    assert w.p90_ms == pytest.approx(1000.0 + Wake().region_extra_latency_ms)
    assert w.asleep_again_s is not None and w.asleep_again_s > 1800.0 + ZONE.autoscaling.scale_to_zero_after_s
    assert w.node_hours < w.always_on_node_hours


def test_a_saturated_region_refuses_some_of_the_zones_devices_meanwhile() -> None:
    slow = replace(INSTANT, node_launch_s=300.0)  # the zone takes 5 min to come up
    w = simulate_wake(replace(ZONE, cold_start=slow), REGION, Pulse(3.0, 600.0, 3000.0), Step(0.5, 1.0, 0.0), 3600.0)
    assert w.refused > 0 and w.p90_ms > 10 * POD.p90_ms  # the Region's one pod queues, then refuses
    assert w.woken_s is not None and w.first_image_s is not None and w.first_image_s >= w.woken_s + 300.0


def test_the_inventory_never_sends_devices_to_a_sleeping_placement() -> None:
    windows = ((600.0, 900.0), (3000.0, 3300.0))  # two uses, an idle gap longer than the cooldown
    zone = replace(ZONE, autoscaling=replace(ZONE.autoscaling, scale_to_zero_after_s=300))
    w = simulate_wake(zone, REGION, Pulses(0.5, windows), Step(0.1, 1.0, 0.0), 5400.0)
    assert w.wakes == 2
    z = w.zone
    assert all(ready > 0 for ready, demand in zip(z.ready, z.demand, strict=True) if demand > 0)
    assert sum(z.refused) == 0  # nothing reached it while it had no ready pod
    assert w.totals.requests > w.requests  # the second wake sent devices to the Region too
