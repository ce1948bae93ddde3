"""What the cluster's controllers do with what a cluster stack sends them.

The rehearsal (:mod:`tests.release.rehearsal`) walks stacks; this module walks one cluster
stack's template resource by resource and plays what the kubectl handler, the API server and
the controllers installed by the stack do with each Kubernetes object. Every check raises
:class:`~tests.release.rehearsal.ReleaseError`, one line per refusal, naming the stack, the
object and why.

Modelled, with the upstream source each rule is read from (at the versions the app pins):

* The kubectl handler of aws-cdk-lib 2.275 (``aws-cdk-lib@2.275.0``:
  ``custom-resource-handlers/dist/aws-eks-v2/kubectl-handler/apply/__init__.py`` and
  ``get/__init__.py``). ``Custom::AWSCDK-EKS-KubernetesResource`` on Create: one
  ``kubectl create --save-config -f`` of the whole manifest, objects in manifest order, no wait
  between them (``kubectl apply`` when ``Overwrite`` is true: the same for objects that do not
  exist yet); on Update: ``kubectl apply -f --prune -l <PruneLabel>``; on Delete: ``kubectl
  delete -f`` with kubectl's defaults (it waits for finalizers). CloudFormation runs a resource
  only after everything it depends on, so a resource can rely on exactly what its (transitive)
  dependencies did. ``Custom::AWSCDK-EKS-KubernetesObjectValue`` runs ``kubectl get <ObjectType>
  <ObjectName> -o=jsonpath='{<JsonPath>}'`` every 10 s until the output is non-empty or
  ``TimeoutSeconds`` pass: it is the only resource that waits for a controller, and the handler
  adds the braces itself (a ``JsonPath`` written ``{.status.state}`` becomes ``{{...}}``, which
  kubectl's JSONPath parser refuses: k8s.io/client-go util/jsonpath/parser.go,
  ``parseInsideAction``).
* ``kubectl apply --prune -l <label>`` with no ``--prune-allowlist`` deletes only the built-in
  kinds of kubectl's default allowlist (kubernetes v1.35
  ``staging/src/k8s.io/kubectl/pkg/util/prune/prune.go``): an object of any other kind that a
  new manifest drops (a renamed Volcano Job, NodePool, ScaledObject...) stays in the cluster.
* ``kubectl apply`` of a custom resource sends a three-way JSON merge patch (kubernetes
  v1.35 ``staging/src/k8s.io/kubectl/pkg/cmd/apply/patcher.go`` ``buildMergePatch``;
  ``staging/src/k8s.io/apimachinery/pkg/util/jsonmergepatch/patch.go``
  ``CreateThreeWayJSONMergePatch``): what changed from the live object to the manifest plus what
  the manifest dropped since the last apply; a list that differs is replaced whole.
* An object of a kind a CRD defines is created only once the CRD is installed (kubectl: ``no
  matches for kind``), by the Helm release whose chart carries it (``crds/`` skipped with
  ``SkipCrds``); an Ingress of class ``alb`` needs the AWS Load Balancer Controller's Helm release
  (its IngressClass and webhooks). A namespaced object needs its namespace (admission plugin
  NamespaceLifecycle).
* Volcano v1.15.1 (volcano-sh/volcano@v1.15.1). The job webhooks act outside the Helm release's
  namespace and kube-system (``installer/helm/chart/volcano/templates/webhooks.yaml``). On
  CREATE only, ``pkg/webhooks/admission/jobs/mutate/mutate_job.go`` fills in defaults (queue
  ``default``, ``maxRetry`` 3, each task's ``minAvailable`` and ``maxRetry``, the job's
  ``minAvailable``). ``pkg/webhooks/admission/jobs/validate/admit_job.go``: ``validateJobCreate``
  admits a Job only if its queue is in the webhook's cache with ``status.state`` ``Open``;
  ``validateJobUpdate`` refuses any change of the spec except ``minAvailable``,
  ``priorityClassName`` and each task's ``replicas`` and ``minAvailable``. A new queue has no
  state until the queue controller's first sync opens it (``pkg/controllers/queue/state/
  factory.go``: state "" is handled as open; ``queue_controller_action.go`` ``syncQueue`` writes
  ``Open`` to the status), so within one ``kubectl create`` its state is always empty.
* Finalizers, and what their controller needs to remove them (see :func:`finalizers_of`):
  each object a controller finalizes must be deleted before the controller's Helm release, its Pod
  Identity association and role, the node group its pods run on, and the EKS add-ons its pods
  need to reach AWS (``vpc-cni``, ``kube-proxy``, ``coredns``, ``eks-pod-identity-agent``; one
  with ``PreserveOnDelete`` keeps running). A Namespace is removed only once everything in it is
  gone (kubernetes v1.35 ``pkg/controller/namespace/deletion/namespaced_resources_deleter.go``),
  so it needs all the controllers that finalize objects in it.

Not modelled: CRD structural-schema defaults, the API server's own validation, and timing
beyond what a dependency guarantees (a race that usually wins counts as a loss).
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Final

from tests.release.rehearsal import HELM_TYPE, MANIFEST_TYPE, ReleaseError, direct_dependencies

OBJECT_VALUE_TYPE: Final = "Custom::AWSCDK-EKS-KubernetesObjectValue"
ADDON_TYPE: Final = "AWS::EKS::Addon"
POD_IDENTITY_TYPE: Final = "AWS::EKS::PodIdentityAssociation"
ACCESS_ENTRY_TYPE: Final = "AWS::EKS::AccessEntry"
NODEGROUP_TYPE: Final = "AWS::EKS::Nodegroup"
POLICY_TYPES: Final = ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy")

# Namespaces every cluster has before anything is applied.
BUILTIN_NAMESPACES: Final = frozenset({"default", "kube-system", "kube-public", "kube-node-lease"})


@dataclass(frozen=True)
class Chart:
    """What a Helm chart of the app installs: the API groups of its CRDs and where they live."""

    groups: tuple[str, ...]
    crds_dir: bool  # in the chart's crds/ (skipped with SkipCrds), not in its templates
    queues: tuple[str, ...] = ()  # Volcano queues its controllers create


# Charts by chart name (the `Chart` property). Sources: aws/karpenter-provider-aws@v1.14.1
# charts/karpenter/crds and charts/karpenter-crd/templates; aws-load-balancer-controller@v2.17.1
# helm/aws-load-balancer-controller/crds; kedacore/charts keda/templates/crds; volcano@v1.15.1
# installer/helm/chart/volcano/templates (*_job.yaml, *_queue.yaml, ... load the CRDs as
# templates) and pkg/scheduler/cache/cache.go (newDefaultAndRootQueue: the scheduler creates the
# `default` and `root` queues).
CHARTS: Final[Mapping[str, Chart]] = {
    "karpenter-crd": Chart(("karpenter.sh", "karpenter.k8s.aws"), crds_dir=False),
    "karpenter": Chart(("karpenter.sh", "karpenter.k8s.aws"), crds_dir=True),
    "aws-load-balancer-controller": Chart(("elbv2.k8s.aws",), crds_dir=True),
    "keda": Chart(("keda.sh", "eventing.keda.sh"), crds_dir=False),
    "volcano": Chart(
        (
            "batch.volcano.sh",
            "bus.volcano.sh",
            "flow.volcano.sh",
            "nodeinfo.volcano.sh",
            "scheduling.volcano.sh",
            "topology.volcano.sh",
        ),
        crds_dir=False,
        queues=("default", "root"),
    ),
}
ALB_CHART: Final = "aws-load-balancer-controller"
ALB_INGRESS_CLASS: Final = "alb"  # the chart's ingressClass default, created with the chart
VOLCANO_CHART: Final = "volcano"
KARPENTER_CHART: Final = "karpenter"
KEDA_CHART: Final = "keda"
# A controller's service account: the values key that names it, and the chart's default name.
SERVICE_ACCOUNTS: Final[Mapping[str, tuple[tuple[str, ...], str]]] = {
    KARPENTER_CHART: (("serviceAccount", "name"), "karpenter"),
    ALB_CHART: (("serviceAccount", "name"), "aws-load-balancer-controller"),
    KEDA_CHART: (("serviceAccount", "operator", "name"), "keda-operator"),
}
# EKS add-ons every controller pod needs to reach the API server and AWS: pod networking,
# Service routing, DNS for the AWS endpoints, and Pod Identity credentials.
ADDONS_CONTROLLERS_NEED: Final = ("vpc-cni", "kube-proxy", "coredns", "eks-pod-identity-agent")


# --- Reading a cluster stack's template -----------------------------------------------------


def resolve_text(value: Any) -> str | None:
    """A string property as the handler receives it, each Ref, Fn::GetAtt or Fn::ImportValue
    replaced by a placeholder ``${Ref:Id}``, ``${GetAtt:Id.Attr}`` or ``${Import:Name}``."""
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping) and len(value) == 1:
        ((function, args),) = value.items()
        if function == "Ref":
            return f"${{Ref:{args}}}"
        if function == "Fn::GetAtt":
            return f"${{GetAtt:{args if isinstance(args, str) else '.'.join(args)}}}"
        if function == "Fn::ImportValue":  # its name, when it is a plain string (quotes would break JSON)
            return f"${{Import:{args}}}" if isinstance(args, str) else "${Import}"
        if function == "Fn::Join":
            separator, parts = args
            texts = [resolve_text(part) for part in parts]
            return None if any(t is None for t in texts) else separator.join(t for t in texts if t is not None)
    return None


def token_target(text: object) -> str | None:
    """The logical id a ``${Ref:...}`` or ``${GetAtt:...}`` placeholder names."""
    match = re.fullmatch(r"\$\{(?:Ref:([A-Za-z0-9]+)|GetAtt:([A-Za-z0-9]+)\.[A-Za-z0-9.]+)\}", str(text))
    return (match[1] or match[2]) if match else None


def _at(mapping: Any, path: Sequence[str]) -> Any:
    for key in path:
        if not isinstance(mapping, Mapping):
            return None
        mapping = mapping.get(key)
    return mapping


@dataclass(frozen=True)
class KubeObject:
    """One object of a manifest, as the handler sends it."""

    body: Mapping[str, Any]

    @property
    def api_version(self) -> str:
        return str(self.body["apiVersion"])

    @property
    def group(self) -> str:
        return self.api_version.rpartition("/")[0]

    @property
    def kind(self) -> str:
        return str(self.body["kind"])

    @property
    def name(self) -> str:
        return str(self.body["metadata"]["name"])

    @property
    def namespace(self) -> str | None:
        namespace = self.body["metadata"].get("namespace")
        return str(namespace) if namespace else None

    @property
    def spec(self) -> Mapping[str, Any]:
        return self.body.get("spec") or {}

    @property
    def annotations(self) -> Mapping[str, str]:
        return self.body["metadata"].get("annotations") or {}

    @property
    def ref(self) -> str:
        return f"{self.kind}/{self.name}"

    @property
    def key(self) -> tuple[str, str, str, str]:
        return (self.group, self.kind, self.namespace or "", self.name)

    @property
    def is_volcano_job(self) -> bool:
        return self.group == "batch.volcano.sh" and self.kind == "Job"

    @property
    def is_volcano_queue(self) -> bool:
        return self.group == "scheduling.volcano.sh" and self.kind == "Queue"

    @property
    def ingress_class(self) -> str | None:
        if self.group != "networking.k8s.io" or self.kind != "Ingress":
            return None
        return self.spec.get("ingressClassName") or self.annotations.get("kubernetes.io/ingress.class")


@dataclass(frozen=True)
class Manifest:
    """A ``Custom::AWSCDK-EKS-KubernetesResource``."""

    logical_id: str
    text: str
    objects: tuple[KubeObject, ...]
    prune_label: str | None
    overwrite: bool


@dataclass(frozen=True)
class HelmRelease:
    """A ``Custom::AWSCDK-EKS-HelmChart``."""

    logical_id: str
    name: str  # the Helm release's name
    chart: str
    namespace: str
    create_namespace: bool
    skip_crds: bool
    values: Mapping[str, Any]

    @property
    def groups(self) -> tuple[str, ...]:
        chart = CHARTS.get(self.chart)
        if chart is None or (chart.crds_dir and self.skip_crds):
            return ()
        return chart.groups


@dataclass(frozen=True)
class ObjectValue:
    """A ``Custom::AWSCDK-EKS-KubernetesObjectValue``: a wait for a non-empty JSONPath value."""

    logical_id: str
    object_type: str
    object_name: str
    object_namespace: str
    json_path: str

    @property
    def reads_queue_state(self) -> bool:
        """Whether it reads a Volcano queue's ``status.state`` with a JSONPath kubectl accepts."""
        kind = self.object_type.lower()
        for suffix in (".v1beta1.scheduling.volcano.sh", ".scheduling.volcano.sh"):
            kind = kind.removesuffix(suffix)
        return kind in {"queue", "queues", "q", "queue-v1beta1"} and self.json_path.lstrip("$") == ".status.state"

    @property
    def path_problem(self) -> str | None:
        if self.json_path.startswith("{"):
            return (
                f"its JsonPath {self.json_path!r} becomes -o=jsonpath='{{{self.json_path}}}' (the handler adds the "
                "braces), which kubectl refuses: unrecognized character in action: U+007B '{'"
            )
        return None


