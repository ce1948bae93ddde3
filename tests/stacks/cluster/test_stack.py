"""ClusterStack: what the cluster may reach, who may reach it, and what runs on it in which order.

Karpenter's IAM, queue and rules are checked against upstream's CloudFormation template
(vendored in third_party/karpenter/, read here with a loader of the test's own), the ALB
controller policy against the copy aws-cdk-lib ships, and the Helm releases against the
versions catalog: none of the expected values is retyped here.
"""

from __future__ import annotations

import json
import re
import tarfile
from pathlib import Path
from typing import Any

import aws_cdk
import pytest
import yaml

from plan import naming, versions
from stacks.cluster.aws_load_balancer_controller import POLICY_FILE as ALB_POLICY_FILE
from stacks.cluster.karpenter import upstream_controller_policies
from tests.conftest import ROOT, Synth
from tests.stack_variants import PUBLIC_ENDPOINT, variant

UPSTREAM_KARPENTER = ROOT / "third_party" / "karpenter" / "cloudformation.yaml"
HELM = "Custom::AWSCDK-EKS-HelmChart"
# Every chart the versions catalog pins is installed, as one Helm release each.
CATALOG_CHARTS = tuple(pin for pin in vars(versions).values() if isinstance(pin, versions.HelmChart))
KUBERNETES_MANIFEST = "Custom::AWSCDK-EKS-KubernetesResource"
REQUIRED_ADDONS = {"vpc-cni", "coredns", "kube-proxy", "eks-pod-identity-agent", "amazon-cloudwatch-observability"}


# --- helpers ----------------------------------------------------------------------------------


class _CfnLoader(yaml.SafeLoader):
    """YAML loader that keeps CloudFormation short-form tags (!Sub, !Ref, !GetAtt) as plain values."""


_CfnLoader.add_multi_constructor(
    "!",
    lambda loader, _suffix, node: (
        loader.construct_scalar(node) if isinstance(node, yaml.ScalarNode) else loader.construct_sequence(node)
    ),
)


@pytest.fixture(scope="module")
def upstream() -> dict[str, Any]:
    assert UPSTREAM_KARPENTER.exists(), f"upstream reference missing: {UPSTREAM_KARPENTER}"
    return yaml.load(UPSTREAM_KARPENTER.read_text(), Loader=_CfnLoader)["Resources"]


@pytest.fixture(scope="module")
def template(synth: Synth) -> dict[str, Any]:
    return synth.template_json(synth.stacks.cluster)


