"""On-Demand and Spot prices of the serving instance types, dated and sourced, for cost per image.

The tables are snapshots: prices change, so every row carries where it was read and when. A
deployment overrides any On-Demand row with config ``onDemandPrices`` (``AppConfig.on_demand_prices``)
and the breaking-point tool with ``--on-demand-prices`` / ``--price-per-hour`` (``--spot-prices``
for Spot). A type with no recorded Spot price is costed at its On-Demand price, labelled so: a Spot
price is never estimated from a discount. Standard library only and no other ``plan`` import, so
the workstation tools in ``runtime.bench`` may read it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Final

INSTANCE_TYPE_PATTERN: Final = re.compile(r"^[a-z][a-z0-9-]*\d[a-z0-9-]*\.[a-z0-9-]+$")  # g5.xlarge, c8g.4xlarge
SECONDS_PER_HOUR: Final = 3600
IMAGES_PER_QUOTE: Final = 1000  # cost is quoted per 1,000 images


@dataclass(frozen=True)
class PriceSource:
    """Where a Region's prices were read, and when they were current there."""

    region: str
    url: str
    as_of: str  # ISO date the source says its data was generated


ON_DEMAND: Final = "On-Demand"
SPOT: Final = "Spot"


@dataclass(frozen=True)
class Price:
    instance_type: str
    usd_per_hour: float
    region: str
    source: str  # a PriceSource url, or "config onDemandPrices" / "--price-per-hour" / SPOT_OVERRIDE
    as_of: str = ""
    purchase: str = ON_DEMAND  # what the price is for: ON_DEMAND or SPOT
    note: str = ""  # why it is not what was asked for (a Spot price that is the On-Demand one)

    @property
    def label(self) -> str:
        """``On-Demand`` or ``Spot``, with the note when there is one."""
        return f"{self.purchase} ({self.note})" if self.note else self.purchase


# Karpenter's AWS provider ships the On-Demand Linux prices it starts with, generated from the
# AWS Price List API ("generated at 2026-07-20T13:44:30Z for us-east-1"). It covers us-east-1
# only; no us-west-2 table with a source could be read when this was written, so us-west-2
# costs fall back to these rows, labelled as such (REFERENCE_REGION), until config overrides them.
_KARPENTER_US_EAST_1: Final = PriceSource(
    region="us-east-1",
    url=(
        "https://github.com/aws/karpenter-provider-aws/blob/6fc13b5236fd04fd16ff3f9dc7490d0813994099/"
        "pkg/providers/pricing/zz_generated.pricing_aws.go"
    ),
    as_of="2026-07-20",
)
REFERENCE_REGION: Final = _KARPENTER_US_EAST_1.region

# USD per hour, Linux, On-Demand: the serving families of plan/accelerators.py at the sizes
# plan/accelerators.py allows for serving (sizes a family does not offer are absent).
_US_EAST_1: Final[Mapping[str, float]] = {
    "g5.xlarge": 1.006,
    "g5.2xlarge": 1.212,
    "g5.4xlarge": 1.624,
    "g5.8xlarge": 2.448,
    "g5.12xlarge": 5.672,
    "g5.16xlarge": 4.096,
    "g5.24xlarge": 8.144,
    "g5.48xlarge": 16.288,
    "g6.xlarge": 0.8048,
    "g6.2xlarge": 0.9776,
    "g6.4xlarge": 1.3232,
    "g6.8xlarge": 2.0144,
    "g6.12xlarge": 4.6016,
    "g6.16xlarge": 3.3968,
    "g6.24xlarge": 6.6752,
    "g6.48xlarge": 13.3504,
    "g6e.xlarge": 1.861,
    "g6e.2xlarge": 2.24208,
    "g6e.4xlarge": 3.00424,
    "g6e.8xlarge": 4.52856,
    "g6e.12xlarge": 10.49264,
    "g6e.16xlarge": 7.57719,
    "g6e.24xlarge": 15.06559,
    "g6e.48xlarge": 30.13118,
    "inf2.xlarge": 0.7582,
    "inf2.8xlarge": 1.96786,
    "inf2.24xlarge": 6.49063,
    "inf2.48xlarge": 12.98127,
    "trn1.2xlarge": 1.34375,
    "trn1.32xlarge": 21.5,
    "c7g.4xlarge": 0.58,
    "c7g.8xlarge": 1.16,
    "c7g.12xlarge": 1.74,
    "c7g.16xlarge": 2.32,
    "m7g.4xlarge": 0.6528,
    "m7g.8xlarge": 1.3056,
    "m7g.12xlarge": 1.9584,
    "m7g.16xlarge": 2.6112,
    "c8g.4xlarge": 0.63808,
    "c8g.8xlarge": 1.27616,
    "c8g.12xlarge": 1.91424,
    "c8g.16xlarge": 2.55232,
    "m8g.4xlarge": 0.71808,
    "m8g.8xlarge": 1.43616,
    "m8g.12xlarge": 2.15424,
    "m8g.16xlarge": 2.87232,
}

