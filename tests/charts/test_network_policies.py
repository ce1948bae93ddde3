"""The NetworkPolicies mean what they say: evaluated (tests/charts/netpol.py) against the pods the
charts render, every policy selects real pods, every port a probe, a Service or the ALB uses is
reachable from where that traffic comes from, and the pairs that must not talk cannot."""

from __future__ import annotations

import ipaddress
import json
from typing import Any

import pytest

from charts import network_policies as chart
from charts import serving as serving_chart
from plan import contract, topology
from tests.charts.conftest import Rendered, render
from tests.charts.netpol import Cluster, Endpoint, in_ip_block, selector_matches
from tests.charts.test_semantics import pod_spec
from tests.conftest import cdk_json_context

KUBE_SYSTEM = "kube-system"
PUBLIC_AWS_IP = "52.92.16.10"  # an address of S3 in us-west-2 (AWS ip-ranges.json, S3 prefix 52.92.16.0/20)


def _hosts(cidr: str, index: int) -> str:
    network = ipaddress.ip_network(cidr)
    return str(network.network_address + index)


class World:
    """The rendered pods of the app namespace plus the peers outside it."""

    def __init__(self, rendered: Rendered) -> None:
        self.rendered = rendered
        config = rendered.config
        vpc = ipaddress.IPv4Network(config.vpc_cidr)
        self.policies = rendered.of_kind("NetworkPolicy")
        self.cluster = Cluster(self.policies, {topology.NAMESPACE: {}, KUBE_SYSTEM: {}, "default": {}})
        self.pods: dict[str, Endpoint] = {}
        workloads = [
            o
            for o in [*rendered.of_kind("Deployment"), *rendered.of_kind("Job")]
            if o["metadata"].get("namespace") == topology.NAMESPACE
        ]
        for index, obj in enumerate(workloads, start=1):
            spec = pod_spec(obj)
            template = obj["spec"]["tasks"][0]["template"] if obj["kind"] == "Job" else obj["spec"]["template"]
            ports = {
                p["name"]: p["containerPort"] for c in spec["containers"] for p in c.get("ports", []) if "name" in p
            }
            self.pods[obj["metadata"]["name"]] = Endpoint(
                name=obj["metadata"]["name"],
                ip=str(vpc.network_address + 256 * index + 10),
                namespace=topology.NAMESPACE,
                labels=template["metadata"]["labels"],
                ports=ports,
                node_ip=str(vpc.network_address + 256 * index + 1),
            )
        # Pods and nodes of other namespaces live in the private subnets (the first half), as ours do.
        self.kube_dns = Endpoint(
            "coredns", str(vpc.network_address + 2_000), KUBE_SYSTEM, dict(chart.KUBE_DNS_LABELS), {"dns": 53}
        )
        self.karpenter = Endpoint(
            "karpenter", str(vpc.network_address + 2_001), KUBE_SYSTEM, {"app.kubernetes.io/name": "karpenter"}
        )
        self.default_pod = Endpoint("web", str(vpc.network_address + 2_002), "default", {"app": "web"})
        self.api_cluster_ips = [Endpoint(f"kubernetes-{ip}", ip.split("/")[0]) for ip in chart.KUBERNETES_SERVICE_IPS]
        self.api_eni = Endpoint("eks-eni", str(vpc.network_address + 300))  # control-plane ENI, private subnet
        self.pod_identity = Endpoint("pod-identity-agent", chart.POD_IDENTITY_AGENT_CIDRS[0].split("/")[0])
        self.imds = Endpoint("imds", "169.254.169.254")
        self.aws_api = Endpoint("s3", PUBLIC_AWS_IP)
        self.alb = Endpoint("alb", _hosts(chart.alb_subnet_cidrs(config)[-1], 20))  # a regional public subnet
        self.device = Endpoint("device", _hosts(config.client_cidrs[0], 9))
        self.stranger = Endpoint("stranger", "198.51.100.77")

    def of(self, obj: dict[str, Any]) -> Endpoint:
        return self.pods[obj["metadata"]["name"]]

    def serving(self) -> list[tuple[topology.Placement, Endpoint]]:
        return [(p, self.pods[p.name]) for p in topology.placements(self.rendered.config)]

    def compile_pods(self) -> list[Endpoint]:
        return [self.of(j) for j in self.rendered.of_kind("Job")]

    def publisher(self) -> Endpoint:
        return self.pods["endpoint-inventory"]


@pytest.fixture(scope="module")
def world(rendered: Rendered) -> World:
    return World(rendered)


