"""What the objects must mean, not only their shape: pods land on their NodePool (and zone),
KEDA scales what exists on the metric the runtime publishes, probes hit real routes, and
every image comes from the versions catalog or the app's ECR repository."""

from __future__ import annotations

from typing import Any

import pytest

from charts import serving as serving_chart
from charts.compile_jobs import JOBS_CHART_ID
from plan import contract, images, naming, topology, versions
from plan.accelerators import ACCELERATORS
from tests.charts.conftest import Rendered, render
from tests.conftest import cdk_json_context


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    if obj["kind"] == "Job" and obj["apiVersion"].startswith("batch.volcano.sh/"):
        [task] = obj["spec"]["tasks"]
        return task["template"]["spec"]
    return obj["spec"]["template"]["spec"]


def serving(rendered: Rendered) -> list[dict[str, Any]]:
    """The serving Kubernetes Deployments (other charts, e.g. the inventory publisher, have their own)."""
    objs = [d for d in rendered.objects["serving"] if d["kind"] == "Deployment"]
    assert objs
    return objs


def compile_jobs(rendered: Rendered) -> list[dict[str, Any]]:
    objs = [j for j in rendered.objects[JOBS_CHART_ID] if j["kind"] == "Job"]
    assert objs
    return objs


def taints_tolerated(taints: list[dict[str, Any]], tolerations: list[dict[str, Any]]) -> bool:
    def tolerates(taint: dict[str, Any], tol: dict[str, Any]) -> bool:
        if tol.get("effect") and tol["effect"] != taint["effect"]:
            return False
        if tol.get("operator", "Equal") == "Exists":
            return tol.get("key") in (None, taint["key"])
        return tol.get("key") == taint["key"] and tol.get("value") == taint.get("value")

    return all(any(tolerates(taint, tol) for tol in tolerations) for taint in taints)


def node_pool_admits(pool: dict[str, Any], selector: dict[str, str]) -> bool:
    """Every nodeSelector label is one the pool's nodes carry (name, template label or requirement)."""
    labels = {topology.NODEPOOL_LABEL: {pool["metadata"]["name"]}}
    labels.update({k: {v} for k, v in pool["spec"]["template"].get("metadata", {}).get("labels", {}).items()})
    for req in pool["spec"]["template"]["spec"]["requirements"]:
        assert req["operator"] == "In"
        labels[req["key"]] = set(req["values"])
    return all(value in labels.get(key, set()) for key, value in selector.items())


def test_every_placement_has_its_objects(rendered: Rendered) -> None:
    placements = topology.placements(rendered.config)
    names = {p.name for p in placements}
    # Default config: 3 accelerators in the Region, NVIDIA (g5) also in us-west-2-lax-1a.
    assert names == {
        "stable-diffusion-nvidia",
        "stable-diffusion-neuron",
        "stable-diffusion-cpu",
        "stable-diffusion-nvidia-us-west-2-lax-1a",
    }
    for kind in ("Deployment", "Service", "ServiceAccount", "PodDisruptionBudget", "ScaledObject"):
        found = {o["metadata"]["name"] for o in rendered.of_kind(kind)} & names
        assert found == names, kind
    assert {o["metadata"]["name"] for o in rendered.of_kind("NodePool")} == {p.node_pool_name for p in placements}


@pytest.mark.parametrize("workloads", [serving, compile_jobs])
def test_accelerator_pods_tolerate_their_pool_and_select_an_existing_one(rendered: Rendered, workloads: Any) -> None:
    pools = {p["metadata"]["name"]: p for p in rendered.of_kind("NodePool")}
    for obj in workloads(rendered):
        spec = pod_spec(obj)
        pool_name = spec["nodeSelector"][topology.NODEPOOL_LABEL]
        assert pool_name in pools, f"{obj['metadata']['name']} selects missing NodePool {pool_name}"
        pool = pools[pool_name]
        taints = pool["spec"]["template"]["spec"].get("taints", [])
        assert taints_tolerated(taints, spec.get("tolerations", [])), obj["metadata"]["name"]
        assert node_pool_admits(pool, spec["nodeSelector"]), obj["metadata"]["name"]
        # The pool launches the accelerator the pod asks for.
        accelerator = ACCELERATORS[pool["spec"]["template"]["metadata"]["labels"][topology.NODE_LABEL_ACCELERATOR]]
        [container] = spec["containers"]
        # Serving runs the image with the model baked in; compile jobs the one without (runtime target).
        suffix = images.RUNTIME_TAG_SUFFIX if workloads is compile_jobs else ""
        assert container["image"].endswith(f"-{accelerator.name}{suffix}")
        if accelerator.device_resource:
            assert container["resources"]["limits"][accelerator.device_resource] == accelerator.devices_per_pod
            assert taints == [{"key": accelerator.device_resource, "effect": "NoSchedule"}]


