"""The endpoint inventory: its DynamoDB item layout, the devices' read API and token route (Lambda handlers).

The layout lives in the handler's file because the stack ships this single file as the function's
code (standard library and boto3 only, never ``runtime`` or ``plan``), so the publisher, the
Lambda and the stack share one definition. Why these keys and the TTL:
docs/adr/0009-inventory-table-keyed-by-model-expired-by-ttl.md.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import logging
import math
import os
import re
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import IO, Any, Final

# --- Item attributes -------------------------------------------------------------------------
ATTR_MODEL: Final = "model"  # partition key
ATTR_SORT_KEY: Final = "endpoint_key"  # sort key: location#accelerator#endpoint_id
ATTR_ENDPOINT_ID: Final = "endpoint_id"  # cluster/namespace/service/node
ATTR_LOCATION: Final = "location"  # Region name, or Local Zone name such as us-west-2-lax-1a
ATTR_ACCELERATOR: Final = "accelerator"  # nvidia | neuron | cpu (plan.accelerators names)
ATTR_URL: Final = "url"  # http(s)://<node external IP>:<nodePort>, or the ALB: http(s)://<hostname>
ATTR_HEALTH: Final = "health"  # ready (only ready endpoints are published)
ATTR_LAST_HEARTBEAT: Final = "last_heartbeat"  # epoch seconds of the publisher's last write
ATTR_EXPIRES_AT: Final = "expires_at"  # epoch seconds; the table's TTL attribute
ATTR_COST_WEIGHT: Final = "cost_weight"  # accelerator cost weight: cheaper = higher (client tie-break)
ATTR_KIND: Final = "kind"  # local-zone (a node's NodePort) | region (the ALB): contract.ENDPOINT_KIND_*
# https Local Zone entries: the DNS name their certificate names (the URL's host is a node IP that
# changes); devices send it as SNI and verify the certificate against it. Absent: verify the URL's host.
ATTR_SERVER_NAME: Final = "server_name"
KEY_SEPARATOR: Final = "#"
HEALTH_READY: Final = "ready"

# --- Lambda configuration (set by stacks/inventory.py) -------------------------------------------
ENV_TABLE: Final = "INVENTORY_TABLE_NAME"
ENV_DEFAULT_MODEL: Final = "INVENTORY_DEFAULT_MODEL"
# Written again from plan.contract (this file ships alone; tests/runtime/inventory checks they match).
ENV_AUTH: Final = "EDGE_DIFFUSION_AUTH"  # token | none: what inference endpoints require
ENV_TOKEN_KEY_ID: Final = "EDGE_DIFFUSION_TOKEN_KEY_ID"  # noqa: S105 - a name, not a secret
ENV_TOKEN_TTL_S: Final = "EDGE_DIFFUSION_TOKEN_TTL_S"  # noqa: S105 - a name, not a secret
ENV_TOKEN_ISSUER: Final = "EDGE_DIFFUSION_TOKEN_ISSUER"  # noqa: S105 - a name, not a secret
ENV_TOKEN_AUDIENCE: Final = "EDGE_DIFFUSION_TOKEN_AUDIENCE"  # noqa: S105 - a name, not a secret
TOKEN_ALGORITHM: Final = "RS256"  # noqa: S105 - a name, not a secret
TOKEN_KMS_SIGNING_ALGORITHM: Final = "RSASSA_PKCS1_V1_5_SHA_256"  # noqa: S105 - a name, not a secret
DEFAULT_TOKEN_TTL_S: Final = 900
AUTH_NONE: Final = "none"
# The body of GET /endpoints says what inference endpoints require, so a client fetches a token only then.
FIELD_AUTH: Final = "auth"
# GET /token answers {"token": <JWT>, "expiresAt": <epoch seconds>}.
FIELD_TOKEN: Final = "token"  # noqa: S105 - a name, not a secret
FIELD_EXPIRES_AT: Final = "expiresAt"

# --- Per-caller rate limit of GET /endpoints and GET /token (set by stacks/inventory.py) -----------
# A fixed window per route and caller, counted in a table of its own (stacks/inventory.py says why
# not the endpoint table): its partition key is route#caller#window start, its TTL ATTR_EXPIRES_AT.
ATTR_RATE_KEY: Final = "caller_window"
ATTR_HITS: Final = "hits"
ENV_RATE_TABLE: Final = "INVENTORY_RATE_TABLE_NAME"
ENV_RATE_LIMIT: Final = "INVENTORY_RATE_LIMIT"  # calls per caller and route in one window
ENV_RATE_WINDOW_S: Final = "INVENTORY_RATE_WINDOW_S"
DEFAULT_RATE_LIMIT: Final = 60  # a device fetches a token per 15 minutes and the inventory per session
DEFAULT_RATE_WINDOW_S: Final = 60
RATE_LIMIT_BOUNDS: Final = (1, 10_000)
RATE_WINDOW_BOUNDS_S: Final = (1, 3600)
ROUTE_ENDPOINTS: Final = "endpoints"
ROUTE_TOKEN: Final = "token"  # noqa: S105 - a name, not a secret
ANONYMOUS: Final = "-"  # the caller of a request without identity (IAM auth always gives one)

# --- Device demand (set by stacks/inventory.py) ---------------------------------------------------
# Each call of GET /endpoints and GET /token past the caller's rate limit records DeviceDemand 1 for
# the Region and for each serving Local Zone near the caller: one CloudWatch Embedded Metric Format
# line per location in the function's log (no API call, no IAM, no latency). Placements at
# minReplicas 0 wake on it (charts/autoscaling.py). Written again from plan.contract.
METRIC_NAMESPACE: Final = "EdgeDiffusion"
METRIC_DEVICE_DEMAND: Final = "DeviceDemand"
DIMENSION_CLUSTER: Final = "Cluster"
DIMENSION_LOCATION: Final = "Location"
DEVICE_DEMAND_DIMENSIONS: Final = (DIMENSION_CLUSTER, DIMENSION_LOCATION)
DEMAND_RESOLUTION_S: Final = 60
ENV_DEMAND_CLUSTER: Final = "INVENTORY_DEMAND_CLUSTER"  # config.cluster_name; unset: record no demand
ENV_DEMAND_REGION: Final = "INVENTORY_DEMAND_REGION"  # config.region
# JSON {zone: [device CIDRs]} of the serving Local Zones; an empty list: every caller is near it.
ENV_DEMAND_ZONES: Final = "INVENTORY_DEMAND_ZONES"

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
        ATTR_KIND,
        ATTR_SERVER_NAME,
    )
    return [{name: _plain(item[name]) for name in fields if name in item} for item in items[:MAX_RESULTS]]


def _response(status: int, body: Mapping[str, Any], headers: Mapping[str, str] | None = None) -> dict[str, Any]:
    return {
        "statusCode": status,
        "headers": {"Content-Type": "application/json", "Cache-Control": "no-store", **(headers or {})},
        "body": json.dumps(body, separators=(",", ":")),
    }


log = logging.getLogger("edge_diffusion.inventory")


def _identity(event: Mapping[str, Any]) -> Mapping[str, Any]:
    return (event.get("requestContext") or {}).get("identity") or {}


def caller(event: Mapping[str, Any]) -> str | None:
    """The token's ``sub``: the Cognito identity when there is one, else the IAM caller's ARN.

    Both come from API Gateway's IAM authorizer (``requestContext.identity``), never from the
    request: a caller cannot name someone else."""
    identity = _identity(event)
    for name in ("cognitoIdentityId", "userArn"):
        value = identity.get(name)
        if isinstance(value, str) and value:
            return value
    return None


def rate_caller(event: Mapping[str, Any]) -> str:
    """Whom a call counts against: :func:`caller`, else the IAM ``caller`` (access key or role id)."""
    found = caller(event) or _identity(event).get("caller")
    return found if isinstance(found, str) and found else ANONYMOUS


def _bounded(environ: Mapping[str, str], name: str, default: int, bounds: tuple[int, int]) -> int:
    raw = environ.get(name) or str(default)
    value = int(raw) if raw.isdigit() else -1
    if not bounds[0] <= value <= bounds[1]:
        raise ValueError(f"invalid {name}={raw!r}: allowed an integer from {bounds[0]} to {bounds[1]}")
    return value


@dataclass(frozen=True)
class RateLimit:
    """At most ``limit`` calls of a route per caller in each fixed window of ``window_s`` seconds.

    Each call is one conditional UpdateItem (``ADD hits``, only while ``hits < limit``) on the item
    of its route, caller and window, which expires by TTL after its window: no read, no race
    between concurrent Lambdas, one write unit per call. A fixed window lets a caller make up to
    twice ``limit`` calls across a window's edge; a token bucket would need a read and a write per
    call. The count happens in the handler, after API Gateway's stage throttle: it keeps one caller
    from taking more than its share of tokens and of the KMS signing quota, not from spending the
    stage's rate (requests over it are refused at the stage before any handler runs).
    """

    table: Any
    limit: int = DEFAULT_RATE_LIMIT
    window_s: int = DEFAULT_RATE_WINDOW_S

    def __post_init__(self) -> None:
        if not RATE_LIMIT_BOUNDS[0] <= self.limit <= RATE_LIMIT_BOUNDS[1]:
            raise ValueError(f"invalid rate limit {self.limit}: allowed {RATE_LIMIT_BOUNDS[0]}-{RATE_LIMIT_BOUNDS[1]}")
        if not RATE_WINDOW_BOUNDS_S[0] <= self.window_s <= RATE_WINDOW_BOUNDS_S[1]:
            allowed = f"{RATE_WINDOW_BOUNDS_S[0]}-{RATE_WINDOW_BOUNDS_S[1]} seconds"
            raise ValueError(f"invalid rate window {self.window_s}: allowed {allowed}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str], table: Any) -> RateLimit:
        return cls(
            table=table,
            limit=_bounded(environ, ENV_RATE_LIMIT, DEFAULT_RATE_LIMIT, RATE_LIMIT_BOUNDS),
            window_s=_bounded(environ, ENV_RATE_WINDOW_S, DEFAULT_RATE_WINDOW_S, RATE_WINDOW_BOUNDS_S),
        )

    def retry_after(self, route: str, who: str, now: float) -> int | None:
        """Count this call of ``route`` by ``who``: None within the limit, else the seconds to wait.

        A failure of the table other than the limit lets the call through, logged: the stage
        throttle still bounds every caller together, and an outage of the counter must not stop
        every device from getting tokens."""
        start = int(now) - int(now) % self.window_s
        end = start + self.window_s
        try:
            self.table.update_item(
                Key={ATTR_RATE_KEY: KEY_SEPARATOR.join((route, who, str(start)))},
                UpdateExpression="ADD #hits :one SET #expires = if_not_exists(#expires, :end)",
                ConditionExpression="attribute_not_exists(#hits) OR #hits < :limit",
                ExpressionAttributeNames={"#hits": ATTR_HITS, "#expires": ATTR_EXPIRES_AT},
                ExpressionAttributeValues={":one": 1, ":limit": self.limit, ":end": end},
            )
        except Exception as err:
            code = getattr(err, "response", {}).get("Error", {}).get("Code")
            if code == "ConditionalCheckFailedException":
                return max(1, math.ceil(end - now))
            log.error("counting a %s call of %s failed, letting it through: %s", route, who, err)
        return None

    def refusal(self, route: str, who: str, now: float) -> dict[str, Any] | None:
        """The 429 answer to a call over the limit (one-line JSON and Retry-After), else None."""
        wait = self.retry_after(route, who, now)
        if wait is None:
            return None
        log.warning("refused a %s call of %s: over %d per %d s", route, who, self.limit, self.window_s)
        message = (
            f"too many GET /{route} calls from this caller: at most {self.limit} per {self.window_s} s; "
            f"retry after {wait} s"
        )
        return _response(429, {"message": message}, {"Retry-After": str(wait)})


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _networks(zone: str, cidrs: Any) -> tuple[Network, ...]:
    if not isinstance(cidrs, list):
        raise ValueError(f"invalid {ENV_DEMAND_ZONES} entry {zone!r}: allowed a list of CIDRs such as 203.0.113.0/24")
    try:
        return tuple(ipaddress.ip_network(cidr) for cidr in cidrs)
    except (TypeError, ValueError):
        raise ValueError(
            f"invalid {ENV_DEMAND_ZONES} CIDRs {cidrs!r} of {zone!r}: allowed IPv4 or IPv6 CIDRs such as 203.0.113.0/24"
        ) from None


@dataclass(frozen=True)
class DeviceDemand:
    """Records who would be served where: DeviceDemand 1 per call for the Region, and for each Local
    Zone whose device networks hold the caller's source address (or which names none).

    One EMF document per location: a document carries one value per dimension, and the Region and
    a zone are two values of Location. A caller address that does not parse counts for the Region
    only: demand must never fail the call it rides on."""

    cluster: str
    region: str
    zones: Mapping[str, tuple[Network, ...]]
    stream: IO[str] | None = None  # stdout (the function's log) when None

    @classmethod
    def from_env(cls, environ: Mapping[str, str], stream: IO[str] | None = None) -> DeviceDemand | None:
        """The stack's settings; None where the stack set no cluster (nothing is recorded)."""
        cluster = environ.get(ENV_DEMAND_CLUSTER)
        if not cluster:
            return None
        raw = environ.get(ENV_DEMAND_ZONES) or "{}"
        try:
            zones = json.loads(raw)
        except ValueError:
            zones = None
        if not isinstance(zones, dict):
            raise ValueError(f"invalid {ENV_DEMAND_ZONES}={raw[:64]!r}: allowed a JSON object {{zone: [CIDRs]}}")
        region = environ.get(ENV_DEMAND_REGION) or environ.get("AWS_REGION", "")
        return cls(cluster, region, {zone: _networks(zone, cidrs) for zone, cidrs in zones.items()}, stream)

    def locations(self, source_ip: Any) -> list[str]:
        """The Region, then each zone near ``source_ip`` (every zone without networks)."""
        try:
            address = ipaddress.ip_address(source_ip) if isinstance(source_ip, str) else None
        except ValueError:
            address = None
        near = [
            zone
            for zone, networks in self.zones.items()
            if not networks or (address is not None and any(address in network for network in networks))
        ]
        return [self.region, *near]

    def documents(self, event: Mapping[str, Any], now: float) -> list[dict[str, Any]]:
        """One EMF document per location the caller of ``event`` would be served from."""
        directive = {
            "Namespace": METRIC_NAMESPACE,
            "Dimensions": [list(DEVICE_DEMAND_DIMENSIONS)],
            "Metrics": [{"Name": METRIC_DEVICE_DEMAND, "Unit": "Count", "StorageResolution": DEMAND_RESOLUTION_S}],
        }
        stamp = int(now * 1000)
        return [
            {
                "_aws": {"Timestamp": stamp, "CloudWatchMetrics": [directive]},
                DIMENSION_CLUSTER: self.cluster,
                DIMENSION_LOCATION: location,
                METRIC_DEVICE_DEMAND: 1,
            }
            for location in self.locations(_identity(event).get("sourceIp"))
        ]

    def record(self, event: Mapping[str, Any], now: float) -> None:
        """Write the documents, one JSON line each (CloudWatch Logs extracts the metric)."""
        stream = self.stream or sys.stdout
        stream.write("".join(json.dumps(doc, separators=(",", ":")) + "\n" for doc in self.documents(event, now)))
        stream.flush()