def test_the_evaluator_applies_default_deny_ip_blocks_and_named_ports() -> None:
    """The evaluator itself: deny by default, except inside a cidr, named ports, node-IP traffic."""
    policies = [
        {"metadata": {"namespace": "a"}, "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}},
        {
            "metadata": {"namespace": "a"},
            "spec": {
                "podSelector": {"matchLabels": {"role": "db"}},
                "policyTypes": ["Ingress"],
                "ingress": [
                    {
                        "from": [{"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.0.5.0/24"]}}],
                        "ports": [{"port": "pg"}],
                    }
                ],
            },
        },
    ]
    cluster = Cluster(policies, {"a": {}})
    db = Endpoint("db", "10.0.9.9", "a", {"role": "db"}, {"pg": 5432}, node_ip="10.0.9.1")
    assert cluster.allowed(Endpoint("x", "10.0.1.1"), db, 5432)
    assert not cluster.allowed(Endpoint("x", "10.0.5.1"), db, 5432)  # except
    assert not cluster.allowed(Endpoint("x", "10.0.1.1"), db, 5433)  # not the named port
    assert not cluster.allowed(Endpoint("x", "10.0.1.1"), db, 5432, "UDP")
    assert cluster.allowed(Endpoint("kubelet", "10.0.9.1"), db, 9999)  # its node
    assert not cluster.allowed(db, Endpoint("x", "10.0.1.1"), 443)  # default deny egress
    assert selector_matches({"matchExpressions": [{"key": "k", "operator": "NotIn", "values": ["v"]}]}, {"k": "w"})
    assert not in_ip_block("fd00::1", {"cidr": "0.0.0.0/0"})


def test_the_evaluator_resolves_a_named_port_of_a_selector_peer_on_the_source_pod() -> None:
    """As the VPC CNI's controller did before resolveIngressPorts: an ingress rule whose peers are pods by
    selector admits a pod only if one of its ports resolves on that pod; a number always does."""
    db = Endpoint("db", "10.0.9.9", "a", {"role": "db"}, {"pg": 5432}, node_ip="10.0.9.1")
    scraper = Endpoint("scraper", "10.0.7.7", "monitoring", {"app": "scraper"})
    twin = Endpoint("twin", "10.0.8.8", "monitoring", {"app": "twin"}, {"pg": 1})

    def cluster(port: int | str) -> Cluster:
        rule = {"from": [{"namespaceSelector": {}}], "ports": [{"port": port, "protocol": "TCP"}]}
        policy = {"podSelector": {}, "policyTypes": ["Ingress"], "ingress": [rule]}
        return Cluster([{"metadata": {"namespace": "a"}, "spec": policy}], {"a": {}, "monitoring": {}})

    assert cluster(5432).allowed(scraper, db, 5432)
    assert not cluster("pg").allowed(scraper, db, 5432)  # no port named pg on the scraper
    assert cluster("pg").allowed(twin, db, 5432)  # one that happens to have it
    assert not cluster(5432).allowed(Endpoint("outside", "10.0.5.5"), db, 5432)  # not a pod


def test_every_policy_selects_rendered_pods(world: World) -> None:
    assert world.policies
    for policy in world.policies:
        selected = [
            pod
            for pod in world.pods.values()
            if policy["metadata"]["namespace"] == pod.namespace
            and selector_matches(policy["spec"]["podSelector"], pod.labels)
        ]
        assert selected, f"NetworkPolicy {policy['metadata']['name']} selects no pod"


def test_every_pod_of_the_namespace_is_isolated_both_ways(world: World) -> None:
    for pod in world.pods.values():
        for direction in ("Ingress", "Egress"):
            assert world.cluster.selecting(pod, direction), f"{pod.name}: not isolated for {direction}"


def test_every_serving_probe_port_is_reachable_from_the_node_only(world: World, rendered: Rendered) -> None:
    for placement, pod in world.serving():
        [container] = pod_spec(rendered.named("Deployment", placement.name))["containers"]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            port = pod.ports[container[probe]["httpGet"]["port"]]
            kubelet = Endpoint("kubelet", pod.node_ip or "")
            assert world.cluster.allowed(kubelet, pod, port), (placement.name, probe)
            assert not world.cluster.allowed(world.karpenter, pod, port), (placement.name, probe)


def test_service_ports_are_reachable_from_their_clients(world: World, rendered: Rendered) -> None:
    for placement, pod in world.serving():
        service = rendered.named("Service", placement.name)
        for port in service["spec"]["ports"]:
            target = port["targetPort"]
            number = pod.ports[target] if isinstance(target, str) else target
            # EKS network policies need a Service's port to equal its pods' container port.
            assert port["port"] == number, placement.name
            client = world.device if placement.location.is_local_zone else world.alb
            assert world.cluster.allowed(client, pod, number), (placement.name, client.name)
            assert not world.cluster.allowed(world.stranger, pod, number), placement.name
            assert not world.cluster.allowed(client, pod, number + 1), placement.name  # that port only