def _bool(value: object) -> bool:
    return str(value).lower() == "true"


class ClusterTemplate:
    """One cluster stack's template, read for what it sends to the cluster."""

    def __init__(self, stack: str, template: Mapping[str, Any]) -> None:
        self.stack = stack
        self.template = template
        self.resources: Mapping[str, Mapping[str, Any]] = template["Resources"]

    def props(self, logical_id: str) -> Mapping[str, Any]:
        return self.resources[logical_id].get("Properties") or {}

    def of_type(self, *types: str) -> list[str]:
        return [lid for lid, r in self.resources.items() if r["Type"] in types]

    @cached_property
    def _closure(self) -> dict[str, frozenset[str]]:
        direct = {lid: direct_dependencies(self.template, lid) for lid in self.resources}
        closure: dict[str, frozenset[str]] = {}

        def visit(lid: str, path: tuple[str, ...]) -> frozenset[str]:
            if lid in path:
                raise ReleaseError(f"{self.stack}: circular dependency {' -> '.join((*path, lid))}")
            if lid not in closure:
                found = set(direct[lid])
                for dep in direct[lid]:
                    found |= visit(dep, (*path, lid))
                closure[lid] = frozenset(found)
            return closure[lid]

        for lid in self.resources:
            visit(lid, ())
        return closure

    def depends_on(self, logical_id: str) -> frozenset[str]:
        """Every resource ``logical_id`` depends on, transitively."""
        return self._closure[logical_id]

    @cached_property
    def creation_order(self) -> list[str]:
        """One order CloudFormation may create the resources in: each after all it depends on
        (a resource depends on strictly more than each of its dependencies)."""
        index = {lid: i for i, lid in enumerate(self.resources)}
        return sorted(self.resources, key=lambda lid: (len(self.depends_on(lid)), index[lid]))

    @cached_property
    def manifests(self) -> dict[str, Manifest]:
        found = {}
        for lid in self.of_type(MANIFEST_TYPE):
            props = self.props(lid)
            text = resolve_text(props.get("Manifest"))
            if text is None:
                raise ReleaseError(f"{self.stack}: {lid}: cannot read its Manifest")
            objects = tuple(KubeObject(body) for body in json.loads(text))
            prune = props.get("PruneLabel")
            found[lid] = Manifest(lid, text, objects, str(prune) if prune else None, _bool(props.get("Overwrite")))
        return found

    @cached_property
    def helm_releases(self) -> dict[str, HelmRelease]:
        """Helm releases by name."""
        found = {}
        for lid in self.of_type(HELM_TYPE):
            props = self.props(lid)
            text = resolve_text(props.get("Values"))
            values = json.loads(text) if text else {}
            name = str(props["Release"])
            found[name] = HelmRelease(
                logical_id=lid,
                name=name,
                chart=str(props.get("Chart", name)),
                namespace=str(props.get("Namespace", "default")),
                create_namespace=_bool(props.get("CreateNamespace")),
                skip_crds=_bool(props.get("SkipCrds")),
                values=values if isinstance(values, Mapping) else {},
            )
        return found

    def helm_release_of_chart(self, chart: str) -> HelmRelease | None:
        return next((r for r in self.helm_releases.values() if r.chart == chart), None)

    @cached_property
    def object_values(self) -> dict[str, ObjectValue]:
        found = {}
        for lid in self.of_type(OBJECT_VALUE_TYPE):
            props = self.props(lid)
            found[lid] = ObjectValue(
                logical_id=lid,
                object_type=str(props["ObjectType"]),
                object_name=str(props["ObjectName"]),
                object_namespace=str(props.get("ObjectNamespace", "default")),
                json_path=str(props["JsonPath"]),
            )
        return found

    def objects(self) -> list[tuple[Manifest, KubeObject]]:
        return [(m, obj) for m in self.manifests.values() for obj in m.objects]


