"""The cluster side of a release: what the controllers admit when a cluster stack is created and
updated, and what they still need when it is deleted (``tests/release/cluster_sim.py`` says
what is modelled and from which upstream sources). The negative tests at the end show each check
refuses the design it guards against."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator
from typing import Any

import cdk8s
import pytest
from cdk8s_plus_35 import k8s

from charts import pods
from charts.build import add_charts
from charts.compile_jobs import JOBS_CHART_ID, CompileJobsChart, CompileJobSettings
from plan.config import AppConfig
from plan.deployments import load_plan
from tests.conftest import FIXTURE_DEPLOYMENTS, plan_context
from tests.release import cluster_sim, rehearsal
from tests.release.cluster_sim import Cluster, ClusterTemplate, KubeObject, Manifest
from tests.release.rehearsal import ReleaseError, Stack

STACK = "EdgeDiffusion-dev-Cluster"  # how the rendered-chart and hand-written cases name their stack


@pytest.fixture(scope="module")
def stacks(synth: Any) -> dict[str, Stack]:
    return rehearsal.read_assembly(synth.outdir)


def cluster_stacks(stacks: dict[str, Stack]) -> Iterator[Stack]:
    return (s for s in stacks.values() if s.name.endswith("-Cluster"))


# --- Create and update: what the controllers admit ---------------------------------------------


def test_every_cluster_stack_creates_objects_its_controllers_admit(stacks: dict[str, Stack]) -> None:
    """The first deploy: each manifest's objects in one `kubectl create`, each resource seeing
    only what it depends on (CRDs, namespaces, open Volcano queues)."""
    for stack in cluster_stacks(stacks):
        cluster = cluster_sim.create_stack(stack.name, stack.template)
        assert any(key[1] == "Job" for key in cluster.live), "no compile Job was created"


def test_a_second_release_of_the_same_stacks_applies_cleanly(stacks: dict[str, Stack]) -> None:
    for stack in cluster_stacks(stacks):
        template = ClusterTemplate(stack.name, stack.template)
        cluster = cluster_sim.create_stack(stack.name, stack.template)
        cluster.release(template, template)


def config() -> AppConfig:
    """The workstation deployment's config, as the session's synthesis reads it."""
    plan = load_plan(plan_context(), FIXTURE_DEPLOYMENTS)
    assert plan.workstation is not None
    return plan.workstation.config


def objects_of(charts: list[cdk8s.Chart]) -> list[KubeObject]:
    return [KubeObject(body) for chart in charts for body in chart.to_json()]


def compile_jobs_manifest(app_config: AppConfig, settings: CompileJobSettings | None = None) -> Manifest:
    """The manifest the cluster stack applies for the compile jobs' chart (with a prune label)."""
    chart = CompileJobsChart(cdk8s.App(), JOBS_CHART_ID, config=app_config, settings=settings)
    objects = objects_of([chart])
    return Manifest("ChartModelBuilds", json.dumps([o.body for o in objects]), tuple(objects), "prune", False)


def cluster_with_compile_jobs(app_config: AppConfig, jobs: Manifest) -> Cluster:
    """A cluster after an earlier release: Volcano installed, the app's namespace and queue
    created and open, and ``jobs`` applied."""
    charts = add_charts(cdk8s.App(), app_config).all
    earlier = [o for o in objects_of(list(charts)) if o.kind in {"Namespace", "Queue"}]
    keys = {o.key for o in jobs.objects}
    return cluster_sim.cluster_after(STACK, ["volcano"], [*(o for o in earlier if o.key not in keys), *jobs.objects])


def add_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pods, "SCRATCH_ENV", {**pods.SCRATCH_ENV, "TMPDIR": pods.SCRATCH_ENV["HOME"]})


def add_toleration(monkeypatch: pytest.MonkeyPatch) -> None:
    original = pods.tolerations

    def tolerations(accelerator: Any) -> list[k8s.Toleration]:
        return [*original(accelerator), k8s.Toleration(key="edge-diffusion.aws/compile", operator="Exists")]

    monkeypatch.setattr(pods, "tolerations", tolerations)


SETTING_CHANGES: dict[str, tuple[CompileJobSettings | None, Callable[[pytest.MonkeyPatch], None] | None]] = {
    "resources": (CompileJobSettings(resources=pods.PodResources(scratch_size="200Gi")), None),
    "deadline": (CompileJobSettings(deadline_s=8 * 3600), None),
    "maxRetry": (CompileJobSettings(max_retry=3), None),
    "env": (None, add_env),
    "tolerations": (None, add_toleration),
}


