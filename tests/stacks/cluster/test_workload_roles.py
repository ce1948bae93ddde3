"""What the serving pods' roles may do beyond metrics (they read no model: it is in their image).

The token key's public half by its alias, and in a Local Zone with TLS the one certificate secret
(stacks.workload_roles)."""

from __future__ import annotations

import json
from typing import Any

import aws_cdk as cdk
from aws_cdk import aws_iam as iam

from plan import naming, topology
from plan.config import load_config
from stacks import workload_roles
from tests.conftest import cdk_json_context

SECRET = "edge-diffusion/local-zone-tls"


def rendered(statements: list[iam.PolicyStatement]) -> list[dict[str, Any]]:
    stack = cdk.Stack(cdk.App(), "S", env=cdk.Environment(account="111111111111", region="us-west-2"))
    document = iam.PolicyDocument(statements=statements)
    return list(stack.resolve(document.to_json())["Statement"])


def by_action(statements: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for statement in statements:
        actions = statement["Action"]
        for action in [actions] if isinstance(actions, str) else actions:
            out[action] = statement
    return out


def test_token_key_is_read_by_alias_only() -> None:
    config = load_config(cdk_json_context())
    [statement] = rendered([workload_roles.token_public_key_statement(config)])
    assert statement["Action"] == "kms:GetPublicKey"
    assert statement["Condition"] == {"StringEquals": {"kms:RequestAlias": naming.token_signing_key_alias(config)}}
    assert json.dumps(statement["Resource"]).endswith(':key/*"]]}')  # keys of this account and Region


def test_local_zone_serving_roles_read_the_tls_secret_and_regional_ones_do_not() -> None:
    config = load_config(
        {**cdk_json_context(), "tls": {"localZoneSecret": SECRET, "localZoneServerName": "lz.example.com"}}
    )
    placements = topology.placements(config)
    assert {p.location.is_local_zone for p in placements} == {True, False}
    for placement in placements:
        actions = by_action(rendered(workload_roles.serving_statements(config, placement)))
        expected = {"cloudwatch:PutMetricData", "kms:GetPublicKey"}
        if placement.location.is_local_zone:
            expected.add("secretsmanager:GetSecretValue")
            resource = json.dumps(actions["secretsmanager:GetSecretValue"]["Resource"])
            assert f":secret:{SECRET}-??????" in resource  # that secret, any of its versions, nothing else
        assert set(actions) == expected, placement.name


def test_without_tokens_or_tls_serving_roles_keep_metrics_only() -> None:
    config = load_config({**cdk_json_context(), "auth": {"mode": "none"}})
    for placement in topology.placements(config):
        actions = by_action(rendered(workload_roles.serving_statements(config, placement)))
        assert set(actions) == {"cloudwatch:PutMetricData"}
