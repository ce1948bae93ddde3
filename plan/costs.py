"""The idle cost of a deployment: what it bills per hour while nobody calls it, from its config and dated prices.

Idle, each placement keeps ``serving.minReplicas`` pods (``config.serving.min_replicas_of``), one node each, of
the instance type Karpenter launches for one pod: the cheapest of the smallest serving size of each family its
NodePool allows (Karpenter launches On-Demand at the lowest price, Spot price-capacity-optimized, among the
types that fit; every serving pod fits the smallest size of its families and two do not, tests/plan/test_costs.py).
Beside them: the controllers' node group, the EKS control plane, the NAT gateways (``natGateways``) and the ALB.
Regional serving may take Spot (``serving.spot``); Local Zones stay On-Demand, at the Region's price as a lower
bound (Local Zone prices are higher and not in the table). Data transfer, EBS, LCUs and CloudWatch are left out.

``python -m plan.costs [--deployment dev] [-c key=value ...]`` prints the deployment's items and a table of
the settings that move the figure (minReplicas, natGateways, Spot), each alone and together; ``--readme``
prints the README's block and ``--readme --write`` writes it between README.md's markers.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from plan import capacity, prices
from plan.config import AppConfig, ConfigError, cli_context
from plan.config.models import NAT_ONE, NAT_PER_AZ
from plan.deployments import DEFAULT_DEPLOYMENT, DEPLOYMENT_KEY, load_plan
from plan.prices import Price, UnknownPriceError
from plan.readme_blocks import README, Block
from plan.topology import Placement, nat_gateway_count, placements, takes_spot

HOURS_PER_30_DAYS: Final = 24 * 30
BLOCK: Final = Block("idle-cost")
README_DEPLOYMENT: Final = DEFAULT_DEPLOYMENT  # the deployment the README's figure is for

PriceLookup = Callable[[str, str, Mapping[str, float] | None], Price]


@dataclass(frozen=True)
class FixedPrice:
    """A price per hour that is not an instance's, where it was read and when."""

    what: str
    usd_per_hour: float
    region: str
    url: str
    as_of: str


# List prices per hour in us-east-1, the figures of the AWS pricing pages below as read on 2026-12-07 through the
# stored pages of the `search` tool (EKS 0.10 per cluster-hour in standard support: the AWS Containers blog on
# extended support pricing; NAT gateway 0.045 per gateway-hour and ALB 0.0225 per ALB-hour: 2026 write-ups quoting
# those pages, which give the US West Regions the same NAT figure). The controllers' node: Karpenter's generated
# On-Demand table, the source plan/prices.py cites, at the commit read here.
EKS_CONTROL_PLANE: Final = FixedPrice(
    "EKS control plane (standard support)", 0.10, "us-east-1", "https://aws.amazon.com/eks/pricing/", "2026-12-07"
)
NAT_GATEWAY: Final = FixedPrice("NAT gateway", 0.045, "us-east-1", "https://aws.amazon.com/vpc/pricing/", "2026-12-07")
ALB: Final = FixedPrice(
    "Application Load Balancer",
    0.0225,
    "us-east-1",
    "https://aws.amazon.com/elasticloadbalancing/pricing/",
    "2026-12-07",
)
# stacks/cluster/stack.py ControllerNodeGroupProps: the managed node group of the controllers (On-Demand).
SYSTEM_NODE_TYPE: Final = "m7g.large"
SYSTEM_NODES: Final = 2
SYSTEM_NODE: Final = FixedPrice(
    f"controllers' node ({SYSTEM_NODE_TYPE})",
    0.0816,
    "us-east-1",
    "https://github.com/aws/karpenter-provider-aws/blob/031e72b6099630e960dacb88b48a7e9bb780945f/"
    "pkg/providers/pricing/zz_generated.pricing_aws.go",
    "2026-01-19",
)
FIXED_PRICES: Final = (SYSTEM_NODE, EKS_CONTROL_PLANE, NAT_GATEWAY, ALB)


@dataclass(frozen=True)
class Setting:
    """One combination of the settings that move the idle cost."""

    min_replicas_as_configured: bool  # False: every placement at 1 (the floor before scale to zero)
    nat_gateways: str  # NAT_PER_AZ | NAT_ONE
    spot: bool  # regional serving on Spot


BEFORE: Final = Setting(min_replicas_as_configured=False, nat_gateways=NAT_PER_AZ, spot=False)


@dataclass(frozen=True)
class Item:
    """One line of the idle bill: ``count`` of something at a price per hour each."""

    what: str
    unit: str  # the instance type and capacity, or what the price is per
    count: int
    usd_per_hour_each: float
    source: str
    as_of: str
    at_least: bool = False  # a Local Zone's node: the Region's price, which the zone's exceeds
    note: str = ""  # the price is not what was asked for (plan.prices' Spot fallback to On-Demand)

    @property
    def usd_per_hour(self) -> float:
        return self.count * self.usd_per_hour_each


