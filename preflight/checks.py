"""The preflight checks: read-only AWS calls answering "would a deploy of this config start?".

Every check takes a :class:`Target` (the deployment's config, its stack names and AWS clients)
and returns :class:`Result` lines. A call AWS refuses (no permission, throttled) is a FAIL that
names the action, never a traceback.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from plan import capacity, naming, versions
from plan.accelerators import ACCELERATOR_NAMES, Accelerator, instance_families
from plan.config import AppConfig
from plan.deployments import (
    CLUSTER,
    EXAMPLE_ACCOUNT,
    IMAGE_PIPELINE,
    INVENTORY,
    REGISTRY,
    STACK_PREFIX,
    Deployment,
    stack_name,
)
from plan.topology import Placement, placements

PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"

# --- CDK bootstrap ------------------------------------------------------------------------
BOOTSTRAP_STACK: Final = "CDKToolkit"
# What the synthesized stacks require of the bootstrap stack: the DefaultStackSynthesizer of the
# aws-cdk-lib requirements.txt pins asks version 6 to deploy (MIN_BOOTSTRAP_STACK_VERSION) and
# version 8 for its lookup role (MIN_LOOKUP_ROLE_BOOTSTRAP_STACK_VERSION), which `cdk diff` uses;
# core/lib/stack-synthesizers/default-synthesizer.js. tests/preflight/test_preflight.py checks the
# synthesized manifest asks no more.
REQUIRED_BOOTSTRAP_VERSION: Final = 8
# What `npx cdk bootstrap` of the CLI package.json pins (aws-cdk) deploys today:
# node_modules/aws-cdk/lib/api/bootstrap/bootstrap-template.yaml, Outputs.BootstrapVersion.
CLI_BOOTSTRAP_VERSION: Final = 33

# --- EC2 vCPU quotas (Service Quotas, service code ec2), by instance family prefix ----------
# Codes as ListServiceQuotas names them ("Running On-Demand ... instances", vCPUs).
QUOTAS: Final = {
    "g": ("L-DB2E81BA", "Running On-Demand G and VT instances"),
    "vt": ("L-DB2E81BA", "Running On-Demand G and VT instances"),
    "inf": ("L-1945791B", "Running On-Demand Inf instances"),
    "p": ("L-417A185B", "Running On-Demand P instances"),
    "trn": ("L-2C3B7624", "Running On-Demand Trn instances"),
    "standard": ("L-1216C47A", "Running On-Demand Standard (A, C, D, H, I, M, R, T, Z) instances"),
}
# Accelerator devices of the smallest instance of each family (EC2 accelerated instance pages).
DEVICES: Final = {
    "g5.xlarge": 1,
    "g6.xlarge": 1,
    "g6e.xlarge": 1,
    "p4d.24xlarge": 8,
    "p5.4xlarge": 1,
    "inf2.xlarge": 1,
    "trn1.2xlarge": 1,
}


@dataclass(frozen=True)
class Result:
    """One check's outcome: one line for the user."""

    status: str  # PASS | FAIL | SKIP
    check: str
    detail: str
    fix: str = ""

    @property
    def line(self) -> str:
        return f"{self.status} {self.check}: {self.detail}" + (f"; fix: {self.fix}" if self.fix else "")


class Session(Protocol):
    def client(self, service_name: str, region_name: str | None = None) -> Any: ...


@dataclass
class Target:
    """What the checks look at: one deployment and the AWS account and Region it deploys to."""

    deployment: Deployment
    session: Session
    _clients: dict[str, Any] = field(default_factory=dict)

    @property
    def config(self) -> AppConfig:
        return self.deployment.config

    def client(self, service: str) -> Any:
        if service not in self._clients:
            self._clients[service] = self.session.client(service, region_name=self.config.region)
        return self._clients[service]

    def stack(self, part: str) -> str:
        """The name of one of the deployment's stacks (plan.deployments.stack_name, as composition names it)."""
        return stack_name(part, self.deployment)


def _refused(check: str, err: Exception, action: str) -> Result:
    """A call AWS refused: say which and why, never a traceback."""
    if isinstance(err, ClientError):
        error = err.response.get("Error", {})
        why = f"{error.get('Code', 'error')}: {error.get('Message', '')}".strip().rstrip(":")
    else:
        why = str(err)
    return Result(FAIL, check, f"{action} failed ({why})", f"allow {action} to your credentials, or retry")


