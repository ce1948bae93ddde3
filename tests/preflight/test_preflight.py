"""`make preflight` against moto (CloudFormation, EC2 zones and offerings, ACM, Secrets Manager, ECR,
S3, DynamoDB, IAM, SQS, Logs, STS) and botocore Stubber where moto 5.2.5 has no model (Service
Quotas for EC2, EKS DescribeClusterVersions)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber
from moto import mock_aws, settings
from moto.ec2.models import ec2_backends
from moto.ec2.models import instance_types as moto_instance_types
from moto.ec2.models.availability_zones_and_regions import Zone

from plan import capacity, naming, versions
from plan.deployments import INVENTORY, STACK_PREFIX, Deployment, load_plan, stack_name
from preflight import checks
from preflight.__main__ import main
from preflight.checks import FAIL, PASS, SKIP, Result, Target, quota_needs, run_checks
from tests.conftest import ROOT, Synth, cdk_json_context

ACCOUNT, REGION = "123456789012", "us-west-2"  # moto's account
LINE = re.compile(r"^(PASS|FAIL|SKIP) [^:]+: .+$")


def deployment(**overrides: object) -> Deployment:
    return load_plan({**cdk_json_context(), "account": ACCOUNT, **overrides}).selected


class Session:
    """boto3 clients on moto, except the services moto does not model: those are stubbed."""

    def __init__(self, stubbed: dict[str, Any] | None = None) -> None:
        self.session = boto3.Session(region_name=REGION)
        self.stubbed = stubbed or {}

    def client(self, service_name: str, region_name: str | None = None) -> Any:
        return self.stubbed.get(service_name) or self.session.client(service_name, region_name=region_name)


def stubbed(service: str, responses: list[tuple[str, dict[str, Any], dict[str, Any]]]) -> Any:
    client = boto3.client(service, region_name=REGION, aws_access_key_id="x", aws_secret_access_key="x")
    stub = Stubber(client)
    for method, response, params in responses:
        stub.add_response(method, response, params)
    stub.activate()
    return client


def quota_client(values: dict[str, float], config: Any) -> Any:
    return stubbed(
        "service-quotas",
        [
            (
                "get_service_quota",
                {"Quota": {"QuotaCode": code, "Value": values.get(code, 1024.0)}},
                {"ServiceCode": "ec2", "QuotaCode": code},
            )
            for code in sorted(quota_needs(config))
        ],
    )


def eks_client(status: str | None = "STANDARD_SUPPORT") -> Any:
    rows = [{"clusterVersion": versions.KUBERNETES_VERSION, "versionStatus": status}] if status else []
    return stubbed(
        "eks",
        [
            (
                "describe_cluster_versions",
                {"clusterVersions": rows},
                {"clusterVersions": [versions.KUBERNETES_VERSION], "includeAll": True},
            )
        ],
    )


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(key, "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    with mock_aws():
        yield


def add_local_zone(name: str, opt_in: str, *instance_types: str) -> None:
    """A Local Zone as EC2 describes it (moto's zone list has none), with its instance offerings."""
    zone = Zone(region_name=REGION, name=name, zone_id="usw2-lax1-az1", zone_type="local-zone")
    zone.opt_in_status = opt_in  # type: ignore[attr-defined]
    zone.group_name = name[:-1]  # type: ignore[attr-defined]
    ec2_backends[ACCOUNT][REGION].zones[REGION].append(zone)
    offerings = moto_instance_types.INSTANCE_TYPE_OFFERINGS["availability-zone"][REGION]
    offerings.extend({"InstanceType": t, "Location": name, "LocationType": "availability-zone"} for t in instance_types)


@pytest.fixture
def local_zone_offerings() -> Iterator[None]:
    """Undo add_local_zone: moto's zone list and offerings table are shared by every backend."""
    offerings = moto_instance_types.INSTANCE_TYPE_OFFERINGS["availability-zone"][REGION]
    zones = ec2_backends[ACCOUNT][REGION].zones[REGION]
    before_offerings, before_zones = list(offerings), list(zones)
    yield
    offerings[:] = before_offerings
    zones[:] = before_zones


def bootstrap(version: str = "33") -> None:
    template = {
        "Resources": {
            "Version": {
                "Type": "AWS::SSM::Parameter",
                "Properties": {"Type": "String", "Name": "/cdk-bootstrap/hnb659fds/version", "Value": version},
            }
        },
        "Outputs": {"BootstrapVersion": {"Value": version}},
    }
    boto3.client("cloudformation", region_name=REGION).create_stack(
        StackName=checks.BOOTSTRAP_STACK, TemplateBody=json.dumps(template)
    )


def issued_certificate(monkeypatch: pytest.MonkeyPatch, issued: bool = True) -> str:
    monkeypatch.setattr(settings, "ACM_VALIDATION_WAIT", 0 if issued else 3600)
    acm = boto3.client("acm", region_name=REGION)
    arn = acm.request_certificate(DomainName="edge.example.com", ValidationMethod="DNS")["CertificateArn"]
    return str(arn)


def by_check(results: list[Result]) -> dict[str, Result]:
    return {r.check: r for r in results}


def test_happy_path_every_check_passes(aws: None, local_zone_offerings: None, monkeypatch: pytest.MonkeyPatch) -> None:
    add_local_zone("us-west-2-lax-1a", "opted-in", "g5.xlarge", "g5.2xlarge")
    bootstrap()
    arn = issued_certificate(monkeypatch)
    boto3.client("secretsmanager", region_name=REGION).create_secret(
        Name="edge/lz-tls", SecretString='{"certificate": "c", "privateKey": "k"}'
    )
    tls = {"certificateArn": arn, "localZoneSecret": "edge/lz-tls", "localZoneServerName": "lz.example.com"}
    target = deployment(tls=json.dumps(tls))
    session = Session({"service-quotas": quota_client({}, target.config), "eks": eks_client()})
    results = run_checks(target, session)
    for result in results:
        assert LINE.match(result.line), result.line
    failed = [r.line for r in results if r.status != PASS]
    assert failed == [], failed
    checked = {r.check for r in results}
    assert {"credentials", "cdk bootstrap", "eks version", "local zone us-west-2-lax-1a", "tls certificate"} <= checked
    assert "offering g5 in us-west-2-lax-1a" in checked and "offering trn1 in us-west-2" in checked
    assert {f"quota {name} ({code})" for code, name in checks.QUOTAS.values() if code != "L-417A185B"} <= checked
    assert f"name ECR repository {naming.IMAGE_REPOSITORY_NAME}" in checked


def test_a_zone_group_not_opted_in_fails_with_the_command_that_opts_in(aws: None, local_zone_offerings: None) -> None:
    add_local_zone("us-west-2-lax-1a", "not-opted-in", "g5.xlarge")
    result = by_check(checks.check_local_zones(Target(deployment(), Session())))["local zone us-west-2-lax-1a"]
    assert result.status == FAIL
    assert result.line.endswith(
        "fix: aws ec2 modify-availability-zone-group --region us-west-2 --group-name us-west-2-lax-1 "
        "--opt-in-status opted-in"
    )


def test_a_zone_that_does_not_exist_fails(aws: None, local_zone_offerings: None) -> None:
    add_local_zone("us-west-2-lax-1a", "opted-in", "g5.xlarge")
    results = by_check(checks.check_local_zones(Target(deployment(localZones="us-west-2-den-1a"), Session())))
    assert results["local zone us-west-2-den-1a"].status == FAIL
    assert "it has: us-west-2-lax-1a" in results["local zone us-west-2-den-1a"].detail


def test_a_family_the_zone_does_not_offer_fails_with_what_it_offers(aws: None, local_zone_offerings: None) -> None:
    add_local_zone("us-west-2-lax-1a", "opted-in", "g5.xlarge", "g5.2xlarge", "c7g.4xlarge", "t3.medium")
    target = Target(deployment(localZones="us-west-2-lax-1a:g5+g6"), Session())
    results = by_check(checks.check_offerings(target))
    assert results["offering g5 in us-west-2-lax-1a"].status == PASS
    missing = results["offering g6 in us-west-2-lax-1a"]
    assert missing.status == FAIL
    assert missing.line.endswith("(offers: c7g, g5); fix: set localZones to us-west-2-lax-1a:c7g+g5")


def test_a_family_offered_in_none_of_the_regional_azs_fails(aws: None) -> None:
    # moto's us-west-2 offers trn1 in us-west-2b and us-west-2d only (as EC2 does).
    results = by_check(checks.check_offerings(Target(deployment(availabilityZones="us-west-2a,us-west-2c"), Session())))
    trn1 = results["offering trn1 in us-west-2"]
    assert trn1.status == FAIL and "fix: add an AZ that offers it" in trn1.line
    assert results["offering g5 in us-west-2"].status == PASS
    partial = by_check(checks.check_offerings(Target(deployment(), Session())))["offering trn1 in us-west-2"]
    assert partial.status == PASS and partial.detail == "offered in us-west-2b (not us-west-2a, us-west-2c)"


def test_bootstrap_missing_or_old_fails_with_the_bootstrap_command(aws: None) -> None:
    target = Target(deployment(), Session())
    (missing,) = checks.check_bootstrap(target)
    assert missing.status == FAIL and missing.fix == f"npx cdk bootstrap aws://{ACCOUNT}/{REGION}"
    bootstrap("5")
    (old,) = checks.check_bootstrap(target)
    assert old.status == FAIL and "BootstrapVersion 5 < 8" in old.detail


def test_the_pinned_bootstrap_version_is_what_the_synthesized_stacks_ask(tmp_path: Any) -> None:
    import aws_cdk as cdk

    app = cdk.App(outdir=str(tmp_path))
    cdk.CfnOutput(cdk.Stack(app, "S", env=cdk.Environment(account=ACCOUNT, region=REGION)), "O", value="1")
    app.synth()
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    asked = [
        role["requiresBootstrapStackVersion"]
        for artifact in manifest["artifacts"].values()
        for role in (artifact.get("properties", {}), artifact.get("properties", {}).get("lookupRole", {}))
        if "requiresBootstrapStackVersion" in role
    ]
    assert asked and max(asked) <= checks.REQUIRED_BOOTSTRAP_VERSION == max(asked)


def test_quotas_below_what_the_node_pool_limits_allow_fail_with_the_increase_command(aws: None) -> None:
    target = deployment()
    needs = quota_needs(target.config)
    gpu_need = needs["L-DB2E81BA"][0]
    session = Session({"service-quotas": quota_client({"L-DB2E81BA": 8.0}, target.config)})
    results = by_check(checks.check_quotas(Target(target, session)))
    gpu = results["quota Running On-Demand G and VT instances (L-DB2E81BA)"]
    assert gpu.status == FAIL and gpu.fix.endswith(f"--quota-code L-DB2E81BA --desired-value {gpu_need}")
    assert results["quota Running On-Demand Inf instances (L-1945791B)"].status == PASS


def test_quota_needs_follow_the_karpenter_chart_limits() -> None:
    """Each NodePool limit of charts/karpenter.py, on its smallest instance, is what preflight asks."""
    from charts.karpenter import NodePoolSettings, pool_limits
    from plan.topology import placements

    config = deployment(enableLargeNvidiaInstances="true").config
    settings_ = NodePoolSettings()
    # preflight computes with plan.capacity's defaults: the chart renders with the same ones
    assert (settings_.max_devices_per_node, settings_.vcpus_per_cpu_pod) == (
        capacity.MAX_DEVICES_PER_NODE,
        capacity.VCPUS_PER_CPU_POD,
    )
    for placement in placements(config):
        (limit,) = pool_limits(placement.accelerator, config, settings_).values()
        allowed = checks.pool_vcpus(placement, config)
        if placement.accelerator.device_resource:  # 4 vCPUs per device on g5/g6/g6e/inf2.xlarge
            assert allowed["g" if placement.accelerator.name == "nvidia" else "inf"][0] == 4 * int(limit.value)
        else:
            assert allowed["standard"][0] == int(limit.value)
    # Pools scale independently: the G and VT quota covers the Region's and the Local Zone's pool.
    assert quota_needs(config)["L-DB2E81BA"][0] == 2 * 64
    assert "L-417A185B" in quota_needs(config)  # p4d/p5 when enabled


def test_kubernetes_version_not_offered_fails(aws: None) -> None:
    (result,) = checks.check_kubernetes_version(Target(deployment(), Session({"eks": eks_client(None)})))
    assert result.status == FAIL and versions.KUBERNETES_VERSION in result.detail


def test_a_pending_certificate_and_a_missing_secret_fail(aws: None, monkeypatch: pytest.MonkeyPatch) -> None:
    arn = issued_certificate(monkeypatch, issued=False)
    tls = {"certificateArn": arn, "localZoneSecret": "edge/none", "localZoneServerName": "lz.example.com"}
    target = Target(deployment(tls=json.dumps(tls)), Session())
    results = by_check(checks.check_tls(target))
    assert results["tls certificate"].status == FAIL and "PENDING_VALIDATION" in results["tls certificate"].detail
    assert results["tls secret"].status == FAIL and "create-secret --name edge/none" in results["tls secret"].fix
    plain = by_check(checks.check_tls(Target(deployment(), Session())))
    assert {r.status for r in plain.values()} == {SKIP}


def test_physical_names_free_owned_retained_or_in_the_way(aws: None) -> None:
    target = deployment()
    config = target.config
    boto3.client("ecr", region_name=REGION).create_repository(repositoryName=naming.IMAGE_REPOSITORY_NAME)
    table = {
        "Type": "AWS::DynamoDB::Table",
        "Properties": {
            "TableName": naming.inventory_table_name(config),
            "KeySchema": [{"AttributeName": "id", "KeyType": "HASH"}],
            "AttributeDefinitions": [{"AttributeName": "id", "AttributeType": "S"}],
            "BillingMode": "PAY_PER_REQUEST",
        },
    }
    boto3.client("cloudformation", region_name=REGION).create_stack(
        StackName=stack_name(INVENTORY, target), TemplateBody=json.dumps({"Resources": {"Table": table}})
    )
    boto3.client("sqs", region_name=REGION).create_queue(QueueName=naming.interruption_queue_name(config))
    results = by_check(checks.check_physical_names(Target(target, Session())))
    repo = results[f"name ECR repository {naming.IMAGE_REPOSITORY_NAME}"]
    assert repo.status == PASS and "adopts it" in repo.detail
    assert "updated in place" in results[f"name DynamoDB table {naming.inventory_table_name(config)}"].detail
    queue = results[f"name SQS queue {naming.interruption_queue_name(config)}"]
    assert queue.status == FAIL and "delete-queue" in queue.fix
    bucket = results[f"name S3 bucket {naming.model_bucket_name(config)}"]
    assert bucket.status == PASS and bucket.detail.startswith("free")


def test_each_name_is_looked_up_in_the_synthesized_stack_that_creates_it(synth: Synth) -> None:
    """Preflight names stacks with plan.deployments.stack_name, as composition does: the stack it
    looks each physical name up in is the synthesized one that creates the name."""
    target = Target(synth.stacks.plan.selected, Session())
    assert synth.stacks.workstation is not None
    built = {stack.stack_name: stack for stack in (*synth.stacks.build.all, *synth.stacks.workstation.all)}
    for item in checks.physical_names(target):
        if item.stack.startswith(STACK_PREFIX):
            assert f'"{item.name}"' in json.dumps(synth.template_json(built[item.stack])), (item.stack, item.name)


def test_credentials_of_another_account_stop_the_checks(aws: None) -> None:
    results = run_checks(deployment(account="210987654321"), Session())
    assert [r.status for r in results] == [FAIL, SKIP]
    assert "credentials are for account 123456789012" in results[0].detail


def test_main_prints_one_line_per_check_and_exits_1_on_a_fail(aws: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-c", f"account={ACCOUNT}", "-c", "localZones=[]"]) == 1  # no bootstrap stack, no EKS in moto
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines and all(LINE.match(line) for line in lines), lines
    assert any(line.startswith("FAIL cdk bootstrap: ") for line in lines)


def test_config_errors_exit_2_and_the_example_account_is_refused_for_diff() -> None:
    run = [sys.executable, "-m", "preflight"]
    bad = subprocess.run(
        [*run, "-c", "vpcCidr=10.0.0.0/33", "-c", "auth.mode=x"], cwd=ROOT, capture_output=True, text=True
    )
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 2, bad.stderr
    example = subprocess.run([*run, "--require-account", "diff"], cwd=ROOT, capture_output=True, text=True)
    assert example.returncode == 2 and "a diff against AWS needs your account" in example.stderr
    mine = subprocess.run(
        [*run, "--require-account", "diff", "-c", f"account={ACCOUNT}"], cwd=ROOT, capture_output=True, text=True
    )
    assert mine.returncode == 0, mine.stderr