def spot_lookup(config: AppConfig) -> PriceLookup:
    """plan.prices' Spot price with the deployment's ``spotPrices`` over the table, else its On-Demand price
    (``onDemandPrices`` over the table) labelled so."""

    def lookup(instance_type: str, region: str, overrides: Mapping[str, float] | None = None) -> Price:
        return prices.spot_price(
            instance_type, region, overrides or config.spot_prices, on_demand_overrides=config.on_demand_prices
        )

    return lookup


def smallest_types(placement: Placement) -> tuple[str, ...]:
    """The smallest serving instance type of each family the placement's NodePool allows, in family order."""
    found: list[str] = []
    for family in placement.instance_families:
        sizes = (f"{family}.{size}" for size in placement.accelerator.serving_instance_sizes)
        smallest = next((name for name in sizes if name in capacity.INSTANCE_TYPES), None)
        if smallest:
            found.append(smallest)
    return tuple(found)


def idle_node_price(
    placement: Placement, region: str, lookup: PriceLookup, overrides: Mapping[str, float] | None
) -> Price:
    """The cheapest of ``smallest_types``: the node Karpenter launches for one idle pod of the placement."""
    candidates = smallest_types(placement)
    priced: list[Price] = []
    for name in candidates:
        try:
            priced.append(lookup(name, region, overrides))
        except UnknownPriceError:
            continue
    if not priced:
        raise UnknownPriceError(
            f"no price for any instance type of {placement.node_pool_name} ({', '.join(candidates) or 'none known'}): "
            "set one in onDemandPrices"
        )
    return min(priced, key=lambda price: (price.usd_per_hour, candidates.index(price.instance_type)))


def idle_items(
    config: AppConfig,
    setting: Setting,
    *,
    on_demand: PriceLookup = prices.on_demand_price,
    spot: PriceLookup | None = None,
) -> tuple[Item, ...]:
    """What the deployment bills per hour idle under ``setting``."""
    items: list[Item] = []
    for placement in placements(config):
        key = placement.node_pool_name
        count = config.serving.min_replicas_of(key) if setting.min_replicas_as_configured else 1
        on_spot = takes_spot(config, placement, spot=setting.spot, min_replicas=count)
        if on_spot:
            price = idle_node_price(placement, config.region, spot or spot_lookup(config), config.spot_prices)
        else:
            price = idle_node_price(placement, config.region, on_demand, config.on_demand_prices)
        where = f"in {placement.location.zone}" if placement.location.zone else "in the Region"
        unit = f"{price.instance_type} {prices.SPOT if on_spot else prices.ON_DEMAND}"
        if price.region != config.region:
            unit += f" ({price.region} price)"
        items.append(
            Item(
                f"{placement.accelerator.name} {where}",
                unit,
                count,
                price.usd_per_hour,
                price.source,
                price.as_of,
                at_least=placement.location.is_local_zone,
                note=price.note,
            )
        )
    nats = nat_gateway_count(config, setting.nat_gateways)
    for fixed, count, unit in (
        (SYSTEM_NODE, SYSTEM_NODES, "On-Demand, managed node group"),
        (EKS_CONTROL_PLANE, 1, "per cluster"),
        (NAT_GATEWAY, nats, f"natGateways {setting.nat_gateways}"),
        (ALB, 1, "per ALB, plus LCUs"),
    ):
        items.append(Item(fixed.what, unit, count, fixed.usd_per_hour, f"{fixed.url} ({fixed.region})", fixed.as_of))
    return tuple(items)


def total(items: Sequence[Item]) -> float:
    return sum(item.usd_per_hour for item in items)


def _configured_min_replicas_differ(config: AppConfig) -> bool:
    return any(config.serving.min_replicas_of(p.node_pool_name) != 1 for p in placements(config))


def configured_setting(config: AppConfig) -> Setting:
    """The deployment's own setting (minReplicas "as configured" only where they are not all 1)."""
    return Setting(_configured_min_replicas_differ(config), config.nat_gateways, config.serving.spot)


def settings(config: AppConfig) -> tuple[Setting, ...]:
    """Every combination of the settings, ``BEFORE`` first; minReplicas as configured only where they differ."""
    floors = (False, True) if _configured_min_replicas_differ(config) else (False,)
    return tuple(
        Setting(*combination) for combination in itertools.product(floors, (NAT_PER_AZ, NAT_ONE), (False, True))
    )


def _each(value: float) -> str:
    """A price per hour as the tables print it: up to 4 decimals, no trailing zeros."""
    return f"{value:.4f}".rstrip("0").rstrip(".")


def _setting_row(config: AppConfig, setting: Setting, items: Sequence[Item]) -> str:
    names = [
        name for name, match in (("before", BEFORE), ("as configured", configured_setting(config))) if match == setting
    ]
    if setting.min_replicas_as_configured:
        floor = ", ".join(
            f"{p.node_pool_name} {config.serving.min_replicas_of(p.node_pool_name)}" for p in placements(config)
        )
    else:
        floor = "1 each"
    nats = f"{setting.nat_gateways} ({nat_gateway_count(config, setting.nat_gateways)})"
    capacity_type = prices.SPOT if setting.spot else prices.ON_DEMAND
    if any(item.note and item.count for item in items):
        capacity_type += " (at On-Demand prices: no Spot price recorded)"
    hourly = total(items)
    cells = (" = ".join(names), floor, nats, capacity_type, f"{hourly:.2f}", f"{hourly * HOURS_PER_30_DAYS:,.0f}")
    return "| " + " | ".join(cells) + " |"