def _code(err: ClientError) -> str:
    return str(err.response.get("Error", {}).get("Code", ""))


# --- Credentials ----------------------------------------------------------------------------
def check_credentials(target: Target) -> list[Result]:
    config = target.config
    try:
        account = target.client("sts").get_caller_identity()["Account"]
    except NoCredentialsError:
        fix = "configure credentials for the account: aws configure, aws sso login, or AWS_PROFILE=<profile>"
        return [Result(FAIL, "credentials", "no AWS credentials found", fix)]
    except (ClientError, BotoCoreError) as err:
        return [_refused("credentials", err, "sts:GetCallerIdentity")]
    if config.account == EXAMPLE_ACCOUNT:
        return [
            Result(
                FAIL,
                "credentials",
                f"account is the example {EXAMPLE_ACCOUNT}; your credentials are for {account}",
                f'set "account": "{account}" in cdk.json (or -c account={account})',
            )
        ]
    if account != config.account:
        return [
            Result(
                FAIL,
                "credentials",
                f"your credentials are for account {account}, the config deploys to {config.account}",
                f"use credentials of {config.account} (AWS_PROFILE=...), or set account to {account}",
            )
        ]
    return [Result(PASS, "credentials", f"account {account}, Region {config.region}")]


# --- CDK bootstrap ---------------------------------------------------------------------------
def check_bootstrap(target: Target) -> list[Result]:
    check, region, account = "cdk bootstrap", target.config.region, target.config.account
    fix = f"npx cdk bootstrap aws://{account}/{region}"
    try:
        stacks = target.client("cloudformation").describe_stacks(StackName=BOOTSTRAP_STACK)["Stacks"]
    except ClientError as err:
        if _code(err) == "ValidationError":  # what CloudFormation answers for a stack that does not exist
            return [Result(FAIL, check, f"no {BOOTSTRAP_STACK} stack in {region}", fix)]
        return [_refused(check, err, "cloudformation:DescribeStacks")]
    outputs = {o["OutputKey"]: o.get("OutputValue", "") for o in stacks[0].get("Outputs", [])}
    raw = outputs.get("BootstrapVersion", "")
    if not raw.isdigit():
        return [Result(FAIL, check, f"{BOOTSTRAP_STACK} has no BootstrapVersion output (not a CDK v2 bootstrap)", fix)]
    version = int(raw)
    if version < REQUIRED_BOOTSTRAP_VERSION:
        detail = f"{BOOTSTRAP_STACK} BootstrapVersion {version} < {REQUIRED_BOOTSTRAP_VERSION} this app's stacks need"
        return [Result(FAIL, check, detail, f"{fix} (updates it to {CLI_BOOTSTRAP_VERSION})")]
    note = f"; the pinned CLI bootstraps {CLI_BOOTSTRAP_VERSION}" if version < CLI_BOOTSTRAP_VERSION else ""
    return [Result(PASS, check, f"{BOOTSTRAP_STACK} BootstrapVersion {version} >= {REQUIRED_BOOTSTRAP_VERSION}{note}")]


# --- Kubernetes version ---------------------------------------------------------------------
def check_kubernetes_version(target: Target) -> list[Result]:
    check, wanted = "eks version", versions.KUBERNETES_VERSION
    try:
        found = target.client("eks").describe_cluster_versions(clusterVersions=[wanted], includeAll=True)
    except (ClientError, BotoCoreError) as err:
        return [_refused(check, err, "eks:DescribeClusterVersions")]
    rows = [v for v in found.get("clusterVersions", []) if v.get("clusterVersion") == wanted]
    if not rows:
        return [
            Result(
                FAIL,
                check,
                f"EKS in {target.config.region} does not offer Kubernetes {wanted}",
                "wait for EKS to release it there, or pin an offered version in plan/versions.py",
            )
        ]
    status = str(rows[0].get("versionStatus") or rows[0].get("status") or "")
    if status.upper() == "UNSUPPORTED":
        return [Result(FAIL, check, f"Kubernetes {wanted} is unsupported by EKS", "upgrade plan/versions.py")]
    extended = "; extended support costs extra per cluster hour" if status.upper() == "EXTENDED_SUPPORT" else ""
    return [Result(PASS, check, f"Kubernetes {wanted} is offered ({status or 'listed'}){extended}")]