# --- What a resource can rely on ------------------------------------------------------------


@dataclass(frozen=True)
class Served:
    """What exists in the cluster, as far as one resource can rely on it."""

    groups: frozenset[str] = frozenset()  # API groups whose CRDs are installed
    charts: frozenset[str] = frozenset()  # charts installed and ready (Helm waited for them)
    namespaces: frozenset[str] = BUILTIN_NAMESPACES
    queues: frozenset[str] = frozenset()  # Volcano queues that exist
    open_queues: frozenset[str] = frozenset()  # ... and whose status.state is Open
    webhook_exempt: frozenset[str] = frozenset()  # namespaces the Volcano job webhooks skip

    def __or__(self, other: Served) -> Served:
        return Served(
            self.groups | other.groups,
            self.charts | other.charts,
            self.namespaces | other.namespaces,
            self.queues | other.queues,
            self.open_queues | other.open_queues,
            self.webhook_exempt | other.webhook_exempt,
        )

    @staticmethod
    def union(items: Iterable[Served]) -> Served:
        out = Served()
        for item in items:
            out = out | item
        return out

    def settled(self) -> Served:
        """The same cluster once the controllers have caught up (between two releases)."""
        return Served(self.groups, self.charts, self.namespaces, self.queues, self.queues, self.webhook_exempt)


