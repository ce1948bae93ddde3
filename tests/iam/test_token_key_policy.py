"""The token signing key's policy, evaluated on real calls in moto: an account administrator (an IAM
``*`` on ``*``) cannot sign, grant itself signing, rewrite the policy or move the alias the servers
read the public key by; CloudFormation's execution role can still update and delete the key; only
the token route's role signs."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Final

import pytest
from botocore.exceptions import ClientError

from stacks.pr_diff import BOOTSTRAP_QUALIFIER
from tests.iam.conftest import World
from tests.iam.harness import ACCOUNT, REGION, Workload, with_principal_arn
from tests.iam.policy import Principal, Request, decide
from tests.iam.templates import RolePolicies

ALIAS: Final = "alias/edge-diffusion-token-signing"
ADMIN: Final = "AccountAdmin"
# What `cdk bootstrap` names the role CloudFormation deploys with (DefaultStackSynthesizer).
DEPLOYER: Final = f"cdk-{BOOTSTRAP_QUALIFIER}-cfn-exec-role-{ACCOUNT}-{REGION}"
EVERYTHING: Final = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
TRUST: Final = {
    "Version": "2012-10-17",
    "Statement": [
        {"Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:root"}, "Action": "sts:AssumeRole"}
    ],
}
KEY_DENY: Final = "denied by the key policy (an explicit Deny)"


def administrator(world: World, name: str) -> Workload:
    """A role that IAM allows everything, as AdministratorAccess and the bootstrap's cfn-exec role do."""
    return world.aws.add_workload(name, RolePolicies(name, TRUST, {"AdministratorAccess": EVERYTHING}))


def token_key(world: World) -> str:
    (arn,) = world.keys.values()
    return arn


def key_id(arn: str) -> str:
    """The id in a key ARN (moto's ScheduleKeyDeletion takes only the id; KMS takes either)."""
    return arn.rsplit("/", 1)[1]


def denied(world: World, workload: Workload, call: Callable[[Any], object]) -> list[str]:
    """Run ``call(kms client)`` as ``workload``: it must get AccessDenied, and the harness must say why."""
    with (
        pytest.raises(AssertionError) as report,
        world.aws.acting_as(workload) as session,
        pytest.raises(ClientError, match="AccessDenied"),
    ):
        call(session.client("kms"))
    return str(report.value).splitlines()


def own_key(world: World) -> str:
    """A key the administrator made for itself, whose policy lets its account do anything."""
    arn = str(world.aws.client("kms").create_key(KeySpec="RSA_2048", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["Arn"])
    world.aws.key_policies[arn] = {
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:root"},
                "Action": "kms:*",
                "Resource": "*",
            }
        ]
    }
    return arn


def test_an_account_administrator_can_neither_sign_nor_give_itself_signing(world: World) -> None:
    admin, key = administrator(world, ADMIN), token_key(world)
    # A key policy that lets anyone do anything: what an attacker would put in place of the Denies.
    policy = json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Principal": "*", "Action": "kms:*", "Resource": "*"}],
        }
    )
    attempts: dict[str, Callable[[Any], object]] = {
        "kms:Sign": lambda kms: kms.sign(
            KeyId=ALIAS, Message=b"x.y", MessageType="RAW", SigningAlgorithm="RSASSA_PKCS1_V1_5_SHA_256"
        ),
        "kms:CreateGrant": lambda kms: kms.create_grant(
            KeyId=key, GranteePrincipal=admin.arn, Operations=["Sign", "GetPublicKey"]
        ),
        "kms:PutKeyPolicy": lambda kms: kms.put_key_policy(KeyId=key, PolicyName="default", Policy=policy),
        "kms:DeleteAlias": lambda kms: kms.delete_alias(AliasName=ALIAS),
    }
    for action, call in attempts.items():
        (line,) = denied(world, admin, call)
        assert line.startswith(f"{ADMIN}: {action} on {key} {KEY_DENY}"), line


def test_an_administrator_cannot_point_the_servers_alias_at_a_key_of_its_own(world: World) -> None:
    """The servers read the public key by the alias: moving it would make them trust the new key."""
    admin, key, mine = administrator(world, ADMIN), token_key(world), own_key(world)
    lines = denied(world, admin, lambda kms: kms.update_alias(AliasName=ALIAS, TargetKeyId=mine))
    assert lines == [
        f"{ADMIN}: kms:UpdateAlias on {key} {KEY_DENY} [kms:UpdateAlias]"
    ]  # the alias and its key: allowed
    assert world.aws.authorized(ADMIN, "kms:UpdateAlias", mine)