@pytest.mark.parametrize("change", sorted(SETTING_CHANGES))
def test_compile_jobs_update_under_a_changed_setting(change: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A later release changes what the compile jobs are made of: `kubectl apply` of the new
    manifest over the old one must not ask Volcano to change a Job's spec in place."""
    app_config = config()
    old = compile_jobs_manifest(app_config)
    cluster = cluster_with_compile_jobs(app_config, old)
    settings, patch = SETTING_CHANGES[change]
    if patch is not None:
        patch(monkeypatch)
    new = compile_jobs_manifest(app_config, settings)
    assert new.text != old.text, f"changing {change} changes no compile job"
    refusals = cluster.kubectl_apply(new, old, cluster.served)
    assert refusals == [], "\n".join(refusals)


def test_a_changed_setting_leaves_no_old_compile_job_behind() -> None:
    """Within one manifest, a renamed compile Job would stay: `kubectl apply --prune` keeps it,
    and it keeps running (or retrying) the old build beside the new one, in the same queue."""
    app_config = config()
    old = compile_jobs_manifest(app_config)
    cluster = cluster_with_compile_jobs(app_config, old)
    new = compile_jobs_manifest(app_config, CompileJobSettings(deadline_s=8 * 3600))
    assert cluster.kubectl_apply(new, old, cluster.served) == []
    assert cluster.left_behind, "the single-manifest design leaves the old Jobs: the cluster stack must not use it"


def test_each_compile_job_is_a_cloudformation_resource_keyed_by_its_name(stacks: dict[str, Stack]) -> None:
    """So a renamed Job is a new resource: CloudFormation creates it, then deletes the old one
    (`kubectl delete`) in the update's cleanup, which the apply's prune would not."""
    for stack in cluster_stacks(stacks):
        for logical_id, resource in stack.template["Resources"].items():
            manifest = resource.get("Properties", {}).get("Manifest")
            if resource["Type"] != rehearsal.MANIFEST_TYPE or not isinstance(manifest, str):
                continue
            objects = json.loads(manifest)
            jobs = [o for o in objects if o["kind"] == "Job" and o["apiVersion"].startswith("batch.volcano.sh")]
            if jobs:
                assert len(objects) == 1, f"{stack.name} {logical_id}: a compile Job shares its manifest"
                assert jobs[0]["metadata"]["name"].replace("-", "") in logical_id, logical_id


def test_enabling_an_accelerator_reapplies_the_other_compile_jobs() -> None:
    """A release that adds a compile job re-applies the unchanged ones in the same `kubectl
    apply`: their live spec carries what Volcano's mutating webhook filled in at create, and a
    JSON merge patch replaces `tasks` whole."""
    app_config = config()
    fewer = dataclasses.replace(app_config, accelerators=tuple(a for a in app_config.accelerators if a != "neuron"))
    old = compile_jobs_manifest(fewer)
    cluster = cluster_with_compile_jobs(fewer, old)
    new = compile_jobs_manifest(app_config)
    assert {o.name for o in old.objects if o.is_volcano_job} < {o.name for o in new.objects if o.is_volcano_job}
    refusals = cluster.kubectl_apply(new, old, cluster.served)
    assert refusals == [], "\n".join(refusals)


# --- Delete: what each finalizer's controller needs until it is done ---------------------------


def test_deleting_a_cluster_stack_keeps_what_each_finalizer_needs(stacks: dict[str, Stack]) -> None:
    problems = [line for s in cluster_stacks(stacks) for line in cluster_sim.delete_order_problems(s.name, s.template)]
    assert problems == [], "\n".join(problems)


# --- The simulated cluster catches the old designs ---------------------------------------------

NAMESPACE = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "edge-diffusion"}}
QUEUE = {"apiVersion": "scheduling.volcano.sh/v1beta1", "kind": "Queue", "metadata": {"name": "model-builds"}}


def job(name: str = "compile-cpu-1", task: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    containers = [{"name": "compile", "image": "runtime"}]
    tasks = [{"name": "compile", "replicas": 1, "template": {"spec": {"containers": containers}}, **(task or {})}]
    return {
        "apiVersion": "batch.volcano.sh/v1alpha1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": "edge-diffusion"},
        "spec": {"queue": "model-builds", "schedulerName": "volcano", "minAvailable": 1, "tasks": tasks, **spec},
    }


def manifest(objects: list[dict[str, Any]], *depends: str) -> dict[str, Any]:
    return {
        "Type": rehearsal.MANIFEST_TYPE,
        "DependsOn": list(depends),
        "Properties": {"Manifest": json.dumps(objects), "PruneLabel": "aws.cdk.eks/prune-x"},
    }


def helm(name: str, namespace: str = "kube-system", *depends: str) -> dict[str, Any]:
    """A Helm release of the chart ``name`` under the same name."""
    return {
        "Type": rehearsal.HELM_TYPE,
        "DependsOn": list(depends),
        "Properties": {"Release": name, "Chart": name, "Namespace": namespace, "CreateNamespace": True},
    }


