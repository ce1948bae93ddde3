"""How the app's stacks fit together: one function used by app.py, the tests and the
deploy pipeline's stages, so every entry point builds the same thing."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import aws_cdk as cdk
from cdk_nag import AwsSolutionsChecks
from constructs import Construct

from charts import inventory as inventory_chart
from composition.app_charts import add_app_charts
from composition.build_infrastructure import add_ci_stacks
from spec.config import AppConfig, load_config
from stacks.cluster import ClusterStack
from stacks.inventory import InventoryStack
from stacks.network import NetworkStack
from stacks.registry import RegistryStack

STACK_PREFIX = "EdgeDiffusion"


@dataclass(frozen=True)
class AppStacks:
    """The stacks of one deployment of the app (workstation deploy or a pipeline stage)."""

    network: NetworkStack
    registry: RegistryStack
    cluster: ClusterStack
    inventory: InventoryStack


def add_app_stacks(scope: Construct, config: AppConfig) -> AppStacks:
    """Add the serving stacks of one deployment under ``scope`` (an App or a Stage)."""
    env = cdk.Environment(account=config.account, region=config.region)
    network = NetworkStack(scope, f"{STACK_PREFIX}-Network", config=config, env=env)
    registry = RegistryStack(scope, f"{STACK_PREFIX}-Registry", config=config, env=env)
    cluster = ClusterStack(scope, f"{STACK_PREFIX}-Cluster", config=config, network=network, registry=registry, env=env)
    on_cluster = add_app_charts(cluster, config)  # workload Pod Identity roles, then every cdk8s chart
    inventory = InventoryStack(scope, f"{STACK_PREFIX}-Inventory", config=config, env=env)
    # The publisher writes the table by name (no export couples the stacks): its role may write items, nothing else.
    publisher_identity = cluster.add_pod_identity_role(
        "InventoryPublisher",
        namespace=inventory_chart.NAMESPACE,
        service_account=inventory_chart.SERVICE_ACCOUNT,
        statements=inventory.publisher_statements(),
    )
    # Pod Identity injects credentials when a pod is admitted: the association must exist first.
    publisher_manifest = on_cluster.manifests[on_cluster.charts.inventory.node.id]
    publisher_manifest.node.add_dependency(publisher_identity)
    return AppStacks(network=network, registry=registry, cluster=cluster, inventory=inventory)


def build_app(context: Mapping[str, object] | None = None, outdir: str | None = None) -> tuple[cdk.App, AppStacks]:
    """Build the whole CDK app with cdk-nag registered; raises ConfigError on bad config.

    ``context`` (tests) is merged over cdk.json's when run by the CLI; the CLI passes its
    context (cdk.json + -c) through the environment, which ``cdk.App`` reads itself.
    """
    app = cdk.App(context=dict(context or {}), outdir=outdir)
    config = load_config(app.node.get_all_context())
    stacks = add_app_stacks(app, config)
    add_ci_stacks(app, config, registry=stacks.registry, prefix=STACK_PREFIX, add_app_stacks=add_app_stacks)
    cdk.Validations.of(app).add_plugins(AwsSolutionsChecks(app))
    return app, stacks