# --- Local Zones ----------------------------------------------------------------------------
def check_local_zones(target: Target) -> list[Result]:
    zones = [zone.name for zone in target.config.local_zones]
    if not zones:
        return [Result(SKIP, "local zones", "none configured")]
    region = target.config.region
    try:
        found = target.client("ec2").describe_availability_zones(
            AllAvailabilityZones=True, Filters=[{"Name": "zone-type", "Values": ["local-zone"]}]
        )["AvailabilityZones"]
    except (ClientError, BotoCoreError) as err:
        return [_refused("local zones", err, "ec2:DescribeAvailabilityZones")]
    by_name = {z["ZoneName"]: z for z in found}
    results: list[Result] = []
    for name in zones:
        check = f"local zone {name}"
        zone = by_name.get(name)
        if zone is None:
            known = ", ".join(sorted(by_name)) or "none"
            results.append(Result(FAIL, check, f"{region} has no such Local Zone (it has: {known})", "fix localZones"))
        elif zone.get("OptInStatus") == "not-opted-in":
            group = zone.get("GroupName", name[:-1])
            results.append(
                Result(
                    FAIL,
                    check,
                    f"zone group {group} is not opted in",
                    f"aws ec2 modify-availability-zone-group --region {region} --group-name {group} "
                    "--opt-in-status opted-in",
                )
            )
        else:
            results.append(Result(PASS, check, f"zone group {zone.get('GroupName', '')} {zone.get('OptInStatus')}"))
    return results


# --- Instance type offerings ------------------------------------------------------------------
def _offered_families(target: Target, locations: list[str]) -> dict[str, set[str]]:
    """Location -> instance families offered there (one paginated call for every location)."""
    offered: dict[str, set[str]] = {location: set() for location in locations}
    paginator = target.client("ec2").get_paginator("describe_instance_type_offerings")
    pages = paginator.paginate(LocationType="availability-zone", Filters=[{"Name": "location", "Values": locations}])
    for page in pages:
        for offering in page["InstanceTypeOfferings"]:
            offered.setdefault(offering["Location"], set()).add(offering["InstanceType"].split(".", 1)[0])
    return offered


def check_offerings(target: Target) -> list[Result]:
    config = target.config
    pools = placements(config)
    locations = [*config.availability_zones, *(zone.name for zone in config.local_zones)]
    try:
        offered = _offered_families(target, locations)
    except (ClientError, BotoCoreError) as err:
        return [_refused("instance offerings", err, "ec2:DescribeInstanceTypeOfferings")]
    results: list[Result] = []
    regional = [f for p in pools if not p.location.is_local_zone for f in p.instance_families]
    for family in dict.fromkeys(regional):
        check = f"offering {family} in {config.region}"
        azs = [az for az in config.availability_zones if family in offered.get(az, set())]
        if azs:
            missing = [az for az in config.availability_zones if az not in azs]
            rest = f" (not {', '.join(missing)})" if missing else ""
            results.append(Result(PASS, check, f"offered in {', '.join(azs)}{rest}"))
        else:
            results.append(
                Result(
                    FAIL,
                    check,
                    f"offered in none of availabilityZones {', '.join(config.availability_zones)}",
                    "add an AZ that offers it to availabilityZones (aws ec2 describe-instance-type-offerings "
                    f"--location-type availability-zone --filters Name=instance-type,Values={family}.*)",
                )
            )
    for zone in config.local_zones:
        there = offered.get(zone.name, set())
        for family in zone.instance_families:
            check = f"offering {family} in {zone.name}"
            if family in there:
                results.append(Result(PASS, check, "offered"))
                continue
            usable = sorted(f for f in there if f in _table_families())
            results.append(
                Result(
                    FAIL,
                    check,
                    f"{zone.name} does not offer {family} (offers: {', '.join(usable) or 'none of the table'})",
                    f"set localZones to {zone.name}:{'+'.join(usable)}" if usable else "choose another Local Zone",
                )
            )
    return results