def test_the_alb_reaches_every_target_group_and_health_check_port(world: World, rendered: Rendered) -> None:
    [ingress] = rendered.of_kind("Ingress")
    annotations = ingress["metadata"]["annotations"]
    action = json.loads(next(v for k, v in annotations.items() if "/actions." in k))
    groups = action["forwardConfig"]["targetGroups"]
    assert groups
    assert annotations["alb.ingress.kubernetes.io/healthcheck-port"] == "traffic-port"
    for group in groups:
        service = rendered.named("Service", group["serviceName"])
        pod = world.pods[group["serviceName"]]
        [port] = [p for p in service["spec"]["ports"] if str(p["port"]) == group["servicePort"]]
        number = pod.ports[port["targetPort"]]  # target-type ip: the ALB connects to the pod's port
        assert world.cluster.allowed(world.alb, pod, number), group["serviceName"]
        # The devices reach the Region through the ALB only, never the pods.
        assert not world.cluster.allowed(world.device, pod, number), group["serviceName"]


def test_the_metrics_port_is_reachable_from_pods_of_the_cluster_only(world: World, rendered: Rendered) -> None:
    """Prometheus, in whichever namespace, scrapes every serving pod's metrics port; the ALB, the
    devices, the VPC's other hosts and anything outside never reach it, and the port is the metrics one only."""
    prometheus = Endpoint("prometheus", world.default_pod.ip, "monitoring", {"app.kubernetes.io/name": "prometheus"})
    vpc_host = world.api_eni  # an address in the VPC that is no pod (a control-plane ENI; an instance alike)
    for placement, pod in world.serving():
        port = pod.ports[serving_chart.METRICS_PORT_NAME]
        assert port == contract.METRICS_PORT
        for scraper in (prometheus, world.karpenter):
            assert world.cluster.allowed(scraper, pod, port), (placement.name, scraper.name)
            assert not world.cluster.allowed(scraper, pod, contract.PORT), (placement.name, scraper.name)
        assert world.cluster.allowed(Endpoint("kubelet", pod.node_ip or ""), pod, port), placement.name
        for outsider in (world.alb, world.device, world.stranger, vpc_host):
            assert not world.cluster.allowed(outsider, pod, port), (placement.name, outsider.name)
    for service in rendered.of_kind("Service"):
        for service_port in service["spec"]["ports"]:
            assert service_port["port"] != contract.METRICS_PORT, service["metadata"]["name"]
            assert service_port.get("targetPort") not in (serving_chart.METRICS_PORT_NAME, contract.METRICS_PORT)


def test_every_pod_resolves_names_and_gets_pod_identity_credentials_and_aws_apis(world: World) -> None:
    for pod in world.pods.values():
        assert world.cluster.allowed(pod, world.kube_dns, 53, "UDP"), pod.name
        assert world.cluster.allowed(pod, world.kube_dns, 53, "TCP"), pod.name
        assert world.cluster.allowed(pod, world.pod_identity, chart.POD_IDENTITY_AGENT_PORT), pod.name
        assert world.cluster.allowed(pod, world.aws_api, 443), pod.name
        assert not world.cluster.allowed(pod, world.aws_api, 80), pod.name  # HTTPS only
        assert not world.cluster.allowed(pod, world.imds, 80), pod.name  # pods use Pod Identity


def test_the_dns_rule_covers_the_kube_dns_service_cluster_ip() -> None:
    """The controller adds the ClusterIP of Services whose selector the rule's podSelector matches."""
    [rule] = render_policy("egress-cluster-dns")["spec"]["egress"]
    [peer] = rule["to"]
    kube_dns_service_selector = {"k8s-app": "kube-dns"}  # the coredns add-on's Service
    assert selector_matches(peer["podSelector"], kube_dns_service_selector)


def render_policy(name: str) -> dict[str, Any]:
    import cdk8s

    from plan.config import load_config

    built = chart.NetworkPoliciesChart(cdk8s.App(), "np", config=load_config(cdk_json_context()))
    [policy] = [o for o in built.to_json() if o["metadata"]["name"] == name]
    return dict(policy)


