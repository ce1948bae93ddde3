"""A serving pod's AWS calls at startup and while serving, as its placement's Pod Identity role: the
model download from where the compile job published (when ``EDGE_DIFFUSION_MODEL_SOURCE`` points
there; the charts bake the model into the image instead), the token key's public half by the alias
the chart passes, the TLS secret of a Local Zone placement, and the CloudWatch metrics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from plan import contract
from runtime.server.auth import verifier_from_settings
from runtime.server.model_source import resolve_model
from runtime.server.service import ImageService
from runtime.server.settings import Settings
from runtime.server.tls import context_from_settings
from tests.iam.conftest import TLS_SERVER_NAME, Templates, World, make_world
from tests.iam.harness import AwsHarness
from tests.iam.templates import pods
from tests.iam.workloads import FIRST_ARTIFACT, pod_env, publish_as_compiler
from tests.tls_ca import Ca

REGIONAL = "stable-diffusion-nvidia"
LOCAL_ZONE = "stable-diffusion-nvidia-us-west-2-lax-1a"


def serve(world: World, workload: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> ImageService:
    """What a serving pod does with AWS: TLS (if configured), token key, model, one metrics interval."""
    pod = world.pod("Deployment", workload)
    device = pod.container.env[contract.ENV_DEVICE]
    source = publish_as_compiler(world, monkeypatch, device)
    env = pod_env(pod, **{contract.ENV_MODEL_SOURCE: source, contract.ENV_MODEL_CACHE_DIR: str(tmp_path / "models")})
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
    assert location.path is not None and (
        location.path / "unet/diffusion_pytorch_model.safetensors"
    ).stat().st_size == len(FIRST_ARTIFACT["unet/diffusion_pytorch_model.safetensors"])
    assert (tls is not None) == (contract.ENV_TLS_SECRET_ID in env)
    assert verifier is not None
    public = world.aws.client("kms").get_public_key(KeyId=env[contract.ENV_TOKEN_KMS_KEY_ID])["PublicKey"]
    assert (
        verifier.public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        == public
    )
    return service


def test_a_regional_serving_pod_downloads_reads_the_token_key_and_publishes_metrics_as_its_role(
    world: World, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    serve(world, REGIONAL, monkeypatch, tmp_path)
    calls = world.aws.authorized(REGIONAL)
    assert {(c.request.operation, c.request.action) for c in calls} >= {
        ("s3:GetObject", "s3:GetObject"),  # the manifest, then ranged GETs of the large file
        ("s3:HeadObject", "s3:GetObject"),
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
    assert {c.request.action for c in tls_world.aws.authorized(LOCAL_ZONE)} >= {
        "s3:GetObject",
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
