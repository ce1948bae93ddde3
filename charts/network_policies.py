"""NetworkPolicies of the app namespace: nothing in or out by default, then one construct per
kind of traffic the app's pods need, derived from the placements.

Enforced by the Amazon VPC CNI's network policy agent (``enableNetworkPolicy``, set by
``stacks.cluster.stack``), whose behaviour (node traffic always admitted, ClusterIPs in egress
rules, named ports) shapes the rules: docs/adr/0006-network-policies-shaped-by-the-vpc-cni-agent.md.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

import cdk8s
from cdk8s_plus_35 import k8s
from constructs import Construct

from charts import inventory
from charts.serving import PORT_NAME
from plan import contract, topology
from plan.config import AppConfig
from plan.topology import Placement

DNS_PORT: Final = 53
HTTPS_PORT: Final = 443
# The EKS Pod Identity agent: hostNetwork on every node, credentials on port 80 of a link-local
# address (EKS user guide, "EKS Pod Identity restrictions" and "How EKS Pod Identity works":
# AWS_CONTAINER_CREDENTIALS_FULL_URI=http://169.254.170.23/v1/credentials).
POD_IDENTITY_AGENT_CIDRS: Final = ("169.254.170.23/32", "fd00:ec2::23/128")
POD_IDENTITY_AGENT_PORT: Final = 80
# CoreDNS as EKS runs it: the coredns add-on's pods in kube-system, labelled k8s-app=kube-dns
# (the selector of the kube-dns Service, whose ClusterIP the controller adds to the rule).
KUBE_SYSTEM: Final = "kube-system"
KUBE_DNS_LABELS: Final = {"k8s-app": "kube-dns"}
NAMESPACE_NAME_LABEL: Final = "kubernetes.io/metadata.name"  # set on every namespace by the API server
# The ClusterIP of Service default/kubernetes is the first address of the service CIDR, which EKS
# picks from 10.100.0.0/16 or 172.20.0.0/16 when the cluster does not set one (EKS user guide,
# "Create an Amazon EKS cluster": "Kubernetes assigns service IP addresses from either the
# 10.100.0.0/16 or 172.20.0.0/16 CIDR blocks"); the cluster stack sets none, so both are allowed.
KUBERNETES_SERVICE_IPS: Final = ("10.100.0.1/32", "172.20.0.1/32")
# Not AWS public endpoints: private (RFC 1918), shared (RFC 6598), loopback and link-local
# (IMDS, the Pod Identity agent) ranges. HTTPS to AWS APIs is HTTPS to every other IPv4 address.
NON_PUBLIC_IPV4: Final = (
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
)
ALL_IPV4: Final = "0.0.0.0/0"


def _port(port: int | str, protocol: str = "TCP") -> k8s.NetworkPolicyPort:
    value = k8s.IntOrString.from_number(port) if isinstance(port, int) else k8s.IntOrString.from_string(port)
    return k8s.NetworkPolicyPort(port=value, protocol=protocol)


def _cidr(cidr: str, *, except_: Sequence[str] = ()) -> k8s.NetworkPolicyPeer:
    return k8s.NetworkPolicyPeer(ip_block=k8s.IpBlock(cidr=cidr, except_=list(except_) or None))


def alb_subnet_cidrs(config: AppConfig) -> tuple[str, ...]:
    """Where the ALB's nodes are: the VPC's regional public subnets. ``stacks.network`` cuts the VPC
    CIDR in order: one private subnet per AZ of /(vpc + 1 + AZ bits), then one public subnet per AZ
    of one bit more, each right after the previous (CDK's sequential allocation);
    tests/charts/test_network_policies.py checks this against the subnets NetworkStack creates.
    No node or pod runs there, so admitting these admits the ALB and nothing in the cluster."""
    vpc = ipaddress.IPv4Network(config.vpc_cidr)
    zones = len(config.availability_zones)
    az_bits = math.ceil(math.log2(zones)) if zones > 1 else 0
    private_prefix = vpc.prefixlen + 1 + az_bits
    public_prefix = private_prefix + 1
    first = int(vpc.network_address) + zones * 2 ** (32 - private_prefix)
    return tuple(
        str(ipaddress.IPv4Network((first + index * 2 ** (32 - public_prefix), public_prefix))) for index in range(zones)
    )


def public_ipv4_except(config: AppConfig) -> tuple[str, ...]:
    """The ranges HTTPS egress excludes: the non-public ones, and the VPC when it lies outside them
    (a VPC on public addresses would otherwise reach the API server's ENIs and the ALB)."""
    vpc = ipaddress.IPv4Network(config.vpc_cidr)  # config allows IPv4 VPCs only
    inside = any(vpc.subnet_of(ipaddress.IPv4Network(r)) for r in NON_PUBLIC_IPV4)
    return NON_PUBLIC_IPV4 if inside else (*NON_PUBLIC_IPV4, str(vpc))


@dataclass(frozen=True)
class Selected:
    """Who a policy applies to, by pod labels (empty: every pod of the namespace)."""

    name: str
    labels: Mapping[str, str]


EVERY_POD: Final = Selected("all", {})
PUBLISHER: Final = Selected("publisher", {"app.kubernetes.io/name": inventory.NAME})


class _Policy(Construct):
    """One NetworkPolicy in the app namespace."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        name: str,
        selected: Mapping[str, str],
        ingress: Sequence[k8s.NetworkPolicyIngressRule] = (),
        egress: Sequence[k8s.NetworkPolicyEgressRule] = (),
        policy_types: Sequence[str],
    ) -> None:
        super().__init__(scope, construct_id)
        self.policy = k8s.KubeNetworkPolicy(
            self,
            "Policy",
            metadata=k8s.ObjectMeta(
                name=name,
                namespace=topology.NAMESPACE,
                labels={"app.kubernetes.io/part-of": topology.PART_OF},
            ),
            spec=k8s.NetworkPolicySpec(
                pod_selector=k8s.LabelSelector(match_labels=dict(selected) or None),
                policy_types=list(policy_types),
                ingress=list(ingress) or None,
                egress=list(egress) or None,
            ),
        )


class DefaultDeny(_Policy):
    """Every pod of the namespace: no traffic in or out unless another policy allows it."""

    def __init__(self, scope: Construct, construct_id: str) -> None:
        super().__init__(
            scope, construct_id, name="default-deny", selected=EVERY_POD.labels, policy_types=("Ingress", "Egress")
        )


class ClusterDnsEgress(_Policy):
    """Every pod resolves names (AWS endpoints, the Hub) through CoreDNS, over UDP and TCP 53."""

    def __init__(self, scope: Construct, construct_id: str) -> None:
        kube_dns = k8s.NetworkPolicyPeer(
            namespace_selector=k8s.LabelSelector(match_labels={NAMESPACE_NAME_LABEL: KUBE_SYSTEM}),
            pod_selector=k8s.LabelSelector(match_labels=dict(KUBE_DNS_LABELS)),
        )
        rule = k8s.NetworkPolicyEgressRule(to=[kube_dns], ports=[_port(DNS_PORT, "UDP"), _port(DNS_PORT, "TCP")])
        super().__init__(
            scope,
            construct_id,
            name="egress-cluster-dns",
            selected=EVERY_POD.labels,
            egress=[rule],
            policy_types=("Egress",),
        )


class PodIdentityEgress(_Policy):
    """Every workload of the namespace has a Pod Identity role: its SDK fetches credentials from
    the node's agent."""

    def __init__(self, scope: Construct, construct_id: str) -> None:
        rule = k8s.NetworkPolicyEgressRule(
            to=[_cidr(cidr) for cidr in POD_IDENTITY_AGENT_CIDRS], ports=[_port(POD_IDENTITY_AGENT_PORT)]
        )
        super().__init__(
            scope,
            construct_id,
            name="egress-pod-identity",
            selected=EVERY_POD.labels,
            egress=[rule],
            policy_types=("Egress",),
        )


class AwsApiEgress(_Policy):
    """HTTPS to public addresses: the AWS APIs every workload calls (CloudWatch, KMS, Secrets
    Manager, STS; S3 for compile jobs, with the Hugging Face Hub; DynamoDB for the publisher).

    The VPC has no interface endpoints (``stacks.network``), so these APIs answer on their public
    addresses through the NAT gateways; nothing inside the VPC or the cluster is reachable this way.
    """

    def __init__(self, scope: Construct, construct_id: str, *, config: AppConfig) -> None:
        rule = k8s.NetworkPolicyEgressRule(
            to=[_cidr(ALL_IPV4, except_=public_ipv4_except(config))], ports=[_port(HTTPS_PORT)]
        )
        super().__init__(
            scope,
            construct_id,
            name="egress-aws-apis",
            selected=EVERY_POD.labels,
            egress=[rule],
            policy_types=("Egress",),
        )


class ServingIngress(_Policy):
    """One placement's pods accept their serving port from the devices' networks in a Local Zone
    (NodePort with externalTrafficPolicy Local keeps the device's address) and from the ALB in the
    Region (target type ip: it connects, and health-checks, from its nodes in the public subnets,
    not from the devices); their metrics port from pods of the cluster only (a Prometheus in any
    namespace), never from an address outside it. Kubelet probes come from the node, which the
    agent always admits. The publisher reads readiness from EndpointSlices, not from the pods.

    The metrics rule names the port by number: for a peer given by selectors, controller releases
    before its resolveIngressPorts resolve a named port against each *source* pod and leave out every
    pod without a port of that name, as a Prometheus pod is (getMatchingPodAddresses in
    aws/amazon-network-policy-controller-k8s pkg/resolvers/endpoints.go); a number means the same in
    every release, and EKS picks the controller's."""

    def __init__(self, scope: Construct, construct_id: str, *, config: AppConfig, placement: Placement) -> None:
        sources = (
            [_cidr(cidr) for cidr in config.client_cidrs]
            if placement.location.is_local_zone
            else [_cidr(cidr) for cidr in alb_subnet_cidrs(config)]
        )
        serving = k8s.NetworkPolicyIngressRule(from_=sources, ports=[_port(PORT_NAME)])
        every_pod = k8s.NetworkPolicyPeer(namespace_selector=k8s.LabelSelector())  # all namespaces' pods
        metrics = k8s.NetworkPolicyIngressRule(from_=[every_pod], ports=[_port(contract.METRICS_PORT)])
        super().__init__(
            scope,
            construct_id,
            name=f"ingress-{placement.name}",
            selected=placement.selector_labels,
            ingress=[serving, metrics],
            policy_types=("Ingress",),
        )


class PublisherEgress(_Policy):
    """The publisher talks to the Kubernetes API (Services, EndpointSlices, Nodes, the Ingress) at
    the ClusterIP of Service default/kubernetes (``KUBERNETES_SERVICE_HOST``, which the kubelet sets
    to it; runtime.inventory.cluster.KubernetesApi.in_cluster) and to nothing else in the cluster."""

    def __init__(self, scope: Construct, construct_id: str) -> None:
        api = k8s.NetworkPolicyEgressRule(to=[_cidr(ip) for ip in KUBERNETES_SERVICE_IPS], ports=[_port(HTTPS_PORT)])
        super().__init__(
            scope,
            construct_id,
            name="egress-publisher",
            selected=PUBLISHER.labels,
            egress=[api],
            policy_types=("Egress",),
        )


class NetworkPoliciesChart(cdk8s.Chart):
    """Default deny, then the traffic each workload needs; a serving policy per placement."""

    def __init__(self, scope: Construct, construct_id: str, *, config: AppConfig) -> None:
        super().__init__(scope, construct_id, disable_resource_name_hashes=True)
        self.policies: dict[str, k8s.KubeNetworkPolicy] = {}
        constructs: list[_Policy] = [
            DefaultDeny(self, "DefaultDeny"),
            ClusterDnsEgress(self, "ClusterDns"),
            PodIdentityEgress(self, "PodIdentity"),
            AwsApiEgress(self, "AwsApis", config=config),
            PublisherEgress(self, "Publisher"),
            *(
                ServingIngress(self, f"Serving-{placement.name}", config=config, placement=placement)
                for placement in topology.placements(config)
            ),
        ]
        for construct in constructs:
            name = construct.policy.metadata.name
            assert name is not None
            self.policies[name] = construct.policy