def helm_release_effects(helm_release: HelmRelease) -> Served:
    chart = CHARTS.get(helm_release.chart)
    exempt = frozenset({helm_release.namespace, "kube-system"}) if helm_release.chart == VOLCANO_CHART else frozenset()
    return Served(
        groups=frozenset(helm_release.groups),
        charts=frozenset({helm_release.chart}),
        namespaces=frozenset({helm_release.namespace}) if helm_release.create_namespace else frozenset(),
        queues=frozenset(chart.queues) if chart else frozenset(),
        webhook_exempt=exempt,
    )


def object_effects(obj: KubeObject) -> Served:
    if obj.kind == "Namespace" and obj.group == "":
        return Served(namespaces=frozenset({obj.name}))
    if obj.kind == "CustomResourceDefinition":
        return Served(groups=frozenset({str(obj.spec.get("group", ""))}))
    if obj.is_volcano_queue:
        return Served(queues=frozenset({obj.name}))
    return Served()


# --- Admission on create -----------------------------------------------------------------------


def create_refusal(obj: KubeObject, seen: Served) -> str | None:
    """Why the API server (or a webhook) refuses to create ``obj``, given what exists."""
    if obj.namespace and obj.namespace not in seen.namespaces:
        return f'namespaces "{obj.namespace}" not found'
    if any(obj.group in chart.groups for chart in CHARTS.values()) and obj.group not in seen.groups:
        charts = sorted(name for name, chart in CHARTS.items() if obj.group in chart.groups)
        return (
            f'no matches for kind "{obj.kind}" in version "{obj.api_version}" (its CRD comes with the Helm '
            f"release of {' or '.join(charts)}, which this resource does not depend on)"
        )
    if obj.ingress_class == ALB_INGRESS_CLASS and ALB_CHART not in seen.charts:
        return (
            f"IngressClass {ALB_INGRESS_CLASS} and its webhooks come with {ALB_CHART}, which this resource does "
            "not depend on"
        )
    if obj.is_volcano_job and (obj.namespace or "default") not in seen.webhook_exempt:
        return volcano_job_create_refusal(obj, seen)
    return None


def volcano_job_create_refusal(obj: KubeObject, seen: Served) -> str | None:
    """``validateJobCreate`` (admit_job.go): the queue must be in the cache and Open."""
    queue = str(obj.spec.get("queue") or "default")
    denied = 'admission webhook "validatejob.volcano.sh" denied the request:'
    if queue in seen.open_queues:
        return None
    if queue in seen.queues:
        return (
            f"{denied} can only submit job to queue with state `Open`, queue `{queue}` status is `` (nothing this "
            "resource depends on waits for the Volcano controller to open the queue)"
        )
    return f'{denied} unable to find job queue: queues.scheduling.volcano.sh "{queue}" not found'


# --- kubectl apply: the three-way JSON merge patch ----------------------------------------------


def create_merge_patch(original: Any, modified: Any) -> Any:
    """RFC 7386 patch turning ``original`` into ``modified`` (lists are replaced whole)."""
    if not isinstance(original, Mapping) or not isinstance(modified, Mapping):
        return modified
    patch: dict[str, Any] = {}
    for key in original:
        if key not in modified:
            patch[key] = None
    for key, value in modified.items():
        if key not in original:
            patch[key] = value
        elif original[key] != value:
            if isinstance(original[key], Mapping) and isinstance(value, Mapping):
                patch[key] = create_merge_patch(original[key], value)
            else:
                patch[key] = value
    return patch


def apply_merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = apply_merge_patch(out.get(key), value)
    return out


