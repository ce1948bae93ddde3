"""Device-facing security in the charts: HTTPS on the ALB, TLS on Local Zone pods, token auth
settings the server accepts, the pod hardening of every workload the app owns, and the
Bottlerocket node image."""

from __future__ import annotations

import json
from typing import Any

import pytest

from plan import contract, naming, topology, versions
from runtime.server.settings import Settings
from tests.charts import validate
from tests.charts.conftest import Rendered, render
from tests.charts.test_semantics import pod_spec
from tests.charts.test_validation import KUBERNETES_VERSION
from tests.conftest import cdk_json_context

CERTIFICATE = "arn:aws:acm:us-west-2:111111111111:certificate/0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b"
SECRET = "edge-diffusion/local-zone-tls"
SERVER_NAME = "lz.example.com"
ALB = "alb.ingress.kubernetes.io"


@pytest.fixture(scope="module")
def secured() -> Rendered:
    return render(
        {
            **cdk_json_context(),
            "tls": {"certificateArn": CERTIFICATE, "localZoneSecret": SECRET, "localZoneServerName": SERVER_NAME},
            "serving": {"ui": True},
        }
    )


def env_of(workload: dict[str, Any]) -> dict[str, str]:
    [container] = pod_spec(workload)["containers"]
    return {e["name"]: e["value"] for e in container["env"] if "value" in e}


def test_without_a_certificate_the_alb_serves_http_and_says_so(rendered: Rendered) -> None:
    [ingress] = rendered.of_kind("Ingress")
    annotations = ingress["metadata"]["annotations"]
    assert json.loads(annotations[f"{ALB}/listen-ports"]) == [{"HTTP": 80}]
    assert f"{ALB}/certificate-arn" not in annotations
    assert annotations[contract.ANNOTATION_SCHEME] == "http"
    assert ingress["metadata"]["labels"][contract.LABEL_INVENTORY] == "true"
    for service in rendered.of_kind("Service"):
        if service["metadata"]["labels"].get(contract.LABEL_INVENTORY) == "true":
            assert service["metadata"]["annotations"][contract.ANNOTATION_SCHEME] == "http"
            assert contract.ANNOTATION_TLS_SERVER_NAME not in service["metadata"]["annotations"]


def test_with_a_certificate_the_alb_listens_https_443_only_with_the_configured_policy(secured: Rendered) -> None:
    [ingress] = secured.of_kind("Ingress")
    annotations = ingress["metadata"]["annotations"]
    assert json.loads(annotations[f"{ALB}/listen-ports"]) == [{"HTTPS": 443}]  # no port 80 at all
    assert annotations[f"{ALB}/certificate-arn"] == CERTIFICATE
    assert annotations[f"{ALB}/ssl-policy"] == secured.config.tls.alb_security_policy
    assert annotations[f"{ALB}/ssl-policy"].startswith("ELBSecurityPolicy-TLS13-")
    assert annotations[contract.ANNOTATION_SCHEME] == "https"
    assert f"{ALB}/actions.stable-diffusion" not in annotations  # the weighted action keeps its name
    assert any(key.startswith(f"{ALB}/actions.weighted-serving") for key in annotations)


def test_local_zone_pods_terminate_tls_with_the_secret_and_probe_https(secured: Rendered) -> None:
    placements = topology.placements(secured.config)
    assert any(p.location.is_local_zone for p in placements)
    for placement in placements:
        workload = secured.named("Deployment", placement.name)
        env = env_of(workload)
        [container] = pod_spec(workload)["containers"]
        schemes = {container[p]["httpGet"]["scheme"] for p in ("startupProbe", "readinessProbe", "livenessProbe")}
        service = secured.named("Service", placement.name)
        annotations = service["metadata"]["annotations"]
        if placement.location.is_local_zone:
            assert env[contract.ENV_TLS_SECRET_ID] == SECRET
            assert schemes == {"HTTPS"}
            assert annotations[contract.ANNOTATION_SCHEME] == "https"
            assert annotations[contract.ANNOTATION_TLS_SERVER_NAME] == SERVER_NAME  # devices verify it, not node IPs
        else:  # behind the ALB, inside the VPC
            assert contract.ENV_TLS_SECRET_ID not in env
            assert schemes == {"HTTP"}
            assert contract.ANNOTATION_TLS_SERVER_NAME not in annotations
        Settings.from_env(env)  # the server accepts exactly this environment