def _table_families() -> set[str]:
    return set(instance_families(ACCELERATOR_NAMES, large=True))


# --- Service Quotas ---------------------------------------------------------------------------
def quota_group(family: str) -> str:
    """The QUOTAS key of an instance family: its letters before the generation (g5 -> g, c7g -> standard)."""
    match = re.match(r"[a-z]+", family)
    prefix = match.group(0) if match else ""
    return prefix if prefix in QUOTAS else "standard"


def _smallest(accelerator: Accelerator, family: str) -> str | None:
    """The smallest instance of ``family`` the accelerator's NodePool may launch (plan.capacity knows)."""
    sizes = (*accelerator.serving_instance_sizes, *accelerator.compile.instance_sizes)
    known = [f"{family}.{s}" for s in sizes if f"{family}.{s}" in capacity.INSTANCE_TYPES]
    return min(known, key=lambda t: capacity.INSTANCE_TYPES[t].vcpus) if known else None


def pool_vcpus(placement: Placement, config: AppConfig) -> dict[str, tuple[int, str]]:
    """Quota group -> (vCPUs the placement's NodePool limit allows on that group's smallest instance, why)."""
    accelerator = placement.accelerator
    # The limit charts/karpenter.py renders for this pool (one calculation: plan.capacity).
    limit = capacity.node_pool_limit(
        accelerator.device_resource, accelerator.devices_per_pod, config.serving.max_replicas
    )
    result: dict[str, tuple[int, str]] = {}
    for family in placement.instance_families:
        group, instance = quota_group(family), _smallest(accelerator, family)
        if instance is None:
            continue
        if accelerator.device_resource:
            per_device = capacity.INSTANCE_TYPES[instance].vcpus / DEVICES.get(instance, 1)
            vcpus = math.ceil(limit.amount * per_device)
            why = f"{placement.node_pool_name}: {limit.amount} devices on {instance}"
        else:
            vcpus = limit.amount
            why = f"{placement.node_pool_name}: {limit.pods} pods x {capacity.VCPUS_PER_CPU_POD} vCPUs"
        if vcpus > result.get(group, (0, ""))[0]:
            result[group] = (vcpus, why)
    return result


def quota_needs(config: AppConfig) -> dict[str, tuple[int, list[str]]]:
    """Quota code -> (vCPUs every NodePool at its limit needs, which pools): pools scale independently."""
    needs: dict[str, tuple[int, list[str]]] = {}
    for placement in placements(config):
        for group, (vcpus, why) in pool_vcpus(placement, config).items():
            code = QUOTAS[group][0]
            total, whys = needs.get(code, (0, []))
            needs[code] = (total + vcpus, [*whys, why])
    return needs


def check_quotas(target: Target) -> list[Result]:
    names = {code: name for code, name in QUOTAS.values()}
    results: list[Result] = []
    client = target.client("service-quotas")
    for code, (need, whys) in sorted(quota_needs(target.config).items()):
        check = f"quota {names[code]} ({code})"
        try:
            value = float(client.get_service_quota(ServiceCode="ec2", QuotaCode=code)["Quota"]["Value"])
        except (ClientError, BotoCoreError) as err:
            results.append(_refused(check, err, "servicequotas:GetServiceQuota"))
            continue
        relation = ">=" if value >= need else "<"
        detail = f"{value:g} vCPUs {relation} {need} that the NodePool limits allow ({'; '.join(whys)})"
        if value >= need:
            results.append(Result(PASS, check, detail))
        else:
            results.append(
                Result(
                    FAIL,
                    check,
                    detail,
                    f"aws service-quotas request-service-quota-increase --region {target.config.region} "
                    f"--service-code ec2 --quota-code {code} --desired-value {need}",
                )
            )
    return results


