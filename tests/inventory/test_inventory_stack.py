"""InventoryStack: table protection, the device API's auth, throttling, logs and tracing, the token
route and its signing key, and the publisher's least privilege; read from the session's one
synthesized app (tests/conftest.py), other configs synthesized alone."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aws_cdk.assertions import Match

from plan import contract
from runtime.inventory import api as layout
from stacks.inventory import KEY_ADMIN_ACTIONS, PUBLISH_ACTIONS, InventoryProps


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


def path_parts(template: Any) -> dict[str, str]:
    return {key: r["Properties"]["PathPart"] for key, r in resources(template, "AWS::ApiGateway::Resource").items()}


def test_every_api_method_requires_iam_auth(template: Any) -> None:
    methods = resources(template, "AWS::ApiGateway::Method")
    assert methods, "no API method"
    assert {m["Properties"]["HttpMethod"] for m in methods.values()} == {"GET"}  # read-only API
    assert {m["Properties"]["AuthorizationType"] for m in methods.values()} == {"AWS_IAM"}
    parts = path_parts(template)
    by_path = {parts[m["Properties"]["ResourceId"]["Ref"]]: m["Properties"] for m in methods.values()}
    assert set(by_path) == {"endpoints", "token"}
    assert set(by_path["endpoints"]["RequestParameters"]) == {
        f"method.request.querystring.{name}" for name in layout.QUERY_PARAMS
    }
    assert "RequestParameters" not in by_path["token"]  # GET /token takes nothing from the caller


def test_a_waf_web_acl_on_the_stage_limits_each_credential_and_address_before_the_shared_throttle(
    template: Any,
) -> None:
    """The stage's throttle is one bucket for all callers: WAF (evaluated first) blocks one caller's flood."""
    (stage_id,) = resources(template, "AWS::ApiGateway::Stage")
    (acl_id, acl) = next(iter(resources(template, "AWS::WAFv2::WebACL").items()))
    props = acl["Properties"]
    assert props["Scope"] == "REGIONAL" and props["DefaultAction"] == {"Allow": {}}
    rules = {rule["Name"]: rule for rule in props["Rules"]}
    defaults = InventoryProps()
    per_credential = rules["PerCredential"]["Statement"]["RateBasedStatement"]
    assert per_credential["Limit"] == defaults.waf_per_credential
    assert per_credential["AggregateKeyType"] == "CUSTOM_KEYS"
    assert per_credential["CustomKeys"] == [
        {"Header": {"Name": "x-amz-security-token", "TextTransformations": [{"Priority": 0, "Type": "NONE"}]}}
    ]
    per_address = rules["PerAddress"]["Statement"]["RateBasedStatement"]
    assert per_address["AggregateKeyType"] == "IP" and per_address["Limit"] == defaults.waf_per_address
    for rule in rules.values():
        assert rule["Statement"]["RateBasedStatement"]["EvaluationWindowSec"] == defaults.waf_window_s
        blocked = rule["Action"]["Block"]["CustomResponse"]
        assert blocked["ResponseCode"] == 429
        assert blocked["ResponseHeaders"] == [{"Name": "Retry-After", "Value": str(defaults.waf_window_s)}]
        body = props["CustomResponseBodies"][blocked["CustomResponseBodyKey"]]
        assert json.loads(body["Content"])["error"].startswith("too many requests from this caller")
    (association,) = resources(template, "AWS::WAFv2::WebACLAssociation").values()
    assert association["Properties"]["WebACLArn"] == {"Fn::GetAtt": [acl_id, "Arn"]}
    assert stage_id in json.dumps(association["Properties"]["ResourceArn"])


@pytest.mark.parametrize(
    ("knob", "value", "allowed"),
    [
        ("waf_per_credential", 9, "from 10 to 2000000000"),
        ("waf_per_address", True, "from 10 to 2000000000"),
        ("waf_window_s", 90, "one of 60, 120, 300, 600"),
    ],
)
def test_waf_limits_outside_what_waf_accepts_are_refused(knob: str, value: object, allowed: str) -> None:
    with pytest.raises(ValueError, match=f"InventoryProps.{knob}={value!r}: allowed .*{allowed}"):
        InventoryProps(**{knob: value})  # type: ignore[arg-type]


def test_stage_is_throttled_logged_and_traced(template: Any) -> None:
    (stage,) = resources(template, "AWS::ApiGateway::Stage").values()
    props = stage["Properties"]
    assert props["TracingEnabled"] is True
    assert "DestinationArn" in props["AccessLogSetting"]
    (settings,) = props["MethodSettings"]
    assert settings["ThrottlingRateLimit"] == 50 and settings["ThrottlingBurstLimit"] == 100
    assert settings["LoggingLevel"] == "ERROR" and settings["DataTraceEnabled"] is False
    template.has_resource_properties("AWS::Lambda::Function", {"TracingConfig": {"Mode": "Active"}})


def table_id(template: Any, name: str) -> str:
    (found,) = [
        k for k, t in resources(template, "AWS::DynamoDB::Table").items() if t["Properties"]["TableName"] == name
    ]
    return found


def dynamodb_grants(template: Any, handler: str) -> list[tuple[list[str], Any]]:
    """(actions, resource) of every DynamoDB statement of ``handler``'s role."""
    (function,) = [
        f["Properties"]
        for f in resources(template, "AWS::Lambda::Function").values()
        if f["Properties"]["Handler"] == handler
    ]
    role = {"Ref": function["Role"]["Fn::GetAtt"][0]}
    return [
        (_list(statement["Action"]), statement["Resource"])
        for policy in resources(template, "AWS::IAM::Policy").values()
        if role in policy["Properties"]["Roles"]
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]
        if any(str(a).startswith("dynamodb:") for a in _list(statement["Action"]))
    ]