def _nulls(patch: Mapping[str, Any], keep: bool) -> dict[str, Any]:
    """``keepOrDeleteNullInJsonPatch``: only the deletions (``keep``), or all but them."""
    out: dict[str, Any] = {}
    for key, value in patch.items():
        if isinstance(value, Mapping) and value:
            inner = _nulls(value, keep)
            if inner:
                out[key] = inner
        elif (value is None) == keep:
            out[key] = value
    return out


def three_way_merge_patch(original: Mapping[str, Any], modified: Mapping[str, Any], current: Mapping[str, Any]) -> Any:
    """``CreateThreeWayJSONMergePatch``: the changes from ``current`` to ``modified`` plus the
    deletions from ``original`` (the last-applied configuration) to ``modified``."""
    additions = _nulls(create_merge_patch(current, modified), keep=False)
    deletions = _nulls(create_merge_patch(original, modified), keep=True)
    return apply_merge_patch(deletions, additions)


# --- Volcano jobs -------------------------------------------------------------------------------

VOLCANO_DEFAULT_MAX_RETRY: Final = 3  # mutate_job.go DefaultMaxRetry / defaultMaxRetry
VOLCANO_SCHEDULER: Final = "volcano"
UPDATE_REFUSED: Final = (
    'admission webhook "validatejob.volcano.sh" denied the request: job updates may not change fields other than '
    "`minAvailable`, `tasks[*].replicas under spec` and `PriorityClassName`"
)


def volcano_job_defaults(body: Mapping[str, Any]) -> dict[str, Any]:
    """The Job as stored after ``mutate_job.go`` ``createPatch`` (CREATE only)."""
    job = copy.deepcopy(dict(body))
    spec = job.setdefault("spec", {})
    spec["queue"] = spec.get("queue") or "default"
    spec["schedulerName"] = spec.get("schedulerName") or VOLCANO_SCHEDULER
    spec["maxRetry"] = spec.get("maxRetry") or VOLCANO_DEFAULT_MAX_RETRY
    tasks = spec.get("tasks") or []
    for index, task in enumerate(tasks):
        task["name"] = task.get("name") or f"default{index}"
        template_spec = task.get("template", {}).get("spec", {})
        if template_spec.get("hostNetwork") and not template_spec.get("dnsPolicy"):
            template_spec["dnsPolicy"] = "ClusterFirstWithHostNet"
        if task.get("minAvailable") is None:
            task["minAvailable"] = task.get("replicas", 0)
        task["maxRetry"] = task.get("maxRetry") or VOLCANO_DEFAULT_MAX_RETRY
    if not spec.get("minAvailable"):
        spec["minAvailable"] = sum(
            t["minAvailable"] if t.get("minAvailable") is not None else t.get("replicas", 0) for t in tasks
        )
    return job


def _normal(value: Any) -> Any:
    """Go's semantic equality on decoded JSON: nil and empty lists and maps are equal."""
    if isinstance(value, Mapping):
        items = {k: _normal(v) for k, v in value.items()}
        return {k: v for k, v in items.items() if v not in (None, {}, [])}
    if isinstance(value, list):
        return [_normal(v) for v in value]
    return value


def changed_paths(old: Any, new: Any, path: str) -> list[str]:
    old, new = _normal(old), _normal(new)
    if old == new:
        return []
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        return [p for key in sorted({*old, *new}) for p in changed_paths(old.get(key), new.get(key), f"{path}.{key}")]
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [p for i, (a, b) in enumerate(zip(old, new, strict=True)) for p in changed_paths(a, b, f"{path}[{i}]")]
    return [path]


def volcano_job_update_refusal(old: Mapping[str, Any], new: Mapping[str, Any]) -> str | None:
    """``validateJobUpdate`` (admit_job.go), on the live Job and the Job the patch makes of it."""
    old_spec, new_spec = copy.deepcopy(dict(old.get("spec", {}))), copy.deepcopy(dict(new.get("spec", {})))
    old_tasks, new_tasks = old_spec.get("tasks") or [], new_spec.get("tasks") or []
    if len(old_tasks) != len(new_tasks):
        return 'admission webhook "validatejob.volcano.sh" denied the request: job updates may not add or remove tasks'
    for key in ("minAvailable", "priorityClassName"):
        new_spec.pop(key, None)
        if key in old_spec:
            new_spec[key] = old_spec[key]
    for old_task, new_task in zip(old_tasks, new_tasks, strict=True):
        for key in ("replicas", "minAvailable"):
            new_task.pop(key, None)
            if key in old_task:
                new_task[key] = old_task[key]
    for volume in (*old_spec.get("volumes", []), *new_spec.get("volumes", [])):
        if volume.get("volumeClaim") is not None:
            volume.pop("volumeClaimName", None)
    changed = changed_paths(old_spec, new_spec, "spec")
    return f"{UPDATE_REFUSED} (changed: {', '.join(changed)})" if changed else None


# --- The cluster: objects applied release after release -----------------------------------------

# What `kubectl apply --prune` deletes when given no --prune-allowlist, as the handler calls it:
# kubernetes v1.35 staging/src/k8s.io/kubectl/pkg/util/prune/prune.go (defaultNamespacedPruneResources,
# defaultNonNamespacedPruneResources). Custom resources are never pruned.
PRUNED_KINDS: Final = frozenset(
    {
        ("", "ConfigMap"),
        ("", "Endpoints"),
        ("", "PersistentVolumeClaim"),
        ("", "Pod"),
        ("", "ReplicationController"),
        ("", "Secret"),
        ("", "Service"),
        ("batch", "Job"),
        ("batch", "CronJob"),
        ("networking.k8s.io", "Ingress"),
        ("apps", "DaemonSet"),
        ("apps", "Deployment"),
        ("apps", "ReplicaSet"),
        ("apps", "StatefulSet"),
        ("", "Namespace"),
        ("", "PersistentVolume"),
    }
)