def test_a_wildcard_server_name_gives_each_local_zone_service_its_zones_name() -> None:
    zones = ["us-west-2-lax-1a", "us-west-2-den-1a"]
    built = render(
        {
            **cdk_json_context(),
            "localZones": ",".join(zones),
            "tls": {"localZoneSecret": SECRET, "localZoneServerName": "*.lz.example.com"},
        }
    )
    names = {
        service["metadata"]["labels"][contract.LABEL_LOCATION]: service["metadata"]["annotations"].get(
            contract.ANNOTATION_TLS_SERVER_NAME
        )
        for service in built.of_kind("Service")
        if service["metadata"]["labels"].get(contract.LABEL_INVENTORY) == "true"
    }
    assert names == {zone: f"{zone}.lz.example.com" for zone in zones}


def test_serving_pods_carry_auth_ui_and_metrics_settings_the_server_accepts(
    rendered: Rendered, secured: Rendered
) -> None:
    for built, ui in ((rendered, "0"), (secured, "1")):
        for workload in [d for d in built.of_kind("Deployment") if d["metadata"]["name"].startswith("stable-")]:
            env = env_of(workload)
            assert env[contract.ENV_AUTH] == "token"
            assert env[contract.ENV_TOKEN_ISSUER] == naming.token_issuer(built.config)
            assert env[contract.ENV_TOKEN_AUDIENCE] == contract.TOKEN_AUDIENCE
            assert env[contract.ENV_TOKEN_KMS_KEY_ID] == naming.token_signing_key_alias(built.config)
            assert env[contract.ENV_TOKEN_KMS_KEY_ID].startswith("alias/")
            assert env[contract.ENV_UI] == ui
            assert env[contract.ENV_METRICS_SINK] == "cloudwatch"  # explicit: the server's default is none
            settings = Settings.from_env(env)
            assert settings.issuer == naming.token_issuer(built.config) and settings.ui is (ui == "1")
            # the shape a Neuron pod checks against its compiled artifact is the configured one
            serving = built.config.serving
            assert (settings.max_batch, settings.height, settings.width) == (
                serving.max_batch,
                serving.height,
                serving.width,
            )


def test_auth_none_sets_no_token_settings() -> None:
    built = render({**cdk_json_context(), "auth": {"mode": "none"}})
    for workload in [d for d in built.of_kind("Deployment") if d["metadata"]["name"].startswith("stable-")]:
        env = env_of(workload)
        assert env[contract.ENV_AUTH] == "none"
        assert not {contract.ENV_TOKEN_ISSUER, contract.ENV_TOKEN_KMS_KEY_ID} & set(env)


def owned_pod_specs(built: Rendered) -> list[tuple[str, dict[str, Any]]]:
    """Every pod the app runs from its own images: serving, compile jobs, the publisher."""
    specs = [
        (obj["metadata"]["name"], pod_spec(obj))
        for obj in [*built.of_kind("Deployment"), *built.of_kind("Job")]
        if obj["metadata"].get("namespace") == topology.NAMESPACE
    ]
    assert len(specs) == len(topology.placements(built.config)) + len(built.config.accelerators) + 1
    return specs


@pytest.mark.parametrize("which", ["default", "secured"])
def test_every_owned_pod_is_hardened(rendered: Rendered, secured: Rendered, which: str) -> None:
    built = rendered if which == "default" else secured
    uid = 10001  # ci_build/Dockerfile: USER 10001:10001 in every image
    for name, spec in owned_pod_specs(built):
        pod_ctx = spec["securityContext"]
        assert pod_ctx["runAsNonRoot"] is True and pod_ctx["runAsUser"] == uid and pod_ctx["runAsGroup"] == uid, name
        assert pod_ctx["seccompProfile"] == {"type": "RuntimeDefault"}, name
        calls_api = name == "endpoint-inventory"  # the publisher reads the API; nothing else does
        assert spec["automountServiceAccountToken"] is calls_api, name
        # Pod Identity needs no API token: its webhook adds its own projected token volume
        # (eks-pod-identity-token, EKS user guide "How EKS Pod Identity works").
        mounts_by_volume = {v["name"]: v for v in spec.get("volumes", [])}
        for container in spec["containers"]:
            ctx = container["securityContext"]
            assert ctx["readOnlyRootFilesystem"] is True, name
            assert ctx["allowPrivilegeEscalation"] is False, name
            assert ctx["capabilities"] == {"drop": ["ALL"]}, name
            writable = {m["mountPath"]: mounts_by_volume[m["name"]] for m in container.get("volumeMounts", [])}
            assert all("emptyDir" in volume for volume in writable.values()), name  # scratch only
            assert "/tmp" in writable, name
            if name != "endpoint-inventory":  # model cache, HF cache, inductor and Neuron caches
                assert "/var/tmp" in writable, name
                env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
                assert env["HOME"] == "/tmp", name  # ~/.triton, ~/.cache land in the scratch volume


