"""The controller add-on base: values merging, the install-order check, and a cluster built from add-ons."""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, cast

import pytest

from plan import naming, versions
from stacks.cluster import default_controllers
from stacks.cluster.addon import (
    ClusterInfo,
    ControllerAddOn,
    ControllerOrderError,
    ControllerSetup,
    check_install_order,
    deep_merge,
)
from stacks.cluster.aws_load_balancer_controller import AwsLoadBalancerController
from stacks.cluster.karpenter import Karpenter
from stacks.cluster.karpenter_crd import KarpenterCrd
from stacks.cluster.keda import Keda

# --- values --------------------------------------------------------------------------------------


DEFAULTS: Mapping[str, Any] = {
    "settings": {"clusterName": "edge", "interruptionQueue": "queue", "batchMaxDuration": "10s"},
    "serviceAccount": {"name": "karpenter"},
    "tolerations": [{"key": "a", "operator": "Exists"}],
    "replicas": 2,
}


def test_deep_merge_user_override_wins_and_defaults_stay() -> None:
    merged = deep_merge(DEFAULTS, {"settings": {"batchMaxDuration": "30s", "featureGates": {"x": True}}, "replicas": 3})
    assert merged["settings"] == {
        "clusterName": "edge",
        "interruptionQueue": "queue",
        "batchMaxDuration": "30s",
        "featureGates": {"x": True},
    }
    assert merged["replicas"] == 3
    assert merged["serviceAccount"] == {"name": "karpenter"}
    assert merged["tolerations"] == DEFAULTS["tolerations"]


def test_deep_merge_replaces_lists_and_non_mappings_as_helm_does() -> None:
    merged = deep_merge(DEFAULTS, {"tolerations": [{"key": "b"}], "serviceAccount": None, "replicas": {"n": 1}})
    assert merged["tolerations"] == [{"key": "b"}]  # a list is replaced, not appended to
    assert merged["serviceAccount"] is None  # Helm reads null as "drop the chart's default"
    assert merged["replicas"] == {"n": 1}


def test_deep_merge_keeps_the_defaults_key_order_and_modifies_neither_input() -> None:
    before = json.dumps(DEFAULTS)
    overrides = {"extra": {"a": 1}, "settings": {"clusterName": "other"}}
    merged = deep_merge(DEFAULTS, overrides)
    assert list(merged) == [*DEFAULTS, "extra"]  # the Helm release's Values string depends on this order
    assert list(merged["settings"]) == list(DEFAULTS["settings"])
    merged["settings"]["clusterName"] = "mutated"
    merged["tolerations"].append("mutated")
    merged["extra"]["a"] = 2
    assert json.dumps(DEFAULTS) == before
    assert overrides == {"extra": {"a": 1}, "settings": {"clusterName": "other"}}
    assert deep_merge(DEFAULTS, {}) == DEFAULTS


def _info() -> ClusterInfo:
    """Enough of a cluster for add-ons whose setup reads only the node selector."""
    return ClusterInfo(
        scope=cast(Any, None),
        cluster=cast(Any, None),
        config=cast(Any, None),
        vpc=cast(Any, None),
        node_selector=dict(naming.CONTROLLER_NODE_LABELS),
    )


def test_an_add_on_merges_user_values_over_its_defaults() -> None:
    user = {"nodeSelector": {"kubernetes.io/arch": "arm64"}, "resources": {"operator": {"limits": {"memory": "1Gi"}}}}
    keda = Keda(values=user)
    values = keda.helm_values(keda.setup(_info()))
    assert values["nodeSelector"] == {**naming.CONTROLLER_NODE_LABELS, "kubernetes.io/arch": "arm64"}
    assert values["serviceAccount"] == {"operator": {"create": True, "name": "keda-operator"}}
    assert values["resources"] == user["resources"]
    default = Keda()
    assert default.helm_values(default.setup(_info())) == {
        "serviceAccount": {"operator": {"create": True, "name": "keda-operator"}},
        "nodeSelector": dict(naming.CONTROLLER_NODE_LABELS),
    }