@dataclass
class LiveObject:
    body: dict[str, Any]  # as stored (after mutating admission)
    last_applied: Mapping[str, Any]  # kubectl's last-applied-configuration


@dataclass
class Cluster:
    """What one cluster holds, applied by one stack release after release."""

    stack: str
    live: dict[tuple[str, str, str, str], LiveObject] = field(default_factory=dict)
    served: Served = field(default_factory=Served)  # what a later release can rely on
    left_behind: list[str] = field(default_factory=list)  # objects an update dropped and prune kept

    def create(self, obj: KubeObject, seen: Served, where: str) -> str | None:
        """``kubectl create`` of one object (or ``kubectl apply`` of one that does not exist)."""
        if obj.key in self.live:
            return f"{self.stack}: {where} creates {obj.ref}: it already exists"
        refusal = create_refusal(obj, seen)
        if refusal:
            return f"{self.stack}: {where} creates {obj.ref}: {refusal}"
        stored = volcano_job_defaults(obj.body) if self._webhooks_apply(obj, seen) else copy.deepcopy(dict(obj.body))
        self.live[obj.key] = LiveObject(stored, obj.body)
        return None

    def apply(self, obj: KubeObject, seen: Served, where: str) -> str | None:
        """``kubectl apply`` of one object."""
        live = self.live.get(obj.key)
        if live is None:
            return self.create(obj, seen, where)
        patch = three_way_merge_patch(live.last_applied, obj.body, live.body)
        if not patch:
            return None  # kubectl sends nothing: "unchanged"
        patched = apply_merge_patch(live.body, patch)
        if self._webhooks_apply(obj, seen):
            refusal = volcano_job_update_refusal(live.body, patched)
            if refusal:
                return f"{self.stack}: {where} updates {obj.ref}: {refusal}"
        self.live[obj.key] = LiveObject(patched, obj.body)
        return None

    def delete(self, obj: KubeObject) -> None:
        self.live.pop(obj.key, None)

    @staticmethod
    def _webhooks_apply(obj: KubeObject, seen: Served) -> bool:
        return obj.is_volcano_job and (obj.namespace or "default") not in seen.webhook_exempt

    def kubectl_create(self, manifest: Manifest, seen: Served) -> list[str]:
        """The handler's Create: every object in manifest order, each seeing the ones before it."""
        refusals = []
        for obj in manifest.objects:
            refusal = self.create(obj, seen, manifest.logical_id)
            if refusal:
                refusals.append(refusal)
            else:
                seen = seen | object_effects(obj)
        return refusals

    def kubectl_apply(self, manifest: Manifest, previous: Manifest | None, seen: Served) -> list[str]:
        """The handler's Update: apply every object, then prune what the old manifest had and
        the new one does not (``--prune -l <PruneLabel>``)."""
        refusals = []
        for obj in manifest.objects:
            refusal = self.apply(obj, seen, manifest.logical_id)
            if refusal:
                refusals.append(refusal)
            else:
                seen = seen | object_effects(obj)
        kept = {obj.key for obj in manifest.objects}
        for obj in previous.objects if previous else ():
            if obj.key in kept:
                continue
            if manifest.prune_label and (obj.group, obj.kind) in PRUNED_KINDS:
                self.delete(obj)
            else:
                self.left_behind.append(
                    f"{self.stack}: {manifest.logical_id} leaves {obj.ref} behind: kubectl apply --prune removes "
                    f"only the kinds of its default allowlist, not {obj.group or 'core'} {obj.kind}"
                )
        return refusals

    def release(self, new: ClusterTemplate, old: ClusterTemplate | None = None) -> None:
        """Deploy ``new`` (create the stack, or update it from ``old``): each resource in an order
        CloudFormation allows, each relying only on what it depends on and on what earlier
        releases left (settled: the controllers caught up between releases)."""
        baseline = self.served
        effects: dict[str, Served] = {}
        refusals: list[str] = []
        old_manifests = old.manifests if old else {}
        old_values = old.object_values if old else {}
        helm_releases = {r.logical_id: r for r in new.helm_releases.values()}
        for lid in new.creation_order:
            seen = baseline | Served.union(effects.get(dep, Served()) for dep in new.depends_on(lid))
            if lid in helm_releases:
                effects[lid] = helm_release_effects(helm_releases[lid])
            elif lid in new.manifests:
                manifest = new.manifests[lid]
                previous = old_manifests.get(lid)
                if previous is None:
                    refusals += self.kubectl_create(manifest, seen)
                elif (previous.text, previous.prune_label) != (manifest.text, manifest.prune_label):
                    refusals += self.kubectl_apply(manifest, previous, seen)
                effects[lid] = Served.union(object_effects(obj) for obj in manifest.objects)
            elif lid in new.object_values:
                value = new.object_values[lid]
                if old_values.get(lid) == value:
                    continue  # unchanged: CloudFormation does not run it again
                problem, opened = self._wait(value, seen)
                if problem:
                    refusals.append(f"{self.stack}: {lid} {problem}")
                effects[lid] = opened
        for lid, previous in old_manifests.items():
            if lid not in new.manifests:
                for obj in previous.objects:
                    self.delete(obj)
        if refusals:
            raise ReleaseError("\n".join(refusals))
        self.served = (baseline | Served.union(effects.values())).settled()

    @staticmethod
    def _wait(value: ObjectValue, seen: Served) -> tuple[str | None, Served]:
        """What a KubernetesObjectValue waits for, and what the resources after it can rely on."""
        if value.path_problem:
            return f"never returns a value: {value.path_problem}", Served()
        if value.reads_queue_state:
            if value.object_name not in seen.queues:
                return (
                    f"waits for queue {value.object_name}, which nothing it depends on creates (kubectl get keeps "
                    "answering NotFound until the timeout)",
                    Served(),
                )
            return None, Served(open_queues=frozenset({value.object_name}))
        return None, Served()


