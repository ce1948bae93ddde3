"""The endpoint inventory publisher: one Kubernetes Deployment of ``python -m runtime.inventory`` writing the
inventory table through its EKS Pod Identity role, with RBAC that reads and makes two narrow writes.

It reads Services, EndpointSlices, Ingresses and Pods of the app namespace (a Role) and Nodes;
it patches the serving Ingress only (``resourceNames``: the ALB's weights) and pods only to open
their image gate (:data:`IMAGE_GATE_POLICY`). It runs on the controller node group, which is always
present. Why one in-cluster publisher, its role and its image:
docs/adr/0005-one-inventory-publisher-not-self-registering-pods.md.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Final

import cdk8s
from cdk8s_plus_35 import k8s
from constructs import Construct

from charts import pods, serving
from plan import contract, images, naming, topology
from plan.config import AppConfig

NAME: Final = "endpoint-inventory"
SERVICE_ACCOUNT: Final = NAME  # the Pod Identity association names it
NAMESPACE: Final = topology.NAMESPACE
READ_VERBS: Final = ("get", "list", "watch")
# RBAC cannot restrict list/watch by name, and a patch names its object: patch the one Ingress only.
INGRESS_WRITE_VERBS: Final = ("patch",)
# Pods: read, and patch to open their image gate; IMAGE_GATE_POLICY admits no other change.
POD_VERBS: Final = ("get", "list", "patch")
IMAGE_GATE_POLICY: Final = f"{NAME}-opens-image-gates-only"


def _same(field: str) -> str:
    """CEL: ``field`` of the pod is unchanged by the update (absent before and after, or equal)."""
    new, old = f"object.{field}", f"oldObject.{field}"
    return f"has({new}) == has({old}) && (!has({new}) || {new} == {old})"


# What an update by the publisher may do to a pod: remove our scheduling gate, and nothing else
# a pod update can change (images, scheduling constraints of a gated pod, deadline, metadata).
IMAGE_GATE_RULE: Final = " && ".join(
    [
        "has(oldObject.spec.schedulingGates)",
        f"oldObject.spec.schedulingGates.exists(g, g.name == '{contract.SCHEDULING_GATE_IMAGE}')",
        "(has(object.spec.schedulingGates) ? object.spec.schedulingGates : [])"
        f" == oldObject.spec.schedulingGates.filter(g, g.name != '{contract.SCHEDULING_GATE_IMAGE}')",
        "object.spec.containers == oldObject.spec.containers",
        *(
            _same(field)
            for field in (
                "spec.initContainers",
                "spec.nodeSelector",
                "spec.affinity",
                "spec.tolerations",
                "spec.activeDeadlineSeconds",
                "metadata.labels",
                "metadata.annotations",
                "metadata.ownerReferences",
                "metadata.finalizers",
            )
        ),
    ]
)


@dataclass(frozen=True)
class PublisherProps:
    """Publisher knobs; defaults in one place."""

    interval_s: int = 15
    ttl_s: int = 60  # four heartbeats
    cpu_request: str = "50m"
    memory: str = "256Mi"
    address_types: tuple[str, ...] = ("ExternalIP",)


def publisher_username() -> str:
    """How the API server names the publisher in an admission request."""
    return f"system:serviceaccount:{NAMESPACE}:{SERVICE_ACCOUNT}"


class InventoryChart(cdk8s.Chart):
    """ServiceAccount, Role/ClusterRole (reads, the Ingress patch, image gate pod patches), bindings, the publisher."""

    def __init__(
        self, scope: Construct, construct_id: str, *, config: AppConfig, props: PublisherProps | None = None
    ) -> None:
        super().__init__(scope, construct_id, disable_resource_name_hashes=True)
        props = props or PublisherProps()
        labels = {
            "app.kubernetes.io/name": NAME,
            "app.kubernetes.io/component": "inventory-publisher",
            "app.kubernetes.io/part-of": topology.PART_OF,
        }
        meta = k8s.ObjectMeta(name=NAME, namespace=NAMESPACE, labels=labels)
        subject = k8s.Subject(kind="ServiceAccount", name=SERVICE_ACCOUNT, namespace=NAMESPACE)
        k8s.KubeServiceAccount(self, "ServiceAccount", metadata=meta)
        k8s.KubeRole(
            self,
            "Role",
            metadata=meta,
            rules=[
                k8s.PolicyRule(api_groups=[""], resources=["services"], verbs=list(READ_VERBS)),
                k8s.PolicyRule(api_groups=["discovery.k8s.io"], resources=["endpointslices"], verbs=list(READ_VERBS)),
                k8s.PolicyRule(api_groups=["networking.k8s.io"], resources=["ingresses"], verbs=list(READ_VERBS)),
                k8s.PolicyRule(
                    api_groups=["networking.k8s.io"],
                    resources=["ingresses"],
                    resource_names=[serving.INGRESS_NAME],
                    verbs=list(INGRESS_WRITE_VERBS),
                ),
                k8s.PolicyRule(api_groups=[""], resources=["pods"], verbs=list(POD_VERBS)),
            ],
        )
        self._image_gate_policy(labels)
        k8s.KubeRoleBinding(
            self,
            "RoleBinding",
            metadata=meta,
            role_ref=k8s.RoleRef(api_group="rbac.authorization.k8s.io", kind="Role", name=NAME),
            subjects=[subject],
        )
        cluster_meta = k8s.ObjectMeta(name=NAME, labels=labels)
        k8s.KubeClusterRole(
            self,
            "ClusterRole",
            metadata=cluster_meta,
            rules=[k8s.PolicyRule(api_groups=[""], resources=["nodes"], verbs=list(READ_VERBS))],
        )
        k8s.KubeClusterRoleBinding(
            self,
            "ClusterRoleBinding",
            metadata=cluster_meta,
            role_ref=k8s.RoleRef(api_group="rbac.authorization.k8s.io", kind="ClusterRole", name=NAME),
            subjects=[subject],
        )
        self.workload = k8s.KubeDeployment(
            self,
            "Deployment",
            metadata=meta,
            spec=k8s.DeploymentSpec(
                replicas=1,  # one writer; TTL covers the gap while it is rescheduled
                selector=k8s.LabelSelector(match_labels={"app.kubernetes.io/name": NAME}),
                strategy=k8s.DeploymentStrategy(type="Recreate"),  # never two writers racing deletes
                revision_history_limit=5,
                template=k8s.PodTemplateSpec(
                    metadata=k8s.ObjectMeta(labels=labels), spec=self._pod_spec(config, props)
                ),
            ),
        )

    @staticmethod
    def environment(config: AppConfig, props: PublisherProps) -> dict[str, str]:
        weights = dict(topology.ingress_weights(config))  # ALB weight preference and the client's tie-break
        return {
            contract.ENV_INVENTORY_TABLE: naming.inventory_table_name(config),
            contract.ENV_INVENTORY_CLUSTER: config.cluster_name,
            contract.ENV_INVENTORY_NAMESPACE: NAMESPACE,
            contract.ENV_INVENTORY_INTERVAL_S: str(props.interval_s),
            contract.ENV_INVENTORY_TTL_S: str(props.ttl_s),
            contract.ENV_INVENTORY_COST_WEIGHTS: json.dumps(weights, sort_keys=True, separators=(",", ":")),
            contract.ENV_INVENTORY_ADDRESS_TYPES: ",".join(props.address_types),
            contract.ENV_MODEL_ID: config.model_id,
            contract.ENV_AWS_REGION: config.region,  # IMDS is out of reach from pods (hop limit 1)
        }

    def _pod_spec(self, config: AppConfig, props: PublisherProps) -> k8s.PodSpec:
        memory = k8s.Quantity.from_string(props.memory)
        check = ["python", "-m", contract.INVENTORY_MODULE, "--check"]
        return k8s.PodSpec(
            service_account_name=SERVICE_ACCOUNT,
            # The one workload of the app that calls the Kubernetes API (Services, EndpointSlices,
            # Nodes, the Ingress, Pods): it needs the token; Pod Identity injects its own beside it.
            automount_service_account_token=True,
            node_selector=dict(naming.CONTROLLER_NODE_LABELS),  # set on them by ClusterStack
            security_context=pods.pod_security_context(),
            termination_grace_period_seconds=10,  # nothing to drain: entries live on until their TTL
            containers=[
                k8s.Container(
                    name="publisher",
                    image=images.publisher_image_uri(config),
                    image_pull_policy="IfNotPresent",
                    command=["python", "-m", contract.INVENTORY_MODULE],
                    env=pods.env_vars(self.environment(config, props)),
                    resources=k8s.ResourceRequirements(
                        requests={"cpu": k8s.Quantity.from_string(props.cpu_request), "memory": memory},
                        limits={"memory": memory},
                    ),
                    security_context=pods.container_security_context(),
                    volume_mounts=[k8s.VolumeMount(name="scratch", mount_path=pods.SCRATCH_MOUNT)],
                    # Alive = a cycle succeeded within three intervals (runtime.inventory.publisher.healthy).
                    liveness_probe=k8s.Probe(
                        exec=k8s.ExecAction(command=check),
                        initial_delay_seconds=props.interval_s * 3,
                        period_seconds=props.interval_s,
                        failure_threshold=2,
                        timeout_seconds=10,
                    ),
                )
            ],
            volumes=[
                k8s.Volume(
                    name="scratch", empty_dir=k8s.EmptyDirVolumeSource(size_limit=k8s.Quantity.from_string("16Mi"))
                )
            ],
        )

    def _image_gate_policy(self, labels: dict[str, str]) -> None:
        """Pod patches by the publisher may only open the image gate (ValidatingAdmissionPolicy):
        RBAC cannot narrow a pod patch to one field, and an image change would be code execution."""
        meta = k8s.ObjectMeta(name=IMAGE_GATE_POLICY, labels=labels)
        k8s.KubeValidatingAdmissionPolicy(
            self,
            "ImageGatePolicy",
            metadata=meta,
            spec=k8s.ValidatingAdmissionPolicySpec(
                failure_policy="Fail",
                match_constraints=k8s.MatchResources(
                    namespace_selector=k8s.LabelSelector(
                        match_labels={"kubernetes.io/metadata.name": topology.NAMESPACE}
                    ),
                    resource_rules=[
                        k8s.NamedRuleWithOperations(
                            api_groups=[""], api_versions=["v1"], operations=["UPDATE"], resources=["pods"]
                        )
                    ],
                ),
                match_conditions=[
                    k8s.MatchCondition(
                        name="by-the-publisher", expression=f"request.userInfo.username == '{publisher_username()}'"
                    )
                ],
                validations=[
                    k8s.Validation(
                        expression=IMAGE_GATE_RULE,
                        message=f"the inventory publisher may only remove the {contract.SCHEDULING_GATE_IMAGE} "
                        "scheduling gate of a pod",
                        reason="Forbidden",
                    )
                ],
            ),
        )
        k8s.KubeValidatingAdmissionPolicyBinding(
            self,
            "ImageGatePolicyBinding",
            metadata=meta,
            spec=k8s.ValidatingAdmissionPolicyBindingSpec(policy_name=IMAGE_GATE_POLICY, validation_actions=["Deny"]),
        )