def test_an_add_on_needs_a_setup() -> None:
    class Incomplete(ControllerAddOn):
        name: ClassVar[str] = "incomplete"
        chart: ClassVar[versions.HelmChart] = versions.KEDA

    with pytest.raises(TypeError, match="abstract"):
        Incomplete()  # type: ignore[abstract]


# --- install order ------------------------------------------------------------------------------


def fake(name: str, *, after: tuple[str, ...] = (), before: tuple[str, ...] = ()) -> ControllerAddOn:
    """An add-on that only declares its place in the order."""

    class Fake(ControllerAddOn):
        def setup(self, info: ClusterInfo) -> ControllerSetup:
            return ControllerSetup(values={})

    Fake.name, Fake.chart, Fake.after, Fake.before = name, versions.KEDA, after, before
    return Fake()


def names(addons: Sequence[ControllerAddOn]) -> list[str]:
    return [addon.name for addon in addons]


def respects_declarations(ordered: Sequence[ControllerAddOn]) -> bool:
    position = {addon.name: index for index, addon in enumerate(ordered)}
    return all(position[other] < position[a.name] for a in ordered for other in a.after) and all(
        position[a.name] < position[other] for a in ordered for other in a.before
    )


def test_default_controllers_are_listed_in_install_order() -> None:
    listed = default_controllers()
    check_install_order(listed)
    assert respects_declarations(listed)
    assert names(listed) == ["karpenter-crd", "karpenter", "aws-load-balancer-controller", "keda", "volcano"]
    assert [addon.chart for addon in listed] == [
        versions.KARPENTER_CRD,
        versions.KARPENTER,
        versions.AWS_LOAD_BALANCER_CONTROLLER,
        versions.KEDA,
        versions.VOLCANO,
    ]


@pytest.mark.parametrize(
    "listed", list(itertools.permutations(default_controllers())), ids=lambda p: "-".join(a.name for a in p)
)
def test_a_listing_passes_exactly_when_it_respects_the_declarations(listed: tuple[ControllerAddOn, ...]) -> None:
    if respects_declarations(list(listed)):
        check_install_order(listed)
    else:
        with pytest.raises(ControllerOrderError, match=r"^controller '[a-z-]+' must be installed (after|before) "):
            check_install_order(listed)


def test_a_misplaced_add_on_is_a_one_line_error_naming_it_and_its_predecessor() -> None:
    with pytest.raises(ControllerOrderError) as err:
        check_install_order([Karpenter(), Keda(), AwsLoadBalancerController()])
    assert str(err.value) == (
        "controller 'keda' must be installed after 'aws-load-balancer-controller': "
        "list 'aws-load-balancer-controller' before 'keda'"
    )
    with pytest.raises(ControllerOrderError, match=r"^controller 'a' must be installed after 'a'"):
        check_install_order([fake("a", after=("a",))])


def test_a_prerequisite_can_declare_itself_before_an_add_on() -> None:
    """How the CRD chart comes before Karpenter: declared in its own module, checked wherever it is listed."""
    assert KarpenterCrd.before == (Karpenter.name,) and KarpenterCrd.name not in Karpenter.after
    others = [addon for addon in default_controllers() if addon.name != KarpenterCrd.name]
    with pytest.raises(ControllerOrderError, match="'karpenter-crd' must be installed before 'karpenter'"):
        check_install_order([*others, KarpenterCrd()])
    check_install_order([KarpenterCrd(), *others])


def test_the_karpenter_crd_add_on_pins_karpenters_version_and_keeps_its_crds() -> None:
    crd = KarpenterCrd()
    assert crd.chart.version == Karpenter.chart.version and crd.chart.namespace == Karpenter.chart.namespace
    assert crd.chart.repository == "oci://public.ecr.aws/karpenter/karpenter-crd"
    assert Karpenter.skip_crds and not KarpenterCrd.skip_crds
    values = crd.helm_values(crd.setup(_info()))
    assert values == {"additionalAnnotations": {"helm.sh/resource-policy": "keep"}}


