"""All charts of the app, built from the config alone.

Used by ``python -m charts.render`` (dist/manifests) and by the cluster stack, which applies
the same charts, so the YAML files and the cluster template carry the same objects. Every
name comes from ``plan.naming`` and the config: no CloudFormation token reaches a manifest.
"""

from __future__ import annotations

from dataclasses import dataclass

import cdk8s

from charts.autoscaling import AutoscalingChart
from charts.compile_jobs import JOBS_CHART_ID, QUEUE_CHART_ID, CompileJobsChart, CompileQueueChart
from charts.device_plugins import DevicePluginsChart
from charts.inventory import InventoryChart
from charts.karpenter import KarpenterChart
from charts.network_policies import NetworkPoliciesChart
from charts.serving import ServingChart
from plan.config import AppConfig


@dataclass(frozen=True)
class AppCharts:
    """The app's charts; ``all`` in the order they apply (dependencies first)."""

    karpenter: KarpenterChart
    device_plugins: DevicePluginsChart
    serving: ServingChart
    autoscaling: AutoscalingChart
    compile_queue: CompileQueueChart
    compile_jobs: CompileJobsChart
    inventory: InventoryChart
    network_policies: NetworkPoliciesChart

    @property
    def all(self) -> tuple[cdk8s.Chart, ...]:
        return (
            self.karpenter,
            self.device_plugins,
            self.serving,
            self.autoscaling,
            self.compile_queue,
            self.compile_jobs,
            self.inventory,
            self.network_policies,
        )


def add_charts(app: cdk8s.App, config: AppConfig) -> AppCharts:
    """Add every chart to ``app``. Chart dependencies (``chart.node.dependencies``) say which
    chart must be applied first: the namespace lives in the serving chart."""
    karpenter = KarpenterChart(app, "karpenter", config=config)
    device_plugins = DevicePluginsChart(app, "device-plugins", config=config)
    serving = ServingChart(app, "serving", config=config)
    serving.add_dependency(karpenter)  # pods select NodePools by name
    autoscaling = AutoscalingChart(app, "autoscaling", config=config)
    autoscaling.add_dependency(serving)
    compile_queue = CompileQueueChart(app, QUEUE_CHART_ID, config=config)
    compile_jobs = CompileJobsChart(app, JOBS_CHART_ID, config=config)
    compile_jobs.add_dependency(serving, karpenter, compile_queue)  # and the queue Open: see composition
    inventory = InventoryChart(app, "inventory", config=config)
    inventory.add_dependency(serving)  # the namespace lives in the serving chart
    network_policies = NetworkPoliciesChart(app, "network-policies", config=config)
    network_policies.add_dependency(serving)
    return AppCharts(
        karpenter, device_plugins, serving, autoscaling, compile_queue, compile_jobs, inventory, network_policies
    )
