"""serving.torchCompile: the compile job builds TorchInductor kernels on one GPU family and nvidia pods
torch.compile with them, preferring that family's nodes; off, nothing of it reaches the charts. Every
serving pod learns its CPU request (the threads it sizes when it has no CPU limit)."""

from __future__ import annotations

from typing import Any

import pytest

from charts.compile_jobs import JOBS_CHART_ID
from plan import contract, prices, topology
from plan.accelerators import ACCELERATORS
from tests.charts.conftest import Rendered, render
from tests.charts.test_validation import CHARTS, validation_errors
from tests.charts.validate import Tally
from tests.conftest import cdk_json_context

KERNEL_FAMILY = ACCELERATORS["nvidia"].compile.kernel_family


@pytest.fixture(scope="module")
def compiled() -> Rendered:
    return render({**cdk_json_context(), "serving": {"torchCompile": True}})


def containers(rendered: Rendered, chart: str, kind: str) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """Per object of `kind`: its pod spec and its first container."""
    out = {}
    for obj in rendered.objects[chart]:
        if obj["kind"] != kind:
            continue
        spec = obj["spec"]["tasks"][0]["template"]["spec"] if kind == "Job" else obj["spec"]["template"]["spec"]
        out[obj["metadata"]["name"]] = (spec, spec["containers"][0])
    assert out
    return out


def env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def family_terms(affinity: dict[str, Any] | None, kind: str) -> list[list[str]]:
    """The instance-family values of a node affinity's required terms or preferred terms."""
    node = (affinity or {}).get("nodeAffinity", {})
    if kind == "required":
        terms = node.get("requiredDuringSchedulingIgnoredDuringExecution", {}).get("nodeSelectorTerms", [])
    else:
        terms = [t["preference"] for t in node.get("preferredDuringSchedulingIgnoredDuringExecution", [])]
    return [
        e["values"] for t in terms for e in t.get("matchExpressions", []) if e["key"] == topology.INSTANCE_FAMILY_LABEL
    ]


def test_off_by_default_nothing_compiles_kernels(rendered: Rendered) -> None:
    assert rendered.config.serving.torch_compile is False
    for name, (spec, container) in containers(rendered, JOBS_CHART_ID, "Job").items():
        assert "--inductor-cache" not in container["args"], name
        assert family_terms(spec.get("affinity"), "required") == [], name
    for name, (spec, container) in containers(rendered, "serving", "Deployment").items():
        assert contract.ENV_TORCH_COMPILE not in env(container), name
        assert "affinity" not in spec, name


def test_on_the_nvidia_compile_builds_kernels_on_the_family_its_pods_prefer(compiled: Rendered) -> None:
    jobs = containers(compiled, JOBS_CHART_ID, "Job")
    for name, (spec, container) in jobs.items():
        nvidia = env(container)[contract.ENV_DEVICE] == "cuda"
        assert ("--inductor-cache" in container["args"]) is nvidia, name
        assert family_terms(spec.get("affinity"), "required") == ([[KERNEL_FAMILY]] if nvidia else []), name
    serving = containers(compiled, "serving", "Deployment")
    placements = {p.name: p for p in topology.placements(compiled.config)}
    assert set(serving) == set(placements)
    prefer = {name for name, p in placements.items() if KERNEL_FAMILY in p.instance_families}
    assert prefer and prefer != {name for name, p in placements.items() if p.accelerator.device == "cuda"}
    for name, (spec, container) in serving.items():
        nvidia = placements[name].accelerator.device == "cuda"
        # Every nvidia pod compiles; one whose pool has the kernels' family prefers it (never requires it:
        # Karpenter falls back to the pool's other families rather than leave it pending).
        assert (env(container).get(contract.ENV_TORCH_COMPILE) == "1") is nvidia, name
        assert family_terms(spec.get("affinity"), "preferred") == ([[KERNEL_FAMILY]] if name in prefer else []), name
        assert family_terms(spec.get("affinity"), "required") == [], name


@pytest.mark.parametrize("chart", CHARTS)
def test_the_charts_with_torch_compile_validate(compiled: Rendered, chart: str) -> None:
    errors = validation_errors(compiled, Tally(), chart)
    assert not errors, "\n".join(errors)


def test_the_kernel_family_is_the_cheapest_nvidia_family_in_the_region(rendered: Rendered) -> None:
    """Karpenter launches the lowest-priced instance type that fits: the kernels' GPU should be that one."""
    families = ACCELERATORS["nvidia"].instance_families
    price = {f: prices.on_demand_price(f"{f}.xlarge", rendered.config.region).usd_per_hour for f in families}
    assert min(price, key=price.__getitem__) == KERNEL_FAMILY, price


def test_every_serving_pod_and_compile_job_learns_its_cpu_request(rendered: Rendered) -> None:
    """Its torch threads and TorchInductor's compile workers follow it, not the node's CPUs."""
    pods = {**containers(rendered, "serving", "Deployment"), **containers(rendered, JOBS_CHART_ID, "Job")}
    assert any(name.startswith("compile-") for name in pods), sorted(pods)
    for name, (_, container) in pods.items():
        source = env(container)[contract.ENV_CPU_REQUEST]
        assert source == {"resourceFieldRef": {"resource": "requests.cpu", "divisor": "1"}}, name
        assert container["resources"]["requests"]["cpu"], name


def test_a_server_that_exits_leaves_its_reason_as_the_termination_message(rendered: Rendered) -> None:
    for name, (_, container) in containers(rendered, "serving", "Deployment").items():
        assert env(container)[contract.ENV_EXIT_ON_FAILED_LOAD] == "1", name
        assert container["terminationMessagePolicy"] == "FallbackToLogsOnError", name


def torch_compile_warnings(**context: Any) -> list[str]:
    from plan.config.warnings import config_warnings
    from plan.deployments import load_plan

    config = load_plan({**cdk_json_context(), "serving": {"torchCompile": True}, **context}).selected.config
    return [w for w in config_warnings(config) if "torchCompile" in w]


def test_torch_compile_says_where_it_changes_nothing_or_pods_compile_at_start(compiled: Rendered) -> None:
    zones = [z for z in compiled.config.local_zones if KERNEL_FAMILY not in z.instance_families]
    assert zones  # the committed config's zone has no g6: its pods compile their own kernels
    assert torch_compile_warnings() == [
        f"warning: serving.torchCompile: localZones[{z.name}] has no {KERNEL_FAMILY} "
        f"({'+'.join(z.instance_families)}): its nvidia pods compile their own kernels at start, for minutes"
        for z in zones
    ]
    assert torch_compile_warnings(accelerators=["cpu"]) == [
        "warning: serving.torchCompile: no enabled accelerator (cpu) runs torch.compile (nvidia does), "
        "so it changes nothing"
    ]