def handle(
    event: Mapping[str, Any],
    *,
    table: Any,
    default_model: str,
    now: float,
    auth: str = AUTH_NONE,
    limit: RateLimit | None = None,
    demand: DeviceDemand | None = None,
) -> dict[str, Any]:
    """API Gateway proxy event -> response; ``table``, ``now``, ``limit`` and ``demand`` injected (tests, clock).

    Every call past the rate limit is demand, a 400 too: a device that asked wants to be served."""
    refused = limit.refusal(ROUTE_ENDPOINTS, rate_caller(event), now) if limit else None
    if refused:
        return refused
    if demand:
        demand.record(event, now)
    try:
        filters = parse_filters(event.get("queryStringParameters"), default_model)
    except BadRequestError as err:
        return _response(400, {"message": str(err)})
    endpoints = live_endpoints(table, filters, now)
    body = {"generated_at": int(now), "filters": filters, FIELD_AUTH: auth, "endpoints": endpoints}
    return _response(200, body)


_table: Any = None
_rate_table: Any = None


def _rate_limit() -> RateLimit:
    """The entrypoints' limit: its table created once per container, its settings from the stack."""
    global _rate_table  # one boto3 resource per Lambda container, reused across invocations
    if _rate_table is None:
        import boto3

        _rate_table = boto3.resource("dynamodb").Table(os.environ[ENV_RATE_TABLE])
    return RateLimit.from_env(os.environ, _rate_table)


