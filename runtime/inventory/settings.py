"""The publisher's settings, each from one environment variable the chart sets."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar, Final

from plan import contract
from runtime.settings import (
    BOOLEAN,
    JSON_INT_MAP,
    TEXT,
    ProgramSettings,
    integer,
    many_of,
    number,
    one_of,
    refusal,
    setting,
)

ADDRESS_TYPES: Final = ("ExternalIP", "InternalIP", "ExternalDNS", "InternalDNS")
MAX_TTL_S: Final = 86400
METRICS_SINKS: Final = ("cloudwatch", "none")  # none: no PutMetricData (runs outside AWS)


@dataclass(frozen=True)
class PublisherSettings(ProgramSettings):
    """Everything the publisher needs."""

    PROG: ClassVar[str] = f"python -m {contract.INVENTORY_MODULE}"
    DESCRIPTION: ClassVar[str] = "Keep the endpoint inventory equal to what is really serving."

    table_name: str = setting(TEXT, env=contract.ENV_INVENTORY_TABLE)
    cluster: str = setting(TEXT, env=contract.ENV_INVENTORY_CLUSTER)
    namespace: str = setting(TEXT, env=contract.ENV_INVENTORY_NAMESPACE)
    region: str = setting(TEXT, env=contract.ENV_AWS_REGION)
    default_model: str = setting(TEXT, env=contract.ENV_MODEL_ID)
    interval_s: float = setting(number(1, 600, unit="seconds"), env=contract.ENV_INVENTORY_INTERVAL_S, default=15.0)
    # How often gated serving pods are checked for their images (contract.SCHEDULING_GATE_IMAGE, see gates.py).
    gate_interval_s: float = setting(
        number(0.5, 60, unit="seconds"), env=contract.ENV_INVENTORY_GATE_INTERVAL_S, default=2.0
    )
    # Four heartbeats: a slow API call or a throttled write does not unpublish.
    ttl_s: int = setting(integer(1, MAX_TTL_S), env=contract.ENV_INVENTORY_TTL_S, default=60)
    cost_weights: Mapping[str, int] = setting(
        JSON_INT_MAP, env=contract.ENV_INVENTORY_COST_WEIGHTS, default_factory=dict
    )
    # Devices reach nodes from the Internet: external addresses unless configured otherwise.
    address_types: tuple[str, ...] = setting(
        many_of(ADDRESS_TYPES), env=contract.ENV_INVENTORY_ADDRESS_TYPES, default=("ExternalIP",)
    )
    # ReadyServingPods and InventoryEndpoints every heartbeat (the same variable as the servers').
    metrics_sink: str = setting(one_of(METRICS_SINKS), env=contract.ENV_METRICS_SINK, default="cloudwatch")
    liveness_check: bool = setting(
        BOOLEAN, flag="--check", default=False, help="exit 0 if the last cycle succeeded recently, else 1"
    )

    def check(self) -> None:
        if self.ttl_s < 2 * self.interval_s:
            allowed = f"{2 * self.interval_s:g} (two heartbeats of {contract.ENV_INVENTORY_INTERVAL_S}) to {MAX_TTL_S}"
            raise refusal(contract.ENV_INVENTORY_TTL_S, self.ttl_s, allowed)
