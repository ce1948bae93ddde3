"""Bearer tokens on a real server: every bad token is a one-line 401 with the bearer challenge, never a 500.

The key pairs are made here; the KMS path runs on moto's KMS, which signs with real RSA keys, so a
token signed the way the inventory API's token route signs (KMS Sign, RAW message) is checked too.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from moto import mock_aws

from plan import contract
from runtime.server.auth import (
    CHALLENGE,
    AuthSetupError,
    TokenError,
    TokenVerifier,
    public_key_from_kms,
    verifier_from_settings,
)
from runtime.server.settings import Settings
from runtime.settings import SettingsError
from tests.runtime.server.conftest import RunningServer, metric_value, start_in_process, tiny_settings

REGION = "us-west-2"
ISSUER = contract.token_issuer("auth-test")


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def claims(
    *, iss: str = ISSUER, aud: str = contract.TOKEN_AUDIENCE, lifetime_s: int = 300, now: float | None = None
) -> dict[str, Any]:
    issued = int(time.time() if now is None else now)
    return {"iss": iss, "aud": aud, "sub": "device-1", "iat": issued, "exp": issued + lifetime_s}


def now() -> int:
    """The clock when a case's token is minted (not at import: a long session would turn "in 300 s" into the past)."""
    return int(time.time())


def mint(key: rsa.RSAPrivateKey, *, iss: str = ISSUER, aud: str = contract.TOKEN_AUDIENCE, **changes: Any) -> str:
    """An RS256 token like the token route's; ``changes`` set claims (None drops one)."""
    payload = {**claims(iss=iss, aud=aud), **changes}
    payload = {k: v for k, v in payload.items() if v is not None}
    return jwt.encode(payload, key, algorithm="RS256", headers={"typ": "JWT"})


def unsigned(header: dict[str, Any], payload: dict[str, Any], signature: bytes = b"") -> str:
    return ".".join((b64url(json.dumps(header).encode()), b64url(json.dumps(payload).encode()), b64url(signature)))


def public_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def key_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("keys") / "token-public.pem"
    path.write_bytes(public_pem(KEY))
    return path