def test_accelerator_taints_repel_pods_that_do_not_ask_for_devices(rendered: Rendered) -> None:
    for pool in rendered.of_kind("NodePool"):
        accelerator = ACCELERATORS[pool["spec"]["template"]["metadata"]["labels"][topology.NODE_LABEL_ACCELERATOR]]
        taints = pool["spec"]["template"]["spec"].get("taints", [])
        assert bool(taints) == (accelerator.device_resource is not None), pool["metadata"]["name"]


def test_local_zone_pools_and_deployments_are_pinned_to_their_zone(rendered: Rendered) -> None:
    zones = {zone.name for zone in rendered.config.local_zones}
    assert zones
    pools = {p["metadata"]["name"]: p for p in rendered.of_kind("NodePool")}
    local = [p for p in topology.placements(rendered.config) if p.location.is_local_zone]
    assert local
    for placement in local:
        pool = pools[placement.node_pool_name]
        reqs = {r["key"]: r["values"] for r in pool["spec"]["template"]["spec"]["requirements"]}
        assert reqs[topology.ZONE_LABEL] == [placement.location.zone]
        assert reqs[topology.CAPACITY_TYPE_LABEL] == ["on-demand"]
        zone_config = next(z for z in rendered.config.local_zones if z.name == placement.location.zone)
        assert set(reqs[topology.INSTANCE_FAMILY_LABEL]) <= set(zone_config.instance_families)
        node_class = rendered.named("EC2NodeClass", pool["spec"]["template"]["spec"]["nodeClassRef"]["name"])
        [term] = node_class["spec"]["subnetSelectorTerms"]
        assert term["tags"][naming.LOCATION_TAG_KEY] == placement.location.zone
        assert node_class["spec"]["blockDeviceMappings"][0]["ebs"]["volumeType"] == "gp2"
        workload = rendered.named("Deployment", placement.name)
        assert pod_spec(workload)["nodeSelector"][topology.ZONE_LABEL] == placement.location.zone
    for pool in rendered.of_kind("NodePool"):  # regional pools never reach into a Local Zone
        if pool["metadata"]["name"] not in {p.node_pool_name for p in local}:
            reqs = {r["key"]: r["values"] for r in pool["spec"]["template"]["spec"]["requirements"]}
            assert set(reqs[topology.ZONE_LABEL]) == set(rendered.config.availability_zones)


def test_node_classes_require_imdsv2_one_hop_and_encrypted_large_root_volumes(rendered: Rendered) -> None:
    classes = rendered.of_kind("EC2NodeClass")
    assert len(classes) == 1 + len(rendered.config.local_zones)
    for node_class in classes:
        spec = node_class["spec"]
        assert spec["metadataOptions"]["httpTokens"] == "required"
        assert spec["metadataOptions"]["httpPutResponseHopLimit"] == 1
        assert spec["amiSelectorTerms"] == [{"alias": versions.AL2023_AMI_ALIAS}]
        assert spec["role"] == naming.karpenter_node_role_name(rendered.config)
        [root] = spec["blockDeviceMappings"]
        assert root["ebs"]["encrypted"] is True
        assert int(root["ebs"]["volumeSize"].removesuffix("Gi")) >= 100


