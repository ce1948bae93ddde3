"""Every serving pod fits the smallest instance its NodePool allows, and every compile pod the
smallest its compile node affinity allows, together with the DaemonSets of those nodes
(ours from the rendered manifests, the EKS add-ons' from plan.capacity)."""

from __future__ import annotations

from typing import Any

import pytest

from plan import capacity
from plan.accelerators import ACCELERATORS
from plan.topology import NODE_LABEL_ACCELERATOR

SIZE = "karpenter.k8s.aws/instance-size"
FAMILY = "karpenter.k8s.aws/instance-family"


def cpu_millis(q: str | int | float) -> int:
    s = str(q)
    return int(s[:-1]) if s.endswith("m") else int(float(s) * 1000)


def memory_mib(q: str | int) -> int:
    s = str(q)
    for suffix, factor in (("Gi", 1024), ("Mi", 1), ("Ki", 1 / 1024)):
        if s.endswith(suffix):
            return int(float(s[: -len(suffix)]) * factor)
    return int(s) // (1024 * 1024)


def pod_requests(pod_spec: dict[str, Any]) -> tuple[int, int]:
    containers = pod_spec["containers"]
    requests = [c.get("resources", {}).get("requests", {}) for c in containers]
    return sum(cpu_millis(r.get("cpu", 0)) for r in requests), sum(memory_mib(r.get("memory", 0)) for r in requests)


def daemon_requests(rendered: Any, accelerator: str) -> tuple[int, int]:
    cpu, mem = capacity.addon_daemon_requests(accelerator)
    for ds in rendered.of_kind("DaemonSet"):
        spec = ds["spec"]["template"]["spec"]
        if spec.get("nodeSelector", {}).get(NODE_LABEL_ACCELERATOR) == accelerator:
            c, m = pod_requests(spec)
            cpu, mem = cpu + c, mem + m
    return cpu, mem


def requirement(pool: dict[str, Any], key: str) -> list[str]:
    (req,) = [r for r in pool["spec"]["template"]["spec"]["requirements"] if r["key"] == key]
    assert req["operator"] == "In"
    return req["values"]


def smallest_per_family(families: list[str], sizes: list[str]) -> dict[str, str]:
    """The smallest (by memory) instance type of each family with an allowed size, from the
    capacity table, which must know each family (or the test could not see its small sizes)."""
    result = {}
    for family in families:
        known = [name for name in capacity.INSTANCE_TYPES if name.split(".")[0] == family]
        assert known, f"plan.capacity.INSTANCE_TYPES lists no {family} instance"
        allowed = [name for name in known if name.split(".")[1] in sizes]
        if allowed:
            result[family] = min(allowed, key=lambda n: capacity.INSTANCE_TYPES[n].memory_mib)
    return result


def assert_fits(what: str, pod: tuple[int, int], daemons: tuple[int, int], instance: str) -> None:
    cpu, mem = capacity.INSTANCE_TYPES[instance].allocatable()
    need_cpu, need_mem = pod[0] + daemons[0], pod[1] + daemons[1]
    assert need_mem <= mem, f"{what}: {pod[1]} + {daemons[1]} MiB DaemonSets > {mem} MiB allocatable on {instance}"
    assert need_cpu <= cpu, f"{what}: {pod[0]} + {daemons[0]}m DaemonSets > {cpu}m allocatable on {instance}"


def test_allocatable_model_matches_documented_figures() -> None:
    assert capacity.max_pods(enis=4, ipv4_per_eni=15) == 58  # g5.xlarge
    assert capacity.max_pods(enis=8, ipv4_per_eni=30) == 234  # inf2.8xlarge
    assert capacity.allocatable_memory_mib(16 * 1024, 58) == 14162
    assert capacity.allocatable_cpu_millis(4) == 3920
    assert capacity.allocatable_memory_mib(128 * 1024, 234) == 118312


