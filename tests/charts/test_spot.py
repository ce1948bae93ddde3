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


@pytest.fixture(scope="module", params=[True, False], ids=["spot", "on-demand"])
def spot(request: pytest.FixtureRequest) -> tuple[bool, Rendered]:
    enabled: bool = request.param
    return enabled, render({**cdk_json_context(), "serving": {"spot": enabled}})


def test_spot_only_in_regional_pools_and_only_when_enabled(spot: tuple[bool, Rendered]) -> None:
    enabled, rendered = spot
    pools = rendered.of_kind("NodePool")
    regional = [p for p in pools if not is_local_zone(p)]
    local = [p for p in pools if is_local_zone(p)]
    assert regional and local
    for pool in regional:
        assert capacity_types(pool) == (["spot", "on-demand"] if enabled else ["on-demand"])
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
