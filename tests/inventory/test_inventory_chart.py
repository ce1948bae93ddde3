"""The publisher's Kubernetes objects: strict schema validation, read-only RBAC scoped to what it
lists, and an environment the publisher accepts."""

from __future__ import annotations

import copy
import json
from typing import Any

import celpy
import kubernetes_validate
import pytest

from charts import inventory as chart
from plan import contract, images, naming, versions
from plan.accelerators import ACCELERATORS
from plan.config import load_config
from runtime.inventory.settings import PublisherSettings
from tests.conftest import cdk_json_context


@pytest.fixture(scope="module")
def objects() -> dict[str, dict[str, Any]]:
    import cdk8s

    app = cdk8s.App()
    built = chart.InventoryChart(app, "inventory", config=load_config(cdk_json_context()))
    return {o["kind"]: json.loads(json.dumps(o)) for o in built.to_json()}


def test_objects_validate_against_the_cluster_version(objects: dict[str, dict[str, Any]]) -> None:
    assert sorted(objects) == [
        "ClusterRole",
        "ClusterRoleBinding",
        "Deployment",
        "Role",
        "RoleBinding",
        "ServiceAccount",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    ]
    for obj in objects.values():
        kubernetes_validate.validate(obj, f"{versions.KUBERNETES_VERSION}.0", strict=True)


def test_rbac_reads_in_the_namespace_and_nodes_and_patches_the_serving_ingress_only(
    objects: dict[str, dict[str, Any]],
) -> None:
    from charts import serving

    role, cluster_role = objects["Role"], objects["ClusterRole"]
    assert role["metadata"]["namespace"] == chart.NAMESPACE
    granted = {
        (group, resource, verb, tuple(rule.get("resourceNames", ())))
        for rule in role["rules"] + cluster_role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    reads = {(g, r) for g, r, v, names in granted if v in ("get", "list", "watch") and not names}
    assert reads == {
        ("", "services"),
        ("discovery.k8s.io", "endpointslices"),
        ("networking.k8s.io", "ingresses"),
        ("", "nodes"),
        ("", "pods"),
    }
    writes = {(g, r, v, names) for g, r, v, names in granted if v not in ("get", "list", "watch")}
    # Patch the serving Ingress by name (its ALB weights) and pods (their image gate, which the
    # admission policy below is the only change it admits); no create, delete or update.
    assert writes == {("networking.k8s.io", "ingresses", "patch", (serving.INGRESS_NAME,)), ("", "pods", "patch", ())}
    assert [r["resources"] for r in cluster_role["rules"]] == [["nodes"]]  # cluster-wide: nodes only
    for binding in (objects["RoleBinding"], objects["ClusterRoleBinding"]):
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": chart.SERVICE_ACCOUNT, "namespace": chart.NAMESPACE}
        ]


def test_deployment_runs_one_hardened_publisher_on_controller_nodes(objects: dict[str, dict[str, Any]]) -> None:
    spec = objects["Deployment"]["spec"]
    assert spec["replicas"] == 1 and spec["strategy"]["type"] == "Recreate"
    pod = spec["template"]["spec"]
    assert pod["serviceAccountName"] == chart.SERVICE_ACCOUNT and pod["nodeSelector"] == naming.CONTROLLER_NODE_LABELS
    assert pod["securityContext"]["runAsNonRoot"] is True
    (container,) = pod["containers"]
    assert container["command"] == ["python", "-m", "runtime.inventory"]
    assert container["image"] == images.publisher_image_uri(load_config(cdk_json_context()))
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["livenessProbe"]["exec"]["command"][-1] == "--check"


