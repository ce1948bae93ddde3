"""The endpoint inventory publisher: keeps the DynamoDB inventory equal to what is really serving.

Every ``interval`` it lists what serves, puts each entry with ``expires_at = now + ttl`` (the
heartbeat), deletes the entries it published that are gone, publishes the ready pod counts and
keeps the ALB's weights. It is level-triggered, so a missed event cannot leave a stale entry. Why
one publisher and not self-registering pods, and what it does on errors and SIGTERM:
docs/adr/0005-one-inventory-publisher-not-self-registering-pods.md.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from plan import contract
from runtime.inventory import api as layout
from runtime.inventory.cluster import KubernetesApi, ServingState, discover, ready_pods, serving_ingress
from runtime.inventory.endpoint import Endpoint
from runtime.inventory.metrics import CapacityMetrics
from runtime.inventory.settings import PublisherSettings
from runtime.inventory.weights import WeightController, reconcile

log = logging.getLogger("edge_diffusion.inventory")

HEARTBEAT_FILE: Final = Path("/tmp/edge-diffusion-inventory.heartbeat")  # noqa: S108 - liveness probe


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


def cycle(
    state: ServingState,
    publisher: InventoryPublisher,
    settings: PublisherSettings,
    *,
    metrics: CapacityMetrics | None = None,
    weights: WeightController | None = None,
    patch: Callable[[Any, str], None] | None = None,
    now: float,
) -> SyncReport:
    """One reconcile of an already-read cluster state: entries, metrics, then the ALB's weights."""
    counts = ready_pods(state, settings)
    endpoints = discover(state.services, state.slices, state.nodes, settings, ingresses=state.ingresses)
    report = publisher.sync(endpoints)
    log.info("sync: %d published, %d removed, %d failed", report.put, report.deleted, report.failed)
    if metrics is not None:
        metrics.publish(counts, report.put)
    if weights is not None and patch is not None:
        reconcile(weights, serving_ingress(state), counts, now, patch)
    return report


def run(
    api: KubernetesApi,
    publisher: InventoryPublisher,
    settings: PublisherSettings,
    stop: threading.Event,
    heartbeat_file: Path | None = HEARTBEAT_FILE,
    *,
    metrics: CapacityMetrics | None = None,
    weights: WeightController | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Reconcile every ``interval_s`` until ``stop`` is set."""

    def patch(ingress: Any, value: str) -> None:
        api.patch_annotation(ingress, contract.ANNOTATION_WEIGHTED_ACTION, value)

    while True:
        try:
            state = api.serving_state(settings.namespace)
        except Exception as err:  # keep what is published; entries expire if this lasts past the TTL
            log.warning("cannot read the cluster, publishing nothing this cycle: %s", err)
        else:
            report = cycle(state, publisher, settings, metrics=metrics, weights=weights, patch=patch, now=clock())
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
