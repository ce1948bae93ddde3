"""A serving pod's AWS calls at startup and while serving, as its placement's Pod Identity role: the
token key's public half by the alias the chart passes, the TLS secret of a Local Zone placement, and
the CloudWatch metrics. The model is the one baked into the image (the charts set no
``EDGE_DIFFUSION_MODEL_SOURCE``; the image's points at its model layer), so the role may not read the
model bucket at all: a server pointed at an ``s3://`` source is denied (a workstation uses its own
credentials for that)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from botocore.exceptions import ClientError
from cryptography.hazmat.primitives import serialization

from plan import contract
from plan.model_artifacts import MANIFEST_NAME
from runtime.artifacts.store import fetch_verified
from runtime.server.auth import verifier_from_settings
from runtime.server.model_source import ModelSourceError, resolve_model
from runtime.server.service import ImageService
from runtime.server.settings import Settings
from runtime.server.tls import context_from_settings
from tests.iam.conftest import TLS_SERVER_NAME, Templates, World, make_world
from tests.iam.harness import AwsHarness
from tests.iam.templates import pods
from tests.iam.workloads import FIRST_ARTIFACT, LARGE, pod_env, publish_as_compiler
from tests.tls_ca import Ca

REGIONAL = "stable-diffusion-nvidia"
LOCAL_ZONE = "stable-diffusion-nvidia-us-west-2-lax-1a"


def serve(world: World, workload: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> ImageService:
    """What a serving pod does with AWS: TLS (if configured), token key, its baked model, one metrics interval."""
    pod = world.pod("Deployment", workload)
    assert contract.ENV_MODEL_SOURCE not in pod.container.env  # the image's own: its model layer
    device = pod.container.env[contract.ENV_DEVICE]
    baked = tmp_path / "model"
    fetch_verified(publish_as_compiler(world, monkeypatch, device), baked)  # as the image build bakes it
    env = pod_env(pod, **{contract.ENV_MODEL_SOURCE: str(baked)})
    with world.aws.acting_as(world.pod_workload(pod), env):
        settings = Settings.from_args([])
        tls = context_from_settings(settings)
        verifier = verifier_from_settings(settings)
        service = ImageService(settings)  # builds the metrics sink the pod publishes with
        location = resolve_model(settings, service.backend.device)
        service.cloudwatch.record_request(120.0, 1)
        service.cloudwatch.record_answer(200)
        service.cloudwatch.flush()
    assert (service.cloudwatch.published, service.cloudwatch.failures) == (1, 0)
    assert location.path == baked and location.manifest is not None  # verified against its manifest
    assert (baked / LARGE).stat().st_size == len(FIRST_ARTIFACT[LARGE])
    assert (tls is not None) == (contract.ENV_TLS_SECRET_ID in env)
    assert verifier is not None
    public = world.aws.client("kms").get_public_key(KeyId=env[contract.ENV_TOKEN_KMS_KEY_ID])["PublicKey"]
    assert (
        verifier.public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        == public
    )
    return service


def test_a_regional_serving_pod_loads_its_baked_model_reads_the_token_key_and_publishes_metrics_as_its_role(
    world: World, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    serve(world, REGIONAL, monkeypatch, tmp_path)
    calls = world.aws.authorized(REGIONAL)
    assert {(c.request.operation, c.request.action) for c in calls} == {
        ("kms:GetPublicKey", "kms:GetPublicKey"),
        ("cloudwatch:PutMetricData", "cloudwatch:PutMetricData"),
    }
    (key,) = [c.request for c in calls if c.request.action == "kms:GetPublicKey"]
    assert key.context["kms:requestalias"] == ("alias/edge-diffusion-token-signing",)
    assert key.resource in world.keys.values()
    (metrics,) = [c.request for c in calls if c.request.action == "cloudwatch:PutMetricData"]
    assert metrics.context["cloudwatch:namespace"] == (contract.METRIC_NAMESPACE,)


@pytest.fixture
def tls_world(aws: AwsHarness, tls_templates: Templates) -> World:
    return make_world(aws, tls_templates)


def test_a_local_zone_serving_pod_reads_its_tls_secret_as_its_role(
    tls_world: World, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """``tls.localZoneSecret`` set (a variant synth): the Local Zone pod fetches the secret at startup."""
    pod = tls_world.pod("Deployment", LOCAL_ZONE)
    secret = pod.container.env[contract.ENV_TLS_SECRET_ID]
    chain, key = Ca.make("edge-diffusion-test-ca").issue(names=[TLS_SERVER_NAME])
    value = {contract.TLS_SECRET_CERTIFICATE_FIELD: chain.decode(), contract.TLS_SECRET_PRIVATE_KEY_FIELD: key.decode()}
    arn = tls_world.aws.client("secretsmanager").create_secret(Name=secret, SecretString=json.dumps(value))["ARN"]
    serve(tls_world, LOCAL_ZONE, monkeypatch, tmp_path)
    (read,) = [c.request for c in tls_world.aws.authorized(LOCAL_ZONE, "secretsmanager:GetSecretValue")]
    assert read.resource == arn  # the name plus six random characters matched the role's "-??????"
    assert {c.request.action for c in tls_world.aws.authorized(LOCAL_ZONE)} == {
        "secretsmanager:GetSecretValue",
        "kms:GetPublicKey",
        "cloudwatch:PutMetricData",
    }


def test_every_serving_placement_reads_the_token_key_and_publishes_metrics_as_its_role(world: World) -> None:
    """Each serving Kubernetes Deployment of the cluster template (every accelerator and location) with its own role."""
    workloads = [p for p in pods(world.templates.cluster, "Deployment") if contract.ENV_DEVICE in p.container.env]
    assert {p.name for p in workloads} >= {REGIONAL, LOCAL_ZONE}
    for pod in workloads:
        with world.aws.acting_as(world.pod_workload(pod), pod_env(pod)):
            settings = Settings.from_args([])
            assert verifier_from_settings(settings) is not None
            service = ImageService(settings)
            service.cloudwatch.record_answer(200)
            service.cloudwatch.flush()
        assert (service.cloudwatch.published, service.cloudwatch.failures) == (1, 0), pod.name
        actions = {c.request.action for c in world.aws.authorized(pod.service_account)}
        assert actions == {"kms:GetPublicKey", "cloudwatch:PutMetricData"}, pod.name


def test_a_serving_pod_is_denied_the_model_bucket(
    world: World, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Neither the download a server does for an ``s3://`` model source nor a plain GetObject of a
    compiled manifest is allowed to a serving role: what its pods run is in their image."""
    pod = world.pod("Deployment", REGIONAL)
    source = publish_as_compiler(world, monkeypatch, pod.container.env[contract.ENV_DEVICE])
    bucket, _, prefix = source.removeprefix("s3://").partition("/")
    env = pod_env(pod, **{contract.ENV_MODEL_SOURCE: source, contract.ENV_MODEL_CACHE_DIR: str(tmp_path / "cache")})
    outcomes: list[str] = []
    with pytest.raises(AssertionError) as denied, world.aws.acting_as(world.pod_workload(pod), env) as session:
        try:
            resolve_model(Settings.from_args([]), pod.container.env[contract.ENV_DEVICE])
            outcomes.append("loaded")
        except (ModelSourceError, ClientError):
            outcomes.append("refused")
        try:
            session.client("s3").get_object(Bucket=bucket, Key=f"{prefix}{MANIFEST_NAME}")
            outcomes.append("read")
        except ClientError as exc:
            outcomes.append(exc.response["Error"]["Code"])
    assert outcomes == ["refused", "AccessDenied"]
    assert str(denied.value).splitlines() == [
        f"{REGIONAL}: s3:ListBucket on arn:aws:s3:::{bucket} denied by its role's policies (no statement allows it) "
        "[s3:ListObjectsV2]",
        f"{REGIONAL}: s3:GetObject on arn:aws:s3:::{bucket}/{prefix}{MANIFEST_NAME} denied by its role's policies "
        "(no statement allows it) [s3:GetObject]",
    ]
