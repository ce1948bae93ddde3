"""NetworkStack: the VPC the cluster lives in, and the public subnets in the Local Zones.

Regional subnets come first in the VPC CIDR, Local Zone subnets at its tail, so adding a
Local Zone never renumbers (and so never replaces) a regional subnet. The cluster's
control plane and its controllers use the regional private subnets only; Local Zone
subnets are for Karpenter-launched serving nodes, which devices reach on NodePorts on the
nodes' public IPs, through the NodePort security group. Private subnets reach the internet
through NAT gateways (``natGateways``: one per AZ, or one shared); Local Zone subnets are public
and route to the internet gateway, so they need no NAT gateway either way.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import aws_cdk as cdk
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs
from constructs import Construct

from plan import naming, topology
from plan.config import AppConfig
from stacks import nag

NODE_PORT_RANGE: Final = (30000, 32767)  # Kubernetes' default --service-node-port-range
ELB_ROLE_TAG_KEY: Final = "kubernetes.io/role/elb"
INTERNAL_ELB_ROLE_TAG_KEY: Final = "kubernetes.io/role/internal-elb"
PUBLIC_TIER: Final = "public"
PRIVATE_TIER: Final = "private"
# The Local Zone block is the VPC's last quarter, cut in 8 subnets (config allows at most 8 zones).
LOCAL_ZONE_SLOTS: Final = 8


@dataclass(frozen=True)
class SubnetPlan:
    """How the VPC CIDR is cut: regional subnets in the first three quarters, Local Zones in the last.

    Private subnets share the first half, public subnets the third quarter, one slot per AZ
    (rounded up to a power of two); each Local Zone gets one /(vpc+5) in the last quarter.
    """

    private_mask: int
    public_mask: int
    local_zone_cidrs: tuple[str, ...]

    @classmethod
    def for_config(cls, config: AppConfig) -> SubnetPlan:
        vpc = ipaddress.IPv4Network(config.vpc_cidr)  # validated IPv4 /16-/20 by config
        az_bits = math.ceil(math.log2(len(config.availability_zones))) if len(config.availability_zones) > 1 else 0
        local_zone_block = list(vpc.subnets(prefixlen_diff=2))[-1]
        slots = list(local_zone_block.subnets(prefixlen_diff=int(math.log2(LOCAL_ZONE_SLOTS))))
        return cls(
            private_mask=vpc.prefixlen + 1 + az_bits,
            public_mask=vpc.prefixlen + 2 + az_bits,
            local_zone_cidrs=tuple(str(slots[i]) for i in range(len(config.local_zones))),
        )


class NetworkStack(cdk.Stack):
    """VPC over the configured regional AZs, Local Zone public subnets, NodePort security group."""

    def __init__(self, scope: Construct, construct_id: str, *, config: AppConfig, **kwargs: Any) -> None:
        super().__init__(scope, construct_id, **kwargs)
        self.config = config
        plan = SubnetPlan.for_config(config)

        # Private subnets are listed first: the VPC allocates in this order, so the larger
        # private blocks take the first half and the public ones the third quarter.
        self.vpc = ec2.Vpc(
            self,
            "Vpc",
            ip_addresses=ec2.IpAddresses.cidr(config.vpc_cidr),
            availability_zones=list(config.availability_zones),
            nat_gateways=topology.nat_gateway_count(config),
            subnet_configuration=[
                ec2.SubnetConfiguration(
                    name="Private", subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS, cidr_mask=plan.private_mask
                ),
                ec2.SubnetConfiguration(name="Public", subnet_type=ec2.SubnetType.PUBLIC, cidr_mask=plan.public_mask),
            ],
            restrict_default_security_group=True,
        )
        self._add_flow_log()
        nag.acknowledge(
            self,
            "CloudFormation-Validate::W3010",
            "Availability and Local Zones are explicit by design: they come from config (availabilityZones, "
            "localZones), so synth needs no AWS lookup and the Local Zone subnets are pinned to their zones.",
        )

        self.regional_private_subnets: list[ec2.ISubnet] = list(self.vpc.private_subnets)
        self.regional_public_subnets: list[ec2.ISubnet] = list(self.vpc.public_subnets)
        for subnet in self.regional_private_subnets:
            self._tag_subnet(subnet, naming.REGION_LOCATION, PRIVATE_TIER, {INTERNAL_ELB_ROLE_TAG_KEY: "1"})
        for subnet in self.regional_public_subnets:
            self._tag_subnet(subnet, naming.REGION_LOCATION, PUBLIC_TIER, {ELB_ROLE_TAG_KEY: "1"})

        self.local_zone_subnets: dict[str, ec2.PublicSubnet] = {}
        for zone, cidr in zip(config.local_zones, plan.local_zone_cidrs, strict=True):
            self.local_zone_subnets[zone.name] = self._add_local_zone_subnet(zone.name, cidr)

        self.node_port_security_group = self._add_node_port_security_group()

    @property
    def availability_zones(self) -> list[str]:
        """The configured AZs: no context lookup (synth runs without AWS credentials)."""
        return list(self.config.availability_zones)

    def _add_flow_log(self) -> None:
        """All VPC traffic metadata (accepted and rejected) to CloudWatch Logs, kept one year."""
        log_group = logs.LogGroup(
            self,
            "FlowLogGroup",
            retention=logs.RetentionDays.ONE_YEAR,
            removal_policy=cdk.RemovalPolicy.RETAIN,
        )
        role = iam.Role(self, "FlowLogRole", assumed_by=iam.ServicePrincipal("vpc-flow-logs.amazonaws.com"))
        self.vpc.add_flow_log(
            "FlowLog",
            destination=ec2.FlowLogDestination.to_cloud_watch_logs(log_group, role),
            traffic_type=ec2.FlowLogTrafficType.ALL,
        )

    def _tag_subnet(self, subnet: ec2.ISubnet, location: str, tier: str, extra: Mapping[str, str]) -> None:
        """Discovery tags on the subnet resource only (not its route table, NAT gateway or EIP)."""
        tags = {
            naming.DISCOVERY_TAG_KEY: self.config.cluster_name,
            naming.LOCATION_TAG_KEY: location,
            naming.TIER_TAG_KEY: tier,
            **extra,
        }
        for key, value in tags.items():
            cdk.Tags.of(subnet).add(key, value, include_resource_types=["AWS::EC2::Subnet"])

    def _add_local_zone_subnet(self, zone: str, cidr: str) -> ec2.PublicSubnet:
        """A public subnet in ``zone`` with its own route table and a default route to the IGW.

        Public IPs on launch: devices reach the serving NodePorts on the nodes' public IPs
        (the NodePort security group admits only the client CIDRs). No load balancer tags:
        nothing but Karpenter's serving nodes belongs here, and the cluster never uses it.
        """
        subnet = ec2.PublicSubnet(
            self,
            f"LocalZoneSubnet-{zone}",
            vpc_id=self.vpc.vpc_id,
            availability_zone=zone,
            cidr_block=cidr,
            map_public_ip_on_launch=True,
        )
        assert self.vpc.internet_gateway_id is not None  # the VPC has public subnets, so it has an IGW
        subnet.add_default_internet_route(self.vpc.internet_gateway_id, self.vpc.internet_connectivity_established)
        cdk.Tags.of(subnet).add("Name", f"{self.node.path}/LocalZone-{zone}")
        self._tag_subnet(subnet, zone, PUBLIC_TIER, {})
        return subnet

    def _add_node_port_security_group(self) -> ec2.SecurityGroup:
        """Admits TCP NodePorts (30000-32767) from the configured client CIDRs and nothing else."""
        group = ec2.SecurityGroup(
            self,
            "NodePortSecurityGroup",
            vpc=self.vpc,
            description="Serving NodePorts (TCP 30000-32767) from the configured client networks only",
            allow_all_outbound=True,  # nodes pull images and models, and call AWS APIs
        )
        low, high = NODE_PORT_RANGE
        for cidr in self.config.client_cidrs:
            network = ipaddress.ip_network(cidr)
            peer = ec2.Peer.ipv4(cidr) if network.version == 4 else ec2.Peer.ipv6(cidr)
            group.add_ingress_rule(peer, ec2.Port.tcp_range(low, high), f"NodePorts from client network {cidr}")
        cdk.Tags.of(group).add(naming.DISCOVERY_TAG_KEY, self.config.cluster_name)
        open_to_all = any(ipaddress.ip_network(cidr).prefixlen == 0 for cidr in self.config.client_cidrs)
        if open_to_all and self.config.allow_public_node_ports:
            # Config admits 0.0.0.0/0 or ::/0 only with allowPublicNodePorts=true: the user's explicit choice.
            nag.acknowledge(
                group,
                "AwsSolutions-EC23",
                "allowPublicNodePorts=true: the deployment's owner chose to open the serving NodePorts "
                f"(TCP {low}-{high} only) to the whole Internet ({', '.join(self.config.client_cidrs)})",
            )
        return group
