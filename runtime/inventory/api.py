"""The endpoint inventory: its DynamoDB item layout and the devices' read API (a Lambda handler).

One module owns the table's layout, so the publisher that writes it (``runtime.inventory``,
through ``runtime.inventory.endpoint``), the Lambda that reads it (``handler`` below, behind API
Gateway) and the stack that creates it agree on every attribute name. The layout lives here, in
the handler's file, because the stack ships this single file as the function's code: it depends
on nothing but the standard library and boto3 (which the Lambda runtime provides), never on
``runtime`` or ``spec``.

Layout: partition key ``model`` (a device asks for the model it can use; one deployment's
endpoints of one model are one small partition), sort key ``location#accelerator#endpoint_id``
(so "this Local Zone" and "this Local Zone on Neuron" are key-condition prefixes, not scans).
``expires_at`` (epoch seconds) is the table's TTL attribute: the publisher pushes it forward
on every heartbeat, so an entry whose publisher died expires. DynamoDB deletes expired items
lazily (typically within a few days), so readers also filter on ``expires_at > now``: an
expired entry disappears from the API the second its TTL passes.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any, Final

# --- Item attributes -------------------------------------------------------------------------
ATTR_MODEL: Final = "model"  # partition key
ATTR_SORT_KEY: Final = "endpoint_key"  # sort key: location#accelerator#endpoint_id
ATTR_ENDPOINT_ID: Final = "endpoint_id"  # cluster/namespace/service/node
ATTR_LOCATION: Final = "location"  # Region name, or Local Zone name such as us-west-2-lax-1a
ATTR_ACCELERATOR: Final = "accelerator"  # nvidia | neuron | cpu (spec.accelerators names)
ATTR_URL: Final = "url"  # http://<node external IP>:<nodePort>
ATTR_HEALTH: Final = "health"  # ready (only ready endpoints are published)
ATTR_LAST_HEARTBEAT: Final = "last_heartbeat"  # epoch seconds of the publisher's last write
ATTR_EXPIRES_AT: Final = "expires_at"  # epoch seconds; the table's TTL attribute
ATTR_COST_WEIGHT: Final = "cost_weight"  # accelerator cost weight: cheaper = higher (client tie-break)
KEY_SEPARATOR: Final = "#"
HEALTH_READY: Final = "ready"

# --- Lambda configuration (set by stacks/inventory.py) -------------------------------------------
ENV_TABLE: Final = "INVENTORY_TABLE_NAME"
ENV_DEFAULT_MODEL: Final = "INVENTORY_DEFAULT_MODEL"

# --- Query parameters of GET /endpoints ---------------------------------------------------------
PARAM_MODEL: Final = "model"
PARAM_LOCATION: Final = "location"
PARAM_ACCELERATOR: Final = "accelerator"
QUERY_PARAMS: Final = (PARAM_MODEL, PARAM_LOCATION, PARAM_ACCELERATOR)
_PARAM_PATTERNS: Final = {
    PARAM_MODEL: (re.compile(r"^[\w.-]+(/[\w.-]+)?$"), "a model id like org/name, at most 128 characters"),
    PARAM_LOCATION: (re.compile(r"^[a-z0-9-]{1,64}$"), "a Region or Local Zone name such as us-west-2-lax-1a"),
    PARAM_ACCELERATOR: (re.compile(r"^[a-z0-9-]{1,32}$"), "an accelerator name such as nvidia, neuron or cpu"),
}
MAX_RESULTS: Final = 500  # a device needs the nearest few; this bounds the Lambda's work


def sort_key(location: str, accelerator: str, endpoint_id: str) -> str:
    return KEY_SEPARATOR.join((location, accelerator, endpoint_id))


class BadRequestError(ValueError):
    """A query parameter the API does not accept; the message is one line for the caller."""


def parse_filters(params: Mapping[str, str] | None, default_model: str) -> dict[str, str]:
    """Validated filters from the query string; the model defaults to the deployment's."""
    filters: dict[str, str] = {}
    for name, value in (params or {}).items():
        if name not in _PARAM_PATTERNS:
            raise BadRequestError(f"unknown query parameter {name!r}: allowed {', '.join(QUERY_PARAMS)}")
        pattern, allowed = _PARAM_PATTERNS[name]
        if not isinstance(value, str) or len(value) > 128 or not pattern.match(value):
            raise BadRequestError(f"invalid {name}={str(value)[:64]!r}: allowed {allowed}")
        filters[name] = value
    filters.setdefault(PARAM_MODEL, default_model)
    return filters