@dataclass(frozen=True)
class Report:
    """The idle cost of one deployment under each setting, and its own items."""

    name: str
    config: AppConfig
    rows: tuple[tuple[Setting, tuple[Item, ...]], ...]

    @property
    def configured_items(self) -> tuple[Item, ...]:
        own = configured_setting(self.config)
        return next(items for setting, items in self.rows if setting == own)

    def markdown(self) -> str:
        """The settings table, the deployment's items, and where each price was read."""
        config = self.config
        lines = [
            "| setting | minReplicas | natGateways | regional serving | USD/hour | USD/30 days |",
            "|---|---|---|---|---|---|",
            *(_setting_row(config, setting, items) for setting, items in self.rows),
            "",
            f"`{self.name}` as configured, item by item:",
            "",
            "| item | type | count | USD/hour each | USD/hour |",
            "|---|---|---|---|---|",
        ]
        items = self.configured_items
        for item in items:
            each = f"at least {_each(item.usd_per_hour_each)}" if item.at_least else _each(item.usd_per_hour_each)
            unit = item.unit
            if item.note:
                unit = f"{unit[:-1]}; {item.note})" if unit.endswith(")") else f"{unit} ({item.note})"
            lines.append(f"| {item.what} | {unit} | {item.count} | {each} | {_each(item.usd_per_hour)} |")
        lines.append(f"| total | | | | {total(items):.2f} |")
        lines += [
            "",
            "Local Zone nodes are priced at the Region's price, which a Local Zone's exceeds: a total with one "
            "running is a lower bound. Left out: data transfer, NAT data processing, LCUs, EBS and CloudWatch.",
            "Prices (USD per hour, Linux; source, as of):",
            "",
        ]
        sources = dict.fromkeys((item.source, item.as_of) for _, row_items in self.rows for item in row_items)
        lines += [f"- {source}{f', {as_of}' if as_of else ''}" for source, as_of in sources]
        return "\n".join(lines)


def report(
    name: str,
    config: AppConfig,
    *,
    on_demand: PriceLookup = prices.on_demand_price,
    spot: PriceLookup | None = None,
) -> Report:
    """The deployment's idle cost under every setting of :func:`settings`."""
    rows = tuple((s, idle_items(config, s, on_demand=on_demand, spot=spot)) for s in settings(config))
    return Report(name, config, rows)


def readme_block(text: str) -> str | None:
    """What README.md holds between the markers, or None without them."""
    return BLOCK.held(text)


def load(name: str, pairs: Sequence[str] = ()) -> AppConfig:
    """The config of deployment ``name`` with ``-c key=value`` overrides, as plan.deployments loads it."""
    context = cli_context([t for pair in (f"{DEPLOYMENT_KEY}={name}", *pairs) for t in ("-c", pair)])
    return load_plan(context).selected.config


def main(argv: list[str] | None = None) -> int:
    """``python -m plan.costs [--deployment NAME] [-c key=value ...] [--readme [--write]]``; exit 2 on errors."""
    parser = argparse.ArgumentParser(prog="python -m plan.costs", description=__doc__.split("\n\n")[0])
    parser.add_argument("--deployment", help=f"deployments/<name>.json (default {DEFAULT_DEPLOYMENT})")
    parser.add_argument("-c", "--context", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--readme", action="store_true", help=f"the README's block: deployment {README_DEPLOYMENT}")
    parser.add_argument("--write", action="store_true", help="with --readme: write it between README.md's markers")
    args = parser.parse_args(argv)
    if args.write and not args.readme:
        parser.error("--write needs --readme")
    given = [pair for pair in args.context if pair.split("=", 1)[0] == DEPLOYMENT_KEY]
    if args.readme and (args.deployment or args.context):
        parser.error(f"--readme is the {README_DEPLOYMENT} deployment as committed: drop --deployment and -c")
    name = args.deployment or (given[-1].split("=", 1)[1] if given else DEFAULT_DEPLOYMENT)
    pairs = [pair for pair in args.context if pair not in given]
    try:
        result = report(name, load(name, pairs))
    except ConfigError as err:
        print("\n".join(err.lines()), file=sys.stderr)
        return 2
    except UnknownPriceError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.write:
        text = README.read_text(encoding="utf-8")
        if readme_block(text) is None:
            print(f"error: README.md has no {BLOCK.begin} ... {BLOCK.end} block", file=sys.stderr)
            return 2
        README.write_text(BLOCK.written(text, result.markdown()), encoding="utf-8")
        print(f"wrote the idle cost of {name} into {README.name}")
        return 0
    if not args.readme:
        print(f"Idle cost of deployment {name} ({result.config.region}), USD:\n")
    print(result.markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main())
