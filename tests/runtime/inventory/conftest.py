"""Fixtures of the inventory tests: a moto DynamoDB table with the layout the stack creates."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from runtime.inventory import api as layout
from tests.runtime.conftest import fake_aws_credentials

TABLE_NAME = "edge-diffusion-endpoints"
REGION = "us-west-2"


@pytest.fixture
def table(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """An empty endpoints table in moto (keys as in stacks/inventory.py; TTL is checked on the template)."""
    import boto3
    from moto import mock_aws

    fake_aws_credentials(monkeypatch, REGION)
    with mock_aws():
        resource = boto3.resource("dynamodb", region_name=REGION)
        created = resource.create_table(
            TableName=TABLE_NAME,
            KeySchema=[
                {"AttributeName": layout.ATTR_MODEL, "KeyType": "HASH"},
                {"AttributeName": layout.ATTR_SORT_KEY, "KeyType": "RANGE"},
            ],
            AttributeDefinitions=[
                {"AttributeName": layout.ATTR_MODEL, "AttributeType": "S"},
                {"AttributeName": layout.ATTR_SORT_KEY, "AttributeType": "S"},
            ],
            BillingMode="PAY_PER_REQUEST",
        )
        created.wait_until_exists()
        yield created


RATE_TABLE_NAME = "edge-diffusion-caller-rates"


def create_rate_table() -> Any:
    """The per-caller counters' table (keys as in stacks/inventory.py), in the running test's moto account."""
    import boto3

    resource = boto3.resource("dynamodb", region_name=REGION)
    created = resource.create_table(
        TableName=RATE_TABLE_NAME,
        KeySchema=[{"AttributeName": layout.ATTR_RATE_KEY, "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": layout.ATTR_RATE_KEY, "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    created.wait_until_exists()
    return created
