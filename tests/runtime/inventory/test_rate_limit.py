"""The per-caller limit of GET /token and GET /endpoints, counted in a moto table: a caller over its
limit gets 429 with Retry-After (before KMS signs anything) while other callers go on, each route
counts apart, and a new window starts the count again."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from runtime.inventory import api
from tests.runtime.conftest import fake_aws_credentials
from tests.runtime.inventory.conftest import REGION, create_rate_table

WINDOW_S = 60
NOW = 1_800_000_000  # a multiple of 60: a window starts here
DEVICE_A = "arn:aws:sts::123456789012:assumed-role/DeviceApp/phone-a"
DEVICE_B = "arn:aws:sts::123456789012:assumed-role/DeviceApp/phone-b"
SETTINGS = api.TokenSettings(key_id="alias/edge-diffusion-token-signing", issuer="i", audience="a", ttl_s=300)


class CountingKms:
    """The moto KMS client, counting the Sign calls that reach it."""

    def __init__(self, client: Any) -> None:
        self.client, self.signed = client, 0

    def sign(self, **kwargs: Any) -> Any:
        self.signed += 1
        return self.client.sign(**kwargs)


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, CountingKms]]:
    """The counters' table and the token key (RSA_2048, SIGN_VERIFY, behind its alias) in moto."""
    import boto3
    from moto import mock_aws

    fake_aws_credentials(monkeypatch, REGION)
    with mock_aws():
        client = boto3.client("kms", region_name=REGION)
        key = client.create_key(KeySpec="RSA_2048", KeyUsage="SIGN_VERIFY")["KeyMetadata"]
        client.create_alias(AliasName=SETTINGS.key_id, TargetKeyId=key["KeyId"])
        yield create_rate_table(), CountingKms(client)


def event(**identity: str) -> dict[str, Any]:
    return {"requestContext": {"identity": {"sourceIp": "198.51.100.7", **identity}}, "queryStringParameters": None}


def token(aws: tuple[Any, CountingKms], who: dict[str, str], now: float, limit: int = 3) -> dict[str, Any]:
    table, kms = aws
    rate = api.RateLimit(table, limit=limit, window_s=WINDOW_S)
    return api.handle_token(event(**who), kms=kms, settings=SETTINGS, now=now, limit=rate)


def test_a_caller_over_its_limit_gets_429_while_another_still_gets_tokens(aws: tuple[Any, CountingKms]) -> None:
    a, b = {"userArn": DEVICE_A}, {"userArn": DEVICE_B}
    assert [token(aws, a, NOW + i)["statusCode"] for i in range(3)] == [200, 200, 200]
    refused = token(aws, a, NOW + 45.5)
    assert refused["statusCode"] == 429
    assert refused["headers"]["Retry-After"] == "15"  # the seconds left of the window, rounded up
    assert refused["headers"]["Content-Type"] == "application/json"
    assert json.loads(refused["body"]) == {
        "message": "too many GET /token calls from this caller: at most 3 per 60 s; retry after 15 s"
    }
    assert aws[1].signed == 3  # refused before KMS is asked
    assert token(aws, b, NOW + 46)["statusCode"] == 200
    assert token(aws, a, NOW + 47)["statusCode"] == 429  # still over, and still not signed
    assert aws[1].signed == 4


def test_the_next_window_counts_again(aws: tuple[Any, CountingKms]) -> None:
    a = {"userArn": DEVICE_A}
    assert [token(aws, a, NOW + 59, limit=1)["statusCode"] for _ in range(2)] == [200, 429]
    assert token(aws, a, NOW + WINDOW_S, limit=1)["statusCode"] == 200
    assert token(aws, a, NOW + WINDOW_S + 1, limit=1)["statusCode"] == 429
    table = aws[0]
    item = table.get_item(Key={api.ATTR_RATE_KEY: f"token#{DEVICE_A}#{NOW + WINDOW_S}"})["Item"]
    assert (item[api.ATTR_HITS], item[api.ATTR_EXPIRES_AT]) == (1, NOW + 2 * WINDOW_S)  # expires by TTL after it


