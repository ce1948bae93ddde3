"""Device plugins: they advertise ``nvidia.com/gpu`` and ``aws.amazon.com/neuron`` to the kubelet.

Static DaemonSets adapted from the upstream manifests vendored in third_party/, not the vendors'
Helm charts, because each plugin is one DaemonSet and nothing else of those charts is wanted. What
changes from upstream, what is kept, and why Bottlerocket nodes get no NVIDIA DaemonSet:
docs/adr/0011-device-plugins-as-static-daemonsets.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import cdk8s
from cdk8s_plus_35 import k8s
from constructs import Construct

from charts import pods
from plan import topology, versions
from plan.accelerators import ACCELERATORS, Accelerator
from plan.config import AppConfig

NAMESPACE: Final = "kube-system"
DEVICE_PLUGINS_DIR: Final = "/var/lib/kubelet/device-plugins"


@dataclass(frozen=True)
class DevicePlugin:
    """One accelerator's device plugin: what differs between vendors, nothing more."""

    accelerator: str  # row of plan.accelerators
    name: str
    image: str
    host_paths: tuple[tuple[str, str], ...]  # (volume name, host path), mounted at the same path
    env: tuple[tuple[str, str | None], ...] = ()  # value None: the node name (downward API)
    cluster_rules: tuple[k8s.PolicyRule, ...] = ()  # RBAC, if the plugin talks to the API server
    in_bottlerocket: bool = False  # Bottlerocket's image runs this plugin itself


# Neuron's plugin labels its node and records which pod got which cores (upstream RBAC).
NEURON_RULES: Final = (
    k8s.PolicyRule(api_groups=[""], resources=["nodes"], verbs=["get", "list", "watch"]),
    k8s.PolicyRule(api_groups=[""], resources=["events"], verbs=["create", "patch"]),
    k8s.PolicyRule(api_groups=[""], resources=["pods"], verbs=["update", "patch", "get", "list", "watch"]),
    k8s.PolicyRule(api_groups=[""], resources=["nodes/status"], verbs=["patch", "update"]),
)

DEVICE_PLUGINS: Final = (
    DevicePlugin(
        accelerator="nvidia",
        name="nvidia-device-plugin",
        image=versions.NVIDIA_DEVICE_PLUGIN_IMAGE,
        host_paths=(("device-plugins", DEVICE_PLUGINS_DIR),),
        in_bottlerocket=True,
    ),
    DevicePlugin(
        accelerator="neuron",
        name="neuron-device-plugin",
        image=versions.NEURON_DEVICE_PLUGIN_IMAGE,
        # /run: the Neuron driver's device map the plugin reads.
        host_paths=(("device-plugins", DEVICE_PLUGINS_DIR), ("neuron-device-map", "/run")),
        # As upstream: the plugin reads both (NODE_NAME from the downward API).
        env=(("KUBECONFIG", "/etc/kubernetes/kubelet.conf"), ("NODE_NAME", None)),
        cluster_rules=NEURON_RULES,
    ),
)


class DevicePluginsChart(cdk8s.Chart):
    """A device plugin DaemonSet for each enabled accelerator that has a device."""

    def __init__(self, scope: Construct, construct_id: str, *, config: AppConfig) -> None:
        super().__init__(scope, construct_id, disable_resource_name_hashes=True)
        self.daemon_sets: dict[str, k8s.KubeDaemonSet] = {}
        on_bottlerocket = config.node_image.family == "bottlerocket"
        for plugin in DEVICE_PLUGINS:
            if plugin.accelerator in config.accelerators and not (on_bottlerocket and plugin.in_bottlerocket):
                self.daemon_sets[plugin.accelerator] = self._plugin(plugin, ACCELERATORS[plugin.accelerator])

    def _plugin(self, plugin: DevicePlugin, accelerator: Accelerator) -> k8s.KubeDaemonSet:
        labels = {"app.kubernetes.io/name": plugin.name, "app.kubernetes.io/part-of": topology.PART_OF}
        service_account = self._rbac(plugin, labels) if plugin.cluster_rules else None
        return k8s.KubeDaemonSet(
            self,
            plugin.name,
            metadata=k8s.ObjectMeta(name=plugin.name, namespace=NAMESPACE, labels=labels),
            spec=k8s.DaemonSetSpec(
                selector=k8s.LabelSelector(match_labels=labels),
                update_strategy=k8s.DaemonSetUpdateStrategy(type="RollingUpdate"),
                template=k8s.PodTemplateSpec(
                    metadata=k8s.ObjectMeta(labels=labels),
                    spec=k8s.PodSpec(
                        service_account_name=service_account,
                        automount_service_account_token=service_account is not None,
                        priority_class_name="system-node-critical",
                        node_selector={topology.NODE_LABEL_ACCELERATOR: accelerator.name},
                        tolerations=pods.tolerations(accelerator),
                        security_context=k8s.PodSecurityContext(
                            seccomp_profile=k8s.SeccompProfile(type="RuntimeDefault")
                        ),
                        containers=[
                            k8s.Container(
                                name=plugin.name,
                                image=plugin.image,
                                image_pull_policy="IfNotPresent",
                                env=_env(plugin.env) or None,
                                # Device plugins register on the kubelet's socket, so they run as
                                # root (as upstream), but without capabilities or privilege escalation.
                                security_context=k8s.SecurityContext(
                                    allow_privilege_escalation=False,
                                    capabilities=k8s.Capabilities(drop=["ALL"]),
                                ),
                                resources=k8s.ResourceRequirements(
                                    requests={
                                        "cpu": k8s.Quantity.from_string("10m"),
                                        "memory": k8s.Quantity.from_string("64Mi"),
                                    },
                                    limits={"memory": k8s.Quantity.from_string("256Mi")},
                                ),
                                volume_mounts=[
                                    k8s.VolumeMount(name=name, mount_path=path) for name, path in plugin.host_paths
                                ],
                            )
                        ],
                        volumes=[
                            k8s.Volume(name=name, host_path=k8s.HostPathVolumeSource(path=path, type="Directory"))
                            for name, path in plugin.host_paths
                        ],
                    ),
                ),
            ),
        )

    def _rbac(self, plugin: DevicePlugin, labels: dict[str, str]) -> str:
        k8s.KubeServiceAccount(
            self, f"{plugin.name}-sa", metadata=k8s.ObjectMeta(name=plugin.name, namespace=NAMESPACE, labels=labels)
        )
        k8s.KubeClusterRole(
            self,
            f"{plugin.name}-role",
            metadata=k8s.ObjectMeta(name=plugin.name, labels=labels),
            rules=list(plugin.cluster_rules),
        )
        k8s.KubeClusterRoleBinding(
            self,
            f"{plugin.name}-binding",
            metadata=k8s.ObjectMeta(name=plugin.name, labels=labels),
            role_ref=k8s.RoleRef(api_group="rbac.authorization.k8s.io", kind="ClusterRole", name=plugin.name),
            subjects=[k8s.Subject(kind="ServiceAccount", name=plugin.name, namespace=NAMESPACE)],
        )
        return plugin.name


def _env(values: Sequence[tuple[str, str | None]]) -> list[k8s.EnvVar]:
    return [
        k8s.EnvVar(name=name, value=value)
        if value is not None
        else k8s.EnvVar(
            name=name, value_from=k8s.EnvVarSource(field_ref=k8s.ObjectFieldSelector(field_path="spec.nodeName"))
        )
        for name, value in values
    ]
