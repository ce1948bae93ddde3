"""The endpoint inventory as its roles: the in-cluster publisher (``python -m runtime.inventory`` with
its Kubernetes Deployment's environment, as the InventoryPublisher Pod Identity role) writing and deleting
entries and putting its metrics, then the read API's and the token route's Lambda handlers (their
functions' environment and roles from the inventory template) reading those entries and signing a
token with the KMS key."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any, cast

import boto3
import pytest
from cryptography.hazmat.primitives import serialization

import runtime.inventory.__main__ as publisher_main
from plan import contract
from runtime.inventory import api
from runtime.inventory.cluster import KubernetesApi
from runtime.inventory.gates import ImageGate
from runtime.server.auth import TokenVerifier
from tests.iam.conftest import World
from tests.iam.workloads import pod_env
from tests.runtime.inventory.kube import FakeKube, endpoint_slice, ingress, node, service

LOCAL_ZONE = "us-west-2-lax-1a"
PUBLISHER = "endpoint-inventory"
CALLER = "arn:aws:sts::123456789012:assumed-role/DeviceApp/device-1"


def cluster() -> FakeKube:
    """One Regional Service behind the ALB and one Local Zone Service with pods on two nodes."""
    fake = FakeKube(
        [
            service("sd-nvidia", "nvidia", contract.LOCATION_REGION),
            service("sd-lax", "nvidia", LOCAL_ZONE, inventory=True, scheme="http"),
        ],
        [
            node("reg-a", "us-west-2a"),
            node("lz-1", LOCAL_ZONE, "198.51.100.9"),
            node("lz-2", LOCAL_ZONE, "198.51.100.10"),
        ],
        [ingress({"sd-nvidia": 50})],
    )
    fake.apply({"type": "ADDED", "object": endpoint_slice("sd-nvidia-1", "sd-nvidia", {"r1": ("reg-a", True)})})
    fake.apply({"type": "ADDED", "object": lax_slice(second_ready=True)})
    return fake


def lax_slice(*, second_ready: bool) -> dict[str, Any]:
    return endpoint_slice("sd-lax-1", "sd-lax", {"p1": ("lz-1", True), "p2": ("lz-2", second_ready)})


ENDPOINTS_TABLE = "edge-diffusion-endpoints"


def stored(world: World) -> list[str]:
    assert ENDPOINTS_TABLE in world.tables
    items = world.aws.client("dynamodb").scan(TableName=ENDPOINTS_TABLE)["Items"]
    return sorted(item[api.ATTR_ENDPOINT_ID]["S"] for item in items)


def run_publisher(world: World, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> FakeKube:
    """``main()`` of the publisher for two cycles: all ready, then one Local Zone pod unready."""
    fake = cluster()
    token = tmp_path / "token"
    token.write_text("sa-token")
    kube = KubernetesApi("https://kube.test", token_file=token, verify=False, transport=fake.transport())
    monkeypatch.setattr(KubernetesApi, "in_cluster", classmethod(lambda cls, environ: kube))
    monkeypatch.setattr(publisher_main.signal, "signal", lambda *args: None)  # the test process keeps its own
    real_run = publisher_main.run

    def two_cycles(api: Any, publisher: Any, settings: Any, stop: threading.Event, **kwargs: Any) -> None:
        stop.set()  # one cycle per call
        real_run(api, publisher, settings, stop, tmp_path / "heartbeat", **kwargs)
        fake.apply({"type": "MODIFIED", "object": lax_slice(second_ready=False)})
        real_run(api, publisher, settings, stop, tmp_path / "heartbeat", **kwargs)

    monkeypatch.setattr(publisher_main, "run", two_cycles)
    pod = world.pod("Deployment", PUBLISHER)
    assert pod.container.command[-2:] == ("-m", contract.INVENTORY_MODULE)
    with world.aws.acting_as(world.pod_workload(pod), pod_env(pod)):
        assert publisher_main.main([]) == 0
    return fake


def test_the_publisher_writes_deletes_and_puts_metrics_then_the_read_api_serves_them(
    world: World, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    run_publisher(world, monkeypatch, tmp_path)
    assert stored(world) == [
        "edge-diffusion/edge-diffusion/sd-lax/lz-1",
        "edge-diffusion/edge-diffusion/stable-diffusion/nvidia",
    ]
    actions = {c.request.action for c in world.aws.authorized(PUBLISHER)}
    assert actions >= {"dynamodb:PutItem", "dynamodb:DeleteItem", "cloudwatch:PutMetricData"}
    assert (tmp_path / "heartbeat").exists()  # both cycles succeeded: no write failed

    function, workload = world.lambda_workload("api.handler")
    monkeypatch.setattr(api, "_table", None)  # a cold Lambda container
    bodies = []
    with world.aws.acting_as(workload, function.env):
        for params in (None, {"location": LOCAL_ZONE}, {"accelerator": "nvidia"}):
            response = api.handler({"queryStringParameters": params}, None)
            assert response["statusCode"] == 200, response
            bodies.append(json.loads(response["body"]))
    assert [len(b["endpoints"]) for b in bodies] == [2, 1, 2]
    assert bodies[0]["auth"] == "token"
    queried = {c.request.resource for c in world.aws.authorized(workload.name, "dynamodb:Query")}
    assert queried == {f"arn:aws:dynamodb:us-west-2:123456789012:table/{ENDPOINTS_TABLE}"}


def test_the_token_route_signs_with_the_key_as_its_role_and_the_token_verifies(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    function, workload = world.lambda_workload("api.token_handler")
    monkeypatch.setattr(api, "_kms", None)
    event = {"requestContext": {"identity": {"userArn": CALLER}}}
    with world.aws.acting_as(workload, function.env):
        response = api.token_handler(event, None)
    assert response["statusCode"] == 200, response
    token = json.loads(response["body"])[api.FIELD_TOKEN]
    (key_arn,) = world.keys.values()
    (signed,) = world.aws.authorized(workload.name, "kms:Sign")
    assert signed.request.resource == key_arn
    assert signed.decision.reason == "the key policy"  # OnlyTheTokenRouteSigns names this role
    der = world.aws.client("kms").get_public_key(KeyId=key_arn)["PublicKey"]
    public = serialization.load_der_public_key(der)
    env = function.env
    verifier = TokenVerifier(public, env[api.ENV_TOKEN_ISSUER], env[api.ENV_TOKEN_AUDIENCE])  # type: ignore[arg-type]
    assert verifier.verify(token)["sub"] == CALLER


class GatedPods:
    """The pods list and the gate removal of the Kubernetes API, as ``ImageGate`` uses them."""

    def __init__(self, pods: list[dict[str, Any]]) -> None:
        self.pods, self.opened = pods, list[str]()

    def list_items(self, path: str, label_selector: str | None = None) -> list[dict[str, Any]]:
        return self.pods

    def remove_scheduling_gate(self, namespace: str, name: str, index: int, gate: str) -> bool:
        self.opened.append(name)
        return True


def test_the_publisher_opens_a_serving_pods_image_gate_as_its_role(world: World) -> None:
    """The gate asks ECR for the image of a real serving Kubernetes Deployment; its role may, on that repository."""
    serving = world.pod("Deployment", "stable-diffusion-nvidia")
    image = serving.container.image
    repository = image.split("/", 1)[1].split(":", 1)[0]
    ecr = world.aws.client("ecr")
    ecr.create_repository(repositoryName=repository)
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json"}
    ecr.put_image(repositoryName=repository, imageManifest=json.dumps(manifest), imageTag=image.rsplit(":", 1)[1])
    gates = [{"name": contract.SCHEDULING_GATE_IMAGE}]
    pods = GatedPods(
        [{"metadata": {"name": "sd-1"}, "spec": {"schedulingGates": gates, "containers": [{"image": image}]}}]
    )
    pod = world.pod("Deployment", PUBLISHER)
    with world.aws.acting_as(world.pod_workload(pod), pod_env(pod)):
        gate = ImageGate(cast(KubernetesApi, pods), boto3.client("ecr", region_name="us-west-2"), serving.namespace)
        assert gate.cycle().opened == 1
    assert pods.opened == ["sd-1"]
    (call,) = world.aws.authorized(PUBLISHER, "ecr:DescribeImages")
    assert call.request.resource == f"arn:aws:ecr:us-west-2:123456789012:repository/{repository}"