def _plain(value: Any) -> Any:
    """DynamoDB numbers come back as Decimal; JSON wants int or float."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return value


def live_endpoints(table: Any, filters: Mapping[str, str], now: float) -> list[dict[str, Any]]:
    """Ready, unexpired endpoints matching ``filters``: one Query, never a Scan."""
    from boto3.dynamodb.conditions import Attr, Key

    key = Key(ATTR_MODEL).eq(filters[PARAM_MODEL])
    location, accelerator = filters.get(PARAM_LOCATION), filters.get(PARAM_ACCELERATOR)
    condition = Attr(ATTR_EXPIRES_AT).gt(int(now)) & Attr(ATTR_HEALTH).eq(HEALTH_READY)
    if location and accelerator:
        key = key & Key(ATTR_SORT_KEY).begins_with(f"{location}{KEY_SEPARATOR}{accelerator}{KEY_SEPARATOR}")
    elif location:
        key = key & Key(ATTR_SORT_KEY).begins_with(f"{location}{KEY_SEPARATOR}")
    elif accelerator:
        condition = condition & Attr(ATTR_ACCELERATOR).eq(accelerator)
    request: dict[str, Any] = {"KeyConditionExpression": key, "FilterExpression": condition}
    items: list[dict[str, Any]] = []
    while len(items) < MAX_RESULTS:
        page = table.query(**request)
        items.extend(page.get("Items", []))
        if "LastEvaluatedKey" not in page:
            break
        request["ExclusiveStartKey"] = page["LastEvaluatedKey"]
    fields = (
        ATTR_ENDPOINT_ID,
        ATTR_URL,
        ATTR_LOCATION,
        ATTR_ACCELERATOR,
        ATTR_MODEL,
        ATTR_HEALTH,
        ATTR_LAST_HEARTBEAT,
        ATTR_EXPIRES_AT,
        ATTR_COST_WEIGHT,
    )
    return [{name: _plain(item[name]) for name in fields if name in item} for item in items[:MAX_RESULTS]]


def _response(status: int, body: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "statusCode": status,
        "headers": {"Content-Type": "application/json", "Cache-Control": "no-store"},
        "body": json.dumps(body, separators=(",", ":")),
    }


def handle(event: Mapping[str, Any], *, table: Any, default_model: str, now: float) -> dict[str, Any]:
    """API Gateway proxy event -> response; ``table`` and ``now`` injected (tests, clock)."""
    try:
        filters = parse_filters(event.get("queryStringParameters"), default_model)
    except BadRequestError as err:
        return _response(400, {"message": str(err)})
    endpoints = live_endpoints(table, filters, now)
    return _response(200, {"generated_at": int(now), "filters": filters, "endpoints": endpoints})


_table: Any = None


def handler(event: Mapping[str, Any], context: object, clock: Callable[[], float] = time.time) -> dict[str, Any]:
    """Lambda entrypoint (``api.handler``): the table is created once per container."""
    global _table  # one boto3 resource per Lambda container, reused across invocations
    if _table is None:
        import boto3

        _table = boto3.resource("dynamodb").Table(os.environ[ENV_TABLE])
    return handle(event, table=_table, default_model=os.environ[ENV_DEFAULT_MODEL], now=clock())
