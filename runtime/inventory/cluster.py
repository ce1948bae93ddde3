"""What is serving, read from the Kubernetes API: serving Services, their EndpointSlices, Nodes, the Ingress.

``discover`` turns those objects (plain dicts as the API returns them) into the entries devices
can reach: one per (Local Zone Service, node with a ready endpoint of it), carrying the Service's
TLS server name when it serves https, and one per accelerator serving behind the Region's ALB.
``ready_pods`` counts the ready serving pods of every Service (the publisher's metrics and the
ALB weights). ``KubernetesApi`` lists them with the pod's service account, patches one
annotation of the serving Ingress (its weighted forward action) and removes the image scheduling
gate of serving pods (``gates``).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from plan import contract
from runtime.inventory.endpoint import Endpoint
from runtime.inventory.settings import PublisherSettings
from runtime.settings import SettingsError

log = logging.getLogger("edge_diffusion.inventory")

SERVICE_ACCOUNT_DIR: Final = Path("/var/run/secrets/kubernetes.io/serviceaccount")
SERVICE_NAME_LABEL: Final = "kubernetes.io/service-name"  # set by Kubernetes on EndpointSlices
ZONE_LABEL: Final = "topology.kubernetes.io/zone"
REGION_LABEL: Final = "topology.kubernetes.io/region"
LOCAL_ZONE_PATTERN: Final = re.compile(r"^[a-z]{2}(-gov)?-[a-z]+-\d-[a-z]{3}-\d[a-z]$")  # us-west-2-lax-1a
SCHEMES: Final = ("https", "http")
# Without the scheme annotation an object speaks what the server does without TLS settings: http.
# The charts always set it; the publisher says so in a warning rather than publish a scheme nobody serves.
DEFAULT_SCHEME: Final = "http"
MERGE_PATCH: Final = "application/merge-patch+json"
JSON_PATCH: Final = "application/json-patch+json"


@dataclass(frozen=True)
class ServingState:
    """One consistent read of the cluster: every object the publisher derives entries from."""

    services: Sequence[Mapping[str, Any]] = field(default_factory=list)  # serving Services (accelerator label)
    slices: Sequence[Mapping[str, Any]] = field(default_factory=list)  # their EndpointSlices
    nodes: Sequence[Mapping[str, Any]] = field(default_factory=list)
    ingresses: Sequence[Mapping[str, Any]] = field(default_factory=list)  # labelled contract.LABEL_INVENTORY


@dataclass(frozen=True)
class PodCount:
    """Ready serving pods of one Service (one Kubernetes Deployment: the charts name both alike)."""

    service: str
    accelerator: str
    location: str  # the Region name or the Local Zone name
    ready: int


@dataclass(frozen=True)
class TargetGroup:
    """One target group of the Ingress's weighted forward action."""

    service: str
    weight: int


@dataclass(frozen=True)
class WeightedIngress:
    """The serving Ingress as the publisher needs it: where the ALB is and how it splits traffic."""

    name: str
    namespace: str
    resource_version: str
    hostname: str | None
    scheme: str
    action: Mapping[str, Any]  # the forward action's JSON, kept whole so only weights change
    target_groups: tuple[TargetGroup, ...]

    @property
    def weights(self) -> dict[str, int]:
        return {group.service: group.weight for group in self.target_groups}

    def action_with(self, weights: Mapping[str, int]) -> str:
        """The annotation's new value: the same action with ``weights`` (by Service name)."""
        action = json.loads(json.dumps(self.action))
        for group in action["forwardConfig"]["targetGroups"]:
            group["weight"] = int(weights.get(group["serviceName"], group.get("weight", 0)))
        return json.dumps(action, separators=(",", ":"))


def _meta(obj: Mapping[str, Any]) -> tuple[str, dict[str, str], dict[str, str]]:
    meta = obj.get("metadata", {}) or {}
    return str(meta.get("name", "?")), dict(meta.get("labels", {}) or {}), dict(meta.get("annotations", {}) or {})


def _scheme(kind: str, name: str, annotations: Mapping[str, str]) -> str | None:
    """The object's ``contract.ANNOTATION_SCHEME``; None (and a warning) when it is not one we know."""
    value = annotations.get(contract.ANNOTATION_SCHEME)
    if value is None:
        log.warning("%s %s has no %s annotation: publishing %s", kind, name, contract.ANNOTATION_SCHEME, DEFAULT_SCHEME)
        return DEFAULT_SCHEME
    if value not in SCHEMES:
        log.warning(
            "%s %s skipped: %s=%r, allowed %s", kind, name, contract.ANNOTATION_SCHEME, value, " or ".join(SCHEMES)
        )
        return None
    return value