# --- TLS ------------------------------------------------------------------------------------
def check_tls(target: Target) -> list[Result]:
    tls, results = target.config.tls, []
    if not tls.certificate_arn:
        results.append(Result(SKIP, "tls certificate", "tls.certificateArn not set: the Region's ALB serves HTTP"))
    else:
        check = "tls certificate"
        try:
            cert = target.client("acm").describe_certificate(CertificateArn=tls.certificate_arn)["Certificate"]
        except ClientError as err:
            if _code(err) == "ResourceNotFoundException":
                results.append(
                    Result(FAIL, check, f"{tls.certificate_arn} does not exist", "request or import it in ACM")
                )
            else:
                results.append(_refused(check, err, "acm:DescribeCertificate"))
        else:
            status, domain = cert.get("Status", ""), cert.get("DomainName", "")
            if status == "ISSUED":
                results.append(Result(PASS, check, f"{domain} ISSUED"))
            else:
                results.append(
                    Result(FAIL, check, f"{domain} is {status}, not ISSUED", "complete its validation in ACM")
                )
    if not target.config.local_zones:
        return results
    if not tls.local_zone_secret:
        results.append(Result(SKIP, "tls secret", "tls.localZoneSecret not set: Local Zone NodePorts serve HTTP"))
        return results
    try:
        secret = target.client("secretsmanager").describe_secret(SecretId=tls.local_zone_secret)
    except ClientError as err:
        if _code(err) == "ResourceNotFoundException":
            results.append(
                Result(
                    FAIL,
                    "tls secret",
                    f"no secret {tls.local_zone_secret} in {target.config.region}",
                    f"aws secretsmanager create-secret --name {tls.local_zone_secret} --secret-string "
                    '\'{"certificate": "<PEM chain>", "privateKey": "<PEM key>"}\'',
                )
            )
        else:
            results.append(_refused("tls secret", err, "secretsmanager:DescribeSecret"))
        return results
    if secret.get("DeletedDate"):
        results.append(
            Result(FAIL, "tls secret", f"{tls.local_zone_secret} is scheduled for deletion", "restore-secret")
        )
    else:
        results.append(Result(PASS, "tls secret", f"{tls.local_zone_secret} exists"))
    return results


# --- Physical names -------------------------------------------------------------------------
@dataclass(frozen=True)
class PhysicalName:
    """A resource a deploy creates under a fixed name, and what happens when it already exists."""

    kind: str
    name: str
    stack: str  # the stack that creates it
    exists: Callable[[Target], bool]  # raises ClientError when AWS refuses the call
    adoptable: bool  # retained, or deployed with --import-existing-resources: an existing one is taken over
    delete: str  # how to remove a leftover that cannot be adopted


def _missing(call: Callable[[], Any], codes: Iterable[str]) -> bool:
    try:
        call()
    except ClientError as err:
        if _code(err) in codes:
            return True
        raise
    return False


def physical_names(target: Target) -> list[PhysicalName]:
    """The fixed names of plan/naming a deploy of this deployment and the build infrastructure creates."""
    config = target.config
    bucket, table = naming.model_bucket_name(config), naming.inventory_table_name(config)
    role, queue = naming.karpenter_node_role_name(config), naming.interruption_queue_name(config)
    ecr, s3, ddb = target.client("ecr"), target.client("s3"), target.client("dynamodb")
    iam, sqs, logs = target.client("iam"), target.client("sqs"), target.client("logs")
    repo_missing = ("RepositoryNotFoundException",)

    def log_group_exists(name: str) -> bool:
        groups = logs.describe_log_groups(logGroupNamePrefix=name)["logGroups"]
        return any(g["logGroupName"] == name for g in groups)

    eks_logs = f"/aws/eks/{config.cluster_name}/cluster"
    return [
        PhysicalName(
            "ECR repository",
            naming.IMAGE_REPOSITORY_NAME,
            stack_name(REGISTRY),
            lambda _: (
                not _missing(
                    lambda: ecr.describe_repositories(repositoryNames=[naming.IMAGE_REPOSITORY_NAME]), repo_missing
                )
            ),
            adoptable=True,
            delete="",
        ),
        PhysicalName(
            "ECR repository",
            naming.BUILD_CACHE_REPOSITORY_NAME,
            stack_name(IMAGE_PIPELINE),
            lambda _: (
                not _missing(
                    lambda: ecr.describe_repositories(repositoryNames=[naming.BUILD_CACHE_REPOSITORY_NAME]),
                    repo_missing,
                )
            ),
            adoptable=True,
            delete="",
        ),
        PhysicalName(
            "S3 bucket",
            bucket,
            stack_name(REGISTRY),
            lambda _: not _missing(lambda: s3.head_bucket(Bucket=bucket), ("404", "NoSuchBucket", "NotFound")),
            adoptable=True,
            delete="",
        ),
        PhysicalName(
            "DynamoDB table",
            table,
            target.stack(INVENTORY),
            lambda _: not _missing(lambda: ddb.describe_table(TableName=table), ("ResourceNotFoundException",)),
            adoptable=False,
            delete=f"aws dynamodb delete-table --region {config.region} --table-name {table}",
        ),
        PhysicalName(
            "IAM role",
            role,
            target.stack(CLUSTER),
            lambda _: not _missing(lambda: iam.get_role(RoleName=role), ("NoSuchEntity",)),
            adoptable=False,
            delete=f"aws iam delete-role --role-name {role} (after detaching its policies)",
        ),
        PhysicalName(
            "SQS queue",
            queue,
            target.stack(CLUSTER),
            lambda _: (
                not _missing(
                    lambda: sqs.get_queue_url(QueueName=queue),
                    ("AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"),
                )
            ),
            adoptable=False,
            delete=f"aws sqs delete-queue --region {config.region} --queue-url "
            f"$(aws sqs get-queue-url --region {config.region} --queue-name {queue} --query QueueUrl --output text)",
        ),
        PhysicalName(
            "log group",
            eks_logs,
            "EKS",  # the control plane creates and writes it
            lambda _: log_group_exists(eks_logs),
            adoptable=True,
            delete="",
        ),
    ]


