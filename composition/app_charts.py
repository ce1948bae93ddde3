"""Every chart of the app applied to the cluster, after the roles its pods use.

Each chart of ``charts.build.add_charts`` is applied with ``ClusterStack.apply_charts`` (after
the controllers), each after the charts it depends on and after the Pod Identity roles its pods
use: an association must exist before the pod is created for the pod to get credentials. The
compile jobs also wait until the Volcano controller has opened their queue. This is where the
stacks and the charts meet, so neither has to import the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, cast

import aws_cdk as cdk
import cdk8s
from aws_cdk import aws_eks_v2 as eks

from charts import compile_jobs
from charts.build import AppCharts, add_charts
from plan import topology
from plan.config import AppConfig
from stacks import workload_roles
from stacks.cluster import ClusterStack
from stacks.cluster.pod_identity import PodIdentityRole

# How long the compile jobs' manifest waits for the Volcano controller to open their queue
# (it does so on the queue's first sync, normally within a second).
QUEUE_OPEN_TIMEOUT: Final = cdk.Duration.minutes(5)


@dataclass(frozen=True)
class AppChartsOnCluster:
    charts: AppCharts
    manifests: dict[str, eks.KubernetesManifest]  # chart id -> manifest, for charts applied whole
    compile_jobs: list[eks.KubernetesManifest]  # the compile jobs' chart, one manifest per object
    serving_identities: dict[str, PodIdentityRole]  # service account -> role and association
    compile_identity: PodIdentityRole


def add_app_charts(cluster: ClusterStack, config: AppConfig) -> AppChartsOnCluster:
    """Create the workload roles and apply every chart of the app to ``cluster``."""
    serving_identities = {
        placement.name: cluster.add_pod_identity_role(
            f"Serving-{placement.name}",
            namespace=topology.NAMESPACE,
            service_account=placement.name,
            statements=workload_roles.serving_statements(config, placement),
        )
        for placement in topology.placements(config)
    }
    compile_identity = cluster.add_pod_identity_role(
        "ModelCompiler",
        namespace=topology.NAMESPACE,
        service_account=compile_jobs.SERVICE_ACCOUNT,
        statements=[*workload_roles.read_models_statements(config), workload_roles.write_models_statement(config)],
    )
    for identity in serving_identities.values():
        workload_roles.acknowledge_workload_role(
            identity.role, config, puts_metrics=True, reads_token_key=config.auth.mode == "token"
        )
    workload_roles.acknowledge_workload_role(compile_identity.role, config, puts_metrics=False, reads_models=True)

    charts = add_charts(cdk8s.App(), config)
    whole = [chart for chart in charts.all if chart is not charts.compile_jobs]
    manifests = dict(zip((c.node.id for c in whole), cluster.apply_charts(whole), strict=True))
    # Compile Jobs are replaced, never updated: one manifest each, so a renamed one is deleted.
    job_manifests = cluster.apply_objects(charts.compile_jobs)
    queue_open = wait_for_queue_state(cluster, manifests[charts.compile_queue.node.id])
    for chart in charts.all:
        applied = job_manifests if chart is charts.compile_jobs else [manifests[chart.node.id]]
        for manifest in applied:
            for dependency in chart.node.dependencies:
                manifest.node.add_dependency(manifests[dependency.node.id])
    # Pods get Pod Identity credentials only if the association exists when they are admitted.
    for identity in serving_identities.values():
        manifests[charts.serving.node.id].node.add_dependency(identity)
    for manifest in job_manifests:
        manifest.node.add_dependency(compile_identity, queue_open)
    return AppChartsOnCluster(charts, manifests, job_manifests, serving_identities, compile_identity)


def wait_for_queue_state(cluster: ClusterStack, queue_manifest: eks.KubernetesManifest) -> eks.KubernetesObjectValue:
    """A read of the compile queue's ``status.state`` that returns once the Volcano controller has set
    it (the kubectl handler retries until the value is non-empty): Volcano's job webhook refuses a
    Job whose queue is not ``Open`` yet, and the queue controller opens a new queue on its first sync."""
    state = eks.KubernetesObjectValue(
        cluster,
        "ModelBuildQueueState",  # a CloudFormation logical id: keeps its published name
        cluster=cast(eks.ICluster, cluster.cluster),  # jsii's ICluster Protocol misses kubectl_provider_options
        object_type=compile_jobs.QUEUE_RESOURCE,
        object_name=compile_jobs.QUEUE_NAME,
        json_path=compile_jobs.QUEUE_STATE_PATH,
        timeout=QUEUE_OPEN_TIMEOUT,
    )
    state.node.add_dependency(queue_manifest)
    return state