@pytest.fixture(scope="module")
def auth_server(key_file: Path) -> Iterator[RunningServer]:
    """Token mode with the UI mounted: the API and the UI both need a token."""
    settings = tiny_settings(
        auth="token",
        token_public_key_file=str(key_file),
        token_issuer=ISSUER,
        ui=True,
        docs=True,
        placement="auth-test",
    )
    running = start_in_process(settings)
    yield running
    running.stop()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _hs256_with_public_key() -> str:
    """The classic key-confusion attack: HMAC-signed with the RSA public key's PEM as the secret."""
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = b64url(json.dumps(claims()).encode())
    signature = hmac.new(public_pem(KEY), f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{b64url(signature)}"


def _tampered() -> str:
    header, _, signature = mint(KEY).split(".")
    payload = b64url(json.dumps({**claims(), "sub": "someone-else"}).encode())
    return f"{header}.{payload}.{signature}"


BAD_TOKENS: list[tuple[str, Callable[[], dict[str, str]], str]] = [
    ("missing", lambda: {}, "authorization: missing"),
    ("empty", lambda: {"Authorization": ""}, "authorization: missing"),
    ("basic scheme", lambda: {"Authorization": "Basic ZGV2aWNlOnB3"}, "not a Bearer token"),
    ("bearer without token", lambda: {"Authorization": "Bearer"}, "Bearer without a token"),
    ("malformed", lambda: bearer("not-a-jwt"), "token: malformed"),
    ("three garbage parts", lambda: bearer("a.b.c"), "token: malformed"),
    ("expired", lambda: bearer(mint(KEY, exp=now() - 120)), "token: expired"),
    ("not yet valid", lambda: bearer(mint(KEY, nbf=now() + 300)), "token: not valid yet"),
    ("issued in the future", lambda: bearer(mint(KEY, iat=now() + 300)), "token: not valid yet"),
    ("wrong audience", lambda: bearer(mint(KEY, aud="someone-else")), "token: wrong audience"),
    ("wrong issuer", lambda: bearer(mint(KEY, iss=contract.token_issuer("other"))), "token: wrong issuer"),
    ("another key", lambda: bearer(mint(OTHER_KEY)), "token: bad signature"),
    ("tampered payload", lambda: bearer(_tampered()), "token: bad signature"),
    ("alg none", lambda: bearer(unsigned({"alg": "none", "typ": "JWT"}, claims())), "alg 'none' is not allowed"),
    ("HS256 with the public key", lambda: bearer(_hs256_with_public_key()), "alg 'HS256' is not allowed"),
    ("alg with a header break", lambda: bearer(unsigned({"alg": "RS256\r\nX: y"}, claims())), "this algorithm"),
    ("no sub", lambda: bearer(mint(KEY, sub=None)), "claim 'sub' is missing"),
    ("no exp", lambda: bearer(mint(KEY, exp=None)), "claim 'exp' is missing"),
    ("no iat", lambda: bearer(mint(KEY, iat=None)), "claim 'iat' is missing"),
    ("sub not a string", lambda: bearer(mint(KEY, sub=42)), "token: invalid"),
    (
        "a ten-year lifetime",
        lambda: bearer(mint(KEY, exp=now() + 10 * 365 * 86400)),
        "s is longer than the 3600 s allowed",
    ),
]


@pytest.mark.parametrize(("case", "headers", "says"), BAD_TOKENS, ids=[c[0] for c in BAD_TOKENS])
def test_bad_tokens_are_a_one_line_401_with_the_challenge(
    auth_server: RunningServer, case: str, headers: Callable[[], dict[str, str]], says: str
) -> None:
    before = metric_value(auth_server.metrics(), contract.PROM_REJECTIONS + "_total", 'reason="unauthorized"')
    with auth_server.client() as c:
        r = c.post(contract.IMAGES_PATH, json={"prompt": "a cat", "steps": 2}, headers=headers())
    assert r.status_code == 401, r.text
    assert r.headers["www-authenticate"] == CHALLENGE == 'Bearer error="invalid_token"'
    doc = r.json()
    assert set(doc) == {"error", "field", "request_id"} and doc["field"] == "authorization"
    assert says in doc["error"], doc["error"]
    assert "\n" not in doc["error"] and "\r" not in doc["error"] and "Traceback" not in r.text
    after = metric_value(auth_server.metrics(), contract.PROM_REJECTIONS + "_total", 'reason="unauthorized"')
    assert after == before + 1


def test_a_valid_token_gets_an_image(auth_server: RunningServer) -> None:
    with auth_server.client() as c:
        r = c.post(
            contract.IMAGES_PATH, json={"prompt": "a lighthouse", "seed": 3, "steps": 2}, headers=bearer(mint(KEY))
        )
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png" and r.content.startswith(b"\x89PNG")


def test_clock_skew_within_the_leeway_is_accepted(auth_server: RunningServer) -> None:
    skew = contract.TOKEN_LEEWAY_S // 2
    expired_just_now = mint(KEY, exp=int(time.time()) - skew)
    issued_just_ahead = mint(KEY, iat=int(time.time()) + skew, nbf=int(time.time()) + skew)
    with auth_server.client() as c:
        for token in (expired_just_now, issued_just_ahead):
            r = c.post(contract.IMAGES_PATH, json={"prompt": "a", "steps": 1}, headers=bearer(token))
            assert r.status_code == 200, r.text


def test_token_is_checked_before_anything_else_is_said(auth_server: RunningServer) -> None:
    """Without a token a client learns nothing about content types, bodies or readiness."""
    with auth_server.client() as c:
        r = c.post(contract.IMAGES_PATH, content=b"junk", headers={"content-type": "text/plain"})
    assert r.status_code == 401


def test_probes_metrics_and_docs_stay_open(auth_server: RunningServer) -> None:
    with auth_server.client() as c:
        health = c.get(contract.HEALTH_PATH)
        assert health.status_code == 200 and health.json() == {"status": "alive"}
        ready = c.get(contract.READY_PATH)
        assert ready.status_code == 200 and set(ready.json()) == {"ready", "state", "reason"}
        assert "tiny" not in ready.text and "cpu" not in ready.text  # neither model nor device
        assert c.get(contract.DOCS_PATH).status_code == 200
        doc = c.get("/openapi.json").json()
        assert c.get(contract.METRICS_PATH).status_code == 404  # not on the API port at all
    assert doc["paths"][contract.IMAGES_PATH]["post"]["security"] == [{"bearerToken": []}]
    assert httpx.get(auth_server.metrics_url, timeout=10).status_code == 200  # its own port: no token there


def test_the_ui_needs_a_token_too(auth_server: RunningServer) -> None:
    from gradio_client import Client

    with auth_server.client() as c:
        page = c.get(contract.UI_PATH + "/")
        assert page.status_code == 401 and page.headers["www-authenticate"] == CHALLENGE
        assert page.json()["field"] == "authorization"
        queue = c.post(contract.UI_PATH + "/gradio_api/queue/join", json={"fn_index": 0, "data": []})
        assert queue.status_code == 401
        assert c.get(contract.UI_PATH + "/", headers=bearer(mint(KEY))).status_code == 200
    before = metric_value(auth_server.metrics(), contract.PROM_IMAGES_GENERATED + "_total")
    client = Client(auth_server.url + contract.UI_PATH + "/", headers=bearer(mint(KEY)), verbose=False)
    _, info = client.predict("a kite", "", 2, 7.5, 64, 64, 5, None, 0.8, api_name="/generate")
    assert "seed 5" in info
    assert metric_value(auth_server.metrics(), contract.PROM_IMAGES_GENERATED + "_total") == before + 1


# --- the key: KMS at startup, or a PEM file -----------------------------------------------


@pytest.fixture
def kms(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.setenv(name, "testing")
    with mock_aws():
        yield boto3.client("kms", region_name=REGION)


def kms_signed_token(kms: Any, key_id: str, payload: dict[str, Any]) -> str:
    """What the token route does: KMS signs base64url(header).base64url(payload) as a RAW message."""
    signing_input = ".".join(
        b64url(json.dumps(part, separators=(",", ":")).encode()) for part in ({"alg": "RS256", "typ": "JWT"}, payload)
    )
    signature = kms.sign(
        KeyId=key_id,
        Message=signing_input.encode("ascii"),
        MessageType="RAW",
        SigningAlgorithm=contract.TOKEN_KMS_SIGNING_ALGORITHM,
    )["Signature"]
    return f"{signing_input}.{b64url(signature)}"


def test_kms_public_key_by_alias_verifies_a_kms_signed_token(kms: Any) -> None:
    key_id = kms.create_key(KeySpec="RSA_2048", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["KeyId"]
    kms.create_alias(AliasName="alias/edge-diffusion-auth-test", TargetKeyId=key_id)
    settings = Settings(
        auth="token", token_kms_key_id="alias/edge-diffusion-auth-test", aws_region=REGION, placement="auth-test"
    )
    verifier = verifier_from_settings(settings)
    assert verifier is not None and verifier.issuer == ISSUER
    good = kms_signed_token(kms, key_id, claims())
    assert verifier.verify(good)["sub"] == "device-1"
    with pytest.raises(TokenError, match="wrong audience"):
        verifier.verify(kms_signed_token(kms, key_id, claims(aud="other")))
    other = kms.create_key(KeySpec="RSA_2048", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["KeyId"]
    with pytest.raises(TokenError, match="bad signature"):
        verifier.verify(kms_signed_token(kms, other, claims()))


def test_kms_keys_that_cannot_sign_tokens_are_refused_in_one_line(kms: Any) -> None:
    symmetric = kms.create_key(KeySpec="SYMMETRIC_DEFAULT", KeyUsage="ENCRYPT_DECRYPT")["KeyMetadata"]["KeyId"]
    ecc = kms.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["KeyId"]
    for key_id in (symmetric, ecc, "alias/does-not-exist"):
        with pytest.raises(AuthSetupError) as err:
            public_key_from_kms(key_id, REGION)
        message = str(err.value)
        assert message.startswith(f"{contract.ENV_TOKEN_KMS_KEY_ID} '{key_id}': ") and "\n" not in message


def test_public_key_files_that_cannot_verify_tokens_are_refused(tmp_path: Path) -> None:
    cases = {
        "missing.pem": (None, "cannot be read"),
        "garbage.pem": (b"not a key", "not a PEM public key"),
        "ec.pem": (public_pem(ec.generate_private_key(ec.SECP256R1())), "not an RSA public key"),
        "small.pem": (public_pem(rsa.generate_private_key(public_exponent=65537, key_size=1024)), "1024 bits"),
    }
    for name, (content, says) in cases.items():
        path = tmp_path / name
        if content is not None:
            path.write_bytes(content)
        with pytest.raises(AuthSetupError, match=says) as err:
            verifier_from_settings(Settings(auth="token", token_public_key_file=str(path)))
        assert str(err.value).startswith(contract.ENV_TOKEN_PUBLIC_KEY_FILE) and "\n" not in str(err.value)


def test_key_file_and_kms_key_together_are_refused() -> None:
    with pytest.raises(SettingsError, match=contract.ENV_TOKEN_KMS_KEY_ID):
        Settings(auth="token", token_public_key_file="/k.pem", token_kms_key_id="alias/k")


def test_token_mode_is_the_default_and_refuses_to_start_without_a_key(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from runtime.server.__main__ import main

    for name in (contract.ENV_AUTH, contract.ENV_TOKEN_PUBLIC_KEY_FILE, contract.ENV_TOKEN_KMS_KEY_ID):
        monkeypatch.delenv(name, raising=False)
    assert Settings.from_env({}).auth == "token"
    assert main(["--model", "tiny"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err
    assert contract.ENV_TOKEN_KMS_KEY_ID in err and contract.ENV_TOKEN_PUBLIC_KEY_FILE in err
    assert main(["--model", "tiny", "--token-public-key-file", "/nonexistent/key.pem"]) == 2
    assert "cannot be read" in capsys.readouterr().err


def test_auth_none_serves_without_a_token() -> None:
    running = start_in_process(tiny_settings(auth="none"))
    try:
        r = httpx.post(running.url + contract.IMAGES_PATH, json={"prompt": "a", "steps": 1}, timeout=60)
        assert r.status_code == 200
        assert "security" not in running.app.openapi()["paths"][contract.IMAGES_PATH]["post"]
    finally:
        running.stop()


def test_a_token_of_the_longest_lifetime_the_token_route_issues_is_accepted() -> None:
    verifier = TokenVerifier(KEY.public_key(), ISSUER, contract.TOKEN_AUDIENCE)
    longest = contract.TOKEN_TTL_BOUNDS[1]
    assert verifier.verify(mint(KEY, exp=int(time.time()) + longest))["sub"] == "device-1"
    with pytest.raises(TokenError, match="lifetime"):
        verifier.verify(mint(KEY, exp=int(time.time()) + longest + contract.TOKEN_LEEWAY_S + 60))
