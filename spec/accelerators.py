"""The accelerator table: the one place that says what an accelerator is.

Every per-accelerator object of the app (Karpenter NodePools, device plugins, serving
Deployments, KEDA ScaledObjects, Volcano compile jobs, image variants) is generated from
these rows; adding an accelerator is adding a row here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True)
class Taint:
    key: str
    effect: str = "NoSchedule"
    value: str | None = None


@dataclass(frozen=True)
class Accelerator:
    """One kind of compute the model can be served on."""

    name: str  # config and Kubernetes name: nvidia | neuron | cpu
    runtime_device: str  # what runtime/ calls it: cuda | neuron | cpu
    arch: str  # kubernetes.io/arch of its nodes
    instance_families: tuple[str, ...]  # families Karpenter may launch in the Region
    large_instance_families: tuple[str, ...]  # added only when config enables them (cost)
    device_resource: str | None  # extended resource a pod requests, None for CPU
    devices_per_pod: int
    taint: Taint | None  # accelerator nodes repel pods that do not ask for the device
    image_variant: str  # image tag suffix: <version>-<image_variant>
    chip: str  # ci_build Dockerfile stage selector (ARG ai_chip)
    default_replicas: int
    cost_weight: int  # Karpenter NodePool weight and ingress weight default: cheaper = higher
    cpu_request: str
    memory_request: str


ACCELERATORS: Final[dict[str, Accelerator]] = {
    a.name: a
    for a in (
        Accelerator(
            name="nvidia",
            runtime_device="cuda",
            arch="amd64",
            instance_families=("g5", "g6", "g6e"),
            large_instance_families=("p4d", "p5"),
            device_resource="nvidia.com/gpu",
            devices_per_pod=1,
            taint=Taint("nvidia.com/gpu"),
            image_variant="cuda",
            chip="amd64-cuda",
            default_replicas=1,
            cost_weight=50,
            cpu_request="3",
            memory_request="14Gi",
        ),
        Accelerator(
            name="neuron",
            runtime_device="neuron",
            arch="amd64",
            instance_families=("inf2", "trn1"),
            large_instance_families=(),
            device_resource="aws.amazon.com/neuron",
            devices_per_pod=1,
            taint=Taint("aws.amazon.com/neuron"),
            image_variant="neuron",
            chip="amd64-neuron",
            default_replicas=1,
            cost_weight=60,
            cpu_request="3",
            memory_request="12Gi",
        ),
        Accelerator(
            name="cpu",
            runtime_device="cpu",
            arch="arm64",
            instance_families=("c7g", "m7g", "c8g", "m8g"),
            large_instance_families=(),
            device_resource=None,
            devices_per_pod=0,
            taint=None,
            image_variant="cpu",
            chip="arm64-cpu",
            default_replicas=0,
            cost_weight=10,
            cpu_request="7",
            memory_request="14Gi",
        ),
    )
}

ACCELERATOR_NAMES: Final = tuple(ACCELERATORS)
