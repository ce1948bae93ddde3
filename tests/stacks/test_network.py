"""NetworkStack: regional and Local Zone subnets, their tags and routes, the NodePort security group."""

from __future__ import annotations

import ipaddress
import itertools
import json
from collections.abc import Iterator
from typing import Any

import pytest

from plan import naming
from plan.config import AppConfig
from tests.conftest import Synth
from tests.stack_variants import EDGE_NETWORK, variant

# Kubernetes' default --service-node-port-range: the only ports devices may reach.
NODE_PORTS = (30000, 32767)


def resources(template: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {lid: res.get("Properties", {}) for lid, res in template["Resources"].items() if res["Type"] == kind}


def tags(props: dict[str, Any]) -> dict[str, str]:
    return {tag["Key"]: tag["Value"] for tag in props.get("Tags", [])}


def ref(value: Any) -> str:
    assert isinstance(value, dict) and set(value) == {"Ref"}, value
    return str(value["Ref"])


def default_route_targets(template: dict[str, Any]) -> dict[str, str]:
    """Subnet logical id -> "igw" or "nat", from its route table's 0.0.0.0/0 route."""
    route_table_of = {
        ref(p["SubnetId"]): ref(p["RouteTableId"])
        for p in resources(template, "AWS::EC2::SubnetRouteTableAssociation").values()
    }
    target_of: dict[str, str] = {}
    for route in resources(template, "AWS::EC2::Route").values():
        if route.get("DestinationCidrBlock") == "0.0.0.0/0":
            target_of[ref(route["RouteTableId"])] = "igw" if "GatewayId" in route else "nat"
    return {subnet: target_of.get(table, "none") for subnet, table in route_table_of.items()}


def cases(synth: Synth) -> Iterator[tuple[AppConfig, dict[str, Any]]]:
    """The app's default network and the edge variant (6 AZs, 8 Local Zones, /20 VPC)."""
    yield synth.stacks.network.config, synth.template_json(synth.stacks.network)
    edge = variant(EDGE_NETWORK)
    yield edge.config, edge.templates["network"].to_json()


@pytest.fixture(scope="module")
def network_cases(synth: Synth) -> list[tuple[AppConfig, dict[str, Any]]]:
    return list(cases(synth))


def test_regional_subnets_span_exactly_the_configured_azs(network_cases: list[Any]) -> None:
    for config, template in network_cases:
        routes = default_route_targets(template)
        regional = {
            lid: p
            for lid, p in resources(template, "AWS::EC2::Subnet").items()
            if p["AvailabilityZone"] in config.availability_zones
        }
        for kind in ("igw", "nat"):
            azs = sorted(p["AvailabilityZone"] for lid, p in regional.items() if routes[lid] == kind)
            assert azs == sorted(config.availability_zones), kind
        assert len(resources(template, "AWS::EC2::NatGateway")) >= 1


def test_one_public_subnet_per_local_zone_with_its_own_default_route(network_cases: list[Any]) -> None:
    for config, template in network_cases:
        routes = default_route_targets(template)
        zones = {z.name for z in config.local_zones}
        local = {lid: p for lid, p in resources(template, "AWS::EC2::Subnet").items() if p["AvailabilityZone"] in zones}
        assert sorted(p["AvailabilityZone"] for p in local.values()) == sorted(zones)
        tables = resources(template, "AWS::EC2::SubnetRouteTableAssociation").values()
        for lid, props in local.items():
            assert props["MapPublicIpOnLaunch"] is True  # devices reach NodePorts on node public IPs
            assert routes[lid] == "igw"
            own_tables = [ref(t["RouteTableId"]) for t in tables if ref(t["SubnetId"]) == lid]
            sharing = [t for t in tables if ref(t["RouteTableId"]) in own_tables and ref(t["SubnetId"]) != lid]
            assert len(own_tables) == 1 and not sharing, f"{lid} must have a route table of its own"


def test_subnet_cidrs_never_overlap_and_local_zones_take_the_tail(network_cases: list[Any]) -> None:
    for config, template in network_cases:
        vpc = ipaddress.ip_network(next(iter(resources(template, "AWS::EC2::VPC").values()))["CidrBlock"])
        assert str(vpc) == config.vpc_cidr
        zones = {z.name for z in config.local_zones}
        subnets = [
            (p["AvailabilityZone"] in zones, ipaddress.ip_network(p["CidrBlock"]))
            for p in resources(template, "AWS::EC2::Subnet").values()
        ]
        for (_, a), (_, b) in itertools.combinations(subnets, 2):
            assert not a.overlaps(b), f"{a} overlaps {b}"
        assert all(net.subnet_of(vpc) for _, net in subnets)  # type: ignore[arg-type]
        last_regional = max(int(net.broadcast_address) for is_local, net in subnets if not is_local)
        first_local = min(int(net.network_address) for is_local, net in subnets if is_local)
        assert last_regional < first_local, "Local Zone subnets must come after every regional subnet"


def test_every_subnet_carries_discovery_location_and_tier_tags(network_cases: list[Any]) -> None:
    for config, template in network_cases:
        routes = default_route_targets(template)
        zones = {z.name for z in config.local_zones}
        for lid, props in resources(template, "AWS::EC2::Subnet").items():
            found = tags(props)
            in_zone = props["AvailabilityZone"]
            tier = "public" if routes[lid] == "igw" else "private"
            assert found[naming.DISCOVERY_TAG_KEY] == config.cluster_name
            assert found[naming.LOCATION_TAG_KEY] == (in_zone if in_zone in zones else naming.REGION_LOCATION)
            assert found[naming.TIER_TAG_KEY] == tier
            elb_tags = {k for k in found if k.startswith("kubernetes.io/role/")}
            if in_zone in zones:
                assert not elb_tags, "Local Zone subnets are not for load balancers"
            else:
                expected = "kubernetes.io/role/elb" if tier == "public" else "kubernetes.io/role/internal-elb"
                assert elb_tags == {expected} and found[expected] == "1"


def test_node_port_security_group_admits_only_client_cidrs_on_node_ports(
    synth: Synth, network_cases: list[Any]
) -> None:
    ipv6_seen = False
    for config, template in network_cases:
        groups = {
            lid: p
            for lid, p in resources(template, "AWS::EC2::SecurityGroup").items()
            if tags(p).get(naming.DISCOVERY_TAG_KEY) == config.cluster_name
        }
        assert len(groups) == 1, "exactly one security group is offered to Karpenter nodes by tag"
        (group_id, group), *_ = groups.items()
        rules = group.get("SecurityGroupIngress", [])
        sources = sorted(r.get("CidrIp") or r["CidrIpv6"] for r in rules)
        assert sources == sorted(config.client_cidrs)
        for rule in rules:
            assert (rule["IpProtocol"], rule["FromPort"], rule["ToPort"]) == ("tcp", *NODE_PORTS)
            assert rule.get("CidrIp") not in ("0.0.0.0/0",) and rule.get("CidrIpv6") != "::/0"
            ipv6_seen |= "CidrIpv6" in rule
        standalone = [
            p
            for p in resources(template, "AWS::EC2::SecurityGroupIngress").values()
            if p.get("GroupId") == {"Fn::GetAtt": [group_id, "GroupId"]}
        ]
        assert not standalone
    assert ipv6_seen, "the edge variant's IPv6 client CIDR must become a CidrIpv6 rule"
    network = synth.stacks.network
    assert network.node_port_security_group.node.id == "NodePortSecurityGroup"


def test_flow_logs_go_to_cloudwatch_logs_with_retention(synth: Synth) -> None:
    template = synth.template_json(synth.stacks.network)
    (flow_log,) = resources(template, "AWS::EC2::FlowLog").values()
    assert flow_log["LogDestinationType"] == "cloud-watch-logs"
    assert flow_log["TrafficType"] == "ALL"
    assert flow_log["ResourceType"] == "VPC"
    group = resources(template, "AWS::Logs::LogGroup")[flow_log["LogGroupName"]["Ref"]]
    assert group["RetentionInDays"] >= 90


def test_default_security_group_is_stripped_of_rules(synth: Synth) -> None:
    template = synth.template_json(synth.stacks.network)
    restrict = [r for r in template["Resources"].values() if r["Type"] == "Custom::VpcRestrictDefaultSG"]
    assert len(restrict) == 1


def test_stack_exposes_subnets_by_role(synth: Synth) -> None:
    network = synth.stacks.network
    config = network.config
    assert set(network.local_zone_subnets) == {z.name for z in config.local_zones}
    assert len(network.regional_private_subnets) == len(config.availability_zones)
    assert len(network.regional_public_subnets) == len(config.availability_zones)
    regional = {s.node.path for s in (*network.regional_private_subnets, *network.regional_public_subnets)}
    assert not regional & {s.node.path for s in network.local_zone_subnets.values()}


def _network_validation(tmp_path: Any, **overrides: str) -> tuple[dict[str, Any], list[str]]:
    """Synthesize the network stack alone with cdk-nag registered as build_app does; its report."""
    import aws_cdk as cdk
    from cdk_nag import AwsSolutionsChecks

    from plan.config import load_config
    from stacks.network import NetworkStack
    from tests.conftest import cdk_json_context

    config = load_config({**cdk_json_context(), **overrides})
    app = cdk.App(outdir=str(tmp_path))
    stack = NetworkStack(app, "Net", config=config, env=cdk.Environment(account=config.account, region=config.region))
    cdk.Validations.of(app).add_plugins(AwsSolutionsChecks(app))
    failures: list[str] = []
    try:
        app.synth()
    except RuntimeError as err:
        failures.append(str(err))
    report = json.loads(next(tmp_path.rglob("validation-report.json")).read_text())
    violations = [v["ruleName"] for p in report["pluginReports"] for v in p["violations"]]
    return json.loads((tmp_path / stack.template_file).read_text()), failures + violations


def test_public_node_ports_pass_cdk_nag_only_with_the_explicit_opt_in(tmp_path: Any) -> None:
    """The README's way to open NodePorts synthesizes: EC23 is acknowledged because the user said so."""
    template, problems = _network_validation(tmp_path, clientCidrs="0.0.0.0/0", allowPublicNodePorts="true")
    assert problems == []
    (group,) = [
        p for p in resources(template, "AWS::EC2::SecurityGroup").values() if "NodePorts" in p["GroupDescription"]
    ]
    assert [rule["CidrIp"] for rule in group["SecurityGroupIngress"]] == ["0.0.0.0/0"]
    metadata = json.dumps(json.loads((tmp_path / "Net.metadata.json").read_text()))
    assert "AwsSolutions-EC23" in metadata and "allowPublicNodePorts=true" in metadata


def test_specific_client_networks_need_no_acknowledgement(tmp_path: Any) -> None:
    _, problems = _network_validation(tmp_path, clientCidrs="198.51.100.0/24")
    assert problems == []
    assert "AwsSolutions-EC23" not in (tmp_path / "Net.metadata.json").read_text()