def test_handlers_query_the_endpoints_and_count_calls_and_nothing_else(template: Any) -> None:
    for handler in ("api.handler", "api.token_handler"):
        template.has_resource_properties(
            "AWS::Lambda::Function",
            {"Runtime": Match.string_like_regexp(r"^python3\.1[23]$"), "Handler": handler},
        )
    endpoints = {"Fn::GetAtt": [table_id(template, "edge-diffusion-endpoints"), "Arn"]}
    rates = {"Fn::GetAtt": [table_id(template, "edge-diffusion-caller-rates"), "Arn"]}
    assert dynamodb_grants(template, "api.handler") == [
        (["dynamodb:Query"], endpoints),
        (["dynamodb:UpdateItem"], rates),
    ]
    assert dynamodb_grants(template, "api.token_handler") == [(["dynamodb:UpdateItem"], rates)]
    assert not any("AWSLambdaBasicExecutionRole" in str(r) for r in resources(template, "AWS::IAM::Role").values())


def test_the_caller_counters_have_their_own_table_that_expires_them(template: Any) -> None:
    table = resources(template, "AWS::DynamoDB::Table")[table_id(template, "edge-diffusion-caller-rates")]
    assert table["DeletionPolicy"] == "Delete"
    assert table["Properties"]["KeySchema"] == [{"AttributeName": layout.ATTR_RATE_KEY, "KeyType": "HASH"}]
    assert table["Properties"]["TimeToLiveSpecification"] == {"AttributeName": layout.ATTR_EXPIRES_AT, "Enabled": True}
    assert table["Properties"]["SSESpecification"] == {"SSEEnabled": True}
    assert table["Properties"]["BillingMode"] == "PAY_PER_REQUEST"
    for handler in ("api.handler", "api.token_handler"):
        template.has_resource_properties(
            "AWS::Lambda::Function",
            {
                "Handler": handler,
                "Environment": {
                    "Variables": Match.object_like(
                        {
                            layout.ENV_RATE_TABLE: {"Ref": table_id(template, "edge-diffusion-caller-rates")},
                            layout.ENV_RATE_LIMIT: str(layout.DEFAULT_RATE_LIMIT),
                            layout.ENV_RATE_WINDOW_S: str(layout.DEFAULT_RATE_WINDOW_S),
                        }
                    )
                },
            },
        )


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"caller_limit": 0}, "InventoryProps.caller_limit=0: allowed an integer from 1 to 10000"),
        ({"caller_limit": True}, "InventoryProps.caller_limit=True: allowed an integer from 1 to 10000"),
        ({"caller_window_s": 3601}, "InventoryProps.caller_window_s=3601: allowed an integer from 1 to 3600"),
    ],
)
def test_the_per_caller_limit_is_bounded(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as err:
        InventoryProps(**changes)
    assert str(err.value) == message


def test_handler_code_is_the_one_boto3_only_file(synth: Any, template: Any) -> None:
    digests = {f["Properties"]["Code"]["S3Key"] for f in resources(template, "AWS::Lambda::Function").values()}
    (digest,) = {key.removesuffix(".zip") for key in digests}  # both handlers ship the same file
    (asset,) = synth.outdir.rglob(f"asset.{digest}")
    assert sorted(p.name for p in asset.iterdir()) == ["api.py"]  # no torch, no runtime package
    assert "from runtime" not in (asset / "api.py").read_text()


def test_devices_get_invoke_on_get_endpoints_and_get_token_only(template: Any) -> None:
    (policy,) = resources(template, "AWS::IAM::ManagedPolicy").values()
    (statement,) = policy["Properties"]["PolicyDocument"]["Statement"]
    assert statement["Action"] == "execute-api:Invoke"
    joined = [resource["Fn::Join"][1] for resource in statement["Resource"]]
    assert [parts[-1] for parts in joined] == ["/v1/GET/endpoints", "/v1/GET/token"]
    assert all(parts[-2]["Ref"].startswith("InventoryReadApi") for parts in joined)  # this API, not "*"
    assert not resources(template, "AWS::Cognito::IdentityPool")  # inventoryAuth=iam (the default)


def key_and_token_role(template: Any) -> tuple[dict[str, Any], str]:
    (key,) = resources(template, "AWS::KMS::Key").values()
    (function,) = [
        f["Properties"]
        for f in resources(template, "AWS::Lambda::Function").values()
        if f["Properties"]["Handler"] == "api.token_handler"
    ]
    return key["Properties"], function["Role"]["Fn::GetAtt"][0]


def test_token_signing_key_is_rsa_and_only_the_token_role_may_sign(template: Any) -> None:
    key, role_id = key_and_token_role(template)
    assert (key["KeySpec"], key["KeyUsage"]) == ("RSA_2048", "SIGN_VERIFY")
    assert key["PendingWindowInDays"] == 7
    assert "EnableKeyRotation" not in key  # KMS rotates no asymmetric key
    (resource,) = resources(template, "AWS::KMS::Key").values()
    assert resource["DeletionPolicy"] == "Delete"  # goes with its deployment (after the pending window)
    statements = {s["Sid"]: s for s in key["KeyPolicy"]["Statement"]}
    assert set(statements) == {
        "AccountAdministersTheKey",
        "IamPoliciesMayReadThePublicKey",
        "OnlyTheTokenRouteSigns",
        "NoOneElseSigns",
        "NoGrants",
        "OnlyCloudFormationRewritesDeletesOrDisablesTheKey",
    }
    allows = [s for s in statements.values() if s["Effect"] == "Allow"]
    signers = [s for s in allows if "kms:Sign" in _list(s["Action"]) or "kms:*" in _list(s["Action"])]
    (signer,) = signers  # no kms:* for the account: IAM policies cannot hand out kms:Sign
    assert signer["Principal"] == {"AWS": {"Fn::GetAtt": [role_id, "Arn"]}}
    assert not [
        s for s in allows if any(str(a).startswith("kms:Create") and a != "kms:CreateAlias" for a in _list(s["Action"]))
    ]
    # What the Denies say is evaluated for sample principals in tests/iam/test_token_key_policy.py.
    assert statements["NoOneElseSigns"]["Condition"] == {
        "ArnNotEquals": {"aws:PrincipalArn": {"Fn::GetAtt": [role_id, "Arn"]}}
    }
    assert sorted(_list(statements["AccountAdministersTheKey"]["Action"])) == sorted(KEY_ADMIN_ACTIONS)
    assert sorted(_list(statements["IamPoliciesMayReadThePublicKey"]["Action"])) == [
        "kms:DescribeKey",
        "kms:GetPublicKey",
    ]
    template.has_resource_properties(
        "AWS::KMS::Alias", {"AliasName": "alias/edge-diffusion-token-signing", "TargetKeyId": Match.any_value()}
    )


def test_on_either_deploy_path_only_cloudformation_s_role_may_rewrite_or_delete_the_key(synth: Any) -> None:
    """``cdk deploy`` and the deploy pipeline's stages both deploy with the bootstrap's execution role."""
    stacks = [synth.stacks.workstation, *synth.stacks.pipeline.values()]
    assert len(stacks) == 3
    for deployment in stacks:
        (key,) = resources(synth.template(deployment.inventory), "AWS::KMS::Key").values()
        (deny,) = [
            s
            for s in key["Properties"]["KeyPolicy"]["Statement"]
            if s["Sid"] == "OnlyCloudFormationRewritesDeletesOrDisablesTheKey"
        ]
        assert (deny["Effect"], deny["Principal"]) == ("Deny", {"AWS": "*"})
        assert sorted(_list(deny["Action"])) == [
            "kms:DeleteAlias",
            "kms:DisableKey",
            "kms:DisableKeyRotation",
            "kms:PutKeyPolicy",
            "kms:ScheduleKeyDeletion",
            "kms:UpdateAlias",
        ]
        assert deny["Condition"] == {
            "ArnNotEquals": {
                "aws:PrincipalArn": {
                    "Fn::Sub": "arn:${AWS::Partition}:iam::123456789012:role/"
                    "cdk-hnb659fds-cfn-exec-role-123456789012-us-west-2"
                }
            }
        }


def test_token_role_signs_with_that_key_only_and_the_lambda_knows_issuer_audience_and_ttl(template: Any) -> None:
    _, role_id = key_and_token_role(template)
    (key_id,) = resources(template, "AWS::KMS::Key")
    statements = [
        statement
        for policy in resources(template, "AWS::IAM::Policy").values()
        if {"Ref": role_id} in policy["Properties"]["Roles"]
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]
    ]
    kms_statements = [s for s in statements if any(str(a).startswith("kms:") for a in _list(s["Action"]))]
    assert kms_statements == [{"Action": "kms:Sign", "Effect": "Allow", "Resource": {"Fn::GetAtt": [key_id, "Arn"]}}]
    dynamodb = [
        _list(s["Action"]) for s in statements if any(str(a).startswith("dynamodb:") for a in _list(s["Action"]))
    ]
    assert dynamodb == [["dynamodb:UpdateItem"]]  # its call counters only (checked above)
    template.has_resource_properties(
        "AWS::Lambda::Function",
        {
            "Handler": "api.token_handler",
            "Environment": {
                "Variables": {
                    contract.ENV_TOKEN_KEY_ID: {"Fn::GetAtt": [key_id, "Arn"]},
                    contract.ENV_TOKEN_ISSUER: contract.token_issuer("edge-diffusion"),
                    contract.ENV_TOKEN_AUDIENCE: contract.TOKEN_AUDIENCE,
                    contract.ENV_TOKEN_TTL_S: str(contract.DEFAULT_TOKEN_TTL_S),
                    layout.ENV_RATE_TABLE: Match.any_value(),
                    layout.ENV_RATE_LIMIT: Match.any_value(),
                    layout.ENV_RATE_WINDOW_S: Match.any_value(),
                }
            },
        },
    )
    template.has_resource_properties(
        "AWS::Lambda::Function",
        {"Handler": "api.handler", "Environment": {"Variables": Match.object_like({contract.ENV_AUTH: "token"})}},
    )


