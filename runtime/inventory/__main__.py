"""``python -m runtime.inventory``: run the publisher and the image gate beside it, or ``--check`` its
liveness (the chart's probe)."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from typing import Final

from runtime.inventory.cluster import KubernetesApi
from runtime.inventory.gates import ImageGate, start_gates
from runtime.inventory.metrics import CapacityMetrics
from runtime.inventory.publisher import HEARTBEAT_FILE, InventoryPublisher, healthy, run
from runtime.inventory.settings import PublisherSettings
from runtime.inventory.weights import WeightController
from runtime.settings import SettingsError, error_exit

log = logging.getLogger("edge_diffusion.inventory")

STALE_AFTER_INTERVALS: Final = 3  # liveness fails after three cycles without a successful sync


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        settings = PublisherSettings.from_args(argv)
        if settings.liveness_check:
            fresh = healthy(HEARTBEAT_FILE, STALE_AFTER_INTERVALS * settings.interval_s, time.time())
            return 0 if fresh else 1
        api = KubernetesApi.in_cluster(os.environ)
    except SettingsError as err:
        return error_exit(PublisherSettings.PROG, err)
    import boto3

    table = boto3.resource("dynamodb", region_name=settings.region).Table(settings.table_name)
    metrics = None
    if settings.metrics_sink == "cloudwatch":
        metrics = CapacityMetrics(boto3.client("cloudwatch", region_name=settings.region), settings.cluster)
    weights = WeightController(preference=dict(settings.cost_weights))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    log.info(
        "publishing %s/%s to %s every %gs; opening image gates every %gs",
        settings.cluster,
        settings.namespace,
        settings.table_name,
        settings.interval_s,
        settings.gate_interval_s,
    )
    gate = ImageGate(
        api,
        boto3.client("ecr", region_name=settings.region),
        settings.namespace,
        ecr_in=lambda region: boto3.client("ecr", region_name=region),
    )
    gates = start_gates(gate, settings.gate_interval_s, stop)
    try:
        run(api, InventoryPublisher(table, settings), settings, stop, metrics=metrics, weights=weights)
    finally:
        stop.set()  # also when run() failed: the gate loop ends with it
        gates.join(timeout=settings.gate_interval_s + 15)  # a cycle in flight finishes (API timeout: 10 s)
        api.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
