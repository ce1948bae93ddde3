"""Fixtures of the IAM tests: a moto account with the harness in place, and one deployment's
resources in it, created from the synthesized templates (the session's, or a variant's)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import boto3
import pytest

from tests.conftest import FIXTURE_DEPLOYMENTS, Synth, plan_context
from tests.iam.harness import AwsHarness, Workload
from tests.iam.templates import (
    LambdaFunction,
    Pod,
    Resolver,
    RolePolicies,
    lambda_function,
    pod,
    pod_identity_role,
    role_policies,
)

# The Lambda functions log to groups CloudFormation names at deploy time; no handler calls CloudWatch
# Logs itself (the Lambda service writes the logs), so those statements are checked by no test here.
OPAQUE_TYPES = ("AWS::Logs::LogGroup",)
# tls.localZoneSecret for the variant whose Local Zone pods terminate TLS (the session's config has none).
TLS_SECRET = "edge-diffusion/lz-tls"
TLS_SERVER_NAME = "lz.example.com"


@dataclass(frozen=True)
class Templates:
    """The templates one deployment's workloads and resources come from."""

    cluster: dict[str, Any]
    inventory: dict[str, Any]
    registry: dict[str, Any]


@pytest.fixture(scope="session")
def session_templates(synth: Synth) -> Templates:
    """The session synth's workstation deployment (dev) and the shared registry."""
    stacks = synth.stacks
    return Templates(
        cluster=synth.template_json(stacks.cluster),
        inventory=synth.template_json(stacks.inventory),
        registry=synth.template_json(stacks.registry),
    )


@pytest.fixture(scope="session")
def tls_templates(session_templates: Templates) -> Templates:
    """The dev deployment with ``tls.localZoneSecret`` set: its stacks built by composition (~7 s, once)."""
    import aws_cdk as cdk

    from composition.app import add_deployment_stacks
    from plan.deployments import load_plan

    context = {**plan_context(), "tls": {"localZoneSecret": TLS_SECRET, "localZoneServerName": TLS_SERVER_NAME}}
    app = cdk.App(context=context)
    plan = load_plan(app.node.get_all_context(), FIXTURE_DEPLOYMENTS)
    assert plan.workstation is not None
    stacks = add_deployment_stacks(app, plan.workstation)
    assembly = app.synth()

    def template(stack: Any) -> dict[str, Any]:
        return dict(assembly.get_stack_by_name(stack.stack_name).template)

    return Templates(
        cluster=template(stacks.cluster), inventory=template(stacks.inventory), registry=session_templates.registry
    )


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[AwsHarness]:
    """An empty moto account whose requests the harness authorizes (enforced inside ``acting_as``)."""
    from moto import mock_aws

    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-west-2",
        "HF_HUB_OFFLINE": "1",
    }.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)
    with mock_aws():
        harness = AwsHarness()
        harness.install(monkeypatch)
        yield harness


@dataclass
class World:
    """One deployment's resources in moto, and the workloads that call them."""

    aws: AwsHarness
    templates: Templates
    cluster: Resolver
    inventory: Resolver
    buckets: list[str]
    tables: list[str]
    keys: dict[str, str]  # inventory key logical id -> ARN
    workloads: dict[str, Workload] = field(default_factory=dict)

    @property
    def bucket(self) -> str:
        (only,) = self.buckets
        return only

    def pod(self, kind: str, name: str) -> Pod:
        return pod(self.templates.cluster, kind, name)

    def pod_role(self, found: Pod) -> RolePolicies:
        role_id = pod_identity_role(self.templates.cluster, found.namespace, found.service_account)
        return role_policies(self.templates.cluster, role_id, self.cluster)

    def pod_workload(self, found: Pod, change: Callable[[RolePolicies], RolePolicies] | None = None) -> Workload:
        """The pod's service account as a workload, with its role's documents (``change``d for a negative test)."""
        role = self.pod_role(found)
        return self.aws.add_workload(found.service_account, change(role) if change else role)

    def lambda_workload(self, handler: str) -> tuple[LambdaFunction, Workload]:
        function = lambda_function(self.templates.inventory, handler, self.inventory)
        role = role_policies(self.templates.inventory, function.role_id, self.inventory)
        return function, self.aws.add_workload(f"Lambda {function.logical_id} ({handler})", role)


def make_world(aws: AwsHarness, templates: Templates) -> World:
    """The model bucket (registry), the endpoint table and the token-signing key (inventory)."""
    registry = aws.resolver(templates.registry)
    inventory = aws.resolver(templates.inventory, opaque_types=OPAQUE_TYPES)
    buckets = aws.create_buckets(templates.registry, registry)
    tables = aws.create_tables(templates.inventory)
    keys = aws.create_keys(templates.inventory, inventory)
    aws.attach_key_policies(templates.inventory, inventory, keys)
    return World(aws, templates, aws.resolver(templates.cluster), inventory, buckets, tables, keys)


@pytest.fixture
def world(aws: AwsHarness, session_templates: Templates) -> World:
    return make_world(aws, session_templates)