def test_hardening_points_caches_into_the_scratch_volume(rendered: Rendered) -> None:
    """The image's HF_HOME and model cache sit under /tmp (ci_build/Dockerfile); the server's default
    cache directory too."""
    from pathlib import Path

    dockerfile = (Path(__file__).resolve().parents[2] / "ci_build" / "Dockerfile").read_text()
    assert "HF_HOME=/tmp/huggingface" in dockerfile
    assert "EDGE_DIFFUSION_MODEL_CACHE_DIR=/tmp/edge-diffusion-models" in dockerfile
    assert dockerfile.count("USER 10001:10001") >= 3


@pytest.fixture(scope="module")
def bottlerocket() -> Rendered:
    return render(
        {
            **cdk_json_context(),
            "nodeImage": {"family": "bottlerocket", "dataVolumeSnapshotId": "snap-0123456789abcdef0"},
        }
    )


def test_al2023_stays_the_default_node_image(rendered: Rendered) -> None:
    for node_class in rendered.of_kind("EC2NodeClass"):
        assert node_class["spec"]["amiSelectorTerms"] == [{"alias": versions.AL2023_AMI_ALIAS}]
        assert "userData" not in node_class["spec"]
        assert [b["deviceName"] for b in node_class["spec"]["blockDeviceMappings"]] == ["/dev/xvda"]
    assert {d["metadata"]["name"] for d in rendered.of_kind("DaemonSet")} == {
        "nvidia-device-plugin",
        "neuron-device-plugin",
    }


def test_bottlerocket_node_classes_restore_the_data_volume_from_the_snapshot(
    bottlerocket: Rendered, tally: Any
) -> None:
    classes = bottlerocket.of_kind("EC2NodeClass")
    assert len(classes) == 1 + len(bottlerocket.config.local_zones)
    for node_class in classes:
        spec = node_class["spec"]
        assert spec["amiSelectorTerms"] == [{"alias": versions.BOTTLEROCKET_AMI_ALIAS}]
        assert versions.BOTTLEROCKET_AMI_ALIAS.startswith("bottlerocket@v")
        assert "device-ownership-from-security-context = true" in spec["userData"]  # non-root Neuron pods
        devices = {b["deviceName"]: b for b in spec["blockDeviceMappings"]}
        assert set(devices) == {"/dev/xvda", "/dev/xvdb"}
        data = devices["/dev/xvdb"]
        assert data["rootVolume"] is True and "rootVolume" not in devices["/dev/xvda"]
        ebs = data["ebs"]
        assert ebs["snapshotID"] == "snap-0123456789abcdef0"
        assert ebs["encrypted"] is True and devices["/dev/xvda"]["ebs"]["encrypted"] is True
        assert int(ebs["volumeSize"].removesuffix("Gi")) >= 100  # room beyond the snapshot's images
        local_zone = node_class["metadata"]["name"].startswith("local-zone-")
        assert ebs["volumeType"] == ("gp2" if local_zone else "gp3")
        assert ("volumeInitializationRate" in ebs) is (not local_zone)
        errors = validate.validate_custom(node_class) + validate.evaluate_cel(node_class, tally)
        assert not errors, errors
    # Bottlerocket's NVIDIA variant runs NVIDIA's device plugin itself; Neuron's is still ours.
    assert {d["metadata"]["name"] for d in bottlerocket.of_kind("DaemonSet")} == {"neuron-device-plugin"}
    for obj in bottlerocket.all():
        if not validate.is_custom(obj[1]):
            validate.validate_core(obj[1], KUBERNETES_VERSION)


def test_bottlerocket_without_a_snapshot_sizes_the_data_volume() -> None:
    built = render({**cdk_json_context(), "nodeImage": {"family": "bottlerocket"}})
    for node_class in built.of_kind("EC2NodeClass"):
        data = next(b for b in node_class["spec"]["blockDeviceMappings"] if b["deviceName"] == "/dev/xvdb")
        assert "snapshotID" not in data["ebs"] and "volumeInitializationRate" not in data["ebs"]
        assert data["ebs"]["volumeSize"] == "200Gi"


# Directories the runtime and its libraries write to, and where each goes when its variable is unset
# (``{TMPDIR}``, ``{HOME}``: the resolved values of those two). Python's tempfile (the server's model
# cache default, TLS key files, Gradio's and TorchInductor's defaults), the Hugging Face cache,
# Triton's cache under ~/.triton (torch.compile on CUDA), the Neuron compiler's cache
# (neuronx-cc default /var/tmp/neuron-compile-cache), matplotlib's config dir.
WRITTEN_DIRECTORIES = {
    "TMPDIR": "/tmp",
    "HOME": "/home/app",  # ci_build/Dockerfile useradd --home-dir
    "XDG_CACHE_HOME": "{HOME}/.cache",
    "HF_HOME": "{XDG_CACHE_HOME}/huggingface",
    contract.ENV_MODEL_CACHE_DIR: "{TMPDIR}/edge-diffusion-models",
    "TORCHINDUCTOR_CACHE_DIR": "{TMPDIR}/torchinductor_app",
    "TRITON_CACHE_DIR": "{HOME}/.triton/cache",
    "GRADIO_TEMP_DIR": "{TMPDIR}/gradio",
    "NEURON_COMPILE_CACHE_URL": "/var/tmp/neuron-compile-cache",  # neuronx-cc default
    "MPLCONFIGDIR": "{HOME}/.config/matplotlib",
}


