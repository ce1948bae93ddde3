"""serving.spot: Spot only in the regional serving NodePools and only when enabled; Local Zone
pools and compile jobs stay On-Demand."""

from __future__ import annotations

from typing import Any

import pytest

from plan import naming, topology
from tests.charts.conftest import Rendered, render
from tests.conftest import cdk_json_context


def capacity_types(pool: dict[str, Any]) -> list[str]:
    (requirement,) = [
        r for r in pool["spec"]["template"]["spec"]["requirements"] if r["key"] == topology.CAPACITY_TYPE_LABEL
    ]
    assert requirement["operator"] == "In"
    return list(requirement["values"])


def is_local_zone(pool: dict[str, Any]) -> bool:
    labels = pool["spec"]["template"]["metadata"]["labels"]
    return bool(labels[topology.NODE_LABEL_LOCATION] != naming.REGION_LOCATION)


SPOT_CASES = {
    # serving.spot, the pods each placement keeps, per-placement spot -> the regional pools on Spot
    "off": ({"spot": False, "minReplicas": 0}, set()),
    "sleeping placements": ({"spot": True, "minReplicas": 0}, {"nvidia", "neuron", "cpu"}),
    "one pod each: On-Demand": ({"spot": True, "minReplicas": 1}, set()),
    "two pods each": ({"spot": True, "minReplicas": 2}, {"nvidia", "neuron", "cpu"}),
    "one pod, opted in": ({"spot": True, "minReplicas": 1, "placements": {"neuron": {"spot": True}}}, {"neuron"}),
    "opted in without serving.spot": ({"spot": False, "placements": {"cpu": {"spot": True}}}, {"cpu"}),
    "opted out": ({"spot": True, "minReplicas": 0, "placements": {"cpu": {"spot": False}}}, {"nvidia", "neuron"}),
}


@pytest.fixture(scope="module", params=list(SPOT_CASES), ids=list(SPOT_CASES))
def spot(request: pytest.FixtureRequest) -> tuple[set[str], Rendered]:
    serving, on_spot = SPOT_CASES[request.param]
    return on_spot, render({**cdk_json_context(), "serving": serving})  # replaces dev.json's serving object


def test_spot_only_in_regional_pools_and_only_where_it_is_safe(spot: tuple[set[str], Rendered]) -> None:
    """Spot in the Region's pools with serving.spot, except a placement held at exactly one pod (an
    interruption would leave it without capacity for a cold start) unless it opts in; never in a Local Zone."""
    on_spot, rendered = spot
    pools = rendered.of_kind("NodePool")
    regional = [p for p in pools if not is_local_zone(p)]
    local = [p for p in pools if is_local_zone(p)]
    assert regional and local
    for pool in regional:
        expected = ["spot", "on-demand"] if pool["metadata"]["name"] in on_spot else ["on-demand"]
        assert capacity_types(pool) == expected, pool["metadata"]["name"]
    for pool in local:
        assert capacity_types(pool) == ["on-demand"], pool["metadata"]["name"]


def test_compile_jobs_land_on_on_demand_nodes_of_a_pool_that_offers_them(spot: tuple[bool, Rendered]) -> None:
    _, rendered = spot
    pools = {p["metadata"]["name"]: p for p in rendered.of_kind("NodePool")}
    jobs = [j for j in rendered.of_kind("Job") if j["apiVersion"].startswith("batch.volcano.sh")]
    assert jobs
    for job in jobs:
        for task in job["spec"]["tasks"]:
            selector = task["template"]["spec"]["nodeSelector"]
            assert selector[topology.CAPACITY_TYPE_LABEL] == "on-demand"
            assert "on-demand" in capacity_types(pools[selector[topology.NODEPOOL_LABEL]])
