"""What of an EC2 instance a pod can request on an EKS AL2023 node launched by Karpenter.

One calculation (VM overhead, kube-reserved memory and CPU, hard eviction, ENI-limited max pods) that
tests/charts/test_capacity.py checks every serving and compile pod against, because a request a
little above a size's allocatable silently buys the next size. The formulas, their sources and a
worked example: docs/adr/0010-pod-requests-checked-against-a-node-capacity-calculation.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

KARPENTER_VM_MEMORY_OVERHEAD: Final = 0.075  # Karpenter's default vmMemoryOverheadPercent
EVICTION_HARD_MIB: Final = 100  # kubelet evictionHard memory.available on EKS AMIs


def max_pods(enis: int, ipv4_per_eni: int) -> int:
    """ENI-limited max pods: the first IP of each ENI is the ENI's own, +2 host-network pods."""
    return enis * (ipv4_per_eni - 1) + 2


def kube_reserved_memory_mib(pods: int) -> int:
    """11 MiB per pod + 255 MiB (the EKS AMI / Karpenter formula)."""
    return 11 * pods + 255


def kube_reserved_cpu_millis(vcpus: int) -> int:
    """6 % of the first core, 1 % of the second, 0.5 % of cores 3-4, 0.25 % of the rest."""
    millis = 0.0
    for core in range(1, vcpus + 1):
        millis += 1000 * (0.06 if core == 1 else 0.01 if core == 2 else 0.005 if core <= 4 else 0.0025)
    return math.ceil(millis)


def allocatable_memory_mib(
    instance_memory_mib: int, max_pods: int, vm_overhead: float = KARPENTER_VM_MEMORY_OVERHEAD
) -> int:
    """Node allocatable memory as Karpenter computes it when it picks an instance type."""
    capacity = instance_memory_mib - math.ceil(instance_memory_mib * vm_overhead)
    return capacity - kube_reserved_memory_mib(max_pods) - EVICTION_HARD_MIB


def allocatable_cpu_millis(vcpus: int) -> int:
    return vcpus * 1000 - kube_reserved_cpu_millis(vcpus)


@dataclass(frozen=True)
class InstanceType:
    vcpus: int
    memory_mib: int
    max_pods: int  # eni-max-pods.txt

    def allocatable(self) -> tuple[int, int]:
        """(CPU millicores, memory MiB) a node of this type offers pods."""
        return allocatable_cpu_millis(self.vcpus), allocatable_memory_mib(self.memory_mib, self.max_pods)


# vCPUs and memory from the EC2 instance type pages; max pods from eni-max-pods.txt. Every
# size our NodePools may launch up to the smallest compile size of each family is listed, so
# the capacity test can find the smallest instance a pool or a compile pod allows.
INSTANCE_TYPES: Final[dict[str, InstanceType]] = {
    "g5.xlarge": InstanceType(4, 16 * 1024, 58),
    "g5.2xlarge": InstanceType(8, 32 * 1024, 58),
    "g5.4xlarge": InstanceType(16, 64 * 1024, 234),
    "g5.8xlarge": InstanceType(32, 128 * 1024, 234),
    "g6.xlarge": InstanceType(4, 16 * 1024, 58),
    "g6.2xlarge": InstanceType(8, 32 * 1024, 58),
    "g6.4xlarge": InstanceType(16, 64 * 1024, 234),
    "g6.8xlarge": InstanceType(32, 128 * 1024, 234),
    "g6e.xlarge": InstanceType(4, 32 * 1024, 58),
    "g6e.2xlarge": InstanceType(8, 64 * 1024, 58),
    "g6e.4xlarge": InstanceType(16, 128 * 1024, 234),
    "g6e.8xlarge": InstanceType(32, 256 * 1024, 234),
    "p4d.24xlarge": InstanceType(96, 1152 * 1024, 737),
    "p5.4xlarge": InstanceType(16, 256 * 1024, 118),
    "p5.48xlarge": InstanceType(192, 2048 * 1024, 100),
    "inf2.xlarge": InstanceType(4, 16 * 1024, 58),
    "inf2.8xlarge": InstanceType(32, 128 * 1024, 234),
    "inf2.24xlarge": InstanceType(96, 384 * 1024, 737),
    "inf2.48xlarge": InstanceType(192, 768 * 1024, 737),
    "trn1.2xlarge": InstanceType(8, 32 * 1024, 58),
    "trn1.32xlarge": InstanceType(128, 512 * 1024, 247),
    "c7g.4xlarge": InstanceType(16, 32 * 1024, 234),
    "c7g.8xlarge": InstanceType(32, 64 * 1024, 234),
    "m7g.4xlarge": InstanceType(16, 64 * 1024, 234),
    "m7g.8xlarge": InstanceType(32, 128 * 1024, 234),
    "c8g.4xlarge": InstanceType(16, 32 * 1024, 234),
    "c8g.8xlarge": InstanceType(32, 64 * 1024, 234),
    "m8g.4xlarge": InstanceType(16, 64 * 1024, 234),
    "m8g.8xlarge": InstanceType(32, 128 * 1024, 234),
}


