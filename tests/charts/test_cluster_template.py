"""The cluster stack applies the same objects that ``make manifests`` writes, with the
ordering and the workload roles the pods need."""

from __future__ import annotations

import json
from typing import Any

from plan import contract, naming
from tests.charts.conftest import Rendered, render
from tests.conftest import PLAN_ACCOUNT, cdk_json_context

MANIFEST_TYPE = "Custom::AWSCDK-EKS-KubernetesResource"


def identities(objects: list[dict[str, Any]]) -> set[tuple[str, str, str, str]]:
    return {(o["apiVersion"], o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"]) for o in objects}


def applied_manifests(template: dict[str, Any]) -> list[str]:
    """The manifests of the cdk8s charts applied by ClusterStack.apply_charts (JSON strings)."""
    return [
        resource["Properties"]["Manifest"]
        for resource in template["Resources"].values()
        if resource["Type"] == MANIFEST_TYPE and isinstance(resource["Properties"]["Manifest"], str)
    ]


def test_cluster_template_carries_the_same_objects_as_dist(synth: Any) -> None:
    """``make manifests`` of the workstation deployment writes what its cluster stack applies."""
    rendered = render({**cdk_json_context(), "account": PLAN_ACCOUNT})
    template = synth.template_json(synth.stacks.cluster)
    applied: set[tuple[str, str, str, str]] = set()
    for manifest in applied_manifests(template):
        assert "${Token[" not in manifest and "Fn::" not in manifest  # plain YAML, no CDK tokens
        applied |= identities(json.loads(manifest))
    expected = identities([obj for _, obj in rendered.all()])
    assert expected <= applied, sorted(expected - applied)
    # Nothing chart-like is applied that dist/manifests lacks (Helm releases are separate resources).
    assert not {i for i in applied - expected if i[2] == "edge-diffusion" or i[1] in {"NodePool", "EC2NodeClass"}}


def test_charts_apply_after_their_dependencies_and_the_pod_identity_associations(synth: Any) -> None:
    template = synth.template_json(synth.stacks.cluster)
    resources = template["Resources"]
    by_kinds = {}
    for logical_id, resource in resources.items():
        if resource["Type"] == MANIFEST_TYPE and isinstance(resource["Properties"]["Manifest"], str):
            by_kinds[frozenset(o["kind"] for o in json.loads(resource["Properties"]["Manifest"]))] = logical_id
    serving = next(lid for kinds, lid in by_kinds.items() if "Ingress" in kinds)
    karpenter = next(lid for kinds, lid in by_kinds.items() if "NodePool" in kinds)
    autoscaling = next(lid for kinds, lid in by_kinds.items() if "ScaledObject" in kinds)
    queue = next(lid for kinds, lid in by_kinds.items() if "Queue" in kinds)
    compile_jobs = next(lid for kinds, lid in by_kinds.items() if "Job" in kinds)
    assert karpenter in resources[serving]["DependsOn"]
    assert serving in resources[autoscaling]["DependsOn"]
    assert {serving, queue} <= set(resources[compile_jobs]["DependsOn"])
    associations = {lid: r for lid, r in resources.items() if r["Type"] == "AWS::EKS::PodIdentityAssociation"}
    for lid, association in associations.items():
        props = association["Properties"]
        if props["Namespace"] != "edge-diffusion":
            continue
        dependent = compile_jobs if props["ServiceAccount"] == "model-compiler" else serving
        if props["ServiceAccount"].startswith("stable-diffusion-") or props["ServiceAccount"] == "model-compiler":
            assert lid in resources[dependent]["DependsOn"], props["ServiceAccount"]


def test_serving_roles_may_put_our_metrics_and_read_the_token_key_only(synth: Any, rendered: Rendered) -> None:
    template = synth.template_json(synth.stacks.cluster)
    resources = template["Resources"]
    roles_by_account = {
        r["Properties"]["ServiceAccount"]: r["Properties"]["RoleArn"]["Fn::GetAtt"][0]
        for r in resources.values()
        if r["Type"] == "AWS::EKS::PodIdentityAssociation" and r["Properties"]["Namespace"] == "edge-diffusion"
    }
    deployments = {
        d["spec"]["template"]["spec"]["serviceAccountName"]
        for d in rendered.objects["serving"]
        if d["kind"] == "Deployment"
    }
    assert deployments <= set(roles_by_account)
    assert "model-compiler" in roles_by_account

    def actions_of(role_id: str) -> dict[str, Any]:
        statements = [
            s
            for r in resources.values()
            if r["Type"] == "AWS::IAM::Policy" and {"Ref": role_id} in r["Properties"]["Roles"]
            for s in r["Properties"]["PolicyDocument"]["Statement"]
        ]
        out: dict[str, Any] = {}
        for statement in statements:
            for action in [statement["Action"]] if isinstance(statement["Action"], str) else statement["Action"]:
                out[action] = statement
        return out

    for account in deployments:
        actions = actions_of(roles_by_account[account])
        # Default config: tokens on, no tls.localZoneSecret (so no secret to read).
        assert set(actions) == {"cloudwatch:PutMetricData", "kms:GetPublicKey"}
        condition = actions["cloudwatch:PutMetricData"]["Condition"]
        assert condition == {"StringEquals": {"cloudwatch:namespace": contract.METRIC_NAMESPACE}}
        alias = actions["kms:GetPublicKey"]["Condition"]["StringEquals"]["kms:RequestAlias"]
        assert alias == naming.token_signing_key_alias(rendered.config)
    compiler = actions_of(roles_by_account["model-compiler"])
    assert set(compiler) == {
        "s3:GetObject",
        "s3:ListBucket",
        "s3:PutObject",
        "s3:AbortMultipartUpload",
        "s3:DeleteObject",
    }
    own = f"{naming.cluster_models_key_prefix(synth.stacks.plan.selected.config)}/*"
    assert own in json.dumps(compiler["s3:PutObject"]["Resource"])