def handler(event: Mapping[str, Any], context: object, clock: Callable[[], float] = time.time) -> dict[str, Any]:
    """Lambda entrypoint (``api.handler``): the table is created once per container."""
    global _table  # one boto3 resource per Lambda container, reused across invocations
    if _table is None:
        import boto3

        _table = boto3.resource("dynamodb").Table(os.environ[ENV_TABLE])
    return handle(
        event,
        table=_table,
        default_model=os.environ[ENV_DEFAULT_MODEL],
        now=clock(),
        auth=os.environ.get(ENV_AUTH, AUTH_NONE),
        limit=_rate_limit(),
        demand=DeviceDemand.from_env(os.environ),
    )


# --- GET /token --------------------------------------------------------------------------------

token_log = logging.getLogger("edge_diffusion.inventory.token")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _json_segment(value: Mapping[str, Any]) -> str:
    return _b64url(json.dumps(value, separators=(",", ":"), sort_keys=True).encode())


def sign_token(
    kms: Any,
    *,
    key_id: str,
    issuer: str,
    audience: str,
    subject: str,
    ttl_s: int,
    now: float,
    token_id: str | None = None,
) -> tuple[str, int]:
    """(compact JWT, exp): RS256 over ``header.payload``, signed by the KMS key ``key_id``.

    KMS signs the signing input itself (``MessageType=RAW``), so the private key never leaves KMS
    and this file needs no JWT library."""
    issued = int(now)
    expires = issued + int(ttl_s)
    header = {"alg": TOKEN_ALGORITHM, "typ": "JWT"}
    claims = {
        "iss": issuer,
        "aud": audience,
        "sub": subject,
        "iat": issued,
        "nbf": issued,
        "exp": expires,
        "jti": token_id or uuid.uuid4().hex,
    }
    signing_input = f"{_json_segment(header)}.{_json_segment(claims)}"
    signed = kms.sign(
        KeyId=key_id,
        Message=signing_input.encode("ascii"),
        MessageType="RAW",
        SigningAlgorithm=TOKEN_KMS_SIGNING_ALGORITHM,
    )
    return f"{signing_input}.{_b64url(signed['Signature'])}", expires