def queue_state(json_path: str = ".status.state") -> dict[str, Any]:
    return {
        "Type": cluster_sim.OBJECT_VALUE_TYPE,
        "DependsOn": ["Queue"],
        "Properties": {
            "ObjectType": "queues.scheduling.volcano.sh",
            "ObjectName": "model-builds",
            "JsonPath": json_path,
        },
    }


def volcano(resources: dict[str, Any]) -> dict[str, Any]:
    """A template with the Volcano release, which every other resource depends on."""
    after = {lid: {**r, "DependsOn": ["Volcano", *r.get("DependsOn", [])]} for lid, r in resources.items()}
    return {"Resources": {"Volcano": helm("volcano", "volcano-system"), **after}}


def test_a_job_in_the_manifest_that_creates_its_queue_is_refused() -> None:
    old = volcano({"Charts": manifest([NAMESPACE, QUEUE, job()])})
    with pytest.raises(ReleaseError) as refused:
        cluster_sim.create_stack(STACK, old)
    assert str(refused.value) == (
        f'{STACK}: Charts creates Job/compile-cpu-1: admission webhook "validatejob.volcano.sh" denied the '
        "request: can only submit job to queue with state `Open`, queue `model-builds` status is `` (nothing this "
        "resource depends on waits for the Volcano controller to open the queue)"
    )


def test_a_job_after_its_queue_but_without_a_wait_is_refused() -> None:
    no_wait = volcano({"Queue": manifest([NAMESPACE, QUEUE]), "Jobs": manifest([job()], "Queue")})
    with pytest.raises(ReleaseError, match="queue `model-builds` status is ``"):
        cluster_sim.create_stack(STACK, no_wait)


def test_a_job_after_a_wait_for_its_open_queue_is_admitted() -> None:
    waited = volcano(
        {
            "Queue": manifest([NAMESPACE, QUEUE]),
            "QueueState": queue_state(),
            "Jobs": manifest([job()], "Queue", "QueueState"),
        }
    )
    cluster = cluster_sim.create_stack(STACK, waited)
    stored = cluster.live[("batch.volcano.sh", "Job", "edge-diffusion", "compile-cpu-1")].body
    assert stored["spec"]["tasks"][0]["maxRetry"] == 3  # Volcano's mutating webhook filled it in


def test_a_wait_written_with_braces_never_returns() -> None:
    braces = volcano(
        {
            "Queue": manifest([NAMESPACE, QUEUE]),
            "QueueState": queue_state("{.status.state}"),
            "Jobs": manifest([job()], "Queue", "QueueState"),
        }
    )
    with pytest.raises(ReleaseError, match=r"QueueState never returns a value: .*U\+007B"):
        cluster_sim.create_stack(STACK, braces)


def test_a_job_whose_queue_nothing_creates_is_refused() -> None:
    with pytest.raises(ReleaseError, match=r'unable to find job queue: queues\.scheduling\.volcano\.sh "model-builds"'):
        cluster_sim.create_stack(STACK, volcano({"Jobs": manifest([NAMESPACE, job()])}))


def test_a_custom_resource_before_the_release_of_its_crd_is_refused() -> None:
    pool = {"apiVersion": "karpenter.sh/v1", "kind": "NodePool", "metadata": {"name": "cpu"}}
    early = {"Crds": helm("karpenter-crd"), "Pools": manifest([pool])}
    with pytest.raises(ReleaseError, match='Pools creates NodePool/cpu: no matches for kind "NodePool"'):
        cluster_sim.create_stack(STACK, {"Resources": early})
    cluster_sim.create_stack(STACK, {"Resources": {**early, "Pools": manifest([pool], "Crds")}})


def test_an_alb_ingress_before_the_controller_is_refused() -> None:
    ingress = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"ingressClassName": "alb"},
    }
    with pytest.raises(ReleaseError, match="Ingress/web: IngressClass alb and its webhooks come with"):
        cluster_sim.create_stack(STACK, volcano({"Web": manifest([ingress])}))


def applied(old_jobs: list[dict[str, Any]], new_jobs: list[dict[str, Any]]) -> list[str]:
    """`kubectl apply` of ``new_jobs`` over a cluster where ``old_jobs`` were created."""
    objects = [KubeObject(body) for body in old_jobs]
    cluster = cluster_sim.cluster_after(STACK, ["volcano"], [KubeObject(NAMESPACE), KubeObject(QUEUE), *objects])
    old = Manifest("Jobs", json.dumps(old_jobs), tuple(objects), "prune", False)
    new = Manifest("Jobs", json.dumps(new_jobs), tuple(KubeObject(b) for b in new_jobs), "prune", False)
    return cluster.kubectl_apply(new, old, cluster.served)