def test_each_cognito_identity_is_its_own_caller_behind_one_role(aws: tuple[Any, CountingKms]) -> None:
    """Signed-in users share the identity pool's role (one userArn) but not their Cognito identity."""
    first = {"userArn": DEVICE_A, "cognitoIdentityId": "us-west-2:1111"}
    second = {"userArn": DEVICE_A, "cognitoIdentityId": "us-west-2:2222"}
    assert [token(aws, first, NOW, limit=1)["statusCode"] for _ in range(2)] == [200, 429]
    assert token(aws, second, NOW, limit=1)["statusCode"] == 200


def test_without_a_user_arn_the_iam_caller_counts() -> None:
    assert api.rate_caller(event(caller="AIDAEXAMPLE")) == "AIDAEXAMPLE"
    assert api.rate_caller(event(caller="AIDAEXAMPLE", userArn=DEVICE_A)) == DEVICE_A
    assert api.rate_caller(event()) == api.ANONYMOUS


def test_get_endpoints_counts_apart_from_get_token(aws: tuple[Any, CountingKms], table: Any) -> None:
    rates, _ = aws
    rate = api.RateLimit(rates, limit=2, window_s=WINDOW_S)

    def endpoints(who: str) -> dict[str, Any]:
        return api.handle(event(userArn=who), table=table, default_model="org/model", now=NOW, limit=rate)

    assert [endpoints(DEVICE_A)["statusCode"] for _ in range(3)] == [200, 200, 429]
    assert endpoints(DEVICE_B)["statusCode"] == 200
    assert token(aws, {"userArn": DEVICE_A}, NOW, limit=2)["statusCode"] == 200
    assert json.loads(endpoints(DEVICE_A)["body"])["message"].startswith("too many GET /endpoints calls")


def test_a_counter_failure_lets_the_call_through_and_is_logged(
    aws: tuple[Any, CountingKms], caplog: pytest.LogCaptureFixture
) -> None:
    import boto3

    missing = boto3.resource("dynamodb", region_name=REGION).Table("no-such-table")
    rate = api.RateLimit(missing, limit=1, window_s=WINDOW_S)
    with caplog.at_level(logging.ERROR):
        for _ in range(2):
            response = api.handle_token(event(userArn=DEVICE_A), kms=aws[1], settings=SETTINGS, now=NOW, limit=rate)
            assert response["statusCode"] == 200
    assert "counting a token call of " + DEVICE_A + " failed, letting it through" in caplog.text


def test_the_entrypoint_takes_the_limit_from_its_environment(
    aws: tuple[Any, CountingKms], monkeypatch: pytest.MonkeyPatch
) -> None:
    table, kms = aws
    for name, value in {
        api.ENV_TOKEN_KEY_ID: SETTINGS.key_id,
        api.ENV_TOKEN_ISSUER: "i",
        api.ENV_TOKEN_AUDIENCE: "a",
        api.ENV_RATE_TABLE: table.name,
        api.ENV_RATE_LIMIT: "1",
        api.ENV_RATE_WINDOW_S: "10",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(api, "_kms", kms)
    monkeypatch.setattr(api, "_rate_table", None)
    answers = [api.token_handler(event(userArn=DEVICE_A), None, clock=lambda: NOW + 3) for _ in range(2)]
    assert [a["statusCode"] for a in answers] == [200, 429]
    assert answers[1]["headers"]["Retry-After"] == "7"


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        (api.ENV_RATE_LIMIT, "0", "invalid INVENTORY_RATE_LIMIT='0': allowed an integer from 1 to 10000"),
        (api.ENV_RATE_LIMIT, "many", "invalid INVENTORY_RATE_LIMIT='many': allowed an integer from 1 to 10000"),
        (api.ENV_RATE_WINDOW_S, "7200", "invalid INVENTORY_RATE_WINDOW_S='7200': allowed an integer from 1 to 3600"),
    ],
)
def test_settings_out_of_bounds_are_one_line(name: str, value: str, message: str) -> None:
    with pytest.raises(ValueError) as err:
        api.RateLimit.from_env({name: value}, table=None)
    assert str(err.value) == message
    defaults = api.RateLimit.from_env({}, table=None)
    assert (defaults.limit, defaults.window_s) == (api.DEFAULT_RATE_LIMIT, api.DEFAULT_RATE_WINDOW_S)
