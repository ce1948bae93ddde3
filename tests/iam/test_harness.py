"""The harness denies what AWS would deny: conditions evaluated on real roles, DeleteObjects per key,
missing keys without s3:ListBucket, resource policies, and anything it cannot model."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.iam.conftest import OPAQUE_TYPES, Templates, World
from tests.iam.policy import Principal, Request, UnmodeledError, decide, wildcard_match
from tests.iam.templates import Resolver, TemplateError, resources, settle
from tests.iam.workloads import arg, compile_job

SERVING = "stable-diffusion-nvidia"
NO_STATEMENT = "denied by its role's policies (no statement allows it)"
ROLE = Principal("arn:aws:iam::123456789012:role/Workload", "123456789012")


def denied_lines(world: World, workload: Any, call: Any) -> list[str]:
    """Run ``call(session)`` as ``workload``; it must get AccessDenied, and the harness must report it."""
    with (
        pytest.raises(AssertionError) as report,
        world.aws.acting_as(workload) as session,
        pytest.raises(ClientError, match="AccessDenied"),
    ):
        call(session)
    return str(report.value).splitlines()


def test_conditions_of_the_serving_role_are_evaluated(world: World) -> None:
    workload = world.pod_workload(world.pod("Deployment", SERVING))
    (key_arn,) = world.keys.values()
    bucket = f"arn:aws:s3:::{world.bucket}"
    with world.aws.acting_as(workload) as session:  # what the conditions admit
        session.client("cloudwatch").put_metric_data(
            Namespace="EdgeDiffusion", MetricData=[{"MetricName": "m", "Value": 1}]
        )
        session.client("kms").get_public_key(KeyId="alias/edge-diffusion-token-signing")

    assert denied_lines(
        world,
        workload,
        lambda s: s.client("cloudwatch").put_metric_data(
            Namespace="Other", MetricData=[{"MetricName": "m", "Value": 1}]
        ),
    ) == [f"{SERVING}: cloudwatch:PutMetricData on * {NO_STATEMENT} [cloudwatch:PutMetricData]"]
    assert denied_lines(world, workload, lambda s: s.client("kms").get_public_key(KeyId=key_arn)) == [  # no alias
        f"{SERVING}: kms:GetPublicKey on {key_arn} denied by its role's policies (no statement allows it; the key "
        "policy delegates to IAM) [kms:GetPublicKey]"
    ]
    assert denied_lines(
        world, workload, lambda s: s.client("s3").list_objects_v2(Bucket=world.bucket, Prefix="logs/")
    ) == [f"{SERVING}: s3:ListBucket on {bucket} {NO_STATEMENT} [s3:ListObjectsV2]"]


def own_prefix(world: World) -> str:
    """``models/<cluster>``: the compile job's ``--out`` within the bucket, all its role may write."""
    return arg(compile_job(world).container.args, "--out").removeprefix(f"s3://{world.bucket}/")


def test_the_compile_roles_prefix_condition_is_evaluated(world: World) -> None:
    workload = world.pod_workload(compile_job(world))
    with world.aws.acting_as(workload) as session:  # its own prefix: listed
        session.client("s3").list_objects_v2(Bucket=world.bucket, Prefix=f"{own_prefix(world)}/x/")
    bucket = f"arn:aws:s3:::{world.bucket}"
    for prefix in ("models/another-cluster/x/", "models/"):
        assert denied_lines(
            world, workload, lambda s, p=prefix: s.client("s3").list_objects_v2(Bucket=world.bucket, Prefix=p)
        ) == [f"model-compiler: s3:ListBucket on {bucket} {NO_STATEMENT} [s3:ListObjectsV2]"], prefix


def test_delete_objects_is_authorized_per_key(world: World) -> None:
    workload = world.pod_workload(compile_job(world))
    s3 = world.aws.client("s3")
    own = f"{own_prefix(world)}/a"
    for key in (own, "other/b"):
        s3.put_object(Bucket=world.bucket, Key=key, Body=b"x")
    with pytest.raises(AssertionError) as report, world.aws.acting_as(workload) as session:
        answer = session.client("s3").delete_objects(
            Bucket=world.bucket, Delete={"Objects": [{"Key": own}, {"Key": "other/b"}], "Quiet": True}
        )
        assert {e["Code"] for e in answer["Errors"]} == {"AccessDenied"}  # HTTP 200: a caller must read Errors
    assert str(report.value) == (
        f"model-compiler: s3:DeleteObject on arn:aws:s3:::{world.bucket}/other/b denied by its role's policies "
        "(no statement allows it) [s3:DeleteObjects]"
    )


def test_a_missing_key_needs_list_bucket_without_a_prefix_condition(world: World) -> None:
    """The compile role may get its own prefix's keys and list them by prefix; a missing key still
    answers 403, since its s3:ListBucket is conditioned on s3:prefix."""
    workload = world.pod_workload(compile_job(world))
    key = f"{own_prefix(world)}/none/manifest.json"
    lines = denied_lines(world, workload, lambda s: s.client("s3").get_object(Bucket=world.bucket, Key=key))
    assert lines == [
        f"model-compiler: s3:ListBucket on arn:aws:s3:::{world.bucket} denied by its role's policies (no statement "
        "allows it) [s3:GetObject of a missing key: 403 AccessDenied, not 404, unless it may s3:ListBucket]"
    ]


