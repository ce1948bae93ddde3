"""Credentials: SigV4 for the inventory API (IAM auth), Cognito identity-pool logins, and bearer tokens.

Inference endpoints require ``Authorization: Bearer <token>`` (unless the deployment runs with
``auth.mode=none``). ``TokenSource`` holds either a token given explicitly (``--token``) or one it
gets from the inventory API's token route with the same SigV4 credentials, cached until shortly
before it expires and fetched again when an endpoint says it is no longer valid.

A token is valid on every endpoint of the deployment for its whole lifetime, so it never travels
unencrypted beyond the machine: ``carries_credentials`` allows https, and plain http only to a
loopback address (a development server on the same machine).
"""

from __future__ import annotations

import base64
import ipaddress
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import urlsplit

import httpx

from plan import contract
from runtime.inventory import api as layout

REFRESH_BEFORE_S: Final = 60.0  # a cached token is renewed this long before it expires (capped at a fifth of its TTL)
LOOPBACK_V4: Final = ipaddress.IPv4Network("127.0.0.0/8")
LOOPBACK_V6: Final = ipaddress.IPv6Address("::1")
LOOPBACK_NAME: Final = "localhost"
CREDENTIAL_URLS: Final = "https, or http to a loopback address (127.0.0.0/8, ::1, localhost) for development"


class TokenError(Exception):
    """No usable token; the message is one line for a person."""


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or ``localhost``, written as such: traffic to it stays on this machine.

    Other spellings (``127.1``, ``::ffff:127.0.0.1``, names that merely resolve to loopback) are
    not loopback here: what the URL says is what is checked, not what a resolver might answer.
    """
    if host.lower() == LOOPBACK_NAME:
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address in LOOPBACK_V4 if isinstance(address, ipaddress.IPv4Address) else address == LOOPBACK_V6


def carries_credentials(url: str) -> bool:
    """Whether a bearer token or a signed request may go to ``url``: https, or http to loopback."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    return scheme == "https" or (scheme == "http" and is_loopback(parts.hostname or ""))


class SigV4Auth(httpx.Auth):
    """Signs requests to the inventory API (IAM auth) with botocore credentials."""

    def __init__(self, credentials: Any, region: str, service: str = "execute-api") -> None:
        self._credentials, self._region, self._service = credentials, region, service

    def auth_flow(self, request: httpx.Request) -> Any:
        from botocore.auth import SigV4Auth as BotoSigV4
        from botocore.awsrequest import AWSRequest

        signed = AWSRequest(method=request.method, url=str(request.url), data=request.content or None)
        BotoSigV4(self._credentials.get_frozen_credentials(), self._service, self._region).add_auth(signed)
        for name, value in signed.headers.items():
            request.headers[name] = value
        yield request


def cognito_credentials(identity_pool_id: str, provider_name: str, id_token: str, region: str) -> Any:
    """Credentials for ``inventoryAuth=cognito``: a signed-in user's ID token (from the user pool,
    ``provider_name`` like ``cognito-idp.REGION.amazonaws.com/POOL_ID``) exchanged at the identity
    pool (the InventoryStack's ``IdentityPoolId`` output). Pass the result as ``credentials=``."""
    import boto3
    from botocore.credentials import Credentials

    identity = boto3.client("cognito-identity", region_name=region)
    logins = {provider_name: id_token}
    identity_id = identity.get_id(IdentityPoolId=identity_pool_id, Logins=logins)["IdentityId"]
    issued = identity.get_credentials_for_identity(IdentityId=identity_id, Logins=logins)["Credentials"]
    return Credentials(issued["AccessKeyId"], issued["SecretKey"], issued["SessionToken"])


def region_of(url: str) -> str | None:
    """The Region of an execute-api URL (``https://id.execute-api.REGION.amazonaws.com/...``)."""
    parts = (urlsplit(url).hostname or "").split(".")
    return parts[2] if len(parts) > 3 and parts[1] == "execute-api" else None


