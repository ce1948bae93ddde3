"""The pod pieces every workload of the app shares: scheduling on an accelerator's nodes,
resources including the device, and the restricted security context.

Serving Kubernetes Deployments and compile jobs run the same image on the same nodes, so they make
their pod specs from these functions instead of repeating them per accelerator.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from cdk8s_plus_35 import k8s

from plan import contract, topology
from plan.accelerators import Accelerator
from plan.config import AppConfig

# The app user of ci_build/Dockerfile (`USER 10001:10001` in every image: numeric, and above the
# host's system range, so runAsNonRoot can verify it and it maps to no user of the node).
APP_UID: Final = 10001
# The image keeps HF_HOME and the model cache under /tmp (ci_build/Dockerfile): with a
# read-only root filesystem, /tmp is the one writable place and must hold a model download.
SCRATCH_MOUNT: Final = "/tmp"  # noqa: S108 - an emptyDir volume, not the node's /tmp
# The Neuron compiler keeps its cache and work files under /var/tmp (neuronx-cc's default
# /var/tmp/neuron-compile-cache): the same scratch volume, under its own sub-directory.
VAR_TMP_MOUNT: Final = "/var/tmp"  # noqa: S108 - a sub-directory of the scratch emptyDir
# Caches that default to the home directory (Triton's ~/.triton for torch.compile on CUDA,
# ~/.cache of pip-installed libraries) land in the scratch volume: /home/app is read-only.
SCRATCH_ENV: Final = {"HOME": SCRATCH_MOUNT, "XDG_CACHE_HOME": f"{SCRATCH_MOUNT}/.cache"}
INSTANCE_SIZE_LABEL: Final = "karpenter.k8s.aws/instance-size"  # well-known Karpenter node label


@dataclass(frozen=True)
class PodResources:
    """What a pod asks for besides the accelerator row's CPU and memory."""

    scratch_size: str = "40Gi"  # model artifacts (SD 2.1 ~5 GB; Neuron graphs more) and HF cache
    shm_size: str = "2Gi"  # torch shared memory; the container runtime default is 64 MiB


def tolerations(accelerator: Accelerator) -> list[k8s.Toleration]:
    """Tolerate exactly the accelerator's node taint (none for CPU nodes)."""
    taint = accelerator.taint
    if taint is None:
        return []
    return [k8s.Toleration(key=taint.key, operator="Exists", effect=taint.effect)]


def resources(
    accelerator: Accelerator, props: PodResources, *, cpu: str | None = None, memory: str | None = None
) -> k8s.ResourceRequirements:
    """Requests from the accelerator row (serving), or ``cpu``/``memory`` (compile jobs); limits
    on memory and the device (no CPU limit: throttling a model server only adds latency, and
    the node is dedicated anyway)."""
    memory = memory or accelerator.memory_request
    requests = {
        "cpu": k8s.Quantity.from_string(cpu or accelerator.cpu_request),
        "memory": k8s.Quantity.from_string(memory),
        "ephemeral-storage": k8s.Quantity.from_string(props.scratch_size),
    }
    limits = {"memory": k8s.Quantity.from_string(memory)}
    if accelerator.device_resource:
        devices = k8s.Quantity.from_number(accelerator.devices_per_pod)
        requests[accelerator.device_resource] = devices
        limits[accelerator.device_resource] = devices
    return k8s.ResourceRequirements(requests=requests, limits=limits)


def instance_size_affinity(sizes: tuple[str, ...], family: str = "") -> k8s.Affinity:
    """Require nodes of these ``karpenter.k8s.aws/instance-size`` values, and of one instance family when
    given (Karpenter launches one)."""
    requirements = [k8s.NodeSelectorRequirement(key=INSTANCE_SIZE_LABEL, operator="In", values=list(sizes))]
    if family:
        requirements.append(
            k8s.NodeSelectorRequirement(key=topology.INSTANCE_FAMILY_LABEL, operator="In", values=[family])
        )
    return k8s.Affinity(
        node_affinity=k8s.NodeAffinity(
            required_during_scheduling_ignored_during_execution=k8s.NodeSelector(
                node_selector_terms=[k8s.NodeSelectorTerm(match_expressions=requirements)]
            )
        )
    )