def synth_alone(tmp_path: Any, props: InventoryProps | None = None, **keys: Any) -> Any:
    """This stack alone under ``keys`` (with cdk-nag), not the whole app again."""
    import aws_cdk as cdk
    from aws_cdk.assertions import Template
    from cdk_nag import AwsSolutionsChecks

    from plan.config import load_config
    from stacks.inventory import InventoryStack
    from tests.conftest import cdk_json_context

    context = {**cdk_json_context(), **keys}
    app = cdk.App(context=context, outdir=str(tmp_path))
    config = load_config(context)
    stack = InventoryStack(
        app,
        "Inventory",
        config=config,
        props=props,
        env=cdk.Environment(account=config.account, region=config.region),
    )
    cdk.Validations.of(app).add_plugins(AwsSolutionsChecks(app))
    app.synth()  # raises on any unacknowledged cdk-nag finding
    return Template.from_stack(stack)


def test_auth_none_has_no_signing_key_and_no_token_route(tmp_path: Any) -> None:
    template = synth_alone(tmp_path, auth={"mode": "none", "tokenTtlSeconds": 300})
    assert not resources(template, "AWS::KMS::Key") and not resources(template, "AWS::KMS::Alias")
    assert set(path_parts(template).values()) == {"endpoints"}
    (function,) = resources(template, "AWS::Lambda::Function").values()
    assert function["Properties"]["Environment"]["Variables"][contract.ENV_AUTH] == "none"
    (policy,) = resources(template, "AWS::IAM::ManagedPolicy").values()
    (statement,) = policy["Properties"]["PolicyDocument"]["Statement"]
    assert statement["Resource"]["Fn::Join"][1][-1] == "/v1/GET/endpoints"