def test_the_administrator_still_reads_and_tags_the_key(world: World) -> None:
    admin, key = administrator(world, ADMIN), token_key(world)
    with world.aws.acting_as(admin) as session:
        kms = session.client("kms")
        assert kms.describe_key(KeyId=key)["KeyMetadata"]["KeyUsage"] == "SIGN_VERIFY"
        assert kms.get_public_key(KeyId=ALIAS)["PublicKey"]
        kms.tag_resource(KeyId=key, Tags=[{"TagKey": "owner", "TagValue": "platform"}])
    assert {c.request.action for c in world.aws.authorized(ADMIN)} == {
        "kms:DescribeKey",
        "kms:GetPublicKey",
        "kms:TagResource",
    }


@pytest.mark.parametrize("action", ["schedule_key_deletion", "disable_key"])
def test_an_administrator_cannot_delete_or_disable_the_key(world: World, action: str) -> None:
    """Deleted, its alias name would be free for a key of the administrator's own (pods trust the alias);
    disabled, token issuance stops. Only CloudFormation's role does either (a destroy)."""
    admin, key = administrator(world, ADMIN), token_key(world)
    args = {"KeyId": key_id(key), **({"PendingWindowInDays": 7} if action == "schedule_key_deletion" else {})}
    (line,) = denied(world, admin, lambda kms: getattr(kms, action)(**args))
    assert KEY_DENY in line


def test_cloudformation_s_role_updates_the_policy_and_deletes_the_key_but_cannot_sign(world: World) -> None:
    deployer, key = administrator(world, DEPLOYER), token_key(world)
    policy = json.dumps(world.aws.key_policies[key])
    with world.aws.acting_as(deployer) as session:  # a stack update, then `make destroy`
        kms = session.client("kms")
        kms.put_key_policy(KeyId=key, PolicyName="default", Policy=policy)
        kms.delete_alias(AliasName=ALIAS)
        kms.schedule_key_deletion(KeyId=key_id(key), PendingWindowInDays=7)
    assert len(world.aws.authorized(DEPLOYER, resource=key)) == 3
    world.aws.client("kms").create_alias(AliasName=ALIAS, TargetKeyId=key)
    world.aws.client("kms").cancel_key_deletion(KeyId=key_id(key))
    world.aws.client("kms").enable_key(KeyId=key_id(key))
    (line,) = denied(
        world,
        deployer,
        lambda kms: kms.sign(KeyId=key, Message=b"x", MessageType="RAW", SigningAlgorithm="RSASSA_PKCS1_V1_5_SHA_256"),
    )
    assert line.startswith(f"{DEPLOYER}: kms:Sign on {key} {KEY_DENY}")
    (line,) = denied(
        world, deployer, lambda kms: kms.create_grant(KeyId=key, GranteePrincipal=deployer.arn, Operations=["Sign"])
    )
    assert line.startswith(f"{DEPLOYER}: kms:CreateGrant on {key} {KEY_DENY}")


def test_the_token_route_s_role_signs_but_grants_nothing(world: World) -> None:
    function, workload = world.lambda_workload("api.token_handler")
    key = token_key(world)
    with world.aws.acting_as(workload) as session:
        signed = session.client("kms").sign(
            KeyId=function.env["EDGE_DIFFUSION_TOKEN_KEY_ID"],
            Message=b"x.y",
            MessageType="RAW",
            SigningAlgorithm="RSASSA_PKCS1_V1_5_SHA_256",
        )
        assert signed["Signature"]
    (line,) = denied(
        world, workload, lambda kms: kms.create_grant(KeyId=key, GranteePrincipal=workload.arn, Operations=["Sign"])
    )
    assert line.startswith(f"{workload.name}: kms:CreateGrant on {key} {KEY_DENY}")


@pytest.mark.parametrize(
    ("action", "allowed"),
    [("kms:Sign", False), ("kms:CreateGrant", False), ("kms:PutKeyPolicy", False), ("kms:DescribeKey", True)],
)
def test_the_account_root_user_is_held_by_the_same_denies(world: World, action: str, allowed: bool) -> None:
    """The root user's permissions are the account's: only the key policy's Denies hold it."""
    key = token_key(world)
    root = f"arn:aws:iam::{ACCOUNT}:root"
    request = with_principal_arn(Request(action, action, key, {}, frozenset()), root)
    decision = decide(request, Principal(root, ACCOUNT), [EVERYTHING], world.aws.key_policies[key], key_policy=True)
    assert decision.allowed is allowed, decision.reason