def _server_name(name: str, scheme: str, annotations: Mapping[str, str]) -> tuple[bool, str | None]:
    """(usable, the TLS name devices verify) of an inventoried Service, from
    ``contract.ANNOTATION_TLS_SERVER_NAME``: https only; a value that is no DNS name skips the Service."""
    if scheme != "https":
        return True, None
    value = annotations.get(contract.ANNOTATION_TLS_SERVER_NAME)
    if value is None:
        log.warning(
            "Service %s serves https without a %s annotation: devices verify its certificate against node addresses",
            name,
            contract.ANNOTATION_TLS_SERVER_NAME,
        )
        return True, None
    if not contract.is_dns_name(value):
        log.warning(
            "Service %s skipped: %s=%r, allowed a DNS name such as lz.example.com",
            name,
            contract.ANNOTATION_TLS_SERVER_NAME,
            value,
        )
        return False, None
    return True, value


def _node_address(node: Mapping[str, Any], address_types: Sequence[str]) -> str | None:
    addresses = node.get("status", {}).get("addresses", []) or []
    for kind in address_types:
        for address in addresses:
            if address.get("type") == kind and address.get("address"):
                return str(address["address"])
    return None


def _location(node: Mapping[str, Any], region: str) -> str:
    """The Local Zone a node is in, else the Region (regional AZs are one location to a device)."""
    labels = node.get("metadata", {}).get("labels", {}) or {}
    zone = str(labels.get(ZONE_LABEL, ""))
    return zone if LOCAL_ZONE_PATTERN.match(zone) else str(labels.get(REGION_LABEL) or region)


def _url(address: str, port: int | None, scheme: str = DEFAULT_SCHEME) -> str:
    try:
        host = f"[{address}]" if ipaddress.ip_address(address).version == 6 else address
    except ValueError:
        host = address  # a DNS name
    return f"{scheme}://{host}" + (f":{port}" if port is not None else "")


def _node_port(service: Mapping[str, Any]) -> int | None:
    """The nodePort of the serving port (``contract.PORT``); never another port such as metrics."""
    for port in service.get("spec", {}).get("ports", []) or []:
        serving = port.get("port") == contract.PORT or port.get("targetPort") in (contract.PORT, "http")
        if serving and port.get("nodePort"):
            return int(port["nodePort"])
    return None


