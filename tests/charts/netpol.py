"""A small evaluator of Kubernetes NetworkPolicies, as the Amazon VPC CNI enforces them.

Kubernetes semantics (networking.k8s.io/v1): a pod is isolated for a direction once any policy
of its namespace selects it with that direction in ``policyTypes``; then a connection is allowed
only if some selecting policy has a rule whose peers and ports match. A connection needs the
source's egress and the destination's ingress. Peers: ``ipBlock`` (cidr minus ``except``),
``podSelector`` (in the policy's namespace), ``namespaceSelector`` (with an optional podSelector);
absent ``from``/``to`` or ``ports``: everything. Ports: numbers (with ``endPort``), names resolved
against the destination pod's container ports, protocol TCP unless given.

What the VPC CNI adds, and this evaluator models: pods are matched by their IP, so an ipBlock
also matches pod IPs; traffic between a pod and its own node's IP is always allowed (the
agent's node-IP entry, aws/aws-network-policy-agent pkg/fwruleprocessor/fw_rule_processor.go);
and, as controller releases before resolveIngressPorts do, an ingress rule's peer pods given by
selectors are admitted only if one of the rule's ports resolves on the *source* pod (a number
always does, a name only on a pod with a container port of that name: getMatchingPodAddresses in
aws/amazon-network-policy-controller-k8s pkg/resolvers/endpoints.go), so a named port there
admits nobody who lacks it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Endpoint:
    """One end of a connection: a pod (``namespace`` set) or an address outside the cluster."""

    name: str
    ip: str
    namespace: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    ports: Mapping[str, int] = field(default_factory=dict)  # named container ports
    node_ip: str | None = None

    @property
    def is_pod(self) -> bool:
        return self.namespace is not None


def selector_matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """A LabelSelector: matchLabels and matchExpressions (In, NotIn, Exists, DoesNotExist)."""
    selector = selector or {}
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        present = key in labels
        if op == "In" and not (present and labels[key] in values):
            return False
        if op == "NotIn" and present and labels[key] in values:
            return False
        if op == "Exists" and not present:
            return False
        if op == "DoesNotExist" and present:
            return False
        if op not in ("In", "NotIn", "Exists", "DoesNotExist"):
            raise ValueError(f"unknown selector operator {op!r}")
    return True


def in_ip_block(ip: str, block: Mapping[str, Any]) -> bool:
    address = ipaddress.ip_address(ip)
    network = ipaddress.ip_network(block["cidr"])
    if address.version != network.version or address not in network:
        return False
    return not any(address in ipaddress.ip_network(cidr) for cidr in block.get("except") or [])


@dataclass
class Cluster:
    """Rendered policies, namespace labels and the rule matching of both directions."""

    policies: list[dict[str, Any]]
    namespaces: dict[str, dict[str, str]]

    def __post_init__(self) -> None:
        for name, labels in self.namespaces.items():  # the API server sets this label on every namespace
            labels.setdefault("kubernetes.io/metadata.name", name)

    def selecting(self, pod: Endpoint, direction: str) -> list[dict[str, Any]]:
        """Policies that select ``pod`` for ``direction`` (Ingress | Egress)."""
        return [
            p
            for p in self.policies
            if p["metadata"]["namespace"] == pod.namespace
            and selector_matches(p["spec"].get("podSelector"), pod.labels)
            and direction in self._types(p)
        ]

    @staticmethod
    def _types(policy: dict[str, Any]) -> list[str]:
        spec = policy["spec"]
        if "policyTypes" in spec:
            return list(spec["policyTypes"])
        return ["Ingress", *(["Egress"] if "egress" in spec else [])]  # the API server's default

    def _peer_matches(self, peer: Mapping[str, Any], other: Endpoint, policy_namespace: str) -> bool:
        if "ipBlock" in peer:
            return in_ip_block(other.ip, peer["ipBlock"])
        if not other.is_pod:
            return False
        if "namespaceSelector" in peer:
            assert other.namespace is not None
            if not selector_matches(peer["namespaceSelector"], self.namespaces.get(other.namespace, {})):
                return False
        elif other.namespace != policy_namespace:
            return False
        return selector_matches(peer.get("podSelector"), other.labels)

    @staticmethod
    def _port_matches(ports: Iterable[Mapping[str, Any]] | None, dst: Endpoint, port: int, protocol: str) -> bool:
        if ports is None:
            return True
        for rule in ports:
            if rule.get("protocol", "TCP") != protocol:
                continue
            value = rule.get("port")
            if value is None:
                return True
            if isinstance(value, str):  # a named port: only a destination pod has names
                if dst.ports.get(value) == port:
                    return True
                continue
            if value <= port <= rule.get("endPort", value):
                return True
        return False

    @staticmethod
    def _source_resolves(ports: Iterable[Mapping[str, Any]] | None, src: Endpoint) -> bool:
        """Whether an ingress rule's ports resolve on a source pod, as the controller looks them up."""
        if ports is None:
            return True
        return any(not isinstance(rule.get("port"), str) or rule["port"] in src.ports for rule in ports)

    def _direction_allows(
        self, pod: Endpoint, other: Endpoint, direction: str, dst: Endpoint, port: int, protocol: str
    ) -> bool:
        if pod.node_ip is not None and other.ip == pod.node_ip:
            return True  # the agent's node-IP entry: kubelet probes, node-local traffic
        policies = self.selecting(pod, direction)
        if not policies:
            return True
        key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
        for policy in policies:
            for rule in policy["spec"].get(key) or []:
                peers = rule.get(peers_key)
                peer_ok = peers is None or any(
                    self._peer_matches(peer, other, policy["metadata"]["namespace"])
                    and ("ipBlock" in peer or direction == "Egress" or self._source_resolves(rule.get("ports"), other))
                    for peer in peers
                )
                if peer_ok and self._port_matches(rule.get("ports"), dst, port, protocol):
                    return True
        return False

    def allowed(self, src: Endpoint, dst: Endpoint, port: int, protocol: str = "TCP") -> bool:
        """Whether a new connection from ``src`` to ``dst:port`` gets through both ends' policies."""
        egress = not src.is_pod or self._direction_allows(src, dst, "Egress", dst, port, protocol)
        ingress = not dst.is_pod or self._direction_allows(dst, src, "Ingress", dst, port, protocol)
        return egress and ingress