def test_a_changed_job_under_its_old_name_is_refused() -> None:
    """The old name hashed only the image and arguments: a new deadline kept the name."""
    old, new = job(task={"maxRetry": 2}, maxRetry=2), job(task={"maxRetry": 2}, maxRetry=3)
    new["spec"]["tasks"][0]["template"]["spec"]["activeDeadlineSeconds"] = 60
    (refusal,) = applied([old], [new])
    assert refusal == (
        f"{STACK}: Jobs updates Job/compile-cpu-1: {cluster_sim.UPDATE_REFUSED} (changed: spec.maxRetry, "
        "spec.tasks[0].template.spec.activeDeadlineSeconds)"
    )
    assert applied([old], [job("compile-cpu-2", maxRetry=3)]) == []  # a new name: a new Job, the old one pruned


def test_reapplying_an_unchanged_job_loses_what_the_webhook_filled_in() -> None:
    """volcano-sh/volcano#2238: `kubectl apply` of the same Job is refused once its tasks were
    defaulted at create, unless the manifest sets each task's maxRetry (and minAvailable) itself."""
    (refusal,) = applied([job()], [job()])
    assert refusal.endswith("(changed: spec.tasks[0].maxRetry)"), refusal
    explicit = job(task={"maxRetry": 2, "minAvailable": 1})
    assert applied([explicit], [explicit]) == []


def test_replicas_and_min_available_may_change() -> None:
    old = job(task={"maxRetry": 3})
    new = job(task={"maxRetry": 3, "replicas": 2, "minAvailable": 2}, minAvailable=2)
    assert applied([old], [new]) == []


ADDON = {"Type": cluster_sim.ADDON_TYPE, "Properties": {"AddonName": "coredns"}}
INGRESS = {
    "apiVersion": "networking.k8s.io/v1",
    "kind": "Ingress",
    "metadata": {"name": "web", "namespace": "default"},
    "spec": {"ingressClassName": "alb"},
}


def test_an_ingress_deleted_with_dns_still_up_for_its_controller_passes() -> None:
    alb = helm("aws-load-balancer-controller", "kube-system", "CoreDns")
    good = {"CoreDns": ADDON, "Alb": alb, "Web": manifest([INGRESS], "Alb")}
    assert cluster_sim.delete_order_problems(STACK, {"Resources": good}) == []
    preserved = {"CoreDns": {**ADDON, "Properties": {"AddonName": "coredns", "PreserveOnDelete": True}}}
    alone = {**good, **preserved, "Alb": helm("aws-load-balancer-controller")}
    assert cluster_sim.delete_order_problems(STACK, {"Resources": alone}) == []


def test_an_addon_with_no_dependents_is_caught() -> None:
    """The old design: CoreDNS could go first, and the ALB controller could not resolve the
    Elastic Load Balancing endpoint to delete the load balancer."""
    old = {"CoreDns": ADDON, "Alb": helm("aws-load-balancer-controller"), "Web": manifest([INGRESS], "Alb")}
    assert cluster_sim.delete_order_problems(STACK, {"Resources": old}) == [
        f"{STACK}: Ingress/web is not deleted before AWS::EKS::Addon coredns, which aws-load-balancer-controller "
        "needs to remove it (finalizer ingress.k8s.aws/resources)"
    ]


def test_karpenter_node_access_deleted_first_is_caught() -> None:
    node_class = {
        "apiVersion": "karpenter.k8s.aws/v1",
        "kind": "EC2NodeClass",
        "metadata": {"name": "regional"},
        "spec": {"role": "nodes"},
    }
    resources = {
        "NodeRole": {"Type": "AWS::IAM::Role", "Properties": {"RoleName": "nodes"}},
        "NodeAccess": {
            "Type": cluster_sim.ACCESS_ENTRY_TYPE,
            "Properties": {"PrincipalArn": {"Fn::GetAtt": ["NodeRole", "Arn"]}},
        },
        "Karpenter": helm("karpenter"),
        "Pools": manifest([node_class], "Karpenter"),
    }
    assert cluster_sim.delete_order_problems(STACK, {"Resources": resources}) == [
        f"{STACK}: EC2NodeClass/regional is not deleted before AWS::EKS::AccessEntry of nodes, which karpenter needs "
        "to remove it (finalizer karpenter.k8s.aws/termination)"
    ]


def test_a_namespace_waits_for_the_controllers_of_what_is_in_it() -> None:
    scaled = {"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject", "metadata": {"name": "s", "namespace": "app"}}
    app = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "app"}}
    resources = {
        "Keda": helm("keda", "keda"),
        "Serving": manifest([app]),
        "Scaling": manifest([scaled], "Keda", "Serving"),
    }
    assert cluster_sim.delete_order_problems(STACK, {"Resources": resources}) == [
        f"{STACK}: Namespace/app is not deleted before Custom::AWSCDK-EKS-HelmChart keda, which keda needs to remove "
        "ScaledObject/s in it"
    ]