def _owned(target: Target, stack: str, name: str) -> bool | None:
    """Whether ``stack`` holds a resource with physical id ``name`` (None: the stack does not exist)."""
    try:
        paginator = target.client("cloudformation").get_paginator("list_stack_resources")
        for page in paginator.paginate(StackName=stack):
            for resource in page["StackResourceSummaries"]:
                physical = str(resource.get("PhysicalResourceId", ""))
                if physical == name or physical.endswith(f"/{name}") or physical.endswith(f":{name}"):
                    return True
    except ClientError as err:
        if _code(err) == "ValidationError":
            return None
        raise
    return False


def check_physical_names(target: Target) -> list[Result]:
    results: list[Result] = []
    for item in physical_names(target):
        check = f"name {item.kind} {item.name}"
        try:
            exists = item.exists(target)
            owned = _owned(target, item.stack, item.name) if exists and item.stack.startswith(STACK_PREFIX) else None
        except (ClientError, BotoCoreError) as err:
            results.append(_refused(check, err, f"reading the {item.kind}"))
            continue
        if not exists:
            results.append(Result(PASS, check, f"free: {item.stack} creates it"))
        elif owned:
            results.append(Result(PASS, check, f"exists in {item.stack}: updated in place"))
        elif item.adoptable:
            how = (
                "make deploy-build adopts it (--import-existing-resources)"
                if item.stack.startswith(STACK_PREFIX)
                else "reused as it is"
            )
            results.append(Result(PASS, check, f"exists, retained from an earlier deploy: {how}"))
        else:
            results.append(
                Result(
                    FAIL,
                    check,
                    f"exists outside {item.stack}: the deploy would fail with AlreadyExists",
                    f"{item.delete}, or choose another clusterName",
                )
            )
    return results


CHECKS: Final[tuple[Callable[[Target], list[Result]], ...]] = (
    check_bootstrap,
    check_kubernetes_version,
    check_local_zones,
    check_offerings,
    check_quotas,
    check_tls,
    check_physical_names,
)


def run_checks(deployment: Deployment, session: Session) -> list[Result]:
    """Every check, in order; after a credentials FAIL the rest would ask the wrong account: SKIP."""
    target = Target(deployment, session)
    results = check_credentials(target)
    if any(r.status == FAIL for r in results):
        return [*results, Result(SKIP, "other checks", "need credentials of the configured account")]
    for check in CHECKS:
        results.extend(check(target))
    return results


def summary(results: Iterable[Result]) -> Mapping[str, int]:
    counts = {PASS: 0, FAIL: 0, SKIP: 0}
    for result in results:
        counts[result.status] += 1
    return counts