@dataclass(frozen=True)
class DaemonRequests:
    """Requests of a DaemonSet pod that EKS add-ons (not our charts) put on every node."""

    name: str
    cpu_millis: int
    memory_mib: int
    accelerators: tuple[str, ...] | None = None  # None: on every node


# The DaemonSets of the add-ons stacks/cluster installs with their default configuration
# (vpc-cni, kube-proxy, eks-pod-identity-agent, amazon-cloudwatch-observability). Our own
# device plugin DaemonSets are not listed: the capacity test reads them from the rendered
# manifests. Figures: amazon-cloudwatch-observability chart values
# (github.com/aws-observability/helm-charts, charts/amazon-cloudwatch-observability/values.yaml:
# agent 250m/128Mi, fluent-bit 50m/25Mi, dcgm-exporter 250m/128Mi, neuron-monitor 256m/128Mi);
# aws-node 25m CPU (VPC CNI default, https://docs.skyscrapers.eu/kubernetes/networking).
# Assumptions (no documented figure found): the network policy agent container of aws-node
# 25m CPU, kube-proxy 100m CPU (the EKS add-on's manifest), the Pod Identity agent 25m/64Mi;
# none of the three requests memory except the Pod Identity agent (assumed, conservatively).
ADDON_DAEMONSETS: Final = (
    DaemonRequests("aws-node", cpu_millis=25 + 25, memory_mib=0),
    DaemonRequests("kube-proxy", cpu_millis=100, memory_mib=0),
    DaemonRequests("eks-pod-identity-agent", cpu_millis=25, memory_mib=64),
    DaemonRequests("cloudwatch-agent", cpu_millis=250, memory_mib=128),
    DaemonRequests("fluent-bit", cpu_millis=50, memory_mib=25),
    DaemonRequests("dcgm-exporter", cpu_millis=250, memory_mib=128, accelerators=("nvidia",)),
    DaemonRequests("neuron-monitor", cpu_millis=256, memory_mib=128, accelerators=("neuron",)),
)


def addon_daemon_requests(accelerator: str) -> tuple[int, int]:
    """(CPU millicores, memory MiB) the add-on DaemonSets request on a node of ``accelerator``."""
    daemons = [d for d in ADDON_DAEMONSETS if d.accelerators is None or accelerator in d.accelerators]
    return sum(d.cpu_millis for d in daemons), sum(d.memory_mib for d in daemons)


# --- NodePool limits: what a pool's pods can use ----------------------------------------------
# charts/karpenter.py renders them as the NodePools' limits; `make preflight` checks the vCPU
# quotas against them. Compile jobs run on the regional pools next to serving, one compile job
# per accelerator at a time.
COMPILE_PODS_PER_POOL: Final = 1
# The largest device count of one node of the pools' families (p4d/p5: 8 GPUs, trn1.32xlarge:
# 16 Neuron devices): a limit below this would forbid those instances outright.
MAX_DEVICES_PER_NODE: Final = 16
VCPUS_PER_CPU_POD: Final = 16  # CPU pools: vCPUs of the node one CPU pod gets (c7g.4xlarge)


@dataclass(frozen=True)
class PoolLimit:
    """A NodePool's cap: ``amount`` of ``resource`` (a device resource, or "cpu" in vCPUs) for ``pods`` pods."""

    resource: str
    amount: int
    pods: int


def node_pool_limit(
    device_resource: str | None,
    devices_per_pod: int,
    max_replicas: int,
    *,
    max_devices_per_node: int = MAX_DEVICES_PER_NODE,
    vcpus_per_cpu_pod: int = VCPUS_PER_CPU_POD,
) -> PoolLimit:
    """The serving maximum plus one compile job, counted in the resource that costs (devices; vCPUs for CPU pools)."""
    pods = max_replicas + COMPILE_PODS_PER_POOL
    if device_resource:
        return PoolLimit(device_resource, max(pods * devices_per_pod, max_devices_per_node), pods)
    return PoolLimit("cpu", pods * vcpus_per_cpu_pod, pods)
