"""Volcano: schedules the compile jobs (its Job, Queue and PodGroup CRDs). It calls no AWS API.

The scheduler's configuration is the chart's default (volcano-sh/volcano@v1.15.1:
installer/helm/chart/volcano/config/volcano-scheduler.conf) without the ``enqueue`` action, given
through the chart's ``custom.scheduler_config_override`` value, which the scheduler ConfigMap
template (installer/helm/chart/volcano/templates/scheduler.yaml) writes as
``volcano-scheduler.conf`` in place of the default. See :data:`SCHEDULER_CONFIG` for why.
"""

from __future__ import annotations

from typing import Any, ClassVar, Final

import yaml

from plan import versions
from stacks.cluster.addon import ClusterInfo, ControllerAddOn, ControllerSetup
from stacks.cluster.aws_load_balancer_controller import AwsLoadBalancerController

# Why not the chart's default "enqueue, allocate, backfill": ``enqueue`` moves a PodGroup from
# Pending to Inqueue only when its minResources fit what its plugins admit, and the default's
# ``overcommit`` admits up to total * overcommit-factor - used of the nodes that exist *now*.
# Volcano's job controller creates a Job's pods only once its PodGroup has left Pending
# (pkg/controllers/job/job_controller_actions.go, syncJob), so a compile Job asking for a GPU or
# Neuron device the cluster has no node for never gets a pod, Karpenter (which provisions for
# unschedulable pods) never sees one, and the Job waits forever. A maintainer explains exactly
# this in volcano-sh/volcano#3910: with ``enqueue`` on (the default) the PodGroup stays Pending,
# the vcjob's pods are not created, and the autoscaler has no pending pod to scale out for
# (also volcano-sh/volcano#2558, with Cluster Autoscaler).
#
# Raising ``overcommit-factor`` cannot fix it: the factor multiplies the current total, and the
# current total of nvidia.com/gpu or aws.amazon.com/neuron is 0 while those NodePools are scaled
# to zero, so no factor admits the first device job (pkg/scheduler/plugins/overcommit/overcommit.go).
# The JobEnqueued function is not configurable. Without ``enqueue`` in the actions, ``allocate``
# itself moves a Pending PodGroup to Inqueue ("If not config enqueue action, change Pending pg
# into Inqueue state to avoid blocking job scheduling", pkg/scheduler/actions/allocate/allocate.go
# at v1.15.1), the pods are created, Volcano marks the ones it cannot place
# PodScheduled=False/Unschedulable, which is what Karpenter provisions for (upstream's design
# docs/design/scheduling-gates-queue-admission.md, "Motivation"), and they bind once the node is
# Ready. Removing ``enqueue`` is a configuration upstream runs itself
# (docs/user-guide/how_to_tune_volcano_performance.md, 4.4.1). Upstream's v1.15
# SchedulingGatesQueueAdmission (docs/user-guide/how_to_use_scheduling_gates_queue_admission.md)
# solves a different problem (no scale-up for pods waiting on *queue* capacity), is alpha, and
# keeps ``enqueue``.
#
# ``overcommit`` goes too: it only registers JobEnqueueable/JobEnqueued functions, which nothing
# calls without ``enqueue``. Everything else is the default, in its tiers and order: ``gang``
# still holds a Job's pods until minAvailable of them can be placed together; ``proportion`` and
# ``drf`` still share the queues. What is lost: queue admission before pod creation, so a Job
# whose queue is full now has Pending pods instead of a Pending PodGroup.
SCHEDULER_ACTIONS: Final = ("allocate", "backfill")
SCHEDULER_CONFIG: Final[dict[str, Any]] = {
    "actions": ", ".join(SCHEDULER_ACTIONS),
    "tiers": [
        {
            "plugins": [
                {"name": "priority"},
                {"name": "gang", "enablePreemptable": False},
                {"name": "conformance"},
            ]
        },
        {
            "plugins": [
                {"name": "drf", "enablePreemptable": False},
                {"name": "predicates"},
                {"name": "proportion"},
                {"name": "nodeorder"},
                {"name": "binpack"},
            ]
        },
    ],
}


def scheduler_config_text(config: dict[str, Any] = SCHEDULER_CONFIG) -> str:
    """``volcano-scheduler.conf`` as the chart's ``custom.scheduler_config_override`` takes it (YAML text)."""
    return yaml.safe_dump(config, sort_keys=False)


class Volcano(ControllerAddOn):
    """Volcano's scheduler, controllers and admission webhooks."""

    name: ClassVar[str] = "volcano"
    chart: ClassVar[versions.HelmChart] = versions.VOLCANO
    # Its Helm release creates Services (the admission webhook's): the ALB controller's webhooks must be serving first.
    after: ClassVar[tuple[str, ...]] = (AwsLoadBalancerController.name,)

    def setup(self, info: ClusterInfo) -> ControllerSetup:
        return ControllerSetup(
            values={
                "custom": {
                    # The chart takes one node selector for all its components.
                    "default_ns": dict(info.node_selector),
                    # Pods are created without waiting for idle capacity: see SCHEDULER_CONFIG.
                    "scheduler_config_override": scheduler_config_text(),
                }
            }
        )