def create_stack(stack: str, template: Mapping[str, Any]) -> Cluster:
    """A cluster after the first deploy of its stack."""
    cluster = Cluster(stack)
    cluster.release(ClusterTemplate(stack, template))
    return cluster


def cluster_after(stack: str, charts: Iterable[str], objects: Sequence[KubeObject]) -> Cluster:
    """A cluster an earlier release left with the Helm releases of ``charts`` installed and
    ``objects`` created, the controllers caught up (its queues open)."""
    served = Served.union(
        Served(
            groups=frozenset(CHARTS[chart].groups),
            charts=frozenset({chart}),
            queues=frozenset(CHARTS[chart].queues),
            webhook_exempt=frozenset({"kube-system", f"{chart}-system"}) if chart == VOLCANO_CHART else frozenset(),
        )
        for chart in charts
    )
    served = (served | Served.union(object_effects(obj) for obj in objects)).settled()
    cluster = Cluster(stack, served=served)
    refusals = [r for obj in objects if (r := cluster.create(obj, served, "an earlier release"))]
    if refusals:
        raise ReleaseError("\n".join(refusals))
    return cluster


# --- Delete: what a finalizer's controller needs until it is done -----------------------------


@dataclass(frozen=True)
class Finalizer:
    name: str
    chart: str  # the chart of the controller that removes it
    source: str  # where upstream adds it


def finalizers_of(obj: KubeObject) -> tuple[Finalizer, ...]:
    """The finalizers a controller of the app puts on ``obj`` (or on what it owns and deletes
    with it), and where upstream adds each."""
    if obj.ingress_class == ALB_INGRESS_CLASS:
        group = obj.annotations.get("alb.ingress.kubernetes.io/group.name")
        # kubernetes-sigs/aws-load-balancer-controller@v2.17.1 pkg/ingress/finalizer.go
        # buildGroupFinalizer (chart 1.17.1 ships v2.17.1).
        name = f"group.ingress.k8s.aws/{group}" if group else "ingress.k8s.aws/resources"
        return (Finalizer(name, ALB_CHART, "aws-load-balancer-controller@v2.17.1 pkg/ingress/finalizer.go"),)
    if obj.group == "karpenter.k8s.aws" and obj.kind == "EC2NodeClass":
        # aws/karpenter-provider-aws@v1.14.1 pkg/controllers/nodeclass/controller.go: held until
        # no NodeClaim uses the class (pkg/apis/v1/labels.go TerminationFinalizer).
        return (
            Finalizer(
                "karpenter.k8s.aws/termination",
                KARPENTER_CHART,
                "karpenter-provider-aws@v1.14.1 pkg/controllers/nodeclass/controller.go",
            ),
        )
    if obj.group == "karpenter.sh" and obj.kind == "NodePool":
        # The NodePool itself carries none; its NodeClaims (owner: the NodePool, deleted with it)
        # carry karpenter.sh/termination until their node is drained and the instance terminated:
        # kubernetes-sigs/karpenter@v1.14.1 pkg/controllers/nodeclaim/lifecycle/controller.go.
        return (
            Finalizer(
                "karpenter.sh/termination (on its NodeClaims)",
                KARPENTER_CHART,
                "karpenter@v1.14.1 pkg/controllers/nodeclaim/lifecycle/controller.go",
            ),
        )
    if obj.group == "keda.sh" and obj.kind in {"ScaledObject", "ScaledJob"}:
        # kedacore/keda@v2.20.2 controllers/keda/scaledobject_finalizer.go, scaledjob_finalizer.go
        return (Finalizer("finalizer.keda.sh", KEDA_CHART, "keda@v2.20.2 controllers/keda/scaledobject_finalizer.go"),)
    if obj.group == "keda.sh" and obj.kind in {"TriggerAuthentication", "ClusterTriggerAuthentication"}:
        # kedacore/keda@v2.20.2 controllers/keda/util/finalizer.go (authenticationFinalizer)
        return (Finalizer("finalizer.keda.sh", KEDA_CHART, "keda@v2.20.2 controllers/keda/util/finalizer.go"),)
    return ()


@dataclass(frozen=True)
class Need:
    logical_id: str
    label: str  # how a line names it: its type and name


def _label(template: ClusterTemplate, lid: str) -> str:
    kind = template.resources[lid]["Type"]
    props = template.props(lid)
    names = {
        ADDON_TYPE: props.get("AddonName"),
        HELM_TYPE: props.get("Release"),
        NODEGROUP_TYPE: props.get("NodegroupName"),
        POD_IDENTITY_TYPE: f"{props.get('Namespace')}/{props.get('ServiceAccount')}",
        "AWS::IAM::Role": props.get("RoleName"),
    }
    name = names.get(kind)
    return f"{kind} {name if isinstance(name, str) else lid}"


def _target(template: ClusterTemplate, value: object) -> str | None:
    """The resource a property refers to (Ref or Fn::GetAtt), if it is in the template."""
    lid = token_target(resolve_text(value))
    return lid if lid is not None and lid in template.resources else None