def test_a_missing_dependency_is_an_error_naming_both() -> None:
    with pytest.raises(ControllerOrderError, match=r"'volcano' must be installed after 'keda', which is not one of"):
        check_install_order([fake("volcano", after=("keda",))])
    # a real add-on whose dependency is not on the cluster
    with pytest.raises(ControllerOrderError, match=r"'keda' must be installed after 'aws-load-balancer-controller'"):
        check_install_order([Karpenter(), Keda()])
    with pytest.raises(ControllerOrderError, match=r"'crd' must be installed before 'karpenter'"):
        check_install_order([fake("crd", before=("karpenter",))])


def test_two_add_ons_with_one_name_are_an_error() -> None:
    with pytest.raises(ControllerOrderError, match="two controller add-ons are named 'keda'"):
        check_install_order([fake("keda"), fake("keda")])


# --- a cluster built from add-ons ------------------------------------------------------------------


class Probe(ControllerAddOn):
    """A user's own add-on: a chart the cluster installs after the ALB controller, declared here only."""

    name: ClassVar[str] = "probe"
    chart: ClassVar[versions.HelmChart] = versions.HelmChart(
        chart="probe",
        repository="https://example.com/charts",
        version="0.1.0",
        release_name="probe",
        namespace="probe",
    )
    after: ClassVar[tuple[str, ...]] = (AwsLoadBalancerController.name,)
    before: ClassVar[tuple[str, ...]] = (Keda.name,)

    def setup(self, info: ClusterInfo) -> ControllerSetup:
        return ControllerSetup(values={"nodeSelector": dict(info.node_selector)})


@pytest.fixture(scope="module")
def custom_cluster() -> dict[str, Any]:
    """A cluster stack given its controllers: the defaults, KEDA with user values, and one more add-on
    listed (and declared) between the ALB controller and KEDA."""
    import aws_cdk as cdk
    from aws_cdk.assertions import Template

    from plan.config import load_config
    from stacks.cluster import ClusterStack
    from stacks.network import NetworkStack
    from tests.conftest import cdk_json_context

    config = load_config(cdk_json_context())
    app = cdk.App(context={k: v for k, v in cdk_json_context().items() if k.startswith("@")})
    env = cdk.Environment(account=config.account, region=config.region)
    network = NetworkStack(app, "Network", config=config, env=env)
    controllers = [
        Keda(values={"resources": {"operator": {"limits": {"memory": "1Gi"}}}}) if c.name == Keda.name else c
        for c in default_controllers()
    ]
    stack = ClusterStack(
        app,
        "Cluster",
        config=config,
        network=network,
        controllers=[*controllers[:3], Probe(), *controllers[3:]],
        env=env,
    )
    return dict(Template.from_stack(stack).to_json())


def test_the_stack_installs_the_given_add_ons_in_their_order(custom_cluster: dict[str, Any]) -> None:
    helm = {
        props["Properties"]["Release"]: (lid, props)
        for lid, props in custom_cluster["Resources"].items()
        if props["Type"] == "Custom::AWSCDK-EKS-HelmChart"
    }
    assert set(helm) == {"karpenter-crd", "karpenter", "aws-load-balancer-controller", "probe", "keda", "volcano"}
    crd_id, crd = helm["karpenter-crd"]
    assert crd_id in set(helm["karpenter"][1].get("DependsOn", [])), "Karpenter waits for its CRDs"
    assert not {lid for lid, _ in helm.values()} & set(crd.get("DependsOn", [])), "installed first"
    helm_release_of = {lid: helm_release for helm_release, (lid, _) in helm.items()}
    waits_for = {
        helm_release: {helm_release_of[d] for d in props.get("DependsOn", []) if d in helm_release_of}
        for helm_release, (_, props) in helm.items()
    }
    chain = ["karpenter-crd"]  # each Helm release waits for exactly the one before it
    while len(chain) < len(helm):
        (following,) = [helm_release for helm_release, earlier in waits_for.items() if earlier == {chain[-1]}]
        chain.append(following)
    assert chain.index("aws-load-balancer-controller") < chain.index("probe") < chain.index("keda")
    keda_values = json.loads(helm["keda"][1]["Properties"]["Values"])
    assert keda_values["resources"] == {"operator": {"limits": {"memory": "1Gi"}}}
    assert keda_values["serviceAccount"] == {"operator": {"create": True, "name": "keda-operator"}}
    assert keda_values["nodeSelector"] == naming.CONTROLLER_NODE_LABELS
