"""The publisher's settings, each from one environment variable the chart sets."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar, Final

from plan import contract
from runtime.settings import ProgramSettings, refusal, setting

ADDRESS_TYPES: Final = ("ExternalIP", "InternalIP", "ExternalDNS", "InternalDNS")
MAX_TTL_S: Final = 86400
METRICS_SINKS: Final = ("cloudwatch", "none")  # none: no PutMetricData (runs outside AWS)
_SECONDS: Final = "seconds"


class PublisherSettings(ProgramSettings):
    """Everything the publisher needs."""

    PROG: ClassVar[str] = f"python -m {contract.INVENTORY_MODULE}"
    DESCRIPTION: ClassVar[str] = "Keep the endpoint inventory equal to what is really serving."

    table_name: str = setting(env=contract.ENV_INVENTORY_TABLE, help="the DynamoDB endpoint table")
    cluster: str = setting(env=contract.ENV_INVENTORY_CLUSTER, help="cluster name, part of endpoint ids")
    namespace: str = setting(env=contract.ENV_INVENTORY_NAMESPACE, help="namespace of the serving Services")
    region: str = setting(env=contract.ENV_AWS_REGION)
    default_model: str = setting(env=contract.ENV_MODEL_ID, help="model id of Services without the annotation")
    interval_s: float = setting(env=contract.ENV_INVENTORY_INTERVAL_S, default=15.0, ge=1, le=600, unit=_SECONDS)
    # How often gated serving pods are checked for their images (contract.SCHEDULING_GATE_IMAGE, see gates.py).
    gate_interval_s: float = setting(
        env=contract.ENV_INVENTORY_GATE_INTERVAL_S, default=2.0, ge=0.5, le=60, unit=_SECONDS
    )
    # Four heartbeats: a slow API call or a throttled write does not unpublish.
    ttl_s: int = setting(env=contract.ENV_INVENTORY_TTL_S, default=60, ge=1, le=MAX_TTL_S)
    cost_weights: Mapping[str, int] = setting(
        env=contract.ENV_INVENTORY_COST_WEIGHTS,
        default_factory=dict,
        allowed='a JSON object of integers like {"nvidia": 50}',
    )
    # Devices reach nodes from the Internet: external addresses unless configured otherwise.
    address_types: tuple[str, ...] = setting(
        env=contract.ENV_INVENTORY_ADDRESS_TYPES, default=("ExternalIP",), choices=ADDRESS_TYPES, min_length=1
    )
    # ReadyServingPods and InventoryEndpoints every heartbeat (the same variable as the servers').
    metrics_sink: str = setting(env=contract.ENV_METRICS_SINK, default="cloudwatch", choices=METRICS_SINKS)
    liveness_check: bool = setting(
        flag="--check", default=False, help="exit 0 if the last cycle succeeded recently, else 1"
    )

    def check(self) -> None:
        if self.ttl_s < 2 * self.interval_s:
            allowed = f"{2 * self.interval_s:g} (two heartbeats of {contract.ENV_INVENTORY_INTERVAL_S}) to {MAX_TTL_S}"
            raise refusal(contract.ENV_INVENTORY_TTL_S, self.ttl_s, allowed)