def test_the_publisher_reaches_the_kubernetes_api_and_no_serving_pod(world: World) -> None:
    """It reads readiness from EndpointSlices (runtime.inventory.cluster): the API is all it talks to
    in the cluster, at the address the kubelet gives it."""
    publisher = world.publisher()
    for api in world.api_cluster_ips:
        assert world.cluster.allowed(publisher, api, 443), api.name
    for placement, pod in world.serving():
        assert not world.cluster.allowed(publisher, pod, contract.PORT), placement.name


def test_pairs_that_must_not_talk_cannot(world: World) -> None:
    serving = [pod for _, pod in world.serving()]
    assert serving and world.compile_pods()
    for job in world.compile_pods():
        for pod in serving:
            assert not world.cluster.allowed(job, pod, contract.PORT), (job.name, pod.name)
        for api in [*world.api_cluster_ips, world.api_eni]:
            assert not world.cluster.allowed(job, api, 443), job.name
    for pod in serving:
        for api in [*world.api_cluster_ips, world.api_eni]:
            assert not world.cluster.allowed(pod, api, 443), pod.name
        for other in serving:
            assert not world.cluster.allowed(pod, other, contract.PORT), (pod.name, other.name)
        assert not world.cluster.allowed(pod, world.karpenter, 8080), pod.name
        assert not world.cluster.allowed(pod, world.default_pod, 80), pod.name
        assert not world.cluster.allowed(pod, world.kube_dns, 9153), pod.name  # CoreDNS metrics: not DNS
        assert not world.cluster.allowed(pod, world.publisher(), 8080), pod.name
    assert not world.cluster.allowed(world.publisher(), world.aws_api, 80)
    assert not world.cluster.allowed(world.publisher(), world.api_eni, 10250)  # no kubelet API


def test_a_vpc_outside_private_ranges_is_excluded_from_https_egress() -> None:
    rendered = render({**cdk_json_context(), "vpcCidr": "100.127.0.0/16"})
    policy = next(p for p in rendered.of_kind("NetworkPolicy") if p["metadata"]["name"] == "egress-aws-apis")
    [rule] = policy["spec"]["egress"]
    [peer] = rule["to"]
    assert in_ip_block(PUBLIC_AWS_IP, peer["ipBlock"])
    assert not in_ip_block("100.127.3.4", peer["ipBlock"])  # inside 100.64.0.0/10: excluded either way
    outside = chart.public_ipv4_except(rendered.config.__class__(vpc_cidr="11.2.0.0/16", development=True))
    assert "11.2.0.0/16" in outside


def test_local_zone_pods_admit_every_client_network() -> None:
    rendered = render({**cdk_json_context(), "clientCidrs": ["198.51.100.0/24", "2001:db8::/32"]})
    world = World(rendered)
    local = [(p, pod) for p, pod in world.serving() if p.location.is_local_zone]
    assert local
    for _, pod in local:
        assert world.cluster.allowed(Endpoint("v4", "198.51.100.8"), pod, contract.PORT)
        assert world.cluster.allowed(Endpoint("v6", "2001:db8::8"), pod, contract.PORT)
        assert not world.cluster.allowed(Endpoint("other", "192.0.2.8"), pod, contract.PORT)


@pytest.mark.parametrize(
    "overrides",
    [{}, {"availabilityZones": "us-west-2a,us-west-2b", "vpcCidr": "10.20.0.0/20"}],
    ids=["default", "two-zones"],
)
def test_the_alb_subnets_are_exactly_the_regional_public_subnets(overrides: dict[str, str]) -> None:
    """charts.network_policies.alb_subnet_cidrs agrees with the subnets the ALB controller puts an
    internet-facing ALB in: those tagged kubernetes.io/role/elb "1" or "" (v2.17.1
    pkg/networking/subnet_resolver.go, ResolveViaDiscovery), as stacks.network creates them."""
    import aws_cdk as cdk
    from aws_cdk.assertions import Template

    from plan.config import load_config
    from stacks.network import NetworkStack

    config = load_config({**cdk_json_context(), **overrides})
    app = cdk.App()
    stack = NetworkStack(app, "Net", config=config, env=cdk.Environment(account=config.account, region=config.region))
    subnets = Template.from_stack(stack).find_resources("AWS::EC2::Subnet")
    expected = {ipaddress.ip_network(cidr) for cidr in chart.alb_subnet_cidrs(config)}
    alb_subnets = [
        ipaddress.ip_network(r["Properties"]["CidrBlock"])
        for r in subnets.values()
        if any(t["Key"] == "kubernetes.io/role/elb" and t["Value"] in ("", "1") for t in r["Properties"]["Tags"])
    ]
    assert len(alb_subnets) == len(config.availability_zones)
    assert set(alb_subnets) == expected