def test_scaled_objects_target_existing_deployments_on_the_runtime_metric(rendered: Rendered) -> None:
    """Every placement scales on the pods' pending requests; one that sleeps (the rendered deployment,
    dev, lets all but the Region's NVIDIA placement sleep) also wakes on device demand, with KEDA's
    cooldownPeriod as its idle time and no fallback (a fallback counts as active and would keep it awake)."""
    workloads = {d["metadata"]["name"]: d for d in serving(rendered)}
    auth = {a["metadata"]["name"]: a for a in rendered.of_kind("TriggerAuthentication")}
    knobs = rendered.config.serving
    placements = {p.name: p for p in topology.placements(rendered.config)}
    sleeping = 0
    for scaled in rendered.of_kind("ScaledObject"):
        target = scaled["spec"]["scaleTargetRef"]
        assert target["name"] in workloads
        assert scaled["metadata"]["namespace"] == workloads[target["name"]]["metadata"]["namespace"]
        assert scaled["spec"]["maxReplicaCount"] == knobs.max_replicas
        assert scaled["spec"]["pollingInterval"] == knobs.keda_polling_interval_s
        minimum = knobs.min_replicas_of(placements[target["name"]].node_pool_name)
        assert scaled["spec"]["minReplicaCount"] == minimum
        triggers = {trigger["name"]: trigger for trigger in scaled["spec"]["triggers"]}
        if minimum == 0:
            sleeping += 1
            assert scaled["spec"]["cooldownPeriod"] == knobs.scale_to_zero_after_s
            assert "fallback" not in scaled["spec"]
            assert set(triggers) == {"demand", "pending"}
            demand = triggers["demand"]["metadata"]
            assert demand["metricName"] == contract.METRIC_DEVICE_DEMAND
            assert demand["dimensionName"].split(";") == list(contract.DEVICE_DEMAND_DIMENSIONS)
        else:
            assert "cooldownPeriod" not in scaled["spec"]  # inert at minReplicas >= 1: the HPA window carries it
            assert set(triggers) == {"pending"}
        trigger = triggers["pending"]
        assert trigger["type"] == "aws-cloudwatch"
        assert auth[trigger["authenticationRef"]["name"]]["spec"] == {"podIdentity": {"provider": "aws"}}
        meta = trigger["metadata"]
        assert all(isinstance(value, str) for value in meta.values()), meta
        assert meta["namespace"] == contract.METRIC_NAMESPACE
        assert meta["metricName"] == contract.METRIC_PENDING_REQUESTS
        # The dimensions the runtime publishes, with the values the pod's environment gives it.
        env = {
            e["name"]: e["value"] for e in pod_spec(workloads[target["name"]])["containers"][0]["env"] if "value" in e
        }
        published = {  # the legacy set: every image version publishes it (docs/adr/0015)
            contract.LEGACY_DIMENSION_DEPLOYMENT: env[contract.ENV_PLACEMENT],
            contract.DIMENSION_ACCELERATOR: env[contract.ENV_DEVICE],
            contract.DIMENSION_LOCATION: env[contract.ENV_LOCATION],
        }
        names, values = meta["dimensionName"].split(";"), meta["dimensionValue"].split(";")
        assert names == list(contract.LEGACY_METRIC_DIMENSIONS)
        assert dict(zip(names, values, strict=True)) == published
        assert meta["targetMetricValue"] == str(knobs.target_pending_per_replica)
    assert sleeping == len(placements) - 1  # dev: every placement but the Region's NVIDIA one


def test_probes_use_the_runtime_routes_on_its_port(rendered: Rendered) -> None:
    for workload in serving(rendered):
        [container] = pod_spec(workload)["containers"]
        ports = {p["name"]: p for p in container["ports"]}
        assert set(ports) == {serving_chart.PORT_NAME, serving_chart.METRICS_PORT_NAME}
        port = ports[serving_chart.PORT_NAME]
        assert port["containerPort"] == contract.PORT
        assert container["livenessProbe"]["httpGet"]["path"] == contract.HEALTH_PATH
        assert container["readinessProbe"]["httpGet"]["path"] == contract.READY_PATH
        startup = container["startupProbe"]
        assert startup["httpGet"]["path"] == contract.READY_PATH
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 15 * 60  # long model loads
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            assert container[probe]["httpGet"]["port"] == port["name"]


