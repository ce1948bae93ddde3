"""plan/prices.py: the table covers the serving instance types; cost maths by hand."""

from __future__ import annotations

import pytest

from plan import prices
from plan.accelerators import ACCELERATORS

# Sizes the families do not offer (EC2 instance types).
NOT_OFFERED = {
    "inf2": {"2xlarge", "32xlarge"},
    "trn1": {"xlarge", "8xlarge", "24xlarge", "48xlarge"},
}


def test_every_serving_instance_type_has_a_dated_sourced_price() -> None:
    source, rows = prices.TABLES[prices.REFERENCE_REGION]
    assert source.url.startswith("https://") and source.as_of
    for accel in ACCELERATORS.values():
        for family in accel.instance_families:
            for size in accel.serving_instance_sizes:
                if size in NOT_OFFERED.get(family, set()):
                    continue
                assert f"{family}.{size}" in rows, f"{family}.{size} has no price"
    assert all(value > 0 for value in rows.values())


def test_cost_per_1000_images_by_hand() -> None:
    # 1.006 USD/h at 0.8 images/s: 2,880 images an hour -> 1.006 / 2.88 per 1,000.
    assert prices.cost_per_1000_images(1.006, 0.8) == pytest.approx(1.006 / 2.88)
    assert prices.cost_per_1000_images(3.6, 1.0) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="images/s > 0"):
        prices.cost_per_1000_images(1.0, 0.0)


def test_overrides_win_and_a_region_without_a_table_says_whose_price_it_uses() -> None:
    assert prices.on_demand_price("g5.xlarge", "us-west-2", {"g5.xlarge": 1.2}).usd_per_hour == 1.2
    fallback = prices.on_demand_price("g5.xlarge", "us-west-2")
    assert (fallback.region, fallback.usd_per_hour) == (prices.REFERENCE_REGION, 1.006)
    with pytest.raises(prices.UnknownPriceError, match=r"'x9\.huge'.*onDemandPrices"):
        prices.on_demand_price("x9.huge", "us-east-1")


def test_spot_without_a_recorded_price_is_the_on_demand_price_labelled() -> None:
    spot = prices.spot_price("g5.xlarge", "us-west-2")
    on_demand = prices.on_demand_price("g5.xlarge", "us-west-2")
    assert (spot.usd_per_hour, spot.source, spot.as_of) == (on_demand.usd_per_hour, on_demand.source, on_demand.as_of)
    assert spot.purchase == prices.ON_DEMAND and spot.note == prices.NO_SPOT_PRICE
    assert spot.label == f"On-Demand ({prices.NO_SPOT_PRICE})"
    # The deployment's On-Demand override carries into the fallback; unknown types are refused as for On-Demand.
    assert prices.spot_price("g5.xlarge", "us-west-2", on_demand_overrides={"g5.xlarge": 1.5}).usd_per_hour == 1.5
    with pytest.raises(prices.UnknownPriceError, match=r"'x9\.huge'"):
        prices.spot_price("x9.huge", "us-east-1")


def test_a_given_spot_price_wins_and_is_labelled_spot() -> None:
    spot = prices.spot_price("g5.xlarge", "us-east-1", {"g5.xlarge": 0.4})
    assert (spot.usd_per_hour, spot.purchase, spot.source, spot.label) == (
        0.4,
        prices.SPOT,
        prices.SPOT_OVERRIDE,
        "Spot",
    )
