"""The endpoint inventory: its DynamoDB item layout, the devices' read API and token route (Lambda handlers).

The layout lives in the handler's file because the stack ships this single file as the function's
code (standard library and boto3 only, never ``runtime`` or ``plan``), so the publisher, the
Lambda and the stack share one definition. Why these keys and the TTL:
docs/adr/0009-inventory-table-keyed-by-model-expired-by-ttl.md.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final

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


def _response(status: int, body: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "statusCode": status,
        "headers": {"Content-Type": "application/json", "Cache-Control": "no-store"},
        "body": json.dumps(body, separators=(",", ":")),
    }


def handle(
    event: Mapping[str, Any], *, table: Any, default_model: str, now: float, auth: str = AUTH_NONE
) -> dict[str, Any]:
    """API Gateway proxy event -> response; ``table`` and ``now`` injected (tests, clock)."""
    try:
        filters = parse_filters(event.get("queryStringParameters"), default_model)
    except BadRequestError as err:
        return _response(400, {"message": str(err)})
    endpoints = live_endpoints(table, filters, now)
    body = {"generated_at": int(now), "filters": filters, FIELD_AUTH: auth, "endpoints": endpoints}
    return _response(200, body)


_table: Any = None


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
    )


# --- GET /token --------------------------------------------------------------------------------

log = logging.getLogger("edge_diffusion.inventory.token")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _json_segment(value: Mapping[str, Any]) -> str:
    return _b64url(json.dumps(value, separators=(",", ":"), sort_keys=True).encode())


def caller(event: Mapping[str, Any]) -> str | None:
    """The token's ``sub``: the Cognito identity when there is one, else the IAM caller's ARN.

    Both come from API Gateway's IAM authorizer (``requestContext.identity``), never from the
    request: a caller cannot name someone else."""
    identity = (event.get("requestContext") or {}).get("identity") or {}
    for name in ("cognitoIdentityId", "userArn"):
        value = identity.get(name)
        if isinstance(value, str) and value:
            return value
    return None


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


def handle_token(event: Mapping[str, Any], *, kms: Any, settings: TokenSettings, now: float) -> dict[str, Any]:
    """API Gateway proxy event -> ``{"token", "expiresAt"}``; 403 without a caller, 503 if KMS fails."""
    subject = caller(event)
    if subject is None:
        return _response(403, {"message": "no caller identity: call GET /token with SigV4 (IAM auth)"})
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
        log.error("signing a token for %s failed: %s", subject, err)
        return _response(503, {"message": "token signing is unavailable, retry shortly"})
    log.info("issued a token for %s until %d", subject, expires)
    return _response(200, {FIELD_TOKEN: token, FIELD_EXPIRES_AT: expires})


_kms: Any = None


def token_handler(event: Mapping[str, Any], context: object, clock: Callable[[], float] = time.time) -> dict[str, Any]:
    """Lambda entrypoint (``api.token_handler``): one KMS client per container."""
    global _kms  # one boto3 client per Lambda container, reused across invocations
    if _kms is None:
        import boto3

        _kms = boto3.client("kms")
    return handle_token(event, kms=_kms, settings=TokenSettings.from_env(os.environ), now=clock())