def test_prometheus_finds_the_metrics_port_that_no_service_or_the_alb_exposes(rendered: Rendered) -> None:
    """The server serves /metrics on contract.METRICS_PORT (its env says so): the pod names that port and
    its annotations point Prometheus at it; no Service lists it, so neither a NodePort nor the ALB reaches it."""
    for workload in serving(rendered):
        template = workload["spec"]["template"]
        [container] = template["spec"]["containers"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        [metrics] = [p for p in container["ports"] if p["name"] == serving_chart.METRICS_PORT_NAME]
        assert metrics == {"name": "metrics", "containerPort": contract.METRICS_PORT, "protocol": "TCP"}
        assert env[contract.ENV_METRICS_PORT] == str(contract.METRICS_PORT)
        assert contract.ENV_DOCS not in env  # pods serve no /docs or /openapi.json (the server's default)
        annotations = template["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/port"] == str(metrics["containerPort"])
        assert annotations["prometheus.io/path"] == contract.METRICS_PATH
    for service in [o for o in rendered.of_kind("Service") if o["metadata"].get("namespace") == topology.NAMESPACE]:
        for port in service["spec"]["ports"]:
            assert port["targetPort"] == serving_chart.PORT_NAME and port["port"] == contract.PORT, service


def test_pods_behind_the_alb_keep_idle_connections_longer_than_the_alb(rendered: Rendered) -> None:
    """Else the ALB may send a request on a connection the pod is closing (a 502); Local Zone pods, which
    devices reach directly, keep the server's short default."""
    settings = serving_chart.ServingSettings()
    [ingress] = rendered.of_kind("Ingress")
    attributes = ingress["metadata"]["annotations"]["alb.ingress.kubernetes.io/load-balancer-attributes"]
    alb_idle_s = int(attributes.split("idle_timeout.timeout_seconds=")[1].split(",")[0])
    for placement in topology.placements(rendered.config):
        [container] = pod_spec(rendered.named("Deployment", placement.name))["containers"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        if placement.location.is_local_zone:
            assert contract.ENV_KEEP_ALIVE_S not in env, placement.name
        else:
            assert int(env[contract.ENV_KEEP_ALIVE_S]) > alb_idle_s == settings.alb_idle_timeout_s, placement.name


def test_serving_pods_are_non_root_read_only_without_capabilities(rendered: Rendered) -> None:
    for obj in [*serving(rendered), *compile_jobs(rendered)]:
        spec = pod_spec(obj)
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert spec["automountServiceAccountToken"] is False
        sa = rendered.named("ServiceAccount", spec["serviceAccountName"])
        assert sa["metadata"]["namespace"] == obj["metadata"]["namespace"]
        for container in spec["containers"]:
            ctx = container["securityContext"]
            assert ctx["readOnlyRootFilesystem"] is True
            assert ctx["allowPrivilegeEscalation"] is False
            assert ctx["capabilities"] == {"drop": ["ALL"]}
            assert "/tmp" in {m["mountPath"] for m in container["volumeMounts"]}


def test_every_image_comes_from_the_catalog_or_the_ecr_repository(rendered: Rendered) -> None:
    repository = naming.image_repository_uri(rendered.config)
    allowed_tags = {
        f"{rendered.config.serving.image_version}-{a.name}{suffix}"
        for a in ACCELERATORS.values()
        for suffix in ("", images.RUNTIME_TAG_SUFFIX)
    } | {images.publisher_tag(rendered.config.serving.image_version)}
    catalog = {versions.NVIDIA_DEVICE_PLUGIN_IMAGE, versions.NEURON_DEVICE_PLUGIN_IMAGE}
    used = [
        c["image"]
        for obj in [*rendered.of_kind("Deployment"), *rendered.of_kind("DaemonSet"), *rendered.of_kind("Job")]
        for c in pod_spec(obj)["containers"]
    ]
    assert used
    for image in used:
        name, _, tag = image.rpartition(":")
        assert image in catalog or (name == repository and tag in allowed_tags), image


def test_device_plugins_run_only_on_their_accelerator_nodes(rendered: Rendered) -> None:
    daemon_sets = rendered.of_kind("DaemonSet")
    assert {d["metadata"]["name"] for d in daemon_sets} == {"nvidia-device-plugin", "neuron-device-plugin"}
    pools = rendered.of_kind("NodePool")
    for daemon_set in daemon_sets:
        spec = pod_spec(daemon_set)
        selected = [p for p in pools if node_pool_admits(p, spec["nodeSelector"])]
        accelerators = {p["spec"]["template"]["metadata"]["labels"][topology.NODE_LABEL_ACCELERATOR] for p in selected}
        assert len(accelerators) == 1 and selected
        for pool in selected:
            assert taints_tolerated(pool["spec"]["template"]["spec"]["taints"], spec["tolerations"])


def test_ingress_weights_routes_across_regional_services(rendered: Rendered) -> None:
    import json

    [ingress] = rendered.of_kind("Ingress")
    annotations = ingress["metadata"]["annotations"]
    assert ingress["spec"]["ingressClassName"] == "alb"
    assert "kubernetes.io/ingress.class" not in annotations
    assert annotations["alb.ingress.kubernetes.io/target-type"] == "ip"
    assert annotations["alb.ingress.kubernetes.io/healthcheck-path"] == contract.READY_PATH
    assert annotations["alb.ingress.kubernetes.io/inbound-cidrs"] == ",".join(rendered.config.client_cidrs)
    [rule] = ingress["spec"]["rules"]
    [path] = rule["http"]["paths"]
    action_name = path["backend"]["service"]["name"]
    assert path["backend"]["service"]["port"] == {"name": "use-annotation"}
    action = json.loads(annotations[f"alb.ingress.kubernetes.io/actions.{action_name}"])
    groups = action["forwardConfig"]["targetGroups"]
    services = {s["metadata"]["name"]: s for s in rendered.of_kind("Service")}
    expected = {a: ACCELERATORS[a].cost_weight for a in rendered.config.accelerators}
    assert {g["serviceName"]: g["weight"] for g in groups} == {
        f"stable-diffusion-{name}": weight for name, weight in expected.items()
    }
    for group in groups:
        assert int(group["servicePort"]) in {p["port"] for p in services[group["serviceName"]]["spec"]["ports"]}


def test_config_changes_flow_into_the_charts() -> None:
    context = {
        **cdk_json_context(),
        "accelerators": ["nvidia", "cpu"],
        "enableLargeNvidiaInstances": "true",
        "ingressWeights": {"nvidia": 0, "cpu": 7},
        "localZones": [{"name": "us-west-2-lax-1a", "instanceFamilies": ["g6", "c7g", "inf2"]}],
        "serving": {"minReplicas": 2, "maxReplicas": 9, "imageVersion": "2.0.1"},
    }
    rendered = render(context)
    pools = {p["metadata"]["name"]: p for p in rendered.of_kind("NodePool")}
    assert set(pools) == {"nvidia", "cpu", "nvidia-us-west-2-lax-1a", "cpu-us-west-2-lax-1a"}
    families = {r["key"]: r["values"] for r in pools["nvidia"]["spec"]["template"]["spec"]["requirements"]}
    assert families[topology.INSTANCE_FAMILY_LABEL] == ["g5", "g6", "g6e", "p4d", "p5"]
    lz = {r["key"]: r["values"] for r in pools["cpu-us-west-2-lax-1a"]["spec"]["template"]["spec"]["requirements"]}
    assert lz[topology.INSTANCE_FAMILY_LABEL] == ["c7g"]
    assert {d["metadata"]["name"] for d in rendered.of_kind("DaemonSet")} == {"nvidia-device-plugin"}
    assert {s["spec"]["minReplicaCount"] for s in rendered.of_kind("ScaledObject")} == {2}
    [ingress] = rendered.of_kind("Ingress")
    action = next(v for k, v in ingress["metadata"]["annotations"].items() if "/actions." in k)
    assert '"serviceName":"stable-diffusion-cpu","servicePort":"7860","weight":7' in action
    assert "stable-diffusion-nvidia" not in action  # weight 0: no target group
    images = {c["image"] for d in serving(rendered) for c in pod_spec(d)["containers"]}
    assert all(":2.0.1-" in image for image in images)


def test_all_zero_ingress_weights_are_a_config_error() -> None:
    from plan.config import ConfigError

    with pytest.raises(ConfigError, match="ingressWeights"):
        render({**cdk_json_context(), "ingressWeights": {"nvidia": 0, "neuron": 0, "cpu": 0}})


def test_the_alb_admits_only_ipv4_client_networks() -> None:
    from plan.config import ConfigError

    rendered = render({**cdk_json_context(), "clientCidrs": ["198.51.100.0/24", "2001:db8::/32"]})
    [ingress] = rendered.of_kind("Ingress")
    assert ingress["metadata"]["annotations"]["alb.ingress.kubernetes.io/inbound-cidrs"] == "198.51.100.0/24"
    with pytest.raises(ConfigError, match="clientCidrs"):
        render({**cdk_json_context(), "clientCidrs": ["2001:db8::/32"]})


def test_every_pod_in_the_app_namespace_passes_pod_security_restricted(rendered: Rendered) -> None:
    """The namespace enforces the restricted Pod Security Standard: a pod that breaks it is never created."""
    [namespace] = rendered.of_kind("Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    pods = [
        pod_spec(obj)
        for _, obj in rendered.all()
        if obj["kind"] in {"Deployment", "Job"} and obj["metadata"].get("namespace") == topology.NAMESPACE
    ]
    assert len(pods) >= len(topology.placements(rendered.config)) + len(rendered.config.accelerators)
    for spec in pods:
        pod_ctx = spec.get("securityContext", {})
        assert not any("hostPath" in volume for volume in spec.get("volumes", []))
        assert not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC")
        for container in spec["containers"]:
            ctx = container.get("securityContext", {})
            assert ctx.get("runAsNonRoot", pod_ctx.get("runAsNonRoot")) is True
            assert (ctx.get("seccompProfile") or pod_ctx.get("seccompProfile")) == {"type": "RuntimeDefault"}
            assert ctx["allowPrivilegeEscalation"] is False
            assert ctx["capabilities"]["drop"] == ["ALL"] and not ctx["capabilities"].get("add")


def test_serving_uses_the_model_baked_into_its_image(rendered: Rendered) -> None:
    """The image's layer cache: a serving pod must not override the image's local model source
    with the S3 prefix, or every new node would download the model again."""
    workloads = serving(rendered)
    assert workloads
    for workload in workloads:
        [container] = pod_spec(workload)["containers"]
        names = {e["name"] for e in container.get("env", [])}
        assert contract.ENV_MODEL_SOURCE not in names, workload["metadata"]["name"]


def test_region_pods_are_ready_only_once_healthy_in_the_alb(rendered: Rendered) -> None:
    """The ALB controller gates the readiness of the pods behind its ip target groups when their
    namespace carries its label (v2.17.1 docs/deploy/pod_readiness_gate.md): a rollout of a single
    replica then keeps the old pod until the new target is healthy. Local Zone pods sit behind no
    target group, so no gate waits on an ALB for them."""
    import json

    from charts.serving import READINESS_GATE_INJECT_LABEL

    [namespace] = rendered.of_kind("Namespace")
    assert namespace["metadata"]["labels"][READINESS_GATE_INJECT_LABEL] == "enabled"
    assert READINESS_GATE_INJECT_LABEL == "elbv2.k8s.aws/pod-readiness-gate-inject"
    [ingress] = rendered.of_kind("Ingress")
    annotations = ingress["metadata"]["annotations"]
    assert ingress["metadata"]["namespace"] == namespace["metadata"]["name"]
    assert annotations["alb.ingress.kubernetes.io/target-type"] == "ip"  # gates exist for ip targets only
    action = json.loads(annotations[contract.ANNOTATION_WEIGHTED_ACTION])
    behind_alb = {group["serviceName"] for group in action["forwardConfig"]["targetGroups"]}
    for placement in topology.placements(rendered.config):
        service = rendered.named("Service", placement.name)
        labels = pod_spec_labels(rendered.named("Deployment", placement.name))
        selected = all(labels.get(k) == v for k, v in service["spec"]["selector"].items())
        assert selected, placement.name
        others = [name for name in behind_alb if name != placement.name]
        for name in others:  # no target-group Service selects another placement's pods
            selector = rendered.named("Service", name)["spec"]["selector"]
            assert not all(labels.get(k) == v for k, v in selector.items()), (name, placement.name)
        assert (placement.name in behind_alb) is (not placement.location.is_local_zone), placement.name


def pod_spec_labels(workload: dict[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = workload["spec"]["template"]["metadata"]["labels"]
    return labels