def test_the_per_caller_limit_comes_from_the_props(tmp_path: Any) -> None:
    template = synth_alone(tmp_path, InventoryProps(caller_limit=5, caller_window_s=10))
    for handler in ("api.handler", "api.token_handler"):
        template.has_resource_properties(
            "AWS::Lambda::Function",
            {
                "Handler": handler,
                "Environment": {
                    "Variables": Match.object_like({layout.ENV_RATE_LIMIT: "5", layout.ENV_RATE_WINDOW_S: "10"})
                },
            },
        )


def test_token_ttl_comes_from_config(tmp_path: Any) -> None:
    template = synth_alone(tmp_path, auth={"tokenTtlSeconds": 300})
    template.has_resource_properties(
        "AWS::Lambda::Function",
        {
            "Handler": "api.token_handler",
            "Environment": {"Variables": Match.object_like({contract.ENV_TOKEN_TTL_S: "300"})},
        },
    )


def test_both_handlers_record_demand_for_the_cluster_region_and_serving_zones_with_their_networks(
    tmp_path: Any,
) -> None:
    """Only Local Zones with serving placements: den (c7g) serves CPU, phx (inf2, Neuron not
    enabled) serves nothing, so its devices' demand would wake nothing."""
    template = synth_alone(
        tmp_path,
        clusterName="edge-demand",
        localZones=[
            {"name": "us-west-2-lax-1a", "instanceFamilies": ["g5"], "deviceCidrs": ["203.0.113.0/24"]},
            {"name": "us-west-2-den-1a", "instanceFamilies": ["c7g"]},
            {"name": "us-west-2-phx-2a", "instanceFamilies": ["inf2"], "deviceCidrs": ["192.0.2.0/24"]},
        ],
        accelerators=["nvidia", "cpu"],
    )
    expected = {
        layout.ENV_DEMAND_CLUSTER: "edge-demand",
        layout.ENV_DEMAND_REGION: "us-west-2",
        layout.ENV_DEMAND_ZONES: '{"us-west-2-den-1a":[],"us-west-2-lax-1a":["203.0.113.0/24"]}',
    }
    functions = resources(template, "AWS::Lambda::Function").values()
    found = {
        f["Properties"]["Handler"]: {k: f["Properties"]["Environment"]["Variables"].get(k) for k in expected}
        for f in functions
    }
    assert found == {"api.handler": expected, "api.token_handler": expected}
    demand = layout.DeviceDemand.from_env(expected)
    assert demand is not None and demand.locations("203.0.113.5") == [
        "us-west-2",
        "us-west-2-den-1a",
        "us-west-2-lax-1a",
    ]


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
    statements = {_list(st["Action"])[0].split(":")[0]: st for st in policy["PolicyDocument"]["Statement"]}
    assert sorted(statements) == ["cloudwatch", "dynamodb", "ecr"]
    table = statements["dynamodb"]
    assert table["Effect"] == "Allow"
    assert sorted(_list(table["Action"])) == sorted(PUBLISH_ACTIONS)
    assert table["Resource"] == {
        "Fn::Join": [
            "",
            ["arn:", {"Ref": "AWS::Partition"}, ":dynamodb:us-west-2:123456789012:table/edge-diffusion-endpoints"],
        ]
    }
    # Its metrics: PutMetricData (no resource-level ARNs) in the app's namespace only.
    metrics = statements["cloudwatch"]
    assert (metrics["Action"], metrics["Resource"]) == ("cloudwatch:PutMetricData", "*")
    assert metrics["Condition"] == {"StringEquals": {"cloudwatch:namespace": contract.METRIC_NAMESPACE}}
    # Whether a serving image is published yet (the pods' image gate): that repository only.
    images = statements["ecr"]
    assert images["Action"] == "ecr:DescribeImages"
    assert "repository/edge-diffusion/stable-diffusion" in json.dumps(images["Resource"])


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
    template = synth_alone(tmp_path, inventoryAuth="cognito")
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
    assert [r["Fn::Join"][1][-1] for r in statement["Resource"]] == ["/v1/GET/endpoints", "/v1/GET/token"]
