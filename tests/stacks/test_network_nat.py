"""natGateways: one NAT gateway per AZ, or one that the private subnets of every AZ share."""

from __future__ import annotations

from typing import Any

import aws_cdk as cdk
import pytest
from aws_cdk.assertions import Template

from plan.config import AppConfig, load_config
from plan.config.models import NAT_ONE, NAT_PER_AZ
from stacks.network import NetworkStack
from tests.conftest import cdk_json_context
from tests.stack_variants import EDGE_NETWORK
from tests.stacks.test_network import ref, resources


def synth(nat_gateways: str) -> tuple[AppConfig, dict[str, Any]]:
    """The edge network (6 AZs, 8 Local Zones) with this natGateways setting."""
    config = load_config({**cdk_json_context(), **EDGE_NETWORK, "natGateways": nat_gateways})
    stack = NetworkStack(cdk.App(), "Network", config=config)
    return config, dict(Template.from_stack(stack).to_json())


def default_routes(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Subnet logical id -> its route table's 0.0.0.0/0 route."""
    table_of = {
        ref(p["SubnetId"]): ref(p["RouteTableId"])
        for p in resources(template, "AWS::EC2::SubnetRouteTableAssociation").values()
    }
    route_of = {
        ref(r["RouteTableId"]): r
        for r in resources(template, "AWS::EC2::Route").values()
        if r.get("DestinationCidrBlock") == "0.0.0.0/0"
    }
    return {subnet: route_of[table] for subnet, table in table_of.items()}


def nat_of_private_subnets(config: AppConfig, template: dict[str, Any]) -> dict[str, str]:
    """AZ of each regional private subnet -> the NAT gateway its default route targets."""
    routes = default_routes(template)
    subnets = resources(template, "AWS::EC2::Subnet")
    return {
        subnets[lid]["AvailabilityZone"]: ref(route["NatGatewayId"])
        for lid, route in routes.items()
        if "NatGatewayId" in route
    }


@pytest.fixture(scope="module")
def per_az() -> tuple[AppConfig, dict[str, Any]]:
    return synth(NAT_PER_AZ)


@pytest.fixture(scope="module")
def one() -> tuple[AppConfig, dict[str, Any]]:
    return synth(NAT_ONE)


def test_per_az_gives_every_az_its_own_nat_gateway(per_az: tuple[AppConfig, dict[str, Any]]) -> None:
    config, template = per_az
    nats = resources(template, "AWS::EC2::NatGateway")
    assert len(nats) == len(config.availability_zones)
    targets = nat_of_private_subnets(config, template)
    assert sorted(targets) == sorted(config.availability_zones)
    assert len(set(targets.values())) == len(config.availability_zones)


def test_one_nat_gateway_serves_the_private_subnets_of_every_az(one: tuple[AppConfig, dict[str, Any]]) -> None:
    config, template = one
    nats = resources(template, "AWS::EC2::NatGateway")
    assert len(nats) == 1
    assert len(resources(template, "AWS::EC2::EIP")) == 1
    targets = nat_of_private_subnets(config, template)
    assert sorted(targets) == sorted(config.availability_zones)
    assert set(targets.values()) == set(nats)


@pytest.mark.parametrize("setting", [NAT_PER_AZ, NAT_ONE])
def test_local_zone_subnets_route_to_the_internet_gateway_either_way(
    setting: str, per_az: tuple[AppConfig, dict[str, Any]], one: tuple[AppConfig, dict[str, Any]]
) -> None:
    config, template = per_az if setting == NAT_PER_AZ else one
    routes = default_routes(template)
    zones = {z.name for z in config.local_zones}
    local = [lid for lid, p in resources(template, "AWS::EC2::Subnet").items() if p["AvailabilityZone"] in zones]
    assert len(local) == len(zones) > 0
    for lid in local:
        assert "GatewayId" in routes[lid] and "NatGatewayId" not in routes[lid], lid
