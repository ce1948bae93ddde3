"""The endpoint inventory publisher: keeps the DynamoDB inventory equal to what is really serving.

Design: one small in-cluster Deployment (``python -m runtime.inventory``), not self-registering
serving pods. Why:

* A device reaches a pod through a NodePort: the URL is the *node's* external IP plus the
  Service's nodePort. A pod knows neither without asking the Kubernetes API, and IMDS is out
  of reach (the nodes set the IMDSv2 hop limit to 1, so pods cannot read instance metadata).
* Readiness is already decided by Kubernetes: an EndpointSlice endpoint is ``ready`` when the
  pod's ``/readyz`` passes and stops being ready when it drains. The publisher mirrors that;
  a self-registering pod would re-implement it, and its SIGTERM hook races the drain.
* One writer with one Pod Identity role that may write this one table, instead of write access
  in every serving pod (the pods that parse untrusted prompts keep no AWS write permission).

Each cycle lists the labelled Services (``contract.LABEL_INVENTORY``), their EndpointSlices and
the Nodes (read-only RBAC), derives one entry per (Service, node with a ready endpoint), puts
every entry with ``expires_at = now + ttl`` (the heartbeat) and deletes those it published before
that are gone. It is level-triggered (a full list every ``interval``, like a controller's resync),
so a missed event cannot leave a stale entry. Nothing is read back from the table: entries
written by a publisher that crashed, or before a restart, stop being refreshed and expire by TTL
(and the read API hides them from the second they expire). If the Kubernetes API cannot be read,
the cycle publishes nothing and deletes nothing: an outage of the API server must not empty the
inventory while the endpoints keep serving. On SIGTERM the publisher just stops: a rollout of the
publisher must not unpublish endpoints that are still serving; its successor refreshes them.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from runtime import inventory_api as layout
from runtime.inventory_api import Endpoint
from spec import contract

log = logging.getLogger("edge_diffusion.inventory")

SERVICE_ACCOUNT_DIR: Final = Path("/var/run/secrets/kubernetes.io/serviceaccount")
SERVICE_NAME_LABEL: Final = "kubernetes.io/service-name"  # set by Kubernetes on EndpointSlices
ZONE_LABEL: Final = "topology.kubernetes.io/zone"
REGION_LABEL: Final = "topology.kubernetes.io/region"
LOCAL_ZONE_PATTERN: Final = re.compile(r"^[a-z]{2}(-gov)?-[a-z]+-\d-[a-z]{3}-\d[a-z]$")  # us-west-2-lax-1a
HEARTBEAT_FILE: Final = Path("/tmp/edge-diffusion-inventory.heartbeat")  # noqa: S108 - liveness probe
ADDRESS_TYPES: Final = ("ExternalIP", "InternalIP", "ExternalDNS", "InternalDNS")


class SettingsError(ValueError):
    """A publisher setting is invalid; the message names the variable and what is allowed."""


@dataclass(frozen=True)
class PublisherSettings:
    """Everything the publisher needs, each from one environment variable (set by the chart)."""

    table_name: str
    cluster: str
    namespace: str
    region: str
    default_model: str
    interval_s: float = 15.0
    ttl_s: int = 60  # four heartbeats: a slow API call or a throttled write does not unpublish
    cost_weights: Mapping[str, int] = field(default_factory=dict)
    address_types: tuple[str, ...] = ("ExternalIP",)  # devices reach nodes from the Internet

    def __post_init__(self) -> None:
        if not 1 <= self.interval_s <= 600:
            raise SettingsError(f"{contract.ENV_INVENTORY_INTERVAL_S}={self.interval_s}: allowed 1 to 600 seconds")
        if not 2 * self.interval_s <= self.ttl_s <= 86400:
            raise SettingsError(
                f"{contract.ENV_INVENTORY_TTL_S}={self.ttl_s}: allowed {2 * self.interval_s:g} (two heartbeats) "
                "to 86400 seconds"
            )
        for kind in self.address_types:
            if kind not in ADDRESS_TYPES:
                raise SettingsError(
                    f"{contract.ENV_INVENTORY_ADDRESS_TYPES}={kind!r}: allowed {', '.join(ADDRESS_TYPES)}"
                )

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> PublisherSettings:
        def required(name: str) -> str:
            value = env.get(name, "").strip()
            if not value:
                raise SettingsError(f"{name} is not set: the chart sets it on the publisher")
            return value

        def number(name: str, default: float) -> float:
            raw = env.get(name, "").strip()
            try:
                return float(raw) if raw else default
            except ValueError:
                raise SettingsError(f"{name}={raw!r}: allowed a number of seconds") from None

        raw_weights = env.get(contract.ENV_INVENTORY_COST_WEIGHTS, "").strip() or "{}"
        try:
            weights = json.loads(raw_weights)
            if not isinstance(weights, dict) or not all(
                isinstance(v, int) and not isinstance(v, bool) for v in weights.values()
            ):
                raise ValueError
        except ValueError:
            allowed = 'a JSON object of integers like {"nvidia": 50}'
            raise SettingsError(
                f"{contract.ENV_INVENTORY_COST_WEIGHTS}={raw_weights[:80]!r}: allowed {allowed}"
            ) from None
        types = tuple(
            t.strip() for t in env.get(contract.ENV_INVENTORY_ADDRESS_TYPES, "ExternalIP").split(",") if t.strip()
        )
        return cls(
            table_name=required(contract.ENV_INVENTORY_TABLE),
            cluster=required(contract.ENV_INVENTORY_CLUSTER),
            namespace=required(contract.ENV_INVENTORY_NAMESPACE),
            region=required(contract.ENV_AWS_REGION),
            default_model=required(contract.ENV_MODEL_ID),
            interval_s=number(contract.ENV_INVENTORY_INTERVAL_S, cls.interval_s),
            ttl_s=int(number(contract.ENV_INVENTORY_TTL_S, cls.ttl_s)),
            cost_weights={str(k): int(v) for k, v in weights.items()},
            address_types=types or ("ExternalIP",),
        )


# --- What is serving, from Kubernetes objects (plain dicts as the API returns them) -------------


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


# --- Reading the cluster ---------------------------------------------------------------------------


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
    def in_cluster(cls) -> KubernetesApi:
        host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT", "443")
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


# --- Writing the inventory -------------------------------------------------------------------------


@dataclass(frozen=True)
class SyncReport:
    put: int
    deleted: int
    failed: int


class InventoryPublisher:
    """Writes entries with a heartbeat and removes the ones that stopped serving."""

    def __init__(self, table: Any, settings: PublisherSettings, clock: Callable[[], float] = time.time) -> None:
        self._table, self._settings, self._clock = table, settings, clock
        self._published: dict[tuple[str, str], Endpoint] = {}

    @property
    def published(self) -> list[Endpoint]:
        return list(self._published.values())

    def sync(self, endpoints: Iterable[Endpoint]) -> SyncReport:
        now = self._clock()
        current = {(e.key[layout.ATTR_MODEL], e.key[layout.ATTR_SORT_KEY]): e for e in endpoints}
        put = deleted = failed = 0
        for endpoint in current.values():
            try:
                self._table.put_item(Item=endpoint.item(now, self._settings.ttl_s))
                put += 1
            except Exception as err:  # one failed write must not stop the heartbeat of the others
                failed += 1
                log.warning("put %s failed (retried next cycle): %s", endpoint.endpoint_id, err)
        for key, endpoint in self._published.items():
            if key in current:
                continue
            try:
                self._table.delete_item(Key=endpoint.key)
                deleted += 1
                log.info("unpublished %s (%s)", endpoint.endpoint_id, endpoint.url)
            except Exception as err:  # it expires by TTL anyway
                failed += 1
                log.warning("delete %s failed (it expires by TTL): %s", endpoint.endpoint_id, err)
        self._published = current
        return SyncReport(put=put, deleted=deleted, failed=failed)


def run(
    api: KubernetesApi,
    publisher: InventoryPublisher,
    settings: PublisherSettings,
    stop: threading.Event,
    heartbeat_file: Path | None = HEARTBEAT_FILE,
) -> None:
    """Reconcile every ``interval_s`` until ``stop`` is set."""
    while True:
        try:
            services, slices, nodes = api.serving_state(settings.namespace)
        except Exception as err:  # keep what is published; entries expire if this lasts past the TTL
            log.warning("cannot read the cluster, publishing nothing this cycle: %s", err)
        else:
            report = publisher.sync(discover(services, slices, nodes, settings))
            log.info("sync: %d published, %d removed, %d failed", report.put, report.deleted, report.failed)
            if heartbeat_file is not None and report.failed == 0:
                heartbeat_file.write_text(str(time.time()))
        if stop.wait(settings.interval_s):
            return


def healthy(heartbeat_file: Path, max_age_s: float, now: float) -> bool:
    """Liveness: the last successful cycle is recent (the chart's exec probe runs ``--check``)."""
    try:
        return now - float(heartbeat_file.read_text()) <= max_age_s
    except (OSError, ValueError):
        return False


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runtime.inventory", description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 0 if the last cycle succeeded recently")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        settings = PublisherSettings.from_env(os.environ)
        if args.check:
            return 0 if healthy(HEARTBEAT_FILE, 3 * settings.interval_s, time.time()) else 1
        api = KubernetesApi.in_cluster()
    except SettingsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    import boto3

    table = boto3.resource("dynamodb", region_name=settings.region).Table(settings.table_name)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    log.info(
        "publishing %s/%s to %s every %gs",
        settings.cluster,
        settings.namespace,
        settings.table_name,
        settings.interval_s,
    )
    try:
        run(api, InventoryPublisher(table, settings), settings, stop)
    finally:
        api.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
