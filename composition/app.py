"""How the app's stacks fit together: one function used by app.py, the tests and the deploy
pipeline's stages, so every entry point builds the same thing.

One synth builds the stacks of one plan (``plan.deployments.Plan``): the build infrastructure shared by every
deployment in the account and Region (``EdgeDiffusion-Registry``, ``EdgeDiffusion-ImagePipeline``
and, when ``pipeline.deployments`` names any, ``EdgeDiffusion-DeployPipeline``), the workstation
deployment's stacks (``EdgeDiffusion-<name>-Network|Cluster|Inventory|Observability``) unless the pipeline
deploys it, and inside the deploy pipeline one stage per pipeline deployment, whose stacks carry
the same names a workstation deploy would give them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import aws_cdk as cdk
from cdk_nag import AwsSolutionsChecks
from constructs import Construct

from charts import inventory as inventory_chart
from composition.app_charts import add_app_charts
from composition.build_infrastructure import BuildInfrastructure, add_build_infrastructure
from plan.config import AppConfig
from plan.deployments import (
    CLUSTER,
    DEPLOYMENTS_DIR,
    INVENTORY,
    NETWORK,
    OBSERVABILITY,
    Deployment,
    Plan,
    load_plan,
    stack_name,
)
from stacks import workload_roles
from stacks.cluster import ClusterStack
from stacks.inventory import InventoryStack
from stacks.network import NetworkStack
from stacks.observability import ObservabilityStack


@dataclass(frozen=True)
class DeploymentStacks:
    """The stacks of one deployment of the app (workstation deploy or a pipeline stage)."""

    deployment: Deployment
    network: NetworkStack
    cluster: ClusterStack
    inventory: InventoryStack
    observability: ObservabilityStack

    @property
    def all(self) -> tuple[cdk.Stack, ...]:
        return (self.network, self.cluster, self.inventory, self.observability)


@dataclass(frozen=True)
class PlanStacks:
    """Every stack one synth builds: the shared build infrastructure and the deployments on it."""

    plan: Plan
    build: BuildInfrastructure
    workstation: DeploymentStacks | None
    pipeline: dict[str, DeploymentStacks] = field(default_factory=dict)

    # The workstation deployment's stacks, for callers that build one deployment.
    @property
    def network(self) -> NetworkStack:
        return self._workstation.network

    @property
    def cluster(self) -> ClusterStack:
        return self._workstation.cluster

    @property
    def inventory(self) -> InventoryStack:
        return self._workstation.inventory

    @property
    def observability(self) -> ObservabilityStack:
        return self._workstation.observability

    @property
    def registry(self) -> cdk.Stack:
        return self.build.registry

    @property
    def _workstation(self) -> DeploymentStacks:
        assert self.workstation is not None, f"{self.plan.pipeline} are all deployed by the pipeline"
        return self.workstation


def add_deployment_stacks(scope: Construct, deployment: Deployment) -> DeploymentStacks:
    """Add one deployment's stacks under ``scope`` (the App, or a deploy pipeline Stage)."""
    config: AppConfig = deployment.config
    env = cdk.Environment(account=config.account, region=config.region)
    network_name, cluster_name, inventory_name = (stack_name(p, deployment) for p in (NETWORK, CLUSTER, INVENTORY))
    network = NetworkStack(scope, network_name, stack_name=network_name, config=config, env=env)
    cluster = ClusterStack(scope, cluster_name, stack_name=cluster_name, config=config, network=network, env=env)
    on_cluster = add_app_charts(cluster, config)  # workload Pod Identity roles, then every cdk8s chart
    inventory = InventoryStack(scope, inventory_name, stack_name=inventory_name, config=config, env=env)
    # The publisher writes the table by name (no export couples the stacks): its role may write items, nothing else.
    # The table exists before the publisher starts, and the publisher is gone before the table is deleted.
    cluster.add_stack_dependency(inventory, "the inventory publisher writes the endpoint table")
    publisher_identity = cluster.add_pod_identity_role(
        "InventoryPublisher",
        namespace=inventory_chart.NAMESPACE,
        service_account=inventory_chart.SERVICE_ACCOUNT,
        statements=[
            *inventory.publisher_statements(),
            workload_roles.metrics_statement(),
            workload_roles.describe_images_statement(config),
        ],
    )
    workload_roles.acknowledge_workload_role(publisher_identity.role, config, puts_metrics=True)
    # Pod Identity injects credentials when a pod is admitted: the association must exist first.
    publisher_manifest = on_cluster.manifests[on_cluster.charts.inventory.node.id]
    publisher_manifest.node.add_dependency(publisher_identity)
    # Dashboard, alarms and their topic read metrics by name and dimension values from config: no
    # reference to another stack, so it deploys (and is destroyed) in any order beside them.
    observability_name = stack_name(OBSERVABILITY, deployment)
    observability = ObservabilityStack(scope, observability_name, stack_name=observability_name, config=config, env=env)
    return DeploymentStacks(
        deployment=deployment, network=network, cluster=cluster, inventory=inventory, observability=observability
    )


def build_app(
    context: Mapping[str, object] | None = None,
    outdir: str | None = None,
    deployments_dir: Path = DEPLOYMENTS_DIR,
) -> tuple[cdk.App, PlanStacks]:
    """Build the whole CDK app with cdk-nag registered; raises ConfigError on bad config.

    ``context`` (tests) is merged over cdk.json's when run by the CLI; the CLI passes its
    context (cdk.json + -c) through the environment, which ``cdk.App`` reads itself.
    """
    app = cdk.App(context=dict(context or {}), outdir=outdir)
    plan = load_plan(app.node.get_all_context(), deployments_dir)
    build = add_build_infrastructure(app, plan, add_deployment_stacks=add_deployment_stacks)
    workstation = add_deployment_stacks(app, plan.workstation) if plan.workstation else None
    pipeline = build.deploy.deployment_stacks if build.deploy else {}
    cdk.Validations.of(app).add_plugins(AwsSolutionsChecks(app))
    return app, PlanStacks(plan=plan, build=build, workstation=workstation, pipeline=pipeline)
