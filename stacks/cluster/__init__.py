"""The EKS cluster and its controllers: :class:`ClusterStack`, and one add-on module per controller.

* ``stack``: the cluster, its EKS add-ons, the controllers' node group, the API other stacks use;
* ``addon``: what a controller add-on declares, and the check that a list of them is an install order;
* ``karpenter_crd``, ``karpenter``, ``aws_load_balancer_controller``, ``keda``, ``volcano``: the controllers
  (``karpenter_crd``: Karpenter's CRDs, as their own Helm release);
* ``pod_identity``: the Pod Identity role every in-cluster AWS caller gets;
* ``upstream``: reading the upstream documents vendored in third_party/.
"""

from stacks.cluster.stack import ClusterStack, ControllerNodeGroupProps, default_controllers

__all__ = ["ClusterStack", "ControllerNodeGroupProps", "default_controllers"]