def preferred_family_affinity(family: str) -> k8s.Affinity:
    """Prefer nodes of one instance family. Karpenter launches such a node while the NodePool allows it
    and EC2 has one, and relaxes the preference otherwise (a preference never leaves a pod pending)."""
    requirement = k8s.NodeSelectorRequirement(key=topology.INSTANCE_FAMILY_LABEL, operator="In", values=[family])
    return k8s.Affinity(
        node_affinity=k8s.NodeAffinity(
            preferred_during_scheduling_ignored_during_execution=[
                k8s.PreferredSchedulingTerm(
                    weight=100, preference=k8s.NodeSelectorTerm(match_expressions=[requirement])
                )
            ]
        )
    )


def compiled_kernel_family(config: AppConfig, accelerator: Accelerator) -> str:
    """The instance family whose GPU the compile job builds this accelerator's TorchInductor kernels on, or
    "" when its pods do not torch.compile (serving.torchCompile off, or not a CUDA accelerator)."""
    return accelerator.compile.kernel_family if config.serving.torch_compile else ""


def decodes_with_tiny_vae(config: AppConfig, accelerator: Accelerator) -> bool:
    """serving.vae tiny, on an accelerator whose pods can swap their VAE (a Neuron artifact holds its compiled one)."""
    return config.serving.vae == "tiny" and accelerator.device != "neuron"


def cpu_request_env() -> k8s.EnvVar:
    """contract.ENV_CPU_REQUEST from the container's own CPU request, in whole CPUs rounded up (downward API)."""
    return k8s.EnvVar(
        name=contract.ENV_CPU_REQUEST,
        value_from=k8s.EnvVarSource(
            resource_field_ref=k8s.ResourceFieldSelector(resource="requests.cpu", divisor=k8s.Quantity.from_string("1"))
        ),
    )


def pod_security_context() -> k8s.PodSecurityContext:
    return k8s.PodSecurityContext(
        run_as_non_root=True,
        run_as_user=APP_UID,
        run_as_group=APP_UID,
        fs_group=APP_UID,
        seccomp_profile=k8s.SeccompProfile(type="RuntimeDefault"),
    )


def container_security_context() -> k8s.SecurityContext:
    return k8s.SecurityContext(
        allow_privilege_escalation=False,
        read_only_root_filesystem=True,
        run_as_non_root=True,
        capabilities=k8s.Capabilities(drop=["ALL"]),
    )


def scratch_volumes(props: PodResources) -> tuple[list[k8s.Volume], list[k8s.VolumeMount]]:
    """Writable scratch (/tmp, /var/tmp) and shared memory for an otherwise read-only container."""
    volumes = [
        k8s.Volume(
            name="scratch", empty_dir=k8s.EmptyDirVolumeSource(size_limit=k8s.Quantity.from_string(props.scratch_size))
        ),
        k8s.Volume(
            name="shm",
            empty_dir=k8s.EmptyDirVolumeSource(medium="Memory", size_limit=k8s.Quantity.from_string(props.shm_size)),
        ),
    ]
    mounts = [
        k8s.VolumeMount(name="scratch", mount_path=SCRATCH_MOUNT),
        k8s.VolumeMount(name="scratch", mount_path=VAR_TMP_MOUNT, sub_path="var-tmp"),
        k8s.VolumeMount(name="shm", mount_path="/dev/shm"),  # noqa: S108 - a memory-backed emptyDir
    ]
    return volumes, mounts


def model_env(config: AppConfig, accelerator: Accelerator) -> dict[str, str]:
    """Environment every workload of the app shares: model, device, Region and scratch caches."""
    return {
        contract.ENV_MODEL_ID: config.model_id,
        contract.ENV_MODEL_REVISION: config.model_revision,
        contract.ENV_DEVICE: accelerator.device,
        contract.ENV_AWS_REGION: config.region,  # IMDS is not reachable from pods (hop limit 1)
        **SCRATCH_ENV,
    }


def env_vars(values: Mapping[str, str]) -> list[k8s.EnvVar]:
    return [k8s.EnvVar(name=name, value=value) for name, value in values.items()]
