"""The accelerator table: the one place that says what an accelerator is.

Every per-accelerator object of the app (Karpenter NodePools, device plugins, serving
Kubernetes Deployments, KEDA ScaledObjects, Volcano compile jobs, image variants) is generated from
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
class CompileResources:
    """What a compile job of the accelerator requests, and the node sizes it may run on.

    A compile is not a serving pod: Neuron's compiler needs far more host memory than serving,
    so the compile pod requests its own resources and selects nodes (``instance_sizes``, the
    ``karpenter.k8s.aws/instance-size`` values) that can hold them.
    """

    cpu_request: str
    memory_request: str
    instance_sizes: tuple[str, ...]
    # Host memory of the smallest instance the vendor documents for this compile (0: none); every
    # allowed compile size must have it, and the pod may use most of it (tests/charts/test_capacity.py).
    documented_min_memory_gib: int = 0
    # Where a compile job builds kernels for the serving pods (serving.torchCompile): the instance family
    # whose GPU they are built for. A TorchInductor cache holds one GPU's kernels; serving pods prefer
    # this family's nodes, and a pod on another GPU ignores the cache (one log line) and compiles itself.
    kernel_family: str = ""


@dataclass(frozen=True)
class Accelerator:
    """One kind of compute the model can be served on."""

    name: str  # config and Kubernetes name: nvidia | neuron | cpu
    device: str  # what torch runs on (plan.contract.DEVICES): cuda | neuron | cpu
    arch: str  # kubernetes.io/arch of its nodes
    instance_families: tuple[str, ...]  # families Karpenter may launch in the Region
    large_instance_families: tuple[str, ...]  # added only when config enables them (cost)
    device_resource: str | None  # extended resource a pod requests, None for CPU
    devices_per_pod: int
    taint: Taint | None  # accelerator nodes repel pods that do not ask for the device
    default_replicas: int
    cost_weight: int  # Karpenter NodePool weight and ingress weight default: cheaper = higher
    cpu_request: str
    memory_request: str
    # karpenter.k8s.aws/instance-size values of serving nodes (smallest first); the serving pod
    # above must fit the smallest of them with the node's DaemonSets (tests/charts/test_capacity.py).
    serving_instance_sizes: tuple[str, ...]
    compile: CompileResources
    # Container Insights (enhanced observability) metric of its pods' device utilization, percent:
    # what the dashboard graphs and the `utilization` scaling signal reads. CPU pods have no
    # accelerator: their CPU utilization is what saturates.
    utilization_metric: str


ACCELERATORS: Final[dict[str, Accelerator]] = {
    a.name: a
    for a in (
        Accelerator(
            name="nvidia",
            device="cuda",
            arch="amd64",
            instance_families=("g5", "g6", "g6e"),
            large_instance_families=("p4d", "p5"),
            device_resource="nvidia.com/gpu",
            devices_per_pod=1,
            taint=Taint("nvidia.com/gpu"),
            default_replicas=1,
            cost_weight=50,
            # One pod per g5/g6.xlarge (4 vCPU, 16 GiB, 58 max pods; plan.capacity):
            # allocatable 16384 - ceil(7.5 %) = 15155 - kube-reserved (11 * 58 + 255 = 893) - eviction
            # 100 = 14162 MiB; DaemonSets: nvidia-device-plugin 64 + cloudwatch-agent 128 + fluent-bit 25
            # + dcgm-exporter 128 + pod identity agent 64 (assumed) = 409 MiB -> 13753 MiB free >= 13Gi
            # (13312 MiB, 441 MiB spare). The old 14Gi (14336 MiB) exceeded 14162 and bought a 2xlarge.
            # CPU: 4000 - 80 kube-reserved = 3920m; DaemonSets 10 + 50 (aws-node) + 100 (kube-proxy) + 25
            # + 250 + 50 + 250 = 735m -> 3185m free >= 3.
            cpu_request="3",
            memory_request="13Gi",
            serving_instance_sizes=(
                "xlarge",
                "2xlarge",
                "4xlarge",
                "8xlarge",
                "12xlarge",
                "16xlarge",
                "24xlarge",
                "48xlarge",
            ),
            # torch.compile warm-up of the inductor cache: serving's 13Gi plus headroom for the
            # compile workers, on a 2xlarge (8 vCPU, 32 GiB: 30310 - 893 - 100 = 29317 MiB, 7910m;
            # minus 409 MiB / 735m of DaemonSets = 28908 MiB, 7175m).
            # g6 (NVIDIA L4): the lowest On-Demand price per GPU of the nvidia families, so the one
            # Karpenter's lowest-price choice lands serving pods on when it has capacity.
            compile=CompileResources(
                cpu_request="6",
                memory_request="24Gi",
                instance_sizes=("2xlarge", "4xlarge", "8xlarge"),
                kernel_family="g6",
            ),
            utilization_metric="pod_gpu_utilization",
        ),
        Accelerator(
            name="neuron",
            device="neuron",
            arch="amd64",
            instance_families=("inf2", "trn1"),
            large_instance_families=(),
            device_resource="aws.amazon.com/neuron",
            devices_per_pod=1,
            taint=Taint("aws.amazon.com/neuron"),
            default_replicas=1,
            cost_weight=60,
            # inf2.xlarge: 14162 MiB and 3920m allocatable (as g5.xlarge); DaemonSets 409 MiB / 741m
            # (neuron-monitor 256m instead of dcgm-exporter) -> 13753 MiB, 3179m free.
            cpu_request="3",
            memory_request="12Gi",
            serving_instance_sizes=("xlarge", "2xlarge", "8xlarge", "24xlarge", "32xlarge", "48xlarge"),
            # The optimum-neuron Stable Diffusion tutorial recommends an inf2.8xlarge or larger to
            # compile SD (https://huggingface.co/docs/optimum-neuron/tutorials/stable_diffusion);
            # inf2.8xlarge has 32 vCPU and 128 GiB. Allocatable: 131072 - 9831 = 121241 - kube-reserved
            # (11 * 234 + 255 = 2829) - 100 = 118312 MiB, 32000 - 150 = 31850m; minus the DaemonSets
            # (409 MiB, 741m) = 117903 MiB, 31109m -> 100Gi (102400 MiB) and 28 CPUs fit.
            compile=CompileResources(
                cpu_request="28",
                memory_request="100Gi",
                instance_sizes=("8xlarge", "24xlarge", "48xlarge"),
                documented_min_memory_gib=128,
            ),
            utilization_metric="pod_neuroncore_utilization",
        ),
        Accelerator(
            name="cpu",
            device="cpu",
            arch="arm64",
            instance_families=("c7g", "m7g", "c8g", "m8g"),
            large_instance_families=(),
            device_resource=None,
            devices_per_pod=0,
            taint=None,
            default_replicas=0,
            cost_weight=10,
            # c7g/c8g.4xlarge (16 vCPU, 32 GiB, 234 pods): 30310 - 2829 - 100 = 27381 MiB, 15890m;
            # DaemonSets 217 MiB / 475m -> 27164 MiB, 15415m free (a 2xlarge's 13990 MiB would not hold 14Gi).
            cpu_request="7",
            memory_request="14Gi",
            serving_instance_sizes=("4xlarge", "8xlarge", "12xlarge", "16xlarge"),
            # Nothing to compile for CPU beyond fetching and saving the pipeline: modest.
            compile=CompileResources(cpu_request="4", memory_request="12Gi", instance_sizes=("4xlarge", "8xlarge")),
            utilization_metric="pod_cpu_utilization",
        ),
    )
}

ACCELERATOR_NAMES: Final = tuple(ACCELERATORS)


def instance_families(names: tuple[str, ...] | list[str], *, large: bool) -> tuple[str, ...]:
    """Instance families the named accelerators may launch (large ones only when enabled), in table order.

    Unknown names are skipped: config reports them on their own.
    """
    rows = [ACCELERATORS[name] for name in names if name in ACCELERATORS]
    return tuple(f for a in rows for f in (*a.instance_families, *(a.large_instance_families if large else ())))