@dataclass(frozen=True)
class TokenSettings:
    """The token route's configuration (the stack sets every value from config)."""

    key_id: str
    issuer: str
    audience: str
    ttl_s: int = DEFAULT_TOKEN_TTL_S

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> TokenSettings:
        return cls(
            key_id=environ[ENV_TOKEN_KEY_ID],
            issuer=environ[ENV_TOKEN_ISSUER],
            audience=environ[ENV_TOKEN_AUDIENCE],
            ttl_s=int(environ.get(ENV_TOKEN_TTL_S) or DEFAULT_TOKEN_TTL_S),
        )


def handle_token(
    event: Mapping[str, Any],
    *,
    kms: Any,
    settings: TokenSettings,
    now: float,
    limit: RateLimit | None = None,
    demand: DeviceDemand | None = None,
) -> dict[str, Any]:
    """API Gateway proxy event -> ``{"token", "expiresAt"}``; 403 without a caller, 429 over the
    caller's ``limit`` (before KMS is asked), 503 if KMS fails. A call past the limit is demand,
    recorded before KMS is asked: a device refused a token by a KMS outage still wants serving."""
    subject = caller(event)
    if subject is None:
        return _response(403, {"message": "no caller identity: call GET /token with SigV4 (IAM auth)"})
    refused = limit.refusal(ROUTE_TOKEN, rate_caller(event), now) if limit else None
    if refused:
        return refused
    if demand:
        demand.record(event, now)
    try:
        token, expires = sign_token(
            kms,
            key_id=settings.key_id,
            issuer=settings.issuer,
            audience=settings.audience,
            subject=subject,
            ttl_s=settings.ttl_s,
            now=now,
        )
    except Exception as err:  # KMS throttled or unavailable: the caller retries, nothing is half-issued
        token_log.error("signing a token for %s failed: %s", subject, err)
        return _response(503, {"message": "token signing is unavailable, retry shortly"})
    token_log.info("issued a token for %s until %d", subject, expires)
    return _response(200, {FIELD_TOKEN: token, FIELD_EXPIRES_AT: expires})


_kms: Any = None


def token_handler(event: Mapping[str, Any], context: object, clock: Callable[[], float] = time.time) -> dict[str, Any]:
    """Lambda entrypoint (``api.token_handler``): one KMS client per container."""
    global _kms  # one boto3 client per Lambda container, reused across invocations
    if _kms is None:
        import boto3

        _kms = boto3.client("kms")
    settings = TokenSettings.from_env(os.environ)
    return handle_token(
        event,
        kms=_kms,
        settings=settings,
        now=clock(),
        limit=_rate_limit(),
        demand=DeviceDemand.from_env(os.environ),
    )
