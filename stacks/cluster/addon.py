"""Controller add-ons: everything about one in-cluster controller in one place.

The cdk-eks-blueprints add-on pattern (``HelmAddOn`` with pinned defaults, ``@dependable``)
in Python. A :class:`ControllerAddOn` declares the chart it installs (pinned in
``plan.versions``), its default Helm values, the Pod Identity role of its service account,
the controllers it must be installed after, and the cdk-nag findings it accepts, with the
reason for each. :class:`~stacks.cluster.stack.ClusterStack` does what is common to all of
them: it checks that their list is an install order (:func:`check_install_order`), creates
their roles, and installs one Helm release per add-on on the controller node group, each after
the previous one in the list.

Add-ons are plain objects, as in cdk-eks-blueprints, not constructs: they create their
resources in the scope :class:`ClusterInfo` gives them, so the construct paths (and the
logical ids of a deployed stack) do not depend on how the add-ons are organised.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import aws_cdk as cdk
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_eks_v2 as eks
from aws_cdk import aws_iam as iam
from constructs import Construct

from plan import versions
from plan.config import AppConfig


@dataclass(frozen=True)
class ClusterInfo:
    """The cluster an add-on is installed on: what its AWS resources and Helm values may refer to."""

    scope: Construct  # where add-ons create AWS resources: the cluster stack
    cluster: eks.Cluster
    config: AppConfig
    vpc: ec2.IVpc
    node_selector: Mapping[str, str]  # labels of the controller node group, where every controller runs

    @property
    def region(self) -> str:
        return cdk.Stack.of(self.scope).region


@dataclass(frozen=True)
class PodIdentityGrant:
    """The AWS permissions of a controller's service account, given through EKS Pod Identity.

    The cluster stack makes the role with ``ClusterStack.add_pod_identity_role(construct_id,
    ...)`` in the Helm release's namespace, and the Helm release waits for it: Pod Identity injects
    credentials only at pod admission. ``acknowledgements`` are the cdk-nag findings on that
    role the add-on accepts, finding id -> the reason a reviewer reads.
    """

    construct_id: str
    service_account: str
    statements: Sequence[iam.PolicyStatement] = ()
    managed_policies: Sequence[iam.IManagedPolicy] = ()
    acknowledgements: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ControllerSetup:
    """What an add-on hands the cluster stack once its own AWS resources exist."""

    values: Mapping[str, Any]  # the add-on's default Helm values; the user's ``values`` are merged over them
    identity: PodIdentityGrant | None = None  # None: the controller calls no AWS API
    # The add-on's own AWS resources, if any (Karpenter's node role, queue, ...). The Helm release depends
    # on all of them: created before it, and on stack delete removed only after it.
    resources: Construct | None = None


@dataclass(frozen=True, kw_only=True)
class ControllerAddOn(ABC):
    """One controller, installed as one Helm release of a chart pinned in ``plan.versions``.

    ``values`` are the user's Helm values, deep-merged over the add-on's defaults
    (:func:`deep_merge`: the user wins, defaults they do not mention stay). Values naming the
    controller's service account must keep the add-on's name: its Pod Identity association
    is made for that name.
    """

    values: Mapping[str, Any] = field(default_factory=dict)

    name: ClassVar[str]  # what other add-ons' ``after``/``before`` refer to
    chart: ClassVar[versions.HelmChart]
    # Add-ons whose Helm releases must be installed, and ready, before this one (CRDs, webhooks).
    after: ClassVar[tuple[str, ...]] = ()
    # Add-ons that must be installed after this one: lets a prerequisite (a CRD chart, say)
    # declare itself in its own module, without editing the add-on that needs it.
    before: ClassVar[tuple[str, ...]] = ()
    # True when another add-on installs (and upgrades) the chart's CRDs: the Helm release is installed
    # with ``helm --skip-crds`` (``eks.HelmChart(skip_crds=True)``).
    skip_crds: ClassVar[bool] = False

    @abstractmethod
    def setup(self, info: ClusterInfo) -> ControllerSetup:
        """Create the controller's own AWS resources, if any; return its identity and default values."""

    def helm_values(self, setup: ControllerSetup) -> dict[str, Any]:
        """The Helm release's values: the add-on's defaults with the user's ``values`` merged over them."""
        return deep_merge(setup.values, self.values)


def deep_merge(defaults: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``overrides`` merged over ``defaults`` the way Helm merges values files: mappings merge key
    by key, anything else in ``overrides`` (scalars, lists, ``None``) replaces the default. Key
    order is the defaults' order, then the new keys. Neither input is modified."""
    merged = {key: _copy(value) for key, value in defaults.items()}
    for key, value in overrides.items():
        current = merged.get(key)
        if isinstance(current, dict) and isinstance(value, Mapping):
            merged[key] = deep_merge(current, value)
        else:
            merged[key] = _copy(value)
    return merged


def _copy(value: Any) -> Any:
    """Mappings and lists copied, so a merged result shares no container with its inputs."""
    if isinstance(value, Mapping):
        return {key: _copy(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_copy(item) for item in value]
    return value


class ControllerOrderError(ValueError):
    """The add-ons' list contradicts what they declare (unknown, duplicate or misplaced name)."""


def check_install_order(addons: Sequence[ControllerAddOn]) -> None:
    """Refuse a list of add-ons that is not an install order: every add-on's ``after`` must be
    listed earlier and its ``before`` later. One line naming the add-on and the other one.

    The list is the order (no sort): the Helm releases' dependency chain in the template is exactly
    the list a reader sees, and a declaration only guards it.
    """
    position: dict[str, int] = {}
    for index, addon in enumerate(addons):
        if addon.name in position:
            raise ControllerOrderError(f"two controller add-ons are named {addon.name!r}")
        position[addon.name] = index
    for addon in addons:
        for relation, others in (("after", addon.after), ("before", addon.before)):
            for other in others:
                if other not in position:
                    raise ControllerOrderError(
                        f"controller {addon.name!r} must be installed {relation} {other!r}, which is not one of "
                        f"the cluster's controllers ({', '.join(position)})"
                    )
                earlier, later = (other, addon.name) if relation == "after" else (addon.name, other)
                if position[earlier] >= position[later]:  # >=: an add-on that names itself
                    raise ControllerOrderError(
                        f"controller {addon.name!r} must be installed {relation} {other!r}: list {earlier!r} "
                        f"before {later!r}"
                    )
