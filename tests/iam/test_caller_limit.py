"""The per-caller limit as the handlers' roles: each counts its calls in the counters' table with the
one action its role has there (dynamodb:UpdateItem), a caller over the limit is refused before KMS
signs, and neither role may write anything else of the inventory."""

from __future__ import annotations

import json
from typing import Any, Final

import boto3
import pytest

from runtime.inventory import api
from tests.iam.conftest import World

RATES: Final = "edge-diffusion-caller-rates"
ENDPOINTS: Final = "edge-diffusion-endpoints"
TABLE_ARN: Final = "arn:aws:dynamodb:us-west-2:123456789012:table/{}"
PHONE_A: Final = "arn:aws:sts::123456789012:assumed-role/DeviceApp/phone-a"
PHONE_B: Final = "arn:aws:sts::123456789012:assumed-role/DeviceApp/phone-b"
NOW: Final = 1_800_000_000


def event(caller: str) -> dict[str, Any]:
    return {"requestContext": {"identity": {"userArn": caller}}, "queryStringParameters": None}


@pytest.fixture(autouse=True)
def cold_containers(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("_kms", "_table", "_rate_table"):
        monkeypatch.setattr(api, name, None)


def test_the_token_route_counts_as_its_role_and_refuses_a_caller_over_the_limit(world: World) -> None:
    function, workload = world.lambda_workload("api.token_handler")
    assert function.env[api.ENV_RATE_TABLE] == RATES
    env = {**function.env, api.ENV_RATE_LIMIT: "2"}  # the template's limit, lowered to reach it
    with world.aws.acting_as(workload, env):
        codes = [api.token_handler(event(PHONE_A), None, clock=lambda: NOW)["statusCode"] for _ in range(3)]
        other = api.token_handler(event(PHONE_B), None, clock=lambda: NOW)
    assert codes == [200, 200, 429] and other["statusCode"] == 200
    counted = world.aws.authorized(workload.name, "dynamodb:UpdateItem")
    assert {c.request.resource for c in counted} == {TABLE_ARN.format(RATES)} and len(counted) == 4
    assert len(world.aws.authorized(workload.name, "kms:Sign")) == 3  # not for the refused call


def test_the_read_api_counts_as_its_role(world: World) -> None:
    function, workload = world.lambda_workload("api.handler")
    env = {**function.env, api.ENV_RATE_LIMIT: "1"}
    with world.aws.acting_as(workload, env):
        first, second = (api.handler(event(PHONE_A), None, clock=lambda: NOW) for _ in range(2))
    assert (first["statusCode"], second["statusCode"]) == (200, 429)
    assert json.loads(second["body"])["message"].startswith("too many GET /endpoints calls")
    (counted, _) = world.aws.authorized(workload.name, "dynamodb:UpdateItem")
    assert counted.request.resource == TABLE_ARN.format(RATES)


@pytest.mark.parametrize("handler", ["api.handler", "api.token_handler"])
def test_neither_role_may_count_in_the_endpoint_table(world: World, handler: str) -> None:
    """Its counting right is on the counters only: pointed at the endpoint table it is denied (and
    the handler lets the call through, logged, as on any counter failure)."""
    _, workload = world.lambda_workload(handler)
    with pytest.raises(AssertionError) as report, world.aws.acting_as(workload):
        table = boto3.resource("dynamodb", region_name="us-west-2").Table(ENDPOINTS)
        assert api.RateLimit(table, limit=1).retry_after(api.ROUTE_TOKEN, PHONE_A, NOW) is None
    assert str(report.value) == (
        f"{workload.name}: dynamodb:UpdateItem on {TABLE_ARN.format(ENDPOINTS)} denied by its role's policies "
        "(no statement allows it) [dynamodb:UpdateItem]"
    )
