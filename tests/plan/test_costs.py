"""The idle cost is computed from the config and dated prices, and README.md holds the one `dev` has now."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from plan import capacity, costs, prices
from plan.accelerators import ACCELERATORS
from plan.config.models import NAT_ONE, NAT_PER_AZ
from plan.prices import Price, on_demand_price
from plan.topology import nat_gateway_count, placements

REGENERATE = ".venv/bin/python -m plan.costs --readme --write"
SPOT_SHARE = 0.4  # the injected Spot table: 40 % of On-Demand


def fake_spot(instance_type: str, region: str, overrides: Mapping[str, float] | None = None) -> Price:
    """A Spot table for the tests: a share of the On-Demand row, labelled as such."""
    on_demand = on_demand_price(instance_type, region)
    return Price(instance_type, on_demand.usd_per_hour * SPOT_SHARE, on_demand.region, "test spot", "2026-01-01")


def od(instance_type: str) -> float:
    return on_demand_price(instance_type, "us-east-1").usd_per_hour


FIXED = 2 * 0.0816 + 0.10 + 0.0225  # controllers' nodes, EKS control plane, ALB


def spot_table(share: float, url: str = "test spot", as_of: str = "2026-01-01") -> dict[str, object]:
    """plan.prices.SPOT_TABLES with a row for every On-Demand row: ``share`` of its price."""
    source, rows = prices.TABLES[prices.REFERENCE_REGION]
    spot_source = prices.PriceSource(source.region, url, as_of)
    return {source.region: (spot_source, {name: price * share for name, price in rows.items()})}


@pytest.fixture
def recorded_spot(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Spot row for every type, as the injected table prices it."""
    monkeypatch.setattr(prices, "SPOT_TABLES", spot_table(SPOT_SHARE))


def test_before_is_every_placement_at_one_on_demand_with_a_nat_per_az() -> None:
    config = costs.load("dev")
    items = costs.idle_items(config, costs.BEFORE, spot=fake_spot)
    # Karpenter's cheapest fit: g6.xlarge of g5/g6/g6e in the Region; the Local Zone offers g5 only.
    expected = od("g6.xlarge") + od("g5.xlarge") + od("inf2.xlarge") + od("c7g.4xlarge") + FIXED + 3 * 0.045
    assert costs.total(items) == pytest.approx(expected)
    assert [(i.unit.split()[0], i.count) for i in items[:4]] == [
        ("g6.xlarge", 1),
        ("g5.xlarge", 1),
        ("inf2.xlarge", 1),
        ("c7g.4xlarge", 1),
    ]


def test_dev_as_configured_keeps_the_regional_nvidia_node_on_spot_and_one_nat() -> None:
    config = costs.load("dev")
    setting = costs.configured_setting(config)
    assert setting == costs.Setting(True, NAT_ONE, True)
    items = costs.idle_items(config, setting, spot=fake_spot)
    assert costs.total(items) == pytest.approx(od("g6.xlarge") * SPOT_SHARE + FIXED + 0.045)
    assert [i.count for i in items[:4]] == [1, 0, 0, 0]


def test_spot_only_in_the_region() -> None:
    config = costs.load("dev", ["serving.minReplicas=1", 'serving.placements={"nvidia": {"minReplicas": 1}}'])
    asked: list[str] = []

    def spot(instance_type: str, region: str, overrides: Mapping[str, float] | None = None) -> Price:
        asked.append(instance_type)
        return fake_spot(instance_type, region, overrides)

    items = costs.idle_items(config, costs.Setting(True, NAT_PER_AZ, True), spot=spot)
    by_what = {item.what: item for item in items}
    assert "On-Demand" in by_what["nvidia in us-west-2-lax-1a"].unit
    assert by_what["nvidia in us-west-2-lax-1a"].at_least
    # A placement of exactly one pod stays On-Demand unless it opts in (dev's nvidia does; here it does not).
    assert all("On-Demand" in by_what[f"{name} in the Region"].unit for name in ("nvidia", "neuron", "cpu"))
    assert not asked  # no placement took Spot: none was priced as Spot
    at_two = costs.load("dev", ["serving.minReplicas=2", 'serving.placements={"nvidia": {"minReplicas": 2}}'])
    regional = [
        i for i in costs.idle_items(at_two, costs.Setting(True, NAT_PER_AZ, True), spot=spot) if "Region" in i.what
    ]
    assert all("Spot" in item.unit for item in regional)
    assert "g5.xlarge" in asked and not any("lax" in name for name in asked)  # the Local Zone's pod is never Spot
    on_demand = costs.idle_items(config, costs.Setting(True, NAT_PER_AZ, False), spot=spot)
    assert not any("Spot" in item.unit for item in on_demand)


