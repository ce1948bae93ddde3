"""The compile jobs against Karpenter's disruption rules: a compile of hours is not cut short."""

from __future__ import annotations

import re
from typing import Any

from charts.compile_jobs import DO_NOT_DISRUPT, JOBS_CHART_ID
from plan.topology import NODEPOOL_LABEL
from tests.charts.conftest import Rendered


def seconds(duration: str) -> int:
    """Seconds of a Go duration of hours, minutes and seconds (Karpenter's format)."""
    units = {"h": 3600, "m": 60, "s": 1}
    return sum(int(n) * units[u] for n, u in re.findall(r"(\d+)([hms])", duration))


def test_compile_pods_outlive_node_disruption_until_their_deadline(rendered: Rendered) -> None:
    """Karpenter v1 consolidates and drifts no node with a do-not-disrupt pod, but expiry and drift
    still drain it once the NodePool's terminationGracePeriod has passed (disruption.md, "Pod-level
    controls"; core pkg/controllers/disruption/types.go EventualDisruptionClass): that period must
    outlast the compile's deadline on every pool a compile pod can land on."""
    pools = {o["metadata"]["name"]: o for o in rendered.objects["karpenter"] if o["kind"] == "NodePool"}
    jobs = [o for o in rendered.objects[JOBS_CHART_ID] if o["kind"] == "Job"]
    assert jobs
    for job in jobs:
        template: dict[str, Any] = job["spec"]["tasks"][0]["template"]
        assert template["metadata"]["annotations"][DO_NOT_DISRUPT] == "true", job["metadata"]["name"]
        deadline = template["spec"]["activeDeadlineSeconds"]
        landing = [pools[template["spec"]["nodeSelector"][NODEPOOL_LABEL]]]  # Karpenter's own pool label
        assert landing, job["metadata"]["name"]
        for pool in landing:
            grace = seconds(pool["spec"]["template"]["spec"]["terminationGracePeriod"])
            assert grace > deadline, f"{pool['metadata']['name']}: {grace} s grace < {deadline} s compile deadline"
