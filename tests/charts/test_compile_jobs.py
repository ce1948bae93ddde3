"""The compile jobs against Karpenter's disruption rules (a compile of hours is not cut short), and
where they publish: a prefix of their own cluster's, which is all their role may write."""

from __future__ import annotations

import json
import re
from typing import Any

from charts.compile_jobs import DO_NOT_DISRUPT, JOBS_CHART_ID, SERVICE_ACCOUNT
from plan import naming
from plan.topology import NODEPOOL_LABEL
from tests.charts.conftest import Rendered, render
from tests.conftest import Synth, cdk_json_context


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


def compile_outs(rendered: Rendered) -> set[str]:
    jobs = [o for o in rendered.objects[JOBS_CHART_ID] if o["kind"] == "Job"]
    args = [job["spec"]["tasks"][0]["template"]["spec"]["containers"][0]["args"] for job in jobs]
    return {a[a.index("--out") + 1] for a in args}


def test_each_clusters_compile_jobs_publish_under_a_prefix_of_their_own(rendered: Rendered) -> None:
    """Two deployments' compile jobs never share a prefix, nor use the old one every cluster shared."""
    other = render({**cdk_json_context(), "clusterName": "edge-diffusion-other"})
    (mine,), (theirs,) = compile_outs(rendered), compile_outs(other)
    shared = naming.models_base_uri(rendered.config)
    assert mine != theirs and shared not in (mine, theirs)
    assert {mine.rsplit("/", 1)[0], theirs.rsplit("/", 1)[0]} == {shared}  # one level below it, one each


def test_the_compile_role_may_write_exactly_where_its_jobs_publish(synth: Synth) -> None:
    """In the cluster stack, the model-compiler role writes the prefix its Jobs' --out names (one
    function builds both); it is the only role of the cluster that may touch the model bucket, and
    only that prefix of it (serving pods run the model their image carries)."""
    template = synth.template_json(synth.stacks.cluster)
    resources = template["Resources"].values()
    manifests = [
        obj
        for r in resources
        if r["Type"] == "Custom::AWSCDK-EKS-KubernetesResource" and isinstance(r["Properties"]["Manifest"], str)
        for obj in json.loads(r["Properties"]["Manifest"])
    ]
    (out,) = compile_outs(Rendered(config=None, objects={JOBS_CHART_ID: manifests}))
    bucket, _, key_prefix = out.removeprefix("s3://").partition("/")
    (compiler,) = [
        r["Properties"]["RoleArn"]["Fn::GetAtt"][0]
        for r in resources
        if r["Type"] == "AWS::EKS::PodIdentityAssociation" and r["Properties"]["ServiceAccount"] == SERVICE_ACCOUNT
    ]
    by_role: dict[str, list[dict[str, Any]]] = {}
    for r in resources:
        if r["Type"] != "AWS::IAM::Policy":
            continue
        for statement in r["Properties"]["PolicyDocument"]["Statement"]:
            if bucket in json.dumps(statement):
                for role in r["Properties"]["Roles"]:
                    by_role.setdefault(role["Ref"], []).append(statement)
    assert set(by_role) == {compiler}, sorted(by_role)
    statements = by_role[compiler]
    writes = [s for s in statements if "s3:PutObject" in s["Action"]]
    assert len(writes) == 1 and json.dumps(writes[0]["Resource"]).endswith(f'{bucket}/{key_prefix}/*"]]}}')
    for statement in statements:  # objects under the prefix, or a listing conditioned on it
        listing = statement["Action"] == "s3:ListBucket"
        scoped = f'"s3:prefix": ["{key_prefix}/*"]' if listing else f"{bucket}/{key_prefix}/*"
        assert scoped in json.dumps(statement), statement
