"""The fluid queue against hand-computed cases."""

from __future__ import annotations

import math

import pytest

from scaling.queue import advance, p90_ms


def test_overflow_refuses_what_one_pod_cannot_hold() -> None:
    # 1 pod, mu 2/s, c 2, holds 12; 5 requests/s for 10 s from empty.
    # Below the knee B(t) = 5 (1 - e^-t) reaches 2 at tau = ln(5/3); then it grows 3/s and is full
    # at tau + 10/3; after that 3/s are refused.
    tau = math.log(5 / 3)
    full_at = tau + 10 / 3
    flow = advance(0.0, 5.0, 1, 2.0, 2.0, 12, 10.0)
    assert flow.backlog == pytest.approx(12.0)
    assert flow.refused == pytest.approx(3 * (10 - full_at))
    assert flow.served == pytest.approx(5 * 10 - 12 - 3 * (10 - full_at))


def test_one_second_steps_add_up_to_one_long_step() -> None:
    backlog, served, refused = 0.0, 0.0, 0.0
    for _ in range(10):
        flow = advance(backlog, 5.0, 1, 2.0, 2.0, 12, 1.0)
        backlog, served, refused = flow.backlog, served + flow.served, refused + flow.refused
    whole = advance(0.0, 5.0, 1, 2.0, 2.0, 12, 10.0)
    assert (backlog, served, refused) == pytest.approx((whole.backlog, whole.served, whole.refused))


def test_below_capacity_the_backlog_settles_at_littles_law() -> None:
    # 0.5 requests/s at 2/s per pod and c 4: k = 0.5/s, B -> 0.5 / 0.5 = 1 request (= rate * c / mu).
    flow = advance(0.0, 0.5, 1, 2.0, 4.0, 12, 1000.0)
    assert flow.backlog == pytest.approx(1.0)
    assert flow.refused == 0.0
    assert flow.served == pytest.approx(500 - 1.0)


def test_a_saturated_backlog_drains_at_the_spare_rate_then_settles() -> None:
    # 2 pods (saturate at 4, serve 4/s), backlog 6, 1 request/s: down 3/s to 4 in 2/3 s, then to 1/k = 1.
    flow = advance(6.0, 1.0, 2, 2.0, 2.0, 12, 100.0)
    assert flow.backlog == pytest.approx(1.0)
    assert flow.served == pytest.approx(6 + 100 - 1)


def test_full_pods_serve_at_their_rate_and_refuse_the_rest() -> None:
    flow = advance(24.0, 10.0, 2, 2.0, 2.0, 12, 5.0)
    assert flow.backlog == pytest.approx(24.0)
    assert flow.served == pytest.approx(4.0 * 5)
    assert flow.refused == pytest.approx(6.0 * 5)


def test_without_a_ready_pod_everything_is_refused() -> None:
    flow = advance(0.0, 3.0, 0, 2.0, 2.0, 12, 4.0)
    assert (flow.backlog, flow.served, flow.refused) == (0.0, 0.0, 12.0)


def test_latency_adds_the_wait_for_work_beyond_the_sustainable_concurrency() -> None:
    assert p90_ms(3.0, 5000.0, 4.0, 0.8) == 5000.0
    assert p90_ms(12.0, 5000.0, 4.0, 0.8) == pytest.approx(5000.0 + 8 / 0.8 * 1000)