def test_a_role_without_ecr_permissions_may_not_describe_images(world: World) -> None:
    workload = world.pod_workload(compile_job(world))
    repository = "edge-diffusion/stable-diffusion"
    lines = denied_lines(world, workload, lambda s: s.client("ecr").describe_images(repositoryName=repository))
    assert lines == [
        f"model-compiler: ecr:DescribeImages on arn:aws:ecr:us-west-2:123456789012:repository/{repository} "
        f"{NO_STATEMENT} [ecr:DescribeImages]"
    ]


def test_a_call_the_harness_does_not_model_fails_the_test(world: World) -> None:
    workload = world.pod_workload(compile_job(world))
    lines = denied_lines(world, workload, lambda s: s.client("s3").get_bucket_acl(Bucket=world.bucket))
    assert lines == [
        f"model-compiler: s3 GET arn:aws:s3:::{world.bucket} with ['acl']: how AWS authorizes it is not modeled"
    ]


def test_the_model_buckets_policy_denies_plain_http(world: World) -> None:
    """The registry's bucket policy is evaluated with the request: its SecureTransport Deny wins over the role."""
    policy = world.aws.bucket_policies[world.bucket]
    allow = [{"Statement": [{"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"}]}]
    for secure, allowed in (("true", True), ("false", False)):
        context = {"aws:securetransport": (secure,)}
        request = Request("s3:GetObject", "s3:GetObject", f"arn:aws:s3:::{world.bucket}/models/a", context)
        assert decide(request, ROLE, allow, policy).allowed is allowed


def statement(**condition: Any) -> list[dict[str, Any]]:
    return [{"Statement": [{"Effect": "Allow", "Action": "s3:ListBucket", "Resource": "*", "Condition": condition}]}]


@pytest.mark.parametrize(
    ("condition", "prefix", "allowed"),
    [
        ({"StringLike": {"s3:prefix": ["models/*"]}}, "models/a/", True),
        ({"StringLike": {"s3:prefix": ["models/*"]}}, None, False),  # an absent key fails a condition
        ({"StringNotLike": {"s3:prefix": ["logs/*"]}}, None, True),  # ... except a negated one
        ({"StringLikeIfExists": {"s3:prefix": ["models/*"]}}, None, True),
        ({"Null": {"s3:prefix": "true"}}, None, True),
        ({"Null": {"s3:prefix": "true"}}, "models/", False),
        ({"StringEquals": {"s3:prefix": ["a", "models/"]}}, "models/", True),  # values are ORed
    ],
)
def test_condition_semantics(condition: dict[str, Any], prefix: str | None, allowed: bool) -> None:
    context = {"s3:prefix": (prefix,)} if prefix is not None else {}
    request = Request("s3:ListObjectsV2", "s3:ListBucket", "arn:aws:s3:::b", context, frozenset({"s3:prefix"}))
    assert decide(request, ROLE, statement(**condition)).allowed is allowed


def test_an_unmodeled_condition_key_is_an_error_not_a_pass() -> None:
    request = Request("s3:ListObjectsV2", "s3:ListBucket", "arn:aws:s3:::b")
    with pytest.raises(UnmodeledError, match="s3:ExistingObjectTag/x"):
        decide(request, ROLE, statement(StringEquals={"s3:ExistingObjectTag/x": "y"}))


def test_wildcards_are_iam_wildcards_not_regular_expressions() -> None:
    secret = "arn:aws:secretsmanager:us-west-2:123456789012:secret:edge-diffusion/lz-tls-??????"
    assert wildcard_match(secret, secret.replace("??????", "AbC1eF"))
    assert not wildcard_match(secret, secret.replace("??????", "AbC1e"))
    assert not wildcard_match(secret, secret.replace("-??????", "-old-AbC1eF"))
    assert not wildcard_match("arn:aws:s3:::a.b/*", "arn:aws:s3:::aXb/k")  # "." is a dot
    assert wildcard_match("S3:getobject", "s3:GetObject", ignore_case=True)  # actions ignore case


def test_the_resolver_fails_on_what_it_cannot_resolve(session_templates: Templates) -> None:
    template = session_templates.inventory
    resolver = Resolver(template, account="123456789012", region="us-west-2")
    (key_id,) = resources(template, "AWS::KMS::Key")
    with pytest.raises(TemplateError, match=f"AWS::KMS::Key {key_id}.Arn: no physical name"):
        resolver.resolve({"Fn::GetAtt": [key_id, "Arn"]})
    (logs,) = [k for k in resources(template, "AWS::Logs::LogGroup") if k.startswith("InventoryReadApiHandlerLogs")]
    opaque = Resolver(template, account="123456789012", region="us-west-2", opaque_types=OPAQUE_TYPES)
    deny = {"Statement": [{"Effect": "Deny", "Action": "logs:*", "Resource": {"Fn::GetAtt": [logs, "Arn"]}}]}
    with pytest.raises(TemplateError, match="outside an Allow statement's Resource"):
        settle(opaque.resolve(deny), "probe")