def test_spot_without_a_recorded_price_is_on_demand_and_says_so(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(prices, "SPOT_TABLES", {})
    config = costs.load("dev")
    spot = costs.idle_items(config, costs.configured_setting(config))
    on_demand = costs.idle_items(config, costs.Setting(True, NAT_ONE, False))
    assert costs.total(spot) == pytest.approx(costs.total(on_demand))
    assert spot[0].note == prices.NO_SPOT_PRICE
    assert costs.main(["--deployment", "dev"]) == 0
    out = capsys.readouterr().out
    assert "| one (1) | Spot (at On-Demand prices: no Spot price recorded) | 1.14 |" in out
    assert f"g6.xlarge Spot (us-east-1 price; {prices.NO_SPOT_PRICE})" in out


def test_a_recorded_spot_price_is_used_with_its_source(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prices, "SPOT_TABLES", spot_table(0.5, "https://example.com/spot-history", "2026-11-30"))
    config = costs.load("dev")
    nvidia = costs.idle_items(config, costs.configured_setting(config))[0]
    assert (nvidia.unit, nvidia.usd_per_hour_each, nvidia.source, nvidia.as_of, nvidia.note) == (
        "g6.xlarge Spot (us-east-1 price)",
        od("g6.xlarge") * 0.5,
        "https://example.com/spot-history",
        "2026-11-30",
        "",
    )
    assert costs.report("dev", config).markdown().count("| Spot |") == 4


def test_nat_gateways_one_per_az_or_one() -> None:
    config = costs.load("dev", ["availabilityZones=us-west-2a,us-west-2b"])
    assert nat_gateway_count(config, NAT_PER_AZ) == 2
    assert nat_gateway_count(config, NAT_ONE) == 1
    per_az = costs.total(costs.idle_items(config, costs.Setting(True, NAT_PER_AZ, False), spot=fake_spot))
    one = costs.total(costs.idle_items(config, costs.Setting(True, NAT_ONE, False), spot=fake_spot))
    assert per_az - one == pytest.approx(0.045)


def test_config_prices_override_the_table() -> None:
    config = costs.load("dev", ['onDemandPrices={"g6.xlarge": 9.0, "g5.xlarge": 0.5}'])
    items = costs.idle_items(config, costs.BEFORE, spot=fake_spot)
    assert items[0].unit.startswith("g5.xlarge") and items[0].usd_per_hour_each == 0.5
    assert items[0].source == "config onDemandPrices"


def test_settings_cover_each_alone_and_together() -> None:
    config = costs.load("dev")
    rows = costs.settings(config)
    assert rows[0] == costs.BEFORE and rows[-1] == costs.configured_setting(config)
    assert len(set(rows)) == len(rows) == 8
    plain = costs.load(
        "dev", ["natGateways=per-az", "serving.spot=false", "serving.minReplicas=1", "serving.placements={}"]
    )
    assert costs.settings(plain) == tuple(s for s in rows if not s.min_replicas_as_configured)
    assert costs.configured_setting(plain) == costs.BEFORE


def test_one_idle_pod_per_node() -> None:
    """Each placement's idle node holds one serving pod and not two, so the count of nodes is the count of pods."""
    for placement in placements(costs.load("dev")):
        accelerator = placement.accelerator
        price = costs.idle_node_price(placement, "us-east-1", on_demand_price, None)
        cpu, memory = capacity.INSTANCE_TYPES[price.instance_type].allocatable()
        pod_cpu, pod_memory = int(accelerator.cpu_request) * 1000, int(accelerator.memory_request[:-2]) * 1024
        assert pod_cpu <= cpu and pod_memory <= memory, price.instance_type
        assert 2 * pod_cpu > cpu or 2 * pod_memory > memory, price.instance_type


def test_every_placement_has_an_idle_node_type() -> None:
    for name in ACCELERATORS:
        config = costs.load("dev", [f"accelerators={name}", "serving.placements={}"])
        for placement in placements(config):
            assert costs.smallest_types(placement), placement.node_pool_name


def test_the_controllers_node_group_is_the_stacks() -> None:
    from stacks.cluster import ControllerNodeGroupProps  # the CDK: imported by this test only

    props = ControllerNodeGroupProps()
    assert (props.instance_type, props.min_size, props.desired_size) == (
        costs.SYSTEM_NODE_TYPE,
        costs.SYSTEM_NODES,
        costs.SYSTEM_NODES,
    )


def test_cli_prints_the_table(recorded_spot: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert costs.main(["--deployment", "dev", "-c", "natGateways=per-az"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Idle cost of deployment dev (us-west-2), USD:")
    assert "| as configured | nvidia 1, nvidia-us-west-2-lax-1a 0, neuron 0, cpu 0 | per-az (3) | Spot |" in out
    assert "- test spot, 2026-01-01" in out


def test_cli_takes_the_deployment_as_make_passes_it(recorded_spot: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert costs.main(["-c", "deployment=dev"]) == 0
    assert "| as configured |" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["-c", "natGateways=two"], "error: invalid config natGateways='two': allowed "),
        (["--deployment", "nosuch"], "error: invalid config deployment='nosuch': allowed a file deployments/"),
        (["-c", 'onDemandPrices={"g5.xlarge": -1}'], "error: invalid config onDemandPrices"),
    ],
)
def test_config_errors_are_one_line_each(
    argv: list[str], line: str, recorded_spot: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert costs.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(line), err


def test_an_instance_type_without_a_price_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(costs, "smallest_types", lambda placement: ("x9.xlarge",))
    assert costs.main(["--deployment", "dev"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: no price for any instance type of nvidia (x9.xlarge)"), err


def test_the_readme_holds_the_idle_cost_of_dev() -> None:
    held = costs.readme_block(costs.README.read_text(encoding="utf-8"))
    assert held is not None, (
        f"README.md has no {costs.BLOCK.begin} ... {costs.BLOCK.end} block: add the markers, run {REGENERATE}"
    )
    current = costs.report(costs.README_DEPLOYMENT, costs.load(costs.README_DEPLOYMENT)).markdown()
    if held != current:
        pytest.fail(f"README.md's idle cost is stale: run {REGENERATE}\n\n{current}")