def of_type(template: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {lid: res for lid, res in template["Resources"].items() if res["Type"] == kind}


def props_of_type(template: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {lid: res.get("Properties", {}) for lid, res in of_type(template, kind).items()}


def depends_on(template: dict[str, Any], logical_id: str) -> set[str]:
    return set(template["Resources"][logical_id].get("DependsOn", []))


def depends_on_transitively(template: dict[str, Any], logical_id: str) -> set[str]:
    """Every resource ``logical_id`` waits for through ``DependsOn`` edges: CloudFormation creates
    them before it and deletes them after it."""
    seen: set[str] = set()
    todo = [logical_id]
    while todo:
        for dependency in depends_on(template, todo.pop()) - seen:
            seen.add(dependency)
            todo.append(dependency)
    return seen


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def normalized(statement: dict[str, Any]) -> dict[str, Any]:
    """A statement with Action/Resource as sorted lists and condition values as sorted lists."""
    out = dict(statement)
    out["Action"] = sorted(as_list(statement["Action"]))
    out["Resource"] = sorted(as_list(statement["Resource"]))
    if "Condition" in statement:
        out["Condition"] = {
            op: {key: sorted(as_list(value)) for key, value in body.items()}
            for op, body in statement["Condition"].items()
        }
    return out


def resolve(value: Any, refs: dict[str, str]) -> Any:
    """Resolve the intrinsics a synthesized policy uses, into upstream's placeholder text."""
    if isinstance(value, dict):
        if set(value) == {"Ref"}:
            return refs.get(value["Ref"], f"<{value['Ref']}>")
        if set(value) == {"Fn::GetAtt"}:
            attribute = ".".join(value["Fn::GetAtt"])
            return refs.get(attribute, f"<{attribute}>")
        if set(value) == {"Fn::ImportValue"}:
            return f"<import {value['Fn::ImportValue']}>"
        if set(value) == {"Fn::Join"}:
            separator, parts = value["Fn::Join"]
            return separator.join(resolve(part, refs) for part in parts)
        return {resolve(k, refs): resolve(v, refs) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve(v, refs) for v in value]
    return value


def upstream_policy_statements(upstream: dict[str, Any], values: dict[str, str]) -> dict[str, list[dict[str, Any]]]:
    """Upstream's controller managed policies by name, ${...} replaced by ``values`` (all others kept)."""
    out = {}
    for name, resource in upstream.items():
        if resource["Type"] == "AWS::IAM::ManagedPolicy":
            text = re.sub(
                r"\$\{([^}]+)\}", lambda m: values.get(m.group(1), m.group(0)), resource["Properties"]["PolicyDocument"]
            )
            out[name] = json.loads(text)["Statement"]
    return out


# --- where the cluster lives ---------------------------------------------------------------


def imported_subnet_ids(synth: Synth, imports: list[Any]) -> set[str]:
    """Network stack logical ids behind Fn::ImportValue subnet references."""
    outputs = synth.template_json(synth.stacks.network)["Outputs"]
    by_export = {out["Export"]["Name"]: out["Value"]["Ref"] for out in outputs.values() if "Export" in out}
    return {by_export[item["Fn::ImportValue"]] for item in imports}


def logical_ids(stack: Any, subnets: Any) -> set[str]:
    return {stack.resolve(subnet.subnet_id)["Ref"] for subnet in subnets}


def test_cluster_uses_regional_private_subnets_only(synth: Synth, template: dict[str, Any]) -> None:
    network = synth.stacks.network
    private = logical_ids(network, network.regional_private_subnets)
    local_zone = logical_ids(network, network.local_zone_subnets.values())
    public = logical_ids(network, network.regional_public_subnets)
    assert len(private) == len(network.config.availability_zones) and local_zone

    (cluster,) = props_of_type(template, "AWS::EKS::Cluster").values()
    cluster_subnets = imported_subnet_ids(synth, cluster["ResourcesVpcConfig"]["SubnetIds"])
    assert cluster_subnets == private
    assert not cluster_subnets & (local_zone | public)

    (nodegroup,) = props_of_type(template, "AWS::EKS::Nodegroup").values()
    assert imported_subnet_ids(synth, nodegroup["Subnets"]) == private
    for function in props_of_type(template, "AWS::Lambda::Function").values():  # the kubectl handlers
        if "VpcConfig" in function:
            assert imported_subnet_ids(synth, function["VpcConfig"]["SubnetIds"]) == private


def test_control_plane_logs_every_log_type(template: dict[str, Any]) -> None:
    (cluster,) = props_of_type(template, "AWS::EKS::Cluster").values()
    enabled = {t["Type"] for t in cluster["Logging"]["ClusterLogging"]["EnabledTypes"]}
    assert enabled == {"api", "audit", "authenticator", "controllerManager", "scheduler"}


def test_secrets_are_encrypted_with_a_rotating_key(template: dict[str, Any]) -> None:
    (cluster,) = props_of_type(template, "AWS::EKS::Cluster").values()
    (encryption,) = cluster["EncryptionConfig"]
    assert encryption["Resources"] == ["secrets"]
    key_id = encryption["Provider"]["KeyArn"]["Fn::GetAtt"][0]
    assert template["Resources"][key_id]["Properties"]["EnableKeyRotation"] is True


def test_cluster_runs_the_catalog_kubernetes_version_without_auto_mode(template: dict[str, Any]) -> None:
    (cluster,) = props_of_type(template, "AWS::EKS::Cluster").values()
    assert cluster["Version"] == versions.KUBERNETES_VERSION
    assert cluster["ComputeConfig"] == {"Enabled": False}  # Auto Mode cannot serve Local Zones next to Karpenter
    assert cluster["AccessConfig"]["AuthenticationMode"] == "API"


def test_endpoint_is_private_by_default(synth: Synth, template: dict[str, Any]) -> None:
    assert synth.stacks.cluster.config.endpoint_access == "private"
    (cluster,) = props_of_type(template, "AWS::EKS::Cluster").values()
    vpc_config = cluster["ResourcesVpcConfig"]
    assert vpc_config["EndpointPrivateAccess"] is True
    assert vpc_config["EndpointPublicAccess"] is False


@pytest.fixture(scope="module")
def public_variant() -> Any:
    return variant(PUBLIC_ENDPOINT, with_cluster=True)


def test_public_endpoint_admits_only_the_configured_cidrs(public_variant: Any) -> None:
    template = public_variant.templates["cluster"].to_json()
    (cluster,) = props_of_type(template, "AWS::EKS::Cluster").values()
    vpc_config = cluster["ResourcesVpcConfig"]
    assert vpc_config["EndpointPublicAccess"] is True and vpc_config["EndpointPrivateAccess"] is True
    assert sorted(vpc_config["PublicAccessCidrs"]) == sorted(public_variant.config.public_access_cidrs)


def test_admin_principals_get_cluster_admin_access_entries(public_variant: Any, template: dict[str, Any]) -> None:
    def admin_principals(tpl: dict[str, Any]) -> list[Any]:
        return [
            entry["PrincipalArn"]
            for entry in props_of_type(tpl, "AWS::EKS::AccessEntry").values()
            if any("AmazonEKSClusterAdminPolicy" in json.dumps(p["PolicyArn"]) for p in entry.get("AccessPolicies", []))
            and isinstance(entry["PrincipalArn"], str)
        ]

    assert sorted(admin_principals(public_variant.templates["cluster"].to_json())) == sorted(
        public_variant.config.admin_principal_arns
    )
    assert admin_principals(template) == []  # default config names no admin principals


# --- add-ons and the controllers' node group ------------------------------------------------


def test_required_addons_are_installed_around_the_node_group(template: dict[str, Any]) -> None:
    addons = {props["AddonName"]: lid for lid, props in props_of_type(template, "AWS::EKS::Addon").items()}
    assert set(addons) == REQUIRED_ADDONS
    (nodegroup_id,) = of_type(template, "AWS::EKS::Nodegroup")
    before = depends_on(template, nodegroup_id)
    for name in ("vpc-cni", "kube-proxy", "eks-pod-identity-agent"):
        assert addons[name] in before, f"nodes need {name} to join"
    for name in ("coredns", "amazon-cloudwatch-observability"):
        assert nodegroup_id in depends_on(template, addons[name]), f"{name} needs nodes"


def test_vpc_cni_runs_the_network_policy_agent(template: dict[str, Any]) -> None:
    """The charts' NetworkPolicies are enforced only with the VPC CNI's agent on."""
    addons = {props["AddonName"]: props for props in props_of_type(template, "AWS::EKS::Addon").values()}
    assert json.loads(addons["vpc-cni"]["ConfigurationValues"]) == {"enableNetworkPolicy": "true"}
    assert all("ConfigurationValues" not in props for name, props in addons.items() if name != "vpc-cni")


def test_container_insights_credentials_come_from_pod_identity_not_node_roles(template: dict[str, Any]) -> None:
    associations = props_of_type(template, "AWS::EKS::PodIdentityAssociation").values()
    (agent,) = [
        a for a in associations if (a["Namespace"], a["ServiceAccount"]) == ("amazon-cloudwatch", "cloudwatch-agent")
    ]
    role = template["Resources"][agent["RoleArn"]["Fn::GetAtt"][0]]["Properties"]
    assert any("CloudWatchAgentServerPolicy" in json.dumps(arn) for arn in role["ManagedPolicyArns"])
    for lid, other in props_of_type(template, "AWS::IAM::Role").items():
        if "ec2.amazonaws.com" in json.dumps(other["AssumeRolePolicyDocument"]):
            assert "CloudWatchAgentServerPolicy" not in json.dumps(other.get("ManagedPolicyArns", [])), lid


def test_controller_node_group_is_graviton_al2023_with_imdsv2_and_encrypted_volumes(template: dict[str, Any]) -> None:
    (nodegroup,) = props_of_type(template, "AWS::EKS::Nodegroup").values()
    assert nodegroup["AmiType"] == versions.CONTROLLER_NODE_AMI_TYPE
    assert all(re.fullmatch(r"[a-z]+\d+g[a-z]*\.\w+", t) for t in nodegroup["InstanceTypes"]), "Graviton types"
    assert nodegroup["ScalingConfig"]["MinSize"] >= 2
    launch_template_id = nodegroup["LaunchTemplate"]["Id"]["Ref"]
    data = template["Resources"][launch_template_id]["Properties"]["LaunchTemplateData"]
    assert data["MetadataOptions"]["HttpTokens"] == "required"
    assert data["MetadataOptions"]["HttpPutResponseHopLimit"] == 1
    assert data["BlockDeviceMappings"] and all(m["Ebs"]["Encrypted"] is True for m in data["BlockDeviceMappings"])


# --- Karpenter ---------------------------------------------------------------------------------


def test_karpenter_statement_table_is_upstream_verbatim(upstream: dict[str, Any]) -> None:
    """What stacks/cluster/karpenter.py reads from the template is what this test reads from it."""
    ours = upstream_controller_policies()
    theirs = upstream_policy_statements(upstream, {})
    assert set(ours) == set(theirs)
    for name in theirs:
        assert [normalized(s) for s in ours[name]] == [normalized(s) for s in theirs[name]], name


def test_karpenter_controller_policies_synthesize_as_upstream(
    synth: Synth, template: dict[str, Any], upstream: dict[str, Any]
) -> None:
    """The synthesized managed policies, intrinsics resolved, equal upstream's with our values."""
    config = synth.stacks.cluster.config
    resources = template["Resources"]
    node_role = next(
        lid
        for lid, r in resources.items()
        if r["Properties"].get("RoleName") == naming.karpenter_node_role_name(config)
    )
    queue = next(lid for lid, r in of_type(template, "AWS::SQS::Queue").items())
    refs = {"AWS::Partition": "aws", f"{node_role}.Arn": "NODE_ROLE_ARN", f"{queue}.Arn": "QUEUE_ARN"}
    expected = upstream_policy_statements(
        upstream,
        {
            "AWS::Partition": "aws",
            "AWS::Region": config.region,
            "AWS::AccountId": config.account,
            "ClusterName": config.cluster_name,
            "KarpenterNodeRole.Arn": "NODE_ROLE_ARN",
            "KarpenterInterruptionQueue.Arn": "QUEUE_ARN",
        },
    )
    (association,) = [
        a
        for a in props_of_type(template, "AWS::EKS::PodIdentityAssociation").values()
        if a["ServiceAccount"] == "karpenter"
    ]
    assert association["Namespace"] == versions.KARPENTER.namespace
    role = resources[association["RoleArn"]["Fn::GetAtt"][0]]["Properties"]
    attached = [arn["Ref"] for arn in role["ManagedPolicyArns"]]
    synthesized = sorted(
        (
            normalized(s)
            for lid in attached
            for s in resolve(resources[lid]["Properties"]["PolicyDocument"], refs)["Statement"]
        ),
        key=lambda s: s["Sid"],
    )
    # serving.spot adds exactly one statement of its own (tests/stacks/cluster/test_karpenter_spot.py).
    ours = [s for s in synthesized if s["Sid"] == "AllowSpotServiceLinkedRoleCreation"]
    assert len(ours) == (1 if config.serving.spot else 0)
    upstreams = [s for s in synthesized if s not in ours]
    assert upstreams == sorted((normalized(s) for ss in expected.values() for s in ss), key=lambda s: s["Sid"])
    assert "Policies" not in role, "the controller gets upstream's permissions and nothing else"


def test_pod_identity_roles_trust_only_eks_pods_with_tag_session(template: dict[str, Any]) -> None:
    associations = props_of_type(template, "AWS::EKS::PodIdentityAssociation").values()
    assert {a["ServiceAccount"] for a in associations} >= {"karpenter", "aws-load-balancer-controller", "keda-operator"}
    for association in associations:
        role = template["Resources"][association["RoleArn"]["Fn::GetAtt"][0]]["Properties"]
        (trust,) = role["AssumeRolePolicyDocument"]["Statement"]
        assert trust["Principal"] == {"Service": "pods.eks.amazonaws.com"}
        assert sorted(as_list(trust["Action"])) == ["sts:AssumeRole", "sts:TagSession"]
        assert "Condition" not in trust or trust["Condition"]


def test_karpenter_node_role_matches_upstream_and_joins_as_ec2_linux(
    synth: Synth, template: dict[str, Any], upstream: dict[str, Any]
) -> None:
    config = synth.stacks.cluster.config
    roles = props_of_type(template, "AWS::IAM::Role")
    (node_role_id,) = [lid for lid, r in roles.items() if r.get("RoleName") == naming.karpenter_node_role_name(config)]
    ours = sorted(resolve(arn, {"AWS::Partition": "aws"}) for arn in roles[node_role_id]["ManagedPolicyArns"])
    theirs = sorted(
        arn.replace("${AWS::Partition}", "aws")
        for arn in upstream["KarpenterNodeRole"]["Properties"]["ManagedPolicyArns"]
    )
    assert ours == theirs
    assert json.dumps(roles[node_role_id]["AssumeRolePolicyDocument"]).count("ec2.amazonaws.com") == 1
    entries = [
        e
        for e in props_of_type(template, "AWS::EKS::AccessEntry").values()
        if e["PrincipalArn"] == {"Fn::GetAtt": [node_role_id, "Arn"]}
    ]
    assert [e["Type"] for e in entries] == ["EC2_LINUX"]


def test_interruption_queue_is_encrypted_tls_only_and_short_lived(
    synth: Synth, template: dict[str, Any], upstream: dict[str, Any]
) -> None:
    ((queue_id, queue),) = props_of_type(template, "AWS::SQS::Queue").items()
    upstream_queue = upstream["KarpenterInterruptionQueue"]["Properties"]
    assert queue["QueueName"] == naming.interruption_queue_name(synth.stacks.cluster.config)
    assert queue["MessageRetentionPeriod"] == upstream_queue["MessageRetentionPeriod"]
    assert queue["SqsManagedSseEnabled"] is upstream_queue["SqsManagedSseEnabled"] is True
    (policy,) = props_of_type(template, "AWS::SQS::QueuePolicy").values()
    statements = policy["PolicyDocument"]["Statement"]
    deny = [s for s in statements if s["Effect"] == "Deny"]
    assert deny and deny[0]["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    allows = [s for s in statements if s["Effect"] == "Allow"]
    assert allows and all(s["Principal"] == {"Service": "events.amazonaws.com"} for s in allows)
    assert all("aws:SourceArn" in s["Condition"]["ArnEquals"] for s in allows), "only our rules may send"
    assert all(s["Resource"] == {"Fn::GetAtt": [queue_id, "Arn"]} for s in statements)


def test_interruption_rules_are_upstreams_rules_targeting_the_queue(
    template: dict[str, Any], upstream: dict[str, Any]
) -> None:
    def pattern(props: dict[str, Any]) -> tuple[tuple[str, ...], tuple[str, ...]]:
        p = props["EventPattern"]
        return tuple(p["source"]), tuple(p["detail-type"])

    theirs = sorted(pattern(r["Properties"]) for r in upstream.values() if r["Type"] == "AWS::Events::Rule")
    rules = props_of_type(template, "AWS::Events::Rule").values()
    assert sorted(pattern(r) for r in rules) == theirs
    (queue_id,) = of_type(template, "AWS::SQS::Queue")
    for rule in rules:
        assert [t["Arn"] for t in rule["Targets"]] == [{"Fn::GetAtt": [queue_id, "Arn"]}]


# --- Helm releases --------------------------------------------------------------------------


def helm_releases(template: dict[str, Any]) -> dict[str, tuple[str, dict[str, Any]]]:
    return {props["Release"]: (lid, props) for lid, props in props_of_type(template, HELM).items()}


def values_json(props: dict[str, Any], refs: dict[str, str]) -> dict[str, Any]:
    raw = props["Values"]
    return json.loads(raw if isinstance(raw, str) else resolve(raw, refs))


def test_helm_releases_are_pinned_to_the_catalog(template: dict[str, Any]) -> None:
    found = helm_releases(template)
    assert set(found) == {chart.release_name for chart in CATALOG_CHARTS}
    for chart in CATALOG_CHARTS:
        _, props = found[chart.release_name]
        assert (props["Chart"], props["Repository"], props["Version"], props["Namespace"]) == (
            chart.chart,
            chart.repository,
            chart.version,
            chart.namespace,
        )
        assert props["Wait"] is True, "the next Helm release must see this one ready"


def test_helm_releases_install_in_dependency_order(template: dict[str, Any]) -> None:
    found = helm_releases(template)
    (nodegroup_id,) = of_type(template, "AWS::EKS::Nodegroup")

    def after(later: str, earlier: str) -> bool:
        return found[earlier][0] in depends_on(template, found[later][0])

    # Karpenter first; the ALB controller's Service/Pod webhooks before Helm releases that create Services.
    assert after("aws-load-balancer-controller", "karpenter")
    assert after("keda", "aws-load-balancer-controller")
    assert after("volcano", "keda")
    for lid, _ in found.values():
        assert nodegroup_id in depends_on(template, lid), "controllers run on the managed node group"


def test_karpenter_values_name_the_cluster_and_queue(synth: Synth, template: dict[str, Any]) -> None:
    config = synth.stacks.cluster.config
    (queue_id,) = of_type(template, "AWS::SQS::Queue")
    values = values_json(helm_releases(template)["karpenter"][1], {f"{queue_id}.QueueName": "QUEUE"})
    assert values["settings"] == {"clusterName": config.cluster_name, "interruptionQueue": "QUEUE"}
    (association,) = [
        a
        for a in props_of_type(template, "AWS::EKS::PodIdentityAssociation").values()
        if (a["Namespace"], a["ServiceAccount"]) == (versions.KARPENTER.namespace, values["serviceAccount"]["name"])
    ]
    assert association


def test_every_controller_is_pinned_to_the_controller_node_group(template: dict[str, Any]) -> None:
    """Karpenter must not run on nodes it manages; no controller should land on accelerator nodes."""
    (nodegroup,) = props_of_type(template, "AWS::EKS::Nodegroup").values()
    labels = nodegroup["Labels"]
    for helm_release, (_, props) in helm_releases(template).items():
        if helm_release == "karpenter-crd":  # CRDs only: no pods to place
            continue
        values = values_json(props, {})
        selector = values.get("nodeSelector") or values.get("custom", {}).get("default_ns")
        assert selector and selector.items() <= labels.items(), helm_release


def test_keda_operator_may_only_read_cloudwatch_metrics(template: dict[str, Any]) -> None:
    (association,) = [
        a
        for a in props_of_type(template, "AWS::EKS::PodIdentityAssociation").values()
        if a["ServiceAccount"] == "keda-operator"
    ]
    assert association["Namespace"] == versions.KEDA.namespace
    role_id = association["RoleArn"]["Fn::GetAtt"][0]
    policies = [p for p in props_of_type(template, "AWS::IAM::Policy").values() if {"Ref": role_id} in p["Roles"]]
    actions = {a for p in policies for s in p["PolicyDocument"]["Statement"] for a in as_list(s["Action"])}
    assert actions and all(re.fullmatch(r"cloudwatch:(Get|List|Describe)\w+", a) for a in actions)
    assert "cloudwatch:GetMetricData" in actions
    assert not template["Resources"][role_id]["Properties"].get("ManagedPolicyArns")


def test_alb_controller_policy_is_the_upstream_policy_aws_cdk_lib_ships(template: dict[str, Any]) -> None:
    jsii_tgz = next((Path(aws_cdk.__file__).parent / "_jsii").glob("aws-cdk-lib@*.jsii.tgz"))
    member = f"package/aws-eks-v2/lib/addons/alb-iam_policy-{versions.AWS_LOAD_BALANCER_CONTROLLER_APP_VERSION}.json"
    with tarfile.open(jsii_tgz) as archive:
        extracted = archive.extractfile(member)
        assert extracted is not None
        shipped = json.load(extracted)
    assert json.loads(ALB_POLICY_FILE.read_text()) == shipped

    (association,) = [
        a
        for a in props_of_type(template, "AWS::EKS::PodIdentityAssociation").values()
        if a["ServiceAccount"] == "aws-load-balancer-controller"
    ]
    role_id = association["RoleArn"]["Fn::GetAtt"][0]
    policies = [p for p in props_of_type(template, "AWS::IAM::Policy").values() if {"Ref": role_id} in p["Roles"]]
    granted = {
        (a, r)
        for p in policies
        for s in p["PolicyDocument"]["Statement"]
        for a in as_list(s["Action"])
        for r in as_list(s["Resource"])
    }
    upstream_pairs = {
        (a, r) for s in shipped["Statement"] for a in as_list(s["Action"]) for r in as_list(s["Resource"])
    }
    assert granted == upstream_pairs


def test_volcano_creates_pods_without_waiting_for_idle_capacity(template: dict[str, Any]) -> None:
    """No ``enqueue`` action: a PodGroup is not held Pending until current idle capacity fits it,
    so its pods are created, go Pending, and Karpenter adds the GPU/Neuron node they need."""
    _, props = helm_releases(template)[versions.VOLCANO.release_name]
    custom = values_json(props, {})["custom"]
    config = yaml.safe_load(custom["scheduler_config_override"])
    actions = [action.strip() for action in config["actions"].split(",")]
    assert "enqueue" not in actions
    assert actions[0] == "allocate" and "backfill" in actions
    plugins = [plugin["name"] for tier in config["tiers"] for plugin in tier["plugins"]]
    assert "overcommit" not in plugins, "it only decides enqueue admission"
    # The chart default's other plugins stay: gang scheduling, fairness, node fit and scoring.
    assert {"priority", "gang", "conformance", "drf", "predicates", "proportion", "nodeorder", "binpack"} <= set(
        plugins
    )
    assert custom["default_ns"], "the node selector stays next to the override"


def test_karpenter_crds_come_from_the_karpenter_crd_chart_installed_first(template: dict[str, Any]) -> None:
    """Helm never upgrades a chart's crds/ directory: the CRDs come from the karpenter-crd chart, at
    Karpenter's version, installed before the karpenter Helm release, which skips its own copy."""
    found = helm_releases(template)
    assert "karpenter-crd" in found, "no karpenter-crd Helm release"
    crd_id, crd = found["karpenter-crd"]
    karpenter_id, karpenter = found[versions.KARPENTER.release_name]
    assert crd["Chart"] == "karpenter-crd"
    assert crd["Repository"] == "oci://public.ecr.aws/karpenter/karpenter-crd"
    assert crd["Version"] == karpenter["Version"] == versions.KARPENTER.version
    assert crd["Namespace"] == karpenter["Namespace"]
    assert crd_id in depends_on_transitively(template, karpenter_id)
    assert karpenter_id not in depends_on_transitively(template, crd_id)
    assert karpenter.get("SkipCrds") is True
    assert not crd.get("SkipCrds")


def test_stack_delete_removes_node_pools_then_karpenter_then_its_node_access(
    synth: Synth, template: dict[str, Any]
) -> None:
    """CloudFormation deletes a resource before what it depends on. The NodePools/EC2NodeClasses go
    while Karpenter runs (its finalizers terminate their instances), Karpenter before the node
    role's access entry and the interruption queue and rules it reads."""
    resources = template["Resources"]
    (karpenter_id, _) = helm_releases(template)[versions.KARPENTER.release_name]
    (node_pools_id,) = [lid for lid in of_type(template, KUBERNETES_MANIFEST) if "Chartkarpenter" in lid]
    assert "NodePool" in json.dumps(resources[node_pools_id]["Properties"]["Manifest"])
    node_role_name = naming.karpenter_node_role_name(synth.stacks.cluster.config)
    (node_role_id,) = [
        lid for lid, r in props_of_type(template, "AWS::IAM::Role").items() if r.get("RoleName") == node_role_name
    ]
    (access_entry_id,) = [
        lid
        for lid, entry in props_of_type(template, "AWS::EKS::AccessEntry").items()
        if entry["PrincipalArn"] == {"Fn::GetAtt": [node_role_id, "Arn"]}
    ]
    before_karpenter = depends_on_transitively(template, karpenter_id)
    assert access_entry_id in before_karpenter, "the node access entry could be deleted before the NodePools"
    for kind in ("AWS::SQS::Queue", "AWS::SQS::QueuePolicy", "AWS::Events::Rule"):
        assert set(of_type(template, kind)) <= before_karpenter, kind
    assert karpenter_id in depends_on_transitively(template, node_pools_id)
    # Every applied chart waits for every Helm release (so goes first on delete).
    for manifest_id in of_type(template, KUBERNETES_MANIFEST):
        assert {lid for lid, _ in helm_releases(template).values()} <= depends_on_transitively(template, manifest_id)


# --- the API other stacks and charts use ------------------------------------------------------


def test_add_pod_identity_role_and_apply_charts(public_variant: Any) -> None:
    """The variant's cluster got a probe role and a probe chart (tests/stack_variants.py)."""
    template = public_variant.templates["cluster"].to_json()
    (probe,) = [
        a
        for a in props_of_type(template, "AWS::EKS::PodIdentityAssociation").values()
        if a["ServiceAccount"] == "probe-sa"
    ]
    assert probe["Namespace"] == "probe"
    role = template["Resources"][probe["RoleArn"]["Fn::GetAtt"][0]]["Properties"]
    assert role["AssumeRolePolicyDocument"]["Statement"][0]["Principal"] == {"Service": "pods.eks.amazonaws.com"}

    found = helm_releases(template)
    manifests = [
        lid
        for lid, props in props_of_type(template, "Custom::AWSCDK-EKS-KubernetesResource").items()
        if "probe-config" in json.dumps(props)
    ]
    assert len(manifests) == 1
    assert {lid for lid, _ in found.values()} <= depends_on(template, manifests[0]), "charts wait for every controller"
