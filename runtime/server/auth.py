"""Bearer tokens on every inference route: RS256 JWTs checked locally with the signing key's public half.

The inventory API's token route signs tokens with a KMS RSA key (RSASSA_PKCS1_V1_5_SHA_256 over
``base64url(header).base64url(payload)``, which is RS256); pods fetch the public key once at
startup with kms:GetPublicKey (``ENV_TOKEN_KMS_KEY_ID``), a workstation reads a PEM file
(``ENV_TOKEN_PUBLIC_KEY_FILE``). A request is accepted only with a valid signature, alg RS256
(``none`` and HMAC are refused whatever the header says), the expected ``iss`` and ``aud``,
``exp``/``nbf``/``iat`` within ``TOKEN_LEEWAY_S`` of now, and every required claim present.
Anything else is 401 with ``WWW-Authenticate: Bearer error="invalid_token"`` and one line.

What stays open, and why:
- ``/healthz`` (liveness): says only that the process answers; devices time it to pick an endpoint.
- ``/readyz``: the kubelet's probes and the ALB's target health checks call it, and neither can
  send a bearer token; it tells readiness and why not, never the model, device or version.
- ``/metrics``: Prometheus scrapes it from inside the cluster without a token; it holds counts and
  latencies only (no prompts, ids or keys), and the NodePort security group already limits who
  reaches the port to the configured client CIDRs.
- ``/docs`` and ``/openapi.json``: the API's public description.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi import Request
from fastapi.security import HTTPBearer

from plan import contract
from runtime.server.protocol import ApiError
from runtime.server.settings import Settings
from runtime.settings import SettingsError

log = logging.getLogger(__name__)

REQUIRED_CLAIMS: Final = ("exp", "iat", "iss", "aud", "sub")
MIN_RSA_BITS: Final = 2048
SCHEME_NAME: Final = "bearerToken"  # the OpenAPI security scheme
CHALLENGE: Final = 'Bearer error="invalid_token"'
AUTHORIZATION_HELP: Final = "send 'Authorization: Bearer <token>' (tokens come from the inventory API's token route)"
_SHOWN_ALG: Final = re.compile(r"^[A-Za-z0-9_-]{1,16}$")


class AuthSetupError(SettingsError):
    """Token auth cannot start (no key, unreadable key, wrong key type); one line naming the setting."""


class TokenError(ApiError):
    """401 with the bearer challenge and one line saying what is missing or wrong."""

    def __init__(self, message: str) -> None:
        super().__init__(401, message, "authorization", headers={"WWW-Authenticate": CHALLENGE})


def _rsa_key(key: Any, where: str) -> rsa.RSAPublicKey:
    if not isinstance(key, rsa.RSAPublicKey):
        raise AuthSetupError(f"{where}: is a {type(key).__name__}, not an RSA public key ({contract.TOKEN_ALGORITHM})")
    if key.key_size < MIN_RSA_BITS:
        raise AuthSetupError(f"{where}: RSA key of {key.key_size} bits; allowed: {MIN_RSA_BITS} bits or more")
    return key


def public_key_from_file(path: str) -> rsa.RSAPublicKey:
    where = f"{contract.ENV_TOKEN_PUBLIC_KEY_FILE} {path!r}"
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise AuthSetupError(f"{where}: cannot be read ({exc.strerror or type(exc).__name__})") from None
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError):
        raise AuthSetupError(f"{where}: not a PEM public key ('-----BEGIN PUBLIC KEY-----')") from None
    return _rsa_key(key, where)


def public_key_from_kms(key_id: str, region: str | None, client: Any = None) -> rsa.RSAPublicKey:
    """kms:GetPublicKey of the token signing key; refuses a key that cannot sign RS256 tokens."""
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    where = f"{contract.ENV_TOKEN_KMS_KEY_ID} {key_id!r}"
    try:
        kms = client or boto3.client("kms", region_name=region)
        answer = kms.get_public_key(KeyId=key_id)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "error")
        raise AuthSetupError(f"{where}: kms:GetPublicKey failed ({code})") from None
    except BotoCoreError as exc:
        raise AuthSetupError(f"{where}: kms:GetPublicKey failed ({type(exc).__name__})") from None
    if answer.get("KeyUsage") != "SIGN_VERIFY" or contract.TOKEN_KMS_SIGNING_ALGORITHM not in answer.get(
        "SigningAlgorithms", ()
    ):
        raise AuthSetupError(
            f"{where}: key usage {answer.get('KeyUsage')!r} cannot sign {contract.TOKEN_KMS_SIGNING_ALGORITHM}; "
            "allowed: an RSA SIGN_VERIFY key"
        )
    try:
        key = serialization.load_der_public_key(answer["PublicKey"])
    except (KeyError, ValueError, TypeError):
        raise AuthSetupError(f"{where}: GetPublicKey answered no usable public key") from None
    return _rsa_key(key, where)


@dataclass(frozen=True)
class TokenVerifier:
    """Checks one bearer token against the key, issuer and audience the server was started with."""

    public_key: rsa.RSAPublicKey
    issuer: str
    audience: str
    leeway_s: int = contract.TOKEN_LEEWAY_S
    # The longest lifetime the token route issues: a token claiming more was not minted by it.
    max_lifetime_s: int = contract.TOKEN_TTL_BOUNDS[1]

    def verify_header(self, authorization: str | None) -> Mapping[str, Any]:
        """The claims of ``Authorization: Bearer <jwt>``; TokenError (401, one line) otherwise."""
        if not authorization or not authorization.strip():
            raise TokenError(f"authorization: missing; {AUTHORIZATION_HELP}")
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer":
            raise TokenError(f"authorization: not a Bearer token; {AUTHORIZATION_HELP}")
        if not token.strip():
            raise TokenError(f"authorization: Bearer without a token; {AUTHORIZATION_HELP}")
        return self.verify(token.strip())

    def verify(self, token: str) -> Mapping[str, Any]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError:
            raise TokenError("token: malformed (not a JWT: base64url header.payload.signature)") from None
        alg = header.get("alg")
        if alg != contract.TOKEN_ALGORITHM:
            shown = repr(alg) if isinstance(alg, str) and _SHOWN_ALG.match(alg) else "this algorithm"
            raise TokenError(f"token: alg {shown} is not allowed; allowed: {contract.TOKEN_ALGORITHM}")
        claims = self._decode(token)
        lifetime = claims["exp"] - claims["iat"]
        if not isinstance(lifetime, int | float) or lifetime > self.max_lifetime_s + self.leeway_s:
            raise TokenError(
                f"token: lifetime (exp - iat) of {lifetime} s is longer than the {self.max_lifetime_s} s allowed; "
                "get a new token"
            )
        return claims

    def _decode(self, token: str) -> Mapping[str, Any]:
        try:
            return jwt.decode(
                token,
                self.public_key,
                algorithms=[contract.TOKEN_ALGORITHM],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway_s,
                options={"require": list(REQUIRED_CLAIMS)},
            )
        except jwt.ExpiredSignatureError:
            raise TokenError("token: expired (exp is in the past); get a new token") from None
        except jwt.ImmatureSignatureError:
            raise TokenError("token: not valid yet (nbf or iat is in the future)") from None
        except jwt.MissingRequiredClaimError as exc:
            raise TokenError(f"token: claim {exc.claim!r} is missing; required: {', '.join(REQUIRED_CLAIMS)}") from None
        except jwt.InvalidAudienceError:
            raise TokenError("token: wrong audience (aud); it is not for this service") from None
        except jwt.InvalidIssuerError:
            raise TokenError("token: wrong issuer (iss); it is not from this deployment") from None
        except jwt.InvalidSignatureError:
            raise TokenError("token: bad signature") from None
        except jwt.DecodeError:
            raise TokenError("token: malformed (not a JWT: base64url header.payload.signature)") from None
        except jwt.InvalidTokenError as exc:
            raise TokenError(" ".join(f"token: invalid ({exc})".split())[:200]) from None


def verifier_from_settings(settings: Settings, kms_client: Any = None) -> TokenVerifier | None:
    """The verifier token mode needs (None with auth none); AuthSetupError when no key is configured."""
    if settings.auth == "none":
        return None
    if settings.token_public_key_file:
        key = public_key_from_file(settings.token_public_key_file)
    elif settings.token_kms_key_id:
        key = public_key_from_kms(settings.token_kms_key_id, settings.aws_region, kms_client)
    else:
        raise AuthSetupError(
            f"{contract.ENV_AUTH} is 'token' (the default) but no public key is configured; set "
            f"{contract.ENV_TOKEN_KMS_KEY_ID} or {contract.ENV_TOKEN_PUBLIC_KEY_FILE} "
            f"(or {contract.ENV_AUTH}=none to serve without authentication)"
        )
    return TokenVerifier(key, settings.issuer, settings.token_audience)


class BearerToken(HTTPBearer):
    """The route dependency: verifies the request's token and appears in OpenAPI as the bearer scheme."""

    def __init__(self, verifier: TokenVerifier, on_rejected: Callable[[], None] | None = None) -> None:
        super().__init__(
            bearerFormat="JWT",
            scheme_name=SCHEME_NAME,
            description=f"An {contract.TOKEN_ALGORITHM} JWT from the inventory API's token route "
            f"(aud {verifier.audience!r}).",
            auto_error=False,
        )
        self.verifier = verifier
        self.on_rejected = on_rejected

    async def __call__(self, request: Request) -> Mapping[str, Any]:  # type: ignore[override]
        try:
            return self.verifier.verify_header(request.headers.get("authorization"))
        except TokenError:
            if self.on_rejected is not None:
                self.on_rejected()
            raise