def _role_policies(template: ClusterTemplate, role: str) -> list[str]:
    """The IAM policies attached to ``role``: those naming it and the managed ones it names."""
    attached = [
        lid for lid in template.of_type(*POLICY_TYPES) if {"Ref": role} in (template.props(lid).get("Roles") or [])
    ]
    named = [
        target for arn in template.props(role).get("ManagedPolicyArns") or [] if (target := _target(template, arn))
    ]
    return [*attached, *named]


def controller_needs(template: ClusterTemplate, helm_release: HelmRelease) -> list[Need]:
    """What a controller's pods need until they have removed the last finalizer."""
    needs = [Need(helm_release.logical_id, _label(template, helm_release.logical_id))]
    path, default = SERVICE_ACCOUNTS.get(helm_release.chart, ((), helm_release.name))
    account = _at(helm_release.values, path) or default
    for lid in template.of_type(POD_IDENTITY_TYPE):
        props = template.props(lid)
        if props.get("Namespace") == helm_release.namespace and props.get("ServiceAccount") == account:
            needs.append(Need(lid, _label(template, lid)))
            role = _target(template, props.get("RoleArn"))
            if role is not None:
                needs.append(Need(role, _label(template, role)))
                needs += [Need(p, _label(template, p)) for p in _role_policies(template, role)]
    selector = helm_release.values.get("nodeSelector") or {}
    for lid in template.of_type(NODEGROUP_TYPE):
        labels = template.props(lid).get("Labels") or {}
        if all(labels.get(k) == v for k, v in selector.items()):
            needs.append(Need(lid, _label(template, lid)))
    for lid in template.of_type(ADDON_TYPE):
        props = template.props(lid)
        if props.get("AddonName") in ADDONS_CONTROLLERS_NEED and not _bool(props.get("PreserveOnDelete")):
            needs.append(Need(lid, _label(template, lid)))
    return needs


def karpenter_needs(template: ClusterTemplate, helm_release: HelmRelease, obj: KubeObject) -> list[Need]:
    """What Karpenter needs besides its pods to remove the nodes of ``obj``: the node role's
    access entry (the nodes' kubelets must stay authorized while they drain) and the
    interruption queue its settings name."""
    classes = {o.name: o for _, o in template.objects() if o.group == "karpenter.k8s.aws" and o.kind == "EC2NodeClass"}
    node_class = (
        obj if obj.kind == "EC2NodeClass" else classes.get(_at(obj.spec, ("template", "spec", "nodeClassRef", "name")))
    )
    needs = []
    role_name = node_class.spec.get("role") if node_class else None
    roles = [lid for lid in template.of_type("AWS::IAM::Role") if template.props(lid).get("RoleName") == role_name]
    for lid in template.of_type(ACCESS_ENTRY_TYPE):
        if _target(template, template.props(lid).get("PrincipalArn")) in roles:
            needs.append(Need(lid, f"{ACCESS_ENTRY_TYPE} of {role_name}"))
    queue = _target(template, _at(helm_release.values, ("settings", "interruptionQueue")))
    if queue is not None:
        needs.append(Need(queue, _label(template, queue)))
    return needs


def _object_needs(template: ClusterTemplate, obj: KubeObject) -> list[tuple[str, Need, str]]:
    """``(controller's Helm release, need, finalizer)`` for each finalizer of ``obj``."""
    found = []
    for finalizer in finalizers_of(obj):
        helm_release = template.helm_release_of_chart(finalizer.chart)
        if helm_release is None:
            continue  # no controller in the stack: create_refusal already refuses the object
        needs = controller_needs(template, helm_release)
        if finalizer.chart == KARPENTER_CHART:
            needs += karpenter_needs(template, helm_release, obj)
        found += [(helm_release.name, need, finalizer.name) for need in needs]
    return found


def delete_order_problems(stack: str, template: Mapping[str, Any]) -> list[str]:
    """One line per thing a finalizer's controller needs that CloudFormation may delete before
    the manifest holding the finalized object (it deletes A before B only if A depends on B)."""
    tpl = ClusterTemplate(stack, template)
    lines: list[str] = []
    for manifest in tpl.manifests.values():
        deps = tpl.depends_on(manifest.logical_id)
        for obj in manifest.objects:
            for controller, need, finalizer in _object_needs(tpl, obj):
                if need.logical_id not in deps:
                    lines.append(
                        f"{stack}: {obj.ref} is not deleted before {need.label}, which {controller} needs to remove "
                        f"it (finalizer {finalizer})"
                    )
            if obj.kind == "Namespace" and obj.group == "":
                lines += _namespace_problems(tpl, obj, deps)
    return list(dict.fromkeys(lines))


def _namespace_problems(template: ClusterTemplate, namespace: KubeObject, deps: frozenset[str]) -> list[str]:
    """A Namespace is gone only when everything in it is: it needs every controller that
    finalizes an object in it (wherever that object is applied from)."""
    inside: dict[tuple[str, Need], list[str]] = {}
    for _, obj in template.objects():
        if obj.namespace == namespace.name:
            for controller, need, _finalizer in _object_needs(template, obj):
                inside.setdefault((controller, need), []).append(obj.ref)
    return [
        f"{template.stack}: {namespace.ref} is not deleted before {need.label}, which {controller} needs to remove "
        f"{', '.join(dict.fromkeys(refs))} in it"
        for (controller, need), refs in inside.items()
        if need.logical_id not in deps
    ]


def check_delete_order(stack: str, template: Mapping[str, Any]) -> None:
    problems = delete_order_problems(stack, template)
    if problems:
        raise ReleaseError("\n".join(problems))