def test_serving_pods_fit_smallest_pool_instance(rendered: Any) -> None:
    pools = {p["metadata"]["name"]: p for p in rendered.of_kind("NodePool")}
    checked = 0
    for workload in rendered.of_kind("Deployment"):
        spec = workload["spec"]["template"]["spec"]
        pool_name = spec.get("nodeSelector", {}).get("karpenter.sh/nodepool")
        if pool_name is None:
            continue
        pool = pools[pool_name]
        accelerator = pool["spec"]["template"]["metadata"]["labels"][NODE_LABEL_ACCELERATOR]
        smallest = smallest_per_family(requirement(pool, FAMILY), requirement(pool, SIZE))
        assert smallest, f"NodePool {pool_name} allows no known instance type"
        for instance in smallest.values():
            assert_fits(
                workload["metadata"]["name"], pod_requests(spec), daemon_requests(rendered, accelerator), instance
            )
            checked += 1
    assert checked


def test_compile_pods_fit_smallest_compile_instance(rendered: Any) -> None:
    pools = {p["metadata"]["name"]: p for p in rendered.of_kind("NodePool")}
    jobs = rendered.of_kind("Job")
    assert {j["metadata"]["labels"][NODE_LABEL_ACCELERATOR] for j in jobs} == set(rendered.config.accelerators)
    for job in jobs:
        spec = job["spec"]["tasks"][0]["template"]["spec"]
        pool = pools[spec["nodeSelector"]["karpenter.sh/nodepool"]]
        accelerator = job["metadata"]["labels"][NODE_LABEL_ACCELERATOR]
        terms = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
        (term,) = terms
        (expr,) = [e for e in term["matchExpressions"] if e["key"] == SIZE]
        sizes = [s for s in expr["values"] if s in requirement(pool, SIZE)]
        assert sizes == expr["values"], f"{job['metadata']['name']}: sizes its NodePool does not allow"
        smallest = smallest_per_family(requirement(pool, FAMILY), sizes)
        assert smallest, f"{job['metadata']['name']}: no known instance type of its pool has a compile size"
        for instance in smallest.values():
            assert_fits(job["metadata"]["name"], pod_requests(spec), daemon_requests(rendered, accelerator), instance)


@pytest.mark.parametrize("name", sorted(ACCELERATORS))
def test_compile_resources_are_the_rows(rendered: Any, name: str) -> None:
    """The compile job requests the row's compile resources, not the serving pod's."""
    accelerator = ACCELERATORS[name]
    if name not in rendered.config.accelerators:
        pytest.skip(f"{name} not enabled")
    (job,) = [j for j in rendered.of_kind("Job") if j["metadata"]["labels"][NODE_LABEL_ACCELERATOR] == name]
    resources = job["spec"]["tasks"][0]["template"]["spec"]["containers"][0]["resources"]
    assert memory_mib(resources["requests"]["memory"]) == memory_mib(accelerator.compile.memory_request)
    assert memory_mib(resources["limits"]["memory"]) == memory_mib(accelerator.compile.memory_request)
    assert cpu_millis(resources["requests"]["cpu"]) == cpu_millis(accelerator.compile.cpu_request)


@pytest.mark.parametrize("name", sorted(ACCELERATORS))
def test_compile_gets_the_documented_host_memory(name: str) -> None:
    """A compile node has the documented host memory (Neuron SD: inf2.8xlarge, 128 GiB) and the
    compile may use most of it; a device compile gets at least what serving gets."""
    accelerator = ACCELERATORS[name]
    compile_ = accelerator.compile
    allowed = [
        t
        for n, t in capacity.INSTANCE_TYPES.items()
        if n.split(".")[0] in accelerator.instance_families and n.split(".")[1] in compile_.instance_sizes
    ]
    assert allowed
    minimum = compile_.documented_min_memory_gib * 1024
    assert all(t.memory_mib >= minimum for t in allowed)
    assert memory_mib(compile_.memory_request) >= 0.75 * minimum
    if accelerator.device_resource:
        assert memory_mib(compile_.memory_request) >= memory_mib(accelerator.memory_request)