def token_url_for(inventory_url: str) -> str:
    """The token route next to the endpoints route: ``.../v1/endpoints`` -> ``.../v1/token``."""
    parts = urlsplit(inventory_url)
    base = parts.path.rstrip("/").rsplit("/", 1)[0]
    return parts._replace(path=base + contract.TOKEN_PATH, query="", fragment="").geturl()


def token_expiry(token: str) -> float | None:
    """The ``exp`` of a JWT, read without verifying it (the server verifies); None if it has none."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        exp = claims.get("exp") if isinstance(claims, dict) else None
    except (IndexError, ValueError):
        return None
    return float(exp) if isinstance(exp, int | float) and not isinstance(exp, bool) else None


def _when(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


class TokenSource:
    """The bearer token inference requests carry: given explicitly, or fetched from the token route."""

    def __init__(
        self,
        *,
        token: str | None = None,
        token_url: str | None = None,
        auth: Callable[[], httpx.Auth] | None = None,
        http: httpx.Client | None = None,
        timeout_s: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if (token is None) == (token_url is None):
            raise ValueError("give exactly one of token or token_url")
        if token_url is not None and not carries_credentials(token_url):
            raise TokenError(f"token route {token_url} refused: tokens come only over {CREDENTIAL_URLS}")
        self._token, self._url, self._auth, self._http = token, token_url, auth, http
        self._timeout_s, self._clock = timeout_s, clock
        self._expires_at: float | None = token_expiry(token) if token else None
        self._fetched_at = 0.0

    @property
    def refreshable(self) -> bool:
        return self._url is not None

    def get(self, timeout_s: float | None = None) -> str:
        """A token valid for a while yet; TokenError (one line) if there is none. A fetch waits at most
        ``timeout_s`` (what is left of the caller's deadline) or the source's own timeout, the shorter."""
        now = self._clock()
        if self._url is None:
            assert self._token is not None
            if self._expires_at is not None and self._expires_at <= now:
                raise TokenError(f"the token given expired at {_when(self._expires_at)}: get a new one")
            return self._token
        if self._token is None or self._stale(now):
            self._fetch(now, self._timeout_s if timeout_s is None else min(self._timeout_s, timeout_s))
        assert self._token is not None
        return self._token

    def invalidate(self) -> None:
        """Forget a fetched token (an endpoint refused it); an explicit one cannot be renewed."""
        if self._url is not None:
            self._token = None

    def _stale(self, now: float) -> bool:
        if self._expires_at is None:
            return False
        margin = min(REFRESH_BEFORE_S, max(0.0, self._expires_at - self._fetched_at) / 5)
        return now >= self._expires_at - margin

    def _fetch(self, now: float, timeout_s: float) -> None:
        assert self._url is not None and self._http is not None
        if timeout_s <= 0:
            raise TokenError(f"token route {self._url} not asked: the deadline passed")
        try:
            response = self._http.get(
                self._url, auth=self._auth() if self._auth else httpx.USE_CLIENT_DEFAULT, timeout=timeout_s
            )
        except httpx.HTTPError as err:
            raise TokenError(f"token route {self._url} unreachable: {type(err).__name__}: {err}") from None
        if response.status_code != 200:
            raise TokenError(f"token route {self._url} answered {response.status_code}: {response.text[:200]}")
        try:
            body = response.json()
            token, expires = body[layout.FIELD_TOKEN], body[layout.FIELD_EXPIRES_AT]
        except (ValueError, KeyError, TypeError):
            raise TokenError(f"token route {self._url} did not answer {{token, expiresAt}}") from None
        if not isinstance(token, str) or not token or not isinstance(expires, int | float) or expires <= now:
            raise TokenError(f"token route {self._url} answered an unusable token (expiresAt={expires!r})")
        self._token, self._expires_at, self._fetched_at = token, float(expires), now
