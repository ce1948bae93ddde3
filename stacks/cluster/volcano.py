"""Volcano: schedules the model build Jobs (its Job, Queue and PodGroup CRDs). It calls no AWS API."""

from __future__ import annotations

from typing import ClassVar

from spec import versions
from stacks.cluster.addon import ClusterInfo, ControllerAddOn, ControllerSetup
from stacks.cluster.aws_load_balancer_controller import AwsLoadBalancerController


class Volcano(ControllerAddOn):
    """Volcano's scheduler, controllers and admission webhooks."""

    name: ClassVar[str] = "volcano"
    chart: ClassVar[versions.HelmChart] = versions.VOLCANO
    # Its release creates Services (the admission webhook's): the ALB controller's webhooks must be serving first.
    after: ClassVar[tuple[str, ...]] = (AwsLoadBalancerController.name,)

    def setup(self, info: ClusterInfo) -> ControllerSetup:
        # The chart takes one node selector for all its components.
        return ControllerSetup(values={"custom": {"default_ns": dict(info.node_selector)}})
