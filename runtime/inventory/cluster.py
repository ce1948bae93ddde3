"""What is serving, read from the Kubernetes API: labelled Services, their EndpointSlices, Nodes.

``discover`` turns those objects (plain dicts as the API returns them) into one ``Endpoint`` per
(Service, node with a ready endpoint of it) that devices can reach; ``KubernetesApi`` lists them
with the pod's service account (read-only RBAC).
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from runtime.inventory.endpoint import Endpoint
from runtime.inventory.settings import PublisherSettings
from runtime.settings import SettingsError
from spec import contract

log = logging.getLogger("edge_diffusion.inventory")

SERVICE_ACCOUNT_DIR: Final = Path("/var/run/secrets/kubernetes.io/serviceaccount")
SERVICE_NAME_LABEL: Final = "kubernetes.io/service-name"  # set by Kubernetes on EndpointSlices
ZONE_LABEL: Final = "topology.kubernetes.io/zone"
REGION_LABEL: Final = "topology.kubernetes.io/region"
LOCAL_ZONE_PATTERN: Final = re.compile(r"^[a-z]{2}(-gov)?-[a-z]+-\d-[a-z]{3}-\d[a-z]$")  # us-west-2-lax-1a


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


def _url(address: str, port: int) -> str:
    try:
        host = f"[{address}]" if ipaddress.ip_address(address).version == 6 else address
    except ValueError:
        host = address  # a DNS name
    return f"http://{host}:{port}"


def _node_port(service: Mapping[str, Any]) -> int | None:
    """The nodePort of the serving port (``contract.PORT``); never another port such as metrics."""
    for port in service.get("spec", {}).get("ports", []) or []:
        serving = port.get("port") == contract.PORT or port.get("targetPort") in (contract.PORT, "http")
        if serving and port.get("nodePort"):
            return int(port["nodePort"])
    return None


def discover(
    services: Iterable[Mapping[str, Any]],
    slices: Iterable[Mapping[str, Any]],
    nodes: Iterable[Mapping[str, Any]],
    settings: PublisherSettings,
) -> list[Endpoint]:
    """Entries for every (Service, node with a ready endpoint of it) reachable from devices."""
    nodes_by_name = {n.get("metadata", {}).get("name"): n for n in nodes}
    ready_nodes: dict[str, set[str]] = {}
    for slice_ in slices:
        service_name = (slice_.get("metadata", {}).get("labels", {}) or {}).get(SERVICE_NAME_LABEL)
        for endpoint in slice_.get("endpoints", []) or []:
            if (endpoint.get("conditions", {}) or {}).get("ready") and endpoint.get("nodeName") and service_name:
                ready_nodes.setdefault(service_name, set()).add(endpoint["nodeName"])
    found: list[Endpoint] = []
    for service in services:
        meta = service.get("metadata", {})
        name = meta.get("name", "?")
        labels, annotations = meta.get("labels", {}) or {}, meta.get("annotations", {}) or {}
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
                    url=_url(address, node_port),
                    location=_location(node, settings.region),
                    accelerator=str(accelerator),
                    model=model,
                    cost_weight=settings.cost_weights.get(str(accelerator)),
                )
            )
    return found


class KubernetesApi:
    """Read-only lists against the API server, with the pod's service account token (re-read on
    every call: bound tokens rotate). Plain HTTPS; the kubernetes client would add nothing here."""

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
        return cls(f"https://{_url(host, int(port)).removeprefix('http://')}")

    def list_items(self, path: str, label_selector: str | None = None) -> list[dict[str, Any]]:
        params: dict[str, str | int] = {"limit": 500}
        if label_selector:
            params["labelSelector"] = label_selector
        items: list[dict[str, Any]] = []
        while True:
            token = self._token_file.read_text().strip()
            response = self._client.get(path, params=params, headers={"Authorization": f"Bearer {token}"})
            response.raise_for_status()
            body = response.json()
            items.extend(body.get("items", []))
            cont = body.get("metadata", {}).get("continue")
            if not cont:
                return items
            params["continue"] = cont

    def serving_state(self, namespace: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
        """(labelled Services, their EndpointSlices, Nodes) of ``namespace``."""
        services = self.list_items(f"/api/v1/namespaces/{namespace}/services", f"{contract.LABEL_INVENTORY}=true")
        names = sorted(s["metadata"]["name"] for s in services)
        slices = (
            self.list_items(
                f"/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices",
                f"{SERVICE_NAME_LABEL} in ({','.join(names)})",
            )
            if names
            else []
        )
        return services, slices, self.list_items("/api/v1/nodes")

    def close(self) -> None:
        self._client.close()