TABLES: Final[Mapping[str, tuple[PriceSource, Mapping[str, float]]]] = {
    _KARPENTER_US_EAST_1.region: (_KARPENTER_US_EAST_1, _US_EAST_1),
}


# Spot prices read from a dated source, by Region: (source, rows) like TABLES. None is recorded: when
# this was written (2026-12-07) no source with a dated Spot price for these types could be read.
# The AWS Spot pricing page (https://aws.amazon.com/ec2/spot/pricing/) and the Spot Instance Advisor
# fill their tables in the browser, so stored copies hold no prices; no stored page, document or
# repository gave a dated g5, g6, g6e, inf2 or trn1 Spot price. Every row therefore falls back to
# On-Demand (NO_SPOT_PRICE), until a row read from `aws ec2 describe-spot-price-history` (with its
# date) is added here or a caller passes the price it pays.
SPOT_TABLES: Final[Mapping[str, tuple[PriceSource, Mapping[str, float]]]] = {}
SPOT_OVERRIDE: Final = "Spot price given by the caller"
NO_SPOT_PRICE: Final = "no recorded Spot price: the On-Demand price"


class UnknownPriceError(KeyError):
    """No price for an instance type: the message says how to give one."""

    def __str__(self) -> str:
        return str(self.args[0])


def on_demand_price(instance_type: str, region: str, overrides: Mapping[str, float] | None = None) -> Price:
    """The price to cost ``instance_type`` with: an override, the Region's row, else the reference Region's.

    A fallback row keeps its own ``region`` so callers can say the price is not the Region's own.
    """
    if overrides and instance_type in overrides:
        return Price(instance_type, float(overrides[instance_type]), region, "config onDemandPrices")
    for table_region in (region, REFERENCE_REGION):
        if table_region in TABLES:
            source, rows = TABLES[table_region]
            if instance_type in rows:
                return Price(instance_type, rows[instance_type], source.region, source.url, source.as_of)
    known = sorted({t for _, rows in TABLES.values() for t in rows})
    raise UnknownPriceError(
        f"no On-Demand price for {instance_type!r}: set it in onDemandPrices or pass --price-per-hour; "
        f"the table has {', '.join(known)}"
    )


def spot_price(
    instance_type: str,
    region: str,
    overrides: Mapping[str, float] | None = None,
    *,
    on_demand_overrides: Mapping[str, float] | None = None,
) -> Price:
    """The Spot price to cost ``instance_type`` with: an override, a recorded row (the Region's, else the
    reference Region's), else its On-Demand price labelled ``NO_SPOT_PRICE`` (never a guessed discount)."""
    if overrides and instance_type in overrides:
        return Price(instance_type, float(overrides[instance_type]), region, SPOT_OVERRIDE, purchase=SPOT)
    for table_region in (region, REFERENCE_REGION):
        if table_region in SPOT_TABLES:
            source, rows = SPOT_TABLES[table_region]
            if instance_type in rows:
                return Price(instance_type, rows[instance_type], source.region, source.url, source.as_of, SPOT)
    return replace(on_demand_price(instance_type, region, on_demand_overrides), note=NO_SPOT_PRICE)


def cost_per_1000_images(usd_per_hour: float, images_per_s: float) -> float:
    """USD per 1,000 images for one instance producing ``images_per_s`` while billed by the hour."""
    if usd_per_hour < 0 or images_per_s <= 0:
        raise ValueError(f"need a price >= 0 and images/s > 0, got {usd_per_hour} USD/h at {images_per_s} images/s")
    return usd_per_hour / (images_per_s * SECONDS_PER_HOUR) * IMAGES_PER_QUOTE
