"""One device-facing endpoint of the inventory: what the publisher writes and devices read back.

The publisher turns each into a table item (``item``, in ``runtime.inventory.api``'s layout);
the device client parses the read API's JSON entries back (``from_entry``) and skips the ones
it cannot use. ``kind`` says what a device reaches: a Local Zone node's NodePort, or the Region's
ALB (the last resort; an entry without a kind is a Local Zone one, as before kinds existed).
``server_name`` (https only) is the DNS name the endpoint's certificate names: a Local Zone URL's
host is a node IP that changes, so devices connect there and verify the certificate against it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

from plan import contract
from runtime.inventory import api as layout

KINDS: Final = (contract.ENDPOINT_KIND_LOCAL_ZONE, contract.ENDPOINT_KIND_REGION)


@dataclass(frozen=True)
class Endpoint:
    """A node serving a Service through its nodePort, or the Region's ALB; ``accelerator`` is the
    Service's label (behind the ALB: an accelerator serving there, which its weights pick among)."""

    endpoint_id: str
    url: str
    location: str
    accelerator: str
    model: str
    cost_weight: int | None = None
    kind: str = contract.ENDPOINT_KIND_LOCAL_ZONE
    server_name: str | None = None  # sent as SNI and verified instead of the URL's host (https only)

    @property
    def is_region(self) -> bool:
        return self.kind == contract.ENDPOINT_KIND_REGION

    @property
    def scheme(self) -> str:
        return urlsplit(self.url).scheme

    @property
    def key(self) -> dict[str, str]:
        return {
            layout.ATTR_MODEL: self.model,
            layout.ATTR_SORT_KEY: layout.sort_key(self.location, self.accelerator, self.endpoint_id),
        }

    def item(self, now: float, ttl_s: int) -> dict[str, Any]:
        item: dict[str, Any] = {
            **self.key,
            layout.ATTR_ENDPOINT_ID: self.endpoint_id,
            layout.ATTR_URL: self.url,
            layout.ATTR_LOCATION: self.location,
            layout.ATTR_ACCELERATOR: self.accelerator,
            layout.ATTR_HEALTH: layout.HEALTH_READY,
            layout.ATTR_KIND: self.kind,
            layout.ATTR_LAST_HEARTBEAT: int(now),
            layout.ATTR_EXPIRES_AT: int(now) + ttl_s,
        }
        if self.cost_weight is not None:
            item[layout.ATTR_COST_WEIGHT] = self.cost_weight
        if self.server_name is not None:
            item[layout.ATTR_SERVER_NAME] = self.server_name
        return item

    @classmethod
    def from_entry(cls, entry: object) -> Endpoint:
        """Parse one entry; ValueError (one line) when it is not usable."""
        if not isinstance(entry, Mapping):
            raise ValueError(f"entry is {type(entry).__name__}, not an object")
        values: dict[str, Any] = {}
        for name in (layout.ATTR_ENDPOINT_ID, layout.ATTR_URL, layout.ATTR_LOCATION, layout.ATTR_ACCELERATOR):
            value = entry.get(name)
            if not isinstance(value, str) or not value:
                raise ValueError(f"{name}={value!r}: needs a non-empty string")
            values[name] = value
        parts = urlsplit(values[layout.ATTR_URL])
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"url={values[layout.ATTR_URL]!r}: needs http(s)://host[:port]")
        try:
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError:
            raise ValueError(f"url={values[layout.ATTR_URL]!r}: bad port") from None
        model = entry.get(layout.ATTR_MODEL, "")
        cost = entry.get(layout.ATTR_COST_WEIGHT, 0)
        if not isinstance(cost, int | float) or isinstance(cost, bool):
            raise ValueError(f"cost_weight={cost!r}: needs a number")
        kind = entry.get(layout.ATTR_KIND) or contract.ENDPOINT_KIND_LOCAL_ZONE
        if kind not in KINDS:
            raise ValueError(f"kind={kind!r}: allowed {', '.join(KINDS)}")
        server_name = entry.get(layout.ATTR_SERVER_NAME)
        if server_name is not None:
            if not isinstance(server_name, str) or not contract.is_dns_name(server_name):
                raise ValueError(f"{layout.ATTR_SERVER_NAME}={server_name!r}: needs a DNS name such as lz.example.com")
            if parts.scheme != "https":
                raise ValueError(f"{layout.ATTR_SERVER_NAME}={server_name!r}: only with an https url")
        return cls(
            endpoint_id=values[layout.ATTR_ENDPOINT_ID],
            url=values[layout.ATTR_URL].rstrip("/"),
            location=values[layout.ATTR_LOCATION],
            accelerator=values[layout.ATTR_ACCELERATOR],
            model=str(model),
            cost_weight=int(cost),
            kind=str(kind),
            server_name=server_name,
        )