def _ready_endpoints(slices: Iterable[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    """Ready endpoints by Service name, one per pod (a dual-stack pod is in two slices)."""
    ready: dict[str, dict[str, Mapping[str, Any]]] = {}
    for slice_ in slices:
        service_name = (slice_.get("metadata", {}).get("labels", {}) or {}).get(SERVICE_NAME_LABEL)
        if not service_name:
            continue
        for endpoint in slice_.get("endpoints", []) or []:
            if not (endpoint.get("conditions", {}) or {}).get("ready"):
                continue
            ref = endpoint.get("targetRef") or {}
            pod = ref.get("uid") or ref.get("name") or ",".join(endpoint.get("addresses") or []) or id(endpoint)
            ready.setdefault(service_name, {})[str(pod)] = endpoint
    return {name: list(pods.values()) for name, pods in ready.items()}


def _service_location(labels: Mapping[str, str], region: str) -> str:
    value = labels.get(contract.LABEL_LOCATION, contract.LOCATION_REGION)
    return region if value == contract.LOCATION_REGION else value


def ready_pods(state: ServingState, settings: PublisherSettings) -> list[PodCount]:
    """Ready pods of every serving Service (0 included: alarms fire on it)."""
    ready = _ready_endpoints(state.slices)
    counts: list[PodCount] = []
    for service in state.services:
        name, labels, _ = _meta(service)
        accelerator = labels.get(contract.LABEL_ACCELERATOR)
        if not accelerator:
            continue
        location = _service_location(labels, settings.region)
        counts.append(PodCount(name, accelerator, location, len(ready.get(name, ()))))
    return sorted(counts, key=lambda c: (c.location, c.accelerator, c.service))


def parse_ingress(ingress: Mapping[str, Any]) -> WeightedIngress | None:
    """The Ingress's ALB hostname, scheme and weighted forward action; None (warned) if unusable."""
    name, _, annotations = _meta(ingress)
    meta = ingress.get("metadata", {}) or {}
    scheme = _scheme("Ingress", name, annotations)
    raw = annotations.get(contract.ANNOTATION_WEIGHTED_ACTION)
    if scheme is None or raw is None:
        if raw is None:
            log.warning("Ingress %s skipped: no %s annotation", name, contract.ANNOTATION_WEIGHTED_ACTION)
        return None
    try:
        action = json.loads(raw)
        groups = tuple(
            TargetGroup(str(group["serviceName"]), int(group.get("weight", 0)))
            for group in action["forwardConfig"]["targetGroups"]
        )
    except (ValueError, KeyError, TypeError) as err:
        log.warning("Ingress %s skipped: %s is no forward action: %s", name, contract.ANNOTATION_WEIGHTED_ACTION, err)
        return None
    balancers = (ingress.get("status", {}) or {}).get("loadBalancer", {}) or {}
    hostnames = [str(lb["hostname"]) for lb in balancers.get("ingress", []) or [] if lb.get("hostname")]
    return WeightedIngress(
        name=name,
        namespace=str(meta.get("namespace", "")),
        resource_version=str(meta.get("resourceVersion", "")),
        hostname=hostnames[0] if hostnames else None,
        scheme=scheme,
        action=action,
        target_groups=groups,
    )


def serving_ingress(state: ServingState) -> WeightedIngress | None:
    """The one labelled Ingress with a weighted action (the first by name if there were several)."""
    parsed = [p for p in (parse_ingress(i) for i in sorted(state.ingresses, key=lambda i: _meta(i)[0])) if p]
    if len(parsed) > 1:
        log.warning("several Ingresses labelled %s: using %s", contract.LABEL_INVENTORY, parsed[0].name)
    return parsed[0] if parsed else None


def region_endpoints(
    state: ServingState, settings: PublisherSettings, counts: Sequence[PodCount] | None = None
) -> list[Endpoint]:
    """One entry per accelerator with ready pods behind the ALB: ``<scheme>://<ALB hostname>``."""
    ingress = serving_ingress(state)
    if ingress is None or ingress.hostname is None:
        if ingress is not None:
            log.info("Ingress %s has no load balancer hostname yet: no Region entry", ingress.name)
        return []
    counts = ready_pods(state, settings) if counts is None else counts
    by_service = {c.service: c for c in counts}
    services = {_meta(s)[0]: s for s in state.services}
    found: dict[str, Endpoint] = {}
    for group in ingress.target_groups:
        count = by_service.get(group.service)
        if count is None or count.ready == 0 or count.accelerator in found:
            continue
        annotations = _meta(services[group.service])[2]
        namespace = ingress.namespace or settings.namespace
        found[count.accelerator] = Endpoint(
            endpoint_id=f"{settings.cluster}/{namespace}/{ingress.name}/{count.accelerator}",
            url=_url(ingress.hostname, None, ingress.scheme),
            location=settings.region,
            accelerator=count.accelerator,
            model=str(annotations.get(contract.ANNOTATION_MODEL) or settings.default_model),
            cost_weight=settings.cost_weights.get(count.accelerator),
            kind=contract.ENDPOINT_KIND_REGION,
        )
    return [found[name] for name in sorted(found)]


def discover(
    services: Iterable[Mapping[str, Any]],
    slices: Iterable[Mapping[str, Any]],
    nodes: Iterable[Mapping[str, Any]],
    settings: PublisherSettings,
    *,
    ingresses: Iterable[Mapping[str, Any]] = (),
) -> list[Endpoint]:
    """Entries for every (Local Zone Service, node with a ready endpoint of it), then the Region's."""
    services, slices = list(services), list(slices)
    nodes_by_name = {n.get("metadata", {}).get("name"): n for n in nodes}
    ready_nodes: dict[str, set[str]] = {}
    for name, endpoints in _ready_endpoints(slices).items():
        ready_nodes[name] = {str(e["nodeName"]) for e in endpoints if e.get("nodeName")}
    found: list[Endpoint] = []
    for service in services:
        name, labels, annotations = _meta(service)
        if labels.get(contract.LABEL_INVENTORY) != "true":
            continue  # a regional Service: reached through the ALB, not its nodes
        accelerator = labels.get(contract.LABEL_ACCELERATOR)
        node_port = _node_port(service)
        if not accelerator or node_port is None:
            log.warning(
                "service %s skipped: needs label %s and a nodePort on port %d",
                name,
                contract.LABEL_ACCELERATOR,
                contract.PORT,
            )
            continue
        scheme = _scheme("Service", name, annotations)
        if scheme is None:
            continue
        usable, server_name = _server_name(name, scheme, annotations)
        if not usable:
            continue
        model = str(annotations.get(contract.ANNOTATION_MODEL) or settings.default_model)
        for node_name in sorted(ready_nodes.get(name, ())):
            node = nodes_by_name.get(node_name)
            address = _node_address(node, settings.address_types) if node else None
            if node is None or address is None:
                log.info("service %s on node %s not published: no %s address", name, node_name, settings.address_types)
                continue
            found.append(
                Endpoint(
                    endpoint_id=f"{settings.cluster}/{settings.namespace}/{name}/{node_name}",
                    url=_url(address, node_port, scheme),
                    location=_location(node, settings.region),
                    accelerator=str(accelerator),
                    model=model,
                    cost_weight=settings.cost_weights.get(str(accelerator)),
                    kind=contract.ENDPOINT_KIND_LOCAL_ZONE,
                    server_name=server_name,
                )
            )
    state = ServingState(services=services, slices=slices, ingresses=list(ingresses))
    return found + region_endpoints(state, settings)


class KubernetesApi:
    """Lists against the API server with the pod's service account token (re-read on every call:
    bound tokens rotate), and the two writes the publisher makes: the Ingress's weights annotation and
    the removal of a pod's image scheduling gate.
    Plain HTTPS; the kubernetes client would add nothing here."""

    def __init__(
        self,
        base_url: str,
        *,
        token_file: Path = SERVICE_ACCOUNT_DIR / "token",
        verify: str | bool = str(SERVICE_ACCOUNT_DIR / "ca.crt"),
        transport: Any = None,
        timeout_s: float = 10.0,
    ) -> None:
        import httpx

        self._token_file = token_file
        self._client = httpx.Client(base_url=base_url, verify=verify, timeout=timeout_s, transport=transport)

    @classmethod
    def in_cluster(cls, environ: Mapping[str, str]) -> KubernetesApi:
        """The API server the kubelet names in every pod's environment."""
        host, port = environ.get("KUBERNETES_SERVICE_HOST"), environ.get("KUBERNETES_SERVICE_PORT", "443")
        if not host:
            raise SettingsError("KUBERNETES_SERVICE_HOST is not set: the publisher runs inside the cluster")
        return cls(_url(host, int(port), "https"))

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._token_file.read_text().strip()}"}

    def list_items(self, path: str, label_selector: str | None = None) -> list[dict[str, Any]]:
        params: dict[str, str | int] = {"limit": 500}
        if label_selector:
            params["labelSelector"] = label_selector
        items: list[dict[str, Any]] = []
        while True:
            response = self._client.get(path, params=params, headers=self._headers())
            response.raise_for_status()
            body = response.json()
            items.extend(body.get("items", []))
            cont = body.get("metadata", {}).get("continue")
            if not cont:
                return items
            params["continue"] = cont

    def serving_state(self, namespace: str) -> ServingState:
        """Serving Services of ``namespace``, their EndpointSlices, the Nodes and the labelled Ingress.

        An Ingress list the publisher may not make (403: RBAC without ingresses) leaves the Region
        out with a warning; any other failure fails the whole read, so nothing is half-published."""
        import httpx

        services = self.list_items(f"/api/v1/namespaces/{namespace}/services", contract.LABEL_ACCELERATOR)
        names = sorted(s["metadata"]["name"] for s in services)
        slices = (
            self.list_items(
                f"/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices",
                f"{SERVICE_NAME_LABEL} in ({','.join(names)})",
            )
            if names
            else []
        )
        nodes = self.list_items("/api/v1/nodes")
        try:
            ingresses = self.list_items(
                f"/apis/networking.k8s.io/v1/namespaces/{namespace}/ingresses", f"{contract.LABEL_INVENTORY}=true"
            )
        except httpx.HTTPStatusError as err:
            if err.response.status_code != 403:
                raise
            log.warning("may not list Ingresses in %s: no Region entries and no ALB weights", namespace)
            ingresses = []
        return ServingState(services=services, slices=slices, nodes=nodes, ingresses=ingresses)

    def patch_annotation(self, ingress: WeightedIngress, annotation: str, value: str) -> None:
        """Merge-patch one annotation of ``ingress``, conditional on the version read (409 if it moved)."""
        patch = {"metadata": {"resourceVersion": ingress.resource_version, "annotations": {annotation: value}}}
        if not ingress.resource_version:
            del patch["metadata"]["resourceVersion"]
        response = self._client.patch(
            f"/apis/networking.k8s.io/v1/namespaces/{ingress.namespace}/ingresses/{ingress.name}",
            content=json.dumps(patch),
            headers={**self._headers(), "Content-Type": MERGE_PATCH},
        )
        response.raise_for_status()

    def remove_scheduling_gate(self, namespace: str, pod: str, index: int, gate: str) -> bool:
        """Remove ``spec.schedulingGates[index]`` of ``pod`` if it still is ``gate`` (a JSON patch's test op).

        False when there was nothing to do: the pod is gone (404) or its gates changed since the
        read (422: the test op failed); any other failure raises."""
        path = f"/spec/schedulingGates/{index}"
        patch = [{"op": "test", "path": f"{path}/name", "value": gate}, {"op": "remove", "path": path}]
        response = self._client.patch(
            f"/api/v1/namespaces/{namespace}/pods/{pod}",
            content=json.dumps(patch),
            headers={**self._headers(), "Content-Type": JSON_PATCH},
        )
        if response.status_code in (404, 422):
            return False
        response.raise_for_status()
        return True

    def close(self) -> None:
        self._client.close()