def image_env(stage: str = "app-base") -> dict[str, str]:
    """The ENV of a ci_build/Dockerfile stage (what a pod inherits unless its spec overrides it)."""
    from pathlib import Path

    lines = (Path(__file__).resolve().parents[2] / "ci_build" / "Dockerfile").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("FROM ") and line.endswith(f" AS {stage}"))
    env: dict[str, str] = {}
    statement = ""
    for line in lines[start + 1 :]:
        if line.startswith("FROM "):
            break
        statement += line.rstrip("\\").strip() + " "
        if line.endswith("\\"):
            continue
        if statement.startswith("ENV "):
            for token in statement.removeprefix("ENV ").split():
                name, _, value = token.partition("=")
                env[name] = value
        statement = ""
    assert env, f"no ENV in Dockerfile stage {stage}"
    return env


def written_directories(env: dict[str, str]) -> dict[str, str]:
    resolved: dict[str, str] = {}
    for name, default in WRITTEN_DIRECTORIES.items():
        resolved[name] = env.get(name) or default.format(**resolved)
    return resolved


@pytest.mark.parametrize("which", ["default", "secured"])
def test_every_directory_the_runtime_writes_is_on_a_scratch_volume(
    rendered: Rendered, secured: Rendered, which: str
) -> None:
    """With a read-only root, a cache that lands anywhere else fails at the first write, often minutes
    into a model load: every one resolves, from the image's ENV and the pod's, into an emptyDir."""
    from pathlib import PurePosixPath

    built = rendered if which == "default" else secured
    for name, spec in owned_pod_specs(built):
        if name == "endpoint-inventory":
            continue  # the publisher image writes one heartbeat file under /tmp (its own test)
        scratch = {v["name"] for v in spec["volumes"] if "emptyDir" in v and v["emptyDir"].get("medium") != "Memory"}
        [container] = spec["containers"]
        mounts = [PurePosixPath(m["mountPath"]) for m in container["volumeMounts"] if m["name"] in scratch]
        env = {**image_env(), **{e["name"]: e["value"] for e in container["env"] if "value" in e}}
        for variable, directory in written_directories(env).items():
            path = PurePosixPath(directory)
            assert any(path == m or m in path.parents for m in mounts), (name, variable, directory)
    # The check can fail: the image's own home directory is read-only.
    assert written_directories({})["TRITON_CACHE_DIR"] == "/home/app/.triton/cache"


def test_the_publisher_writes_its_heartbeat_into_its_scratch_volume(rendered: Rendered) -> None:
    from runtime.inventory.publisher import HEARTBEAT_FILE

    spec = pod_spec(rendered.named("Deployment", "endpoint-inventory"))
    [container] = spec["containers"]
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert str(HEARTBEAT_FILE.parent) in mounts


# Settings Karpenter v1.14.1 writes into a Bottlerocket node's TOML over whatever userData says
# (pkg/providers/amifamily/bootstrap/bottlerocket.go, Script): a value for one of these in userData
# would be silently replaced, so the node classes must set them through Karpenter instead.
KARPENTER_OWNED_BOTTLEROCKET_SETTINGS = {
    "cluster-name", "api-server", "cluster-certificate", "node-labels", "node-taints", "max-pods",
    "cluster-dns-ip", "system-reserved", "kube-reserved", "eviction-hard", "eviction-soft",
    "eviction-soft-grace-period", "eviction-max-pod-grace-period", "image-gc-high-threshold-percent",
    "image-gc-low-threshold-percent", "cpu-cfs-quota-enforced",
}  # fmt: skip


def test_bottlerocket_user_data_is_toml_karpenter_keeps(bottlerocket: Rendered) -> None:
    """Karpenter merges userData into the TOML it generates: only settings it does not own survive,
    with their TOML types (a string "true" would not be a boolean to Bottlerocket's API)."""
    import tomllib

    for node_class in bottlerocket.of_kind("EC2NodeClass"):
        settings = tomllib.loads(node_class["spec"]["userData"])["settings"]
        assert set(settings) == {"kubernetes"}, node_class["metadata"]["name"]
        kubernetes = settings["kubernetes"]
        assert kubernetes["device-ownership-from-security-context"] is True
        assert not set(kubernetes) & KARPENTER_OWNED_BOTTLEROCKET_SETTINGS
