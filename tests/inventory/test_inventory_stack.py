"""InventoryStack: table protection, the device API's auth, throttling, logs and tracing, and the
publisher's least privilege; read from the session's one synthesized app (tests/conftest.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aws_cdk.assertions import Match

from runtime.inventory import api as layout
from stacks.inventory import PUBLISH_ACTIONS


@pytest.fixture(scope="module")
def template(synth: Any) -> Any:
    return synth.template(synth.stacks.inventory)


def resources(template: Any, kind: str) -> dict[str, Any]:
    return dict(template.find_resources(kind))


def test_table_keys_encryption_pitr_and_ttl(template: Any) -> None:
    template.has_resource(
        "AWS::DynamoDB::Table",
        {
            "Properties": {
                "TableName": "edge-diffusion-endpoints",
                "KeySchema": [
                    {"AttributeName": layout.ATTR_MODEL, "KeyType": "HASH"},
                    {"AttributeName": layout.ATTR_SORT_KEY, "KeyType": "RANGE"},
                ],
                "BillingMode": "PAY_PER_REQUEST",
                "SSESpecification": {"SSEEnabled": True},  # KMS, AWS managed key aws/dynamodb
                "PointInTimeRecoverySpecification": {"PointInTimeRecoveryEnabled": True},
                "TimeToLiveSpecification": {"AttributeName": layout.ATTR_EXPIRES_AT, "Enabled": True},
            }
        },
    )


def test_every_api_method_requires_iam_auth(template: Any) -> None:
    methods = resources(template, "AWS::ApiGateway::Method")
    assert methods, "no API method"
    assert {m["Properties"]["HttpMethod"] for m in methods.values()} == {"GET"}  # read-only API
    assert {m["Properties"]["AuthorizationType"] for m in methods.values()} == {"AWS_IAM"}
    (method,) = methods.values()
    assert set(method["Properties"]["RequestParameters"]) == {
        f"method.request.querystring.{name}" for name in layout.QUERY_PARAMS
    }


def test_stage_is_throttled_logged_and_traced(template: Any) -> None:
    (stage,) = resources(template, "AWS::ApiGateway::Stage").values()
    props = stage["Properties"]
    assert props["TracingEnabled"] is True
    assert "DestinationArn" in props["AccessLogSetting"]
    (settings,) = props["MethodSettings"]
    assert settings["ThrottlingRateLimit"] == 50 and settings["ThrottlingBurstLimit"] == 100
    assert settings["LoggingLevel"] == "ERROR" and settings["DataTraceEnabled"] is False
    template.has_resource_properties("AWS::Lambda::Function", {"TracingConfig": {"Mode": "Active"}})


def test_handler_is_python_with_only_query_on_the_table(template: Any) -> None:
    template.has_resource_properties(
        "AWS::Lambda::Function",
        {"Runtime": Match.string_like_regexp(r"^python3\.1[23]$"), "Handler": "api.handler"},
    )
    statements = [
        statement
        for policy in resources(template, "AWS::IAM::Policy").values()
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]
    ]
    dynamodb = [s for s in statements if any(str(a).startswith("dynamodb:") for a in _list(s["Action"]))]
    assert [_list(s["Action"]) for s in dynamodb] == [["dynamodb:Query"]]
    assert not any("AWSLambdaBasicExecutionRole" in str(r) for r in resources(template, "AWS::IAM::Role").values())


def test_handler_code_is_the_one_boto3_only_file(synth: Any, template: Any) -> None:
    (function,) = resources(template, "AWS::Lambda::Function").values()
    digest = function["Properties"]["Code"]["S3Key"].removesuffix(".zip")
    (asset,) = synth.outdir.rglob(f"asset.{digest}")
    assert sorted(p.name for p in asset.iterdir()) == ["api.py"]  # no torch, no runtime package
    assert "from runtime" not in (asset / "api.py").read_text()


def test_devices_get_invoke_on_get_endpoints_only(template: Any) -> None:
    (policy,) = resources(template, "AWS::IAM::ManagedPolicy").values()
    (statement,) = policy["Properties"]["PolicyDocument"]["Statement"]
    assert statement["Action"] == "execute-api:Invoke"
    parts = statement["Resource"]["Fn::Join"][1]
    assert parts[-1] == "/v1/GET/endpoints" and parts[-2]["Ref"].startswith("InventoryReadApi")  # not "*"
    assert not resources(template, "AWS::Cognito::IdentityPool")  # inventoryAuth=iam (the default)


def test_publisher_pod_identity_role_may_write_items_of_this_table_only(synth: Any) -> None:
    cluster = synth.template(synth.stacks.cluster)
    associations = [a["Properties"] for a in cluster.find_resources("AWS::EKS::PodIdentityAssociation").values()]
    (association,) = [a for a in associations if a["ServiceAccount"] == "endpoint-inventory"]
    assert association["Namespace"] == "edge-diffusion"
    role_id = association["RoleArn"]["Fn::GetAtt"][0]
    policies = [
        p["Properties"]
        for p in cluster.find_resources("AWS::IAM::Policy").values()
        if {"Ref": role_id} in p["Properties"]["Roles"]
    ]
    (policy,) = policies
    (statement,) = policy["PolicyDocument"]["Statement"]
    assert statement["Effect"] == "Allow"
    assert sorted(_list(statement["Action"])) == sorted(PUBLISH_ACTIONS)
    assert statement["Resource"] == {
        "Fn::Join": [
            "",
            ["arn:", {"Ref": "AWS::Partition"}, ":dynamodb:us-west-2:123456789012:table/edge-diffusion-endpoints"],
        ]
    }


def test_publisher_manifest_waits_for_its_pod_identity_association(synth: Any) -> None:
    """Pod Identity injects credentials at pod admission: the association must exist before the pod."""
    cluster = synth.template(synth.stacks.cluster)
    (association_id,) = [
        key
        for key, a in cluster.find_resources("AWS::EKS::PodIdentityAssociation").items()
        if a["Properties"]["ServiceAccount"] == "endpoint-inventory"
    ]
    manifests = []
    for manifest in cluster.find_resources("Custom::AWSCDK-EKS-KubernetesResource").values():
        objects = manifest["Properties"]["Manifest"]  # a JSON string of the chart's objects
        parsed = json.loads(objects) if isinstance(objects, str) else []
        if any(o.get("kind") == "Deployment" and o["metadata"]["name"] == "endpoint-inventory" for o in parsed):
            manifests.append(manifest)
    assert len(manifests) == 1
    assert association_id in manifests[0].get("DependsOn", [])


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def test_cognito_mode_gives_signed_in_users_invoke_only(tmp_path: Any) -> None:
    """inventoryAuth=cognito: synthesize this stack alone (with cdk-nag), not the whole app again."""
    import aws_cdk as cdk
    from aws_cdk.assertions import Template
    from cdk_nag import AwsSolutionsChecks

    from spec.config import load_config
    from stacks.inventory import InventoryStack
    from tests.conftest import cdk_json_context

    context = {**cdk_json_context(), "inventoryAuth": "cognito"}
    app = cdk.App(context=context, outdir=str(tmp_path))
    config = load_config(context)
    stack = InventoryStack(
        app, "Inventory", config=config, env=cdk.Environment(account=config.account, region=config.region)
    )
    cdk.Validations.of(app).add_plugins(AwsSolutionsChecks(app))
    app.synth()  # raises on any unacknowledged cdk-nag finding
    template = Template.from_stack(stack)
    template.has_resource_properties("AWS::Cognito::IdentityPool", {"AllowUnauthenticatedIdentities": False})
    template.has_resource_properties(
        "AWS::Cognito::UserPool",
        {"MfaConfiguration": "ON", "Policies": {"PasswordPolicy": Match.object_like({"MinimumLength": 12})}},
    )
    (attachment,) = resources(template, "AWS::Cognito::IdentityPoolRoleAttachment").values()
    assert set(attachment["Properties"]["Roles"]) == {"authenticated"}  # no role for guests
    role_id = attachment["Properties"]["Roles"]["authenticated"]["Fn::GetAtt"][0]
    role = resources(template, "AWS::IAM::Role")[role_id]["Properties"]
    (trust,) = role["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Condition"]["ForAnyValue:StringLike"] == {"cognito-identity.amazonaws.com:amr": "authenticated"}
    (policy,) = [
        p for p in resources(template, "AWS::IAM::Policy").values() if {"Ref": role_id} in p["Properties"]["Roles"]
    ]
    (statement,) = policy["Properties"]["PolicyDocument"]["Statement"]
    assert statement["Action"] == "execute-api:Invoke"
    assert statement["Resource"]["Fn::Join"][1][-1] == "/v1/GET/endpoints"