def test_environment_is_accepted_by_the_publisher(objects: dict[str, dict[str, Any]]) -> None:
    (container,) = objects["Deployment"]["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    settings = PublisherSettings.from_env(env)
    assert settings.table_name == "edge-diffusion-endpoints" and settings.namespace == chart.NAMESPACE
    assert settings.cost_weights == {name: a.cost_weight for name, a in ACCELERATORS.items()}
    assert settings.ttl_s >= 2 * settings.interval_s
    assert env[contract.ENV_AWS_REGION] == "us-west-2"


def test_publisher_discovers_the_serving_charts_local_zone_services() -> None:
    """The serving chart's labels and annotation are what the publisher looks for."""
    import cdk8s

    from charts.build import add_charts
    from runtime.inventory.cluster import discover

    config = load_config(cdk_json_context())
    built = add_charts(cdk8s.App(), config)
    assert built.inventory.node.id in {c.node.id for c in built.all}
    services = [
        o
        for o in json.loads(json.dumps(built.serving.to_json()))
        if o["kind"] == "Service" and o["metadata"]["labels"].get(contract.LABEL_INVENTORY) == "true"
    ]
    assert services, "no Service labelled for the inventory"
    zone = config.local_zones[0].name
    node = {
        "metadata": {"name": "lz-node", "labels": {"topology.kubernetes.io/zone": zone}},
        "status": {"addresses": [{"type": "ExternalIP", "address": "198.51.100.20"}]},
    }
    for service in services:  # the API server assigns nodePorts; the chart leaves them out
        service["spec"]["ports"][0]["nodePort"] = 30080
    slices = [
        {
            "metadata": {"labels": {"kubernetes.io/service-name": s["metadata"]["name"]}},
            "endpoints": [{"nodeName": "lz-node", "conditions": {"ready": True}}],
        }
        for s in services
    ]
    env = {
        e["name"]: e["value"]
        for e in built.inventory.workload.to_json()["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    found = discover(services, slices, [node], PublisherSettings.from_env(env))
    assert len(found) == len(services)
    assert {e.location for e in found} == {zone}
    assert {e.model for e in found} == {config.model_id}
    assert {e.url for e in found} == {"http://198.51.100.20:30080"}
    assert {e.accelerator for e in found} <= set(config.accelerators)


def publisher_env(context: dict[str, Any]) -> dict[str, str]:
    import cdk8s

    built = chart.InventoryChart(cdk8s.App(), "inventory", config=load_config(context))
    deployment = next(o for o in built.to_json() if o["kind"] == "Deployment")
    return {e["name"]: e["value"] for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}


def test_ingress_weights_reach_the_publishers_cost_weights() -> None:
    """The ALB preference the publisher keeps on ready capacity, and the client's tie-break, is the config's."""
    env = publisher_env({**cdk_json_context(), "ingressWeights": '{"neuron": 3, "nvidia": 1}'})
    weights = json.loads(env[contract.ENV_INVENTORY_COST_WEIGHTS])
    assert weights == {"neuron": 3, "nvidia": 1, "cpu": ACCELERATORS["cpu"].cost_weight}  # unnamed: the table's
    assert PublisherSettings.from_env(env).cost_weights == weights
    default = json.loads(publisher_env(cdk_json_context())[contract.ENV_INVENTORY_COST_WEIGHTS])
    assert default == {name: a.cost_weight for name, a in ACCELERATORS.items()} != weights


def test_the_publisher_carries_the_charts_tls_server_name_into_https_entries() -> None:
    import cdk8s

    from charts.build import add_charts
    from runtime.inventory.cluster import discover

    config = load_config(
        {**cdk_json_context(), "tls": {"localZoneSecret": "edge/lz-tls", "localZoneServerName": "*.lz.example.com"}}
    )
    built = add_charts(cdk8s.App(), config)
    services = [
        o
        for o in json.loads(json.dumps(built.serving.to_json()))
        if o["kind"] == "Service" and o["metadata"]["labels"].get(contract.LABEL_INVENTORY) == "true"
    ]
    zone = config.local_zones[0].name
    for service in services:
        service["spec"]["ports"][0]["nodePort"] = 30443
    node = {
        "metadata": {"name": "lz-node", "labels": {"topology.kubernetes.io/zone": zone}},
        "status": {"addresses": [{"type": "ExternalIP", "address": "198.51.100.20"}]},
    }
    slices = [
        {
            "metadata": {"labels": {"kubernetes.io/service-name": s["metadata"]["name"]}},
            "endpoints": [{"nodeName": "lz-node", "conditions": {"ready": True}}],
        }
        for s in services
    ]
    found = discover(services, slices, [node], PublisherSettings.from_env(publisher_env(cdk_json_context())))
    assert found and {(e.url, e.server_name) for e in found} == {
        ("https://198.51.100.20:30443", f"{zone}.lz.example.com")
    }


# --- The admission policy that narrows the publisher's pod patches to opening the image gate ----

GATE = {"name": contract.SCHEDULING_GATE_IMAGE}
POD: dict[str, Any] = {
    "metadata": {"name": "stable-diffusion-nvidia-abc", "labels": {"app": "x"}},
    "spec": {
        "schedulingGates": [{"name": "other.example/gate"}, GATE],
        "containers": [{"name": "server", "image": "111111111111.dkr.ecr.us-west-2.amazonaws.com/r:1.0.0-nvidia"}],
        "nodeSelector": {"karpenter.sh/nodepool": "nvidia"},
    },
}


def admits(objects: dict[str, dict[str, Any]], old: dict[str, Any], new: dict[str, Any], user: str) -> bool:
    """What the API server decides for a pod UPDATE by ``user``: match conditions, then validations."""
    policy = objects["ValidatingAdmissionPolicy"]["spec"]
    env = celpy.Environment()
    activation = {
        "object": celpy.json_to_cel(new),
        "oldObject": celpy.json_to_cel(old),
        "request": celpy.json_to_cel({"userInfo": {"username": user}, "operation": "UPDATE"}),
    }

    def holds(expression: str) -> bool:
        return bool(env.program(env.compile(expression)).evaluate(activation))

    if not all(holds(condition["expression"]) for condition in policy["matchConditions"]):
        return True  # not the publisher: the policy does not apply
    return all(holds(validation["expression"]) for validation in policy["validations"])


def changed(**changes: Any) -> dict[str, Any]:
    pod = copy.deepcopy(POD)
    for path, value in changes.items():
        *parents, leaf = path.split("__")
        node: Any = pod
        for part in parents:
            node = node[part]
        if value is None:
            del node[leaf]
        else:
            node[leaf] = value
    return pod


def test_the_publisher_may_only_open_the_image_gate(objects: dict[str, dict[str, Any]]) -> None:
    publisher = chart.publisher_username()
    opened = changed(spec__schedulingGates=[{"name": "other.example/gate"}])
    assert admits(objects, POD, opened, publisher)
    assert admits(objects, changed(spec__schedulingGates=[GATE]), changed(spec__schedulingGates=None), publisher)
    image = [{"name": "server", "image": "evil.example/miner:latest"}]
    refused = {
        "an image": changed(spec__schedulingGates=[{"name": "other.example/gate"}], spec__containers=image),
        "another gate": changed(spec__schedulingGates=[GATE]),
        "a label": changed(spec__schedulingGates=[{"name": "other.example/gate"}], metadata__labels={"app": "y"}),
        "a node selector": changed(spec__schedulingGates=[{"name": "other.example/gate"}], spec__nodeSelector=None),
        "nothing to open": changed(spec__containers=image),
    }
    for what, new in refused.items():
        old = POD if what != "nothing to open" else changed(spec__schedulingGates=None)
        assert not admits(objects, old, new, publisher), what
    assert admits(objects, POD, refused["an image"], "system:serviceaccount:kube-system:replicaset-controller")
