"""Typed configuration of the app, read once from CDK context and validated at synth time.

Values come from ``cdk.json`` ``context`` and ``-c key=value`` overrides (strings on the
command line, JSON types in cdk.json); defaults below make a runnable example. Every bad
value of a config is reported in one run, one line each naming the key, the value and what is
allowed (:class:`ConfigError`; several at once: :class:`ConfigErrors`), printed by the entry
points, never a traceback. Object keys take JSON (``-c tls='{"certificateArn": "..."}'``) or
one dotted key at a time (``-c tls.certificateArn=...``).
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

from plan import contract
from plan.accelerators import ACCELERATOR_NAMES, ACCELERATORS, instance_families
from plan.bottlerocket import BOTTLEROCKET_ECR_ACCOUNTS
from plan.local_zones import local_zone_hint
from plan.prices import INSTANCE_TYPE_PATTERN  # the keys of onDemandPrices are the price table's

# The committed context every entry point starts from (cdk.json sits at the repository root).
CDK_JSON: Final = Path(__file__).resolve().parents[1] / "cdk.json"
DEFAULT_LOCAL_ZONE_FAMILIES: Final = ("g5",)
REGION_PATTERN: Final = re.compile(r"^[a-z]{2}(-gov)?-[a-z]+-\d$")
LOCAL_ZONE_PATTERN: Final = re.compile(r"^(?P<region>[a-z]{2}(-gov)?-[a-z]+-\d)-[a-z]{3}-\d[a-z]$")
INSTANCE_FAMILY_PATTERN: Final = re.compile(r"^[a-z][a-z0-9-]*\d[a-z0-9-]*$")
ARN_PATTERN: Final = re.compile(r"^arn:aws[a-z-]*:iam::\d{12}:(role|user)/[\w+=,.@/-]+$")
CLUSTER_NAME_PATTERN: Final = re.compile(r"^[a-zA-Z][a-zA-Z0-9-]{0,62}$")
ENDPOINT_ACCESS_MODES: Final = ("private", "public_and_private")
# How devices authenticate to the endpoint inventory's read API: SigV4 with IAM credentials
# they already have, or credentials from a Cognito identity pool (signed-in users only).
INVENTORY_AUTH_MODES: Final = ("iam", "cognito")
# Where the image and deploy pipelines get the source: a GitHub repository through an AWS
# CodeConnections connection, or a zip in an S3 bucket the image pipeline stack creates (air-gapped).
PIPELINE_SOURCES: Final = ("s3", "codeconnections")
CONNECTION_ARN_PATTERN: Final = re.compile(
    r"^arn:aws[a-z-]*:(codeconnections|codestar-connections):[a-z0-9-]+:\d{12}:connection/[0-9a-f-]{36}$"
)
GITHUB_REPOSITORY_PATTERN: Final = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})/[A-Za-z0-9._-]{1,100}$")
S3_KEY_PATTERN: Final = re.compile(r"^[A-Za-z0-9!_.*'()/-]{1,1024}$")
# CloudWatch Logs accepts only these retention periods (days).
LOG_RETENTION_DAYS: Final = (1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557)
# Secrets Manager secret names (not ARNs): 1-512 of these characters.
SECRET_NAME_PATTERN: Final = re.compile(r"^[\w/+=.@-]{1,512}$")
ACM_ARN_PATTERN: Final = re.compile(
    r"^arn:aws[a-z-]*:acm:(?P<region>[a-z0-9-]+):(?P<account>\d{12}):certificate/[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}$"
)
# The ALB's TLS policy: TLS 1.3 and 1.2 with hybrid post-quantum key exchange (ML-KEM) for clients
# that offer it, the ELB console's default and the one AWS recommends because it still serves TLS 1.2
# clients (https://docs.aws.amazon.com/elasticloadbalancing/latest/application/describe-ssl-policies.html).
# The ALB controller passes the ssl-policy annotation to the listener unchanged; ELB checks the name.
DEFAULT_ALB_SECURITY_POLICY: Final = "ELBSecurityPolicy-TLS13-1-2-Res-PQ-2025-09"
# ELB policy names whose minimum is TLS 1.2: the TLS13-*, TLS-1-2-* and FS-1-2-* families.
ALB_SECURITY_POLICY_PATTERN: Final = re.compile(r"^ELBSecurityPolicy-(TLS13-|TLS-1-2-|FS-1-2-)[A-Za-z0-9-]+$")
# Node OS images: EKS-optimized AL2023, or Bottlerocket (which can mount a prebuilt data-volume
# snapshot holding the serving images, so a new node starts without pulling them).
NODE_IMAGE_FAMILIES: Final = ("al2023", "bottlerocket")
SNAPSHOT_ID_PATTERN: Final = re.compile(r"^snap-[0-9a-f]{8,17}$")
EMAIL_PATTERN: Final = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$")
EXAMPLE_CERTIFICATE_ARN: Final = "arn:aws:acm:<region>:<account>:certificate/<uuid>"
_LARGE_FAMILIES: Final = frozenset(instance_families(ACCELERATOR_NAMES, large=True)) - frozenset(
    instance_families(ACCELERATOR_NAMES, large=False)
)


class ConfigError(ValueError):
    """A configuration value is invalid; the message is one line meant for the user."""

    def __init__(self, key: str, value: object, allowed: str) -> None:
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"invalid config {key}={value!r}: allowed {allowed}")

    @property
    def errors(self) -> tuple[ConfigError, ...]:
        """Each bad value (one here; several in :class:`ConfigErrors`)."""
        return (self,)

    def lines(self) -> list[str]:
        """What an entry point prints on stderr: one ``error: ...`` line per bad value."""
        return [f"error: {error}" for error in self.errors]


class ConfigErrors(ConfigError):  # noqa: N818 (a group of ConfigError, not an error kind of its own)
    """Several bad values of one config, reported together (``except ConfigError`` catches it)."""

    def __init__(self, errors: Sequence[ConfigError]) -> None:
        self._errors = tuple(errors)
        first = self._errors[0]
        self.key, self.value, self.allowed = first.key, first.value, first.allowed
        ValueError.__init__(self, "\n".join(str(error) for error in self._errors))

    @property
    def errors(self) -> tuple[ConfigError, ...]:
        return self._errors


def raise_collected(errors: Iterable[ConfigError]) -> None:
    """Raise what was collected, each distinct message once: one ConfigError, or ConfigErrors."""
    unique: dict[str, ConfigError] = {}
    for error in errors:
        for one in error.errors:
            unique.setdefault(str(one), one)
    found = list(unique.values())
    if len(found) == 1:
        raise found[0]
    if found:
        raise ConfigErrors(found)


class _Errors:
    """Collects every ConfigError of one config instead of stopping at the first."""

    def __init__(self) -> None:
        self.found: list[ConfigError] = []

    def add(self, key: str, value: object, allowed: str) -> None:
        self.found.append(ConfigError(key, value, allowed))

    def attempt(self, parse: Callable[..., Any], *args: Any) -> tuple[bool, Any]:
        """Run ``parse(*args)``; on a ConfigError keep it and return (False, None)."""
        try:
            return True, parse(*args)
        except ConfigError as err:
            self.found.extend(err.errors)
            return False, None


@dataclass(frozen=True)
class LocalZoneConfig:
    """An AWS Local Zone the app serves from (the zone group must be opted in)."""

    name: str
    instance_families: tuple[str, ...] = DEFAULT_LOCAL_ZONE_FAMILIES


@dataclass(frozen=True)
class ServingConfig:
    """Serving and autoscaling knobs shared by every serving Deployment."""

    image_version: str = "1.0.0"
    # Autoscaling (charts/autoscaling.py); the reason for each default is in docs/scaling.md section 3.
    # At least 1: the pods publish the metric KEDA scales on, so at 0 nothing would scale up.
    min_replicas: int = 1  # a second idle pod does not shorten scale-out; set 2 in production for availability
    max_replicas: int = 4  # caps the rise a placement absorbs (4 pods' throughput) and its NodePool limits
    target_pending_per_replica: int = 3  # floor(4 / 1.1): the HPA's 10 % tolerance keeps pods at <= 4 pending
    # How often KEDA reads CloudWatch; the HPA's 15 s syncs get its cached value (15: one read per sync).
    keda_polling_interval_s: int = 15
    # Seconds of lower demand before pods are removed: the HPA's scale-down stabilization window
    # (not KEDA's cooldownPeriod, which acts only at 0 replicas); 300 = Kubernetes' window.
    keda_cooldown_period_s: int = 300
    max_batch: int = contract.DEFAULT_MAX_BATCH
    max_wait_ms: int = contract.DEFAULT_MAX_WAIT_MS
    height: int = contract.DEFAULT_IMAGE_SIZE
    width: int = contract.DEFAULT_IMAGE_SIZE
    ui: bool = False  # the Gradio UI on the pods' port (off in deployments: devices use the API)


@dataclass(frozen=True)
class PipelineConfig:
    """Source and logging of the image pipeline, the deploy pipeline and the PR diff builds."""

    source: str = "s3"  # one of PIPELINE_SOURCES; S3 needs nothing else to synthesize
    connection_arn: str = ""  # codeconnections: the connection to GitHub
    repository: str = ""  # codeconnections: owner/name on GitHub
    branch: str = "main"
    source_object_key: str = "source/edge-diffusion.zip"  # s3: the zip of this repository
    log_retention_days: int = 90
    pr_diffs: bool = True  # codeconnections only: cdk diff on pull requests
    github_token_secret: str = ""  # optional Secrets Manager secret name: post PR diffs as comments
    # Deployments (deployments/<name>.json) the deploy pipeline deploys, in order, with a manual
    # approval before each after the first. Empty: no deploy pipeline, every deployment from a workstation.
    deployments: tuple[str, ...] = ()


@dataclass(frozen=True)
class TlsConfig:
    """HTTPS of the device-facing endpoints; empty values mean plain HTTP (with a warning)."""

    certificate_arn: str = ""  # ACM certificate in the deployment's account and Region: the ALB's HTTPS listener
    # Secrets Manager secret NAME whose SecretString is JSON {"certificate", "privateKey"}
    # (contract.TLS_SECRET_*_FIELD): the serving pods behind Local Zone NodePorts terminate TLS with it.
    local_zone_secret: str = ""
    # The DNS name that certificate names (required with local_zone_secret): devices reach changing
    # node IPs, so they send this name as SNI and verify the certificate against it. A wildcard
    # (*.lz.example.com) gives each Local Zone its own name, the zone's in place of the "*".
    local_zone_server_name: str = ""
    alb_security_policy: str = DEFAULT_ALB_SECURITY_POLICY

    def server_name_in(self, zone: str) -> str:
        """The name devices verify in ``zone``: the configured one, a wildcard's "*" made the zone."""
        name = self.local_zone_server_name
        return f"{zone}{name[1:]}" if name.startswith("*.") else name


@dataclass(frozen=True)
class AuthConfig:
    """How inference requests are authorized: short-lived tokens from the inventory API, or not at all."""

    mode: str = "token"  # one of contract.AUTH_MODES
    token_ttl_s: int = contract.DEFAULT_TOKEN_TTL_S


@dataclass(frozen=True)
class NodeImageConfig:
    """The OS image of accelerator nodes, and whether serving images come pre-pulled on a snapshot."""

    family: str = "al2023"  # one of NODE_IMAGE_FAMILIES
    data_volume_snapshot_id: str = ""  # bottlerocket only: EBS snapshot of a data volume with the images
    build_snapshot: bool = False  # the image pipeline builds that snapshot after each image build


@dataclass(frozen=True)
class AlarmsConfig:
    """CloudWatch alarm thresholds of a deployment, and who is told when one fires."""

    latency_p99_slo_ms: int = 10_000  # p99 of InferenceLatencyMs per placement
    server_error_percent: float = 1.0  # ServerErrors / Requests
    pending_pods_minutes: int = 15  # serving pods Pending this long (no capacity, quota, image pull)
    emails: tuple[str, ...] = ()  # SNS email subscriptions (each address confirms once)


@dataclass(frozen=True)
class AppConfig:
    """Everything a deployment of the app can vary. Defaults: a runnable example."""

    account: str = "111111111111"
    region: str = "us-west-2"
    cluster_name: str = "edge-diffusion"
    availability_zones: tuple[str, ...] = ("us-west-2a", "us-west-2b", "us-west-2c")
    vpc_cidr: str = "10.0.0.0/16"
    local_zones: tuple[LocalZoneConfig, ...] = (LocalZoneConfig("us-west-2-lax-1a"),)
    # Documentation range (RFC 5737): replace with the networks your devices come from.
    client_cidrs: tuple[str, ...] = ("192.0.2.0/24",)
    allow_public_node_ports: bool = False
    admin_principal_arns: tuple[str, ...] = ()
    endpoint_access: str = "private"
    public_access_cidrs: tuple[str, ...] = ()
    accelerators: tuple[str, ...] = ACCELERATOR_NAMES
    enable_large_nvidia_instances: bool = False  # p4d/p5: fast, and costly
    model_id: str = contract.DEFAULT_MODEL_ID
    model_revision: str = contract.DEFAULT_MODEL_REVISION
    ingress_weights: Mapping[str, int] = field(default_factory=dict)  # accelerator -> weight
    inventory_auth: str = "iam"  # one of INVENTORY_AUTH_MODES
    serving: ServingConfig = field(default_factory=ServingConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    tls: TlsConfig = field(default_factory=TlsConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    node_image: NodeImageConfig = field(default_factory=NodeImageConfig)
    alarms: AlarmsConfig = field(default_factory=AlarmsConfig)
    # Instance type -> USD per On-Demand hour; overrides the dated table in plan/prices.py.
    on_demand_prices: Mapping[str, float] = field(default_factory=dict)

    @property
    def env_name(self) -> str:
        return f"{self.account}/{self.region}"


# context key -> dataclass field; the camelCase keys are what users type.
_KEYS: Final = {
    "account": "account",
    "region": "region",
    "clusterName": "cluster_name",
    "availabilityZones": "availability_zones",
    "vpcCidr": "vpc_cidr",
    "localZones": "local_zones",
    "clientCidrs": "client_cidrs",
    "allowPublicNodePorts": "allow_public_node_ports",
    "adminPrincipalArns": "admin_principal_arns",
    "endpointAccess": "endpoint_access",
    "publicAccessCidrs": "public_access_cidrs",
    "accelerators": "accelerators",
    "enableLargeNvidiaInstances": "enable_large_nvidia_instances",
    "modelId": "model_id",
    "modelRevision": "model_revision",
    "ingressWeights": "ingress_weights",
    "inventoryAuth": "inventory_auth",
    "serving": "serving",
    "pipeline": "pipeline",
    "tls": "tls",
    "auth": "auth",
    "nodeImage": "node_image",
    "alarms": "alarms",
    "onDemandPrices": "on_demand_prices",
}
_PIPELINE_KEYS: Final = {
    "source": "source",
    "connectionArn": "connection_arn",
    "repository": "repository",
    "branch": "branch",
    "sourceObjectKey": "source_object_key",
    "logRetentionDays": "log_retention_days",
    "prDiffs": "pr_diffs",
    "githubTokenSecret": "github_token_secret",
    "deployments": "deployments",
}
_SERVING_KEYS: Final = {
    "imageVersion": "image_version",
    "minReplicas": "min_replicas",
    "maxReplicas": "max_replicas",
    "targetPendingPerReplica": "target_pending_per_replica",
    "kedaPollingIntervalSeconds": "keda_polling_interval_s",
    "kedaCooldownPeriodSeconds": "keda_cooldown_period_s",
    "maxBatch": "max_batch",
    "maxWaitMs": "max_wait_ms",
    "height": "height",
    "width": "width",
    "ui": "ui",
}
_TLS_KEYS: Final = {
    "certificateArn": "certificate_arn",
    "localZoneSecret": "local_zone_secret",
    "localZoneServerName": "local_zone_server_name",
    "albSecurityPolicy": "alb_security_policy",
}
_AUTH_KEYS: Final = {"mode": "mode", "tokenTtlSeconds": "token_ttl_s"}
_NODE_IMAGE_KEYS: Final = {
    "family": "family",
    "dataVolumeSnapshotId": "data_volume_snapshot_id",
    "buildSnapshot": "build_snapshot",
}
_ALARMS_KEYS: Final = {
    "latencyP99SloMs": "latency_p99_slo_ms",
    "serverErrorPercent": "server_error_percent",
    "pendingPodsMinutes": "pending_pods_minutes",
    "emails": "emails",
}
# Keys whose value is an object: they also take ``key.sub=value`` from the command line.
_OBJECT_KEYS: Final = ("ingressWeights", "serving", "pipeline", "tls", "auth", "nodeImage", "alarms", "onDemandPrices")
# Context keys that belong to the CDK itself, not to us (``@aws-cdk/...``, ``aws:cdk:...``).
_OUR_KEY: Final = re.compile(r"^[a-z][a-zA-Z0-9]*(\.[A-Za-z0-9][\w.-]*)?$")


def _as_list(key: str, raw: object) -> list[Any]:
    """Lists come as JSON lists from cdk.json and as JSON or comma-separated text from -c."""
    if isinstance(raw, list | tuple):
        return list(raw)
    if isinstance(raw, str):
        text = raw.strip()
        if text.startswith("["):
            try:
                parsed = json.loads(text)
            except json.JSONDecodeError as err:
                raise ConfigError(key, raw, f"a JSON list or comma-separated values ({err.msg})") from None
            if isinstance(parsed, list):
                return parsed
        return [item.strip() for item in text.split(",") if item.strip()]
    raise ConfigError(key, raw, "a list or comma-separated values")


def _as_bool(key: str, raw: object) -> bool:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    raise ConfigError(key, raw, "true or false")


def _as_int(key: str, raw: object, low: int, high: int) -> int:
    try:
        value = int(raw) if isinstance(raw, int | str) and not isinstance(raw, bool) else None
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        raise ConfigError(key, raw, f"an integer from {low} to {high}")
    return value


def _as_positive_float(key: str, raw: object, high: float = math.inf) -> float:
    try:
        value = float(raw) if isinstance(raw, int | float | str) and not isinstance(raw, bool) else math.nan
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and 0 < value <= high):
        limit = "" if high == math.inf else f" up to {high:g}"
        raise ConfigError(key, raw, f"a number above 0{limit}")
    return value


def _as_str(key: str, raw: object) -> str:
    if not isinstance(raw, str) or not raw:
        raise ConfigError(key, raw, "a non-empty string")
    return raw


def _as_optional_str(key: str, raw: object) -> str:
    """A string that may be empty (an unset optional value)."""
    if not isinstance(raw, str):
        raise ConfigError(key, raw, "a string")
    return raw.strip()


def _as_mapping(key: str, raw: object) -> dict[str, Any]:
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError:
            raise ConfigError(key, raw, "a JSON object") from None
    if not isinstance(raw, dict):
        raise ConfigError(key, raw, "a JSON object")
    return raw


def _cidr(key: str, raw: object, allowed: str = "an IPv4 or IPv6 CIDR such as 203.0.113.0/24 (host bits zero)") -> str:
    try:
        return str(ipaddress.ip_network(str(raw), strict=True))
    except ValueError:
        raise ConfigError(key, raw, allowed) from None


def _local_zone(key: str, raw: object) -> LocalZoneConfig:
    """A zone is a name, ``name:family+family`` on the command line, or a JSON object."""
    if isinstance(raw, str):
        name, _, families = raw.partition(":")
        fam = tuple(f.strip() for f in families.split("+") if f.strip()) or DEFAULT_LOCAL_ZONE_FAMILIES
        return LocalZoneConfig(name.strip(), fam)
    if isinstance(raw, dict) and isinstance(raw.get("name"), str):
        fam_raw = raw.get("instanceFamilies", list(DEFAULT_LOCAL_ZONE_FAMILIES))
        return LocalZoneConfig(raw["name"], tuple(str(f) for f in _as_list(key, fam_raw)))
    raise ConfigError(key, raw, 'a zone name, "zone:g5+g6", or {"name": ..., "instanceFamilies": [...]}')


def _emails(key: str, raw: object) -> tuple[str, ...]:
    return tuple(str(v).strip() for v in _as_list(key, raw))


_SERVING_BOUNDS: Final = {
    "min_replicas": (1, 100),
    "max_replicas": (1, 1000),
    "target_pending_per_replica": (1, 1000),
    "keda_polling_interval_s": (5, 3600),
    "keda_cooldown_period_s": (0, 3600),  # also the HPA scaleDown.stabilizationWindowSeconds (max 3600)
    "max_batch": (1, contract.MAX_BATCH_LIMIT),
    "max_wait_ms": (0, contract.MAX_WAIT_MS_LIMIT),
    "height": contract.IMAGE_SIZE_BOUNDS,
    "width": contract.IMAGE_SIZE_BOUNDS,
}
_ALARM_BOUNDS: Final = {"latency_p99_slo_ms": (100, 600_000), "pending_pods_minutes": (1, 1440)}


def _serving_field(key: str, attr: str, value: object) -> object:
    if attr == "image_version":
        return _as_str(key, value)
    if attr == "ui":
        return _as_bool(key, value)
    return _as_int(key, value, *_SERVING_BOUNDS[attr])


def _pipeline_field(key: str, attr: str, value: object) -> object:
    if attr == "log_retention_days":
        return _as_int(key, value, 1, max(LOG_RETENTION_DAYS))
    if attr == "pr_diffs":
        return _as_bool(key, value)
    if attr == "deployments":
        return tuple(str(v) for v in _as_list(key, value))
    return _as_str(key, value)


def _tls_field(key: str, attr: str, value: object) -> object:
    if attr == "alb_security_policy":
        return _as_str(key, value)
    return _as_optional_str(key, value)


def _auth_field(key: str, attr: str, value: object) -> object:
    if attr == "token_ttl_s":
        return _as_int(key, value, *contract.TOKEN_TTL_BOUNDS)
    return _as_str(key, value)


def _node_image_field(key: str, attr: str, value: object) -> object:
    if attr == "build_snapshot":
        return _as_bool(key, value)
    if attr == "data_volume_snapshot_id":
        return _as_optional_str(key, value)
    return _as_str(key, value)


def _alarms_field(key: str, attr: str, value: object) -> object:
    if attr == "emails":
        return _emails(key, value)
    if attr == "server_error_percent":
        return _as_positive_float(key, value, 100)
    return _as_int(key, value, *_ALARM_BOUNDS[attr])


# Object key -> (its sub-keys, the parser of one sub-key, the dataclass it fills).
_SECTIONS: Final[dict[str, tuple[Mapping[str, str], Callable[[str, str, object], object], Any]]] = {
    "serving": (_SERVING_KEYS, _serving_field, ServingConfig),
    "pipeline": (_PIPELINE_KEYS, _pipeline_field, PipelineConfig),
    "tls": (_TLS_KEYS, _tls_field, TlsConfig),
    "auth": (_AUTH_KEYS, _auth_field, AuthConfig),
    "nodeImage": (_NODE_IMAGE_KEYS, _node_image_field, NodeImageConfig),
    "alarms": (_ALARMS_KEYS, _alarms_field, AlarmsConfig),
}


def _parse_section(key: str, raw: Mapping[str, Any], errors: _Errors) -> object:
    """One object key: every sub-key parsed, each bad one reported; the good ones kept."""
    keys, parse_field, cls = _SECTIONS[key]
    changes: dict[str, Any] = {}
    for sub, value in raw.items():
        attr = keys.get(sub)
        if attr is None:
            errors.add(f"{key}.{sub}", value, f"one of {', '.join(keys)}")
            continue
        ok, parsed = errors.attempt(parse_field, f"{key}.{sub}", attr, value)
        if ok:
            changes[attr] = parsed
    return replace(cls(), **changes)


def _parse_value(key: str, raw: object, errors: _Errors) -> object:
    """One top-level key; raises ConfigError when the whole value is unusable."""
    match key:
        case "availabilityZones" | "clientCidrs" | "adminPrincipalArns" | "publicAccessCidrs":
            return tuple(str(v).strip() for v in _as_list(key, raw))
        case "accelerators":
            return tuple(str(v).strip() for v in _as_list(key, raw))
        case "localZones":
            return tuple(_local_zone(key, v) for v in _as_list(key, raw))
        case "allowPublicNodePorts" | "enableLargeNvidiaInstances":
            return _as_bool(key, raw)
        case "ingressWeights":
            weights: dict[str, int] = {}
            for name, value in _as_mapping(key, raw).items():
                ok, weight = errors.attempt(_as_int, f"{key}.{name}", value, 0, 999)
                if ok:
                    weights[str(name)] = weight
            return weights
        case "onDemandPrices":
            prices: dict[str, float] = {}
            for instance_type, value in _as_mapping(key, raw).items():
                if not INSTANCE_TYPE_PATTERN.match(str(instance_type)):
                    errors.add(f"{key}", instance_type, "EC2 instance types such as g5.xlarge")
                    continue
                ok, price = errors.attempt(_as_positive_float, f"{key}.{instance_type}", value)
                if ok:
                    prices[str(instance_type)] = price
            return prices
        case _ if key in _SECTIONS:
            return _parse_section(key, _as_mapping(key, raw), errors)
        case _:
            return _as_str(key, raw)


def _merge_dotted(context: Mapping[str, object], errors: _Errors) -> dict[str, object]:
    """Fold ``section.sub=value`` keys into their object (after the object itself, so they win)."""
    merged: dict[str, object] = {}
    dotted: list[tuple[str, str, object]] = []
    for key, raw in context.items():
        section, dot, sub = key.partition(".")
        if dot and is_config_key(key):
            dotted.append((section, sub, raw))
        else:
            merged[key] = raw
    for section, sub, raw in dotted:
        if section not in _OBJECT_KEYS:
            errors.add(f"{section}.{sub}", raw, f"dotted keys of objects only: {', '.join(_OBJECT_KEYS)}")
            continue
        ok, base = errors.attempt(_as_mapping, section, merged.get(section, {}))
        if ok:
            merged[section] = {**base, sub: raw}
    return merged


def config_errors(context: Mapping[str, object]) -> tuple[AppConfig | None, list[ConfigError]]:
    """Parse and validate ``context``; every error found, and the config when there were none."""
    errors = _Errors()
    changes: dict[str, Any] = {}
    for key, raw in _merge_dotted(context, errors).items():
        if key in _KEYS:
            ok, value = errors.attempt(_parse_value, key, raw, errors)
            if ok:
                changes[_KEYS[key]] = value
        elif is_config_key(key):
            errors.add(key, raw, f"a known key: {', '.join(_KEYS)}")
    config = replace(AppConfig(), **changes)
    # A value that did not parse keeps its default: checks of that key would only repeat the error.
    failed = {error.key for error in errors.found}
    found = list(errors.found)
    found += [e for e in _validation_errors(config) if e.key not in failed and _top_key(e.key) not in failed]
    return (None if found else config), found


def _top_key(key: str) -> str:
    return re.split(r"[.\[]", key, maxsplit=1)[0]


def load_config(context: Mapping[str, object]) -> AppConfig:
    """Build and validate the config from CDK context (all of it: cdk.json plus -c).

    Raises ConfigError for one bad value, ConfigErrors (a ConfigError) for several.
    """
    config, found = config_errors(context)
    raise_collected(found)
    assert config is not None
    return config


def validate(config: AppConfig) -> None:
    """Check values against each other; raise every bad one (ConfigError or ConfigErrors)."""
    raise_collected(_validation_errors(config))


def _validation_errors(config: AppConfig) -> list[ConfigError]:
    errors = _Errors()
    if not re.fullmatch(r"\d{12}", config.account):
        errors.add("account", config.account, "a 12-digit AWS account id")
    region_ok = bool(REGION_PATTERN.match(config.region))
    if not region_ok:
        errors.add("region", config.region, "an AWS Region code such as us-west-2 or eu-central-1")
    if not CLUSTER_NAME_PATTERN.match(config.cluster_name):
        errors.add("clusterName", config.cluster_name, "1-63 letters, digits or '-', starting with a letter")
    if region_ok:  # zones and ARNs are checked against the Region: not against a bad one
        _validate_zones(config, errors)
        _validate_tls(config, errors)
    _validate_network(config, errors)
    _validate_workloads(config, errors)
    _validate_security(config, errors)
    _validate_pipeline(config.pipeline, errors)
    return errors.found


def _validate_zones(config: AppConfig, errors: _Errors) -> None:
    region = config.region
    if not config.availability_zones:
        errors.add("availabilityZones", "", f"one or more AZs of {region}, e.g. {region}a")
    foreign = [az for az in config.availability_zones if not re.fullmatch(rf"{re.escape(region)}[a-z]", az)]
    if foreign:
        errors.add("availabilityZones", ",".join(foreign), f"regional AZs of {region} such as {region}a")
    if len(set(config.availability_zones)) != len(config.availability_zones):
        errors.add("availabilityZones", ",".join(config.availability_zones), "distinct AZ names")
    names = [zone.name for zone in config.local_zones]
    if len(set(names)) != len(names):
        errors.add("localZones", ",".join(names), "distinct Local Zone names")
    if len(names) > 8:
        errors.add("localZones", ",".join(names), "at most 8 Local Zones per VPC")
    for zone in config.local_zones:
        match = LOCAL_ZONE_PATTERN.match(zone.name)
        if not match or match["region"] != region:
            errors.add("localZones", zone.name, local_zone_hint(region))
    # Families outside the accelerator table would get no NodePool: an error, never a silent drop.
    known = instance_families(ACCELERATOR_NAMES, large=True)
    for zone in config.local_zones:
        for family in zone.instance_families:
            if family not in known:
                errors.add(
                    f"localZones[{zone.name}].instanceFamilies",
                    family,
                    f"instance families of the accelerator table: {', '.join(known)}",
                )
            elif family in _LARGE_FAMILIES and not config.enable_large_nvidia_instances:
                errors.add(
                    f"localZones[{zone.name}].instanceFamilies",
                    family,
                    f"{family} only with enableLargeNvidiaInstances=true",
                )


def _ip_version(cidr: str) -> int | None:
    try:
        return ipaddress.ip_network(cidr).version
    except ValueError:
        return None


def _validate_network(config: AppConfig, errors: _Errors) -> None:
    vpc_allowed = "an IPv4 CIDR from /16 to /20 such as 10.0.0.0/16 (host bits zero)"
    ok, vpc_cidr = errors.attempt(_cidr, "vpcCidr", config.vpc_cidr, vpc_allowed)
    if ok:
        vpc = ipaddress.ip_network(vpc_cidr)
        if vpc.version != 4 or not 16 <= vpc.prefixlen <= 20:
            errors.add("vpcCidr", config.vpc_cidr, vpc_allowed)
    for cidr in config.client_cidrs:
        ok, text = errors.attempt(_cidr, "clientCidrs", cidr)
        if ok and ipaddress.ip_network(text).prefixlen == 0 and not config.allow_public_node_ports:
            errors.add(
                "clientCidrs", cidr, "specific client networks; 0.0.0.0/0 or ::/0 only with allowPublicNodePorts=true"
            )
    versions = {_ip_version(cidr) for cidr in config.client_cidrs}
    if 4 not in versions and not any(error.key == "clientCidrs" for error in errors.found):  # one line per key
        # The ALB is IPv4: without an IPv4 client network its controller would admit 0.0.0.0/0.
        errors.add("clientCidrs", ",".join(config.client_cidrs), "at least one IPv4 CIDR for the ALB")
    if config.inventory_auth not in INVENTORY_AUTH_MODES:
        errors.add("inventoryAuth", config.inventory_auth, " or ".join(INVENTORY_AUTH_MODES))
    if config.endpoint_access not in ENDPOINT_ACCESS_MODES:
        errors.add("endpointAccess", config.endpoint_access, " or ".join(ENDPOINT_ACCESS_MODES))
    for cidr in config.public_access_cidrs:
        ok, text = errors.attempt(_cidr, "publicAccessCidrs", cidr)
        if ok and ipaddress.ip_network(text).prefixlen == 0:
            errors.add("publicAccessCidrs", cidr, "specific admin networks, not the whole Internet")
    if config.endpoint_access == "public_and_private" and not config.public_access_cidrs:
        errors.add("publicAccessCidrs", "", "one or more admin CIDRs when endpointAccess=public_and_private")
    for arn in config.admin_principal_arns:
        if not ARN_PATTERN.match(arn):
            errors.add("adminPrincipalArns", arn, "IAM role or user ARNs like arn:aws:iam::123456789012:role/Admin")


def _validate_workloads(config: AppConfig, errors: _Errors) -> None:
    if not config.accelerators:
        errors.add("accelerators", "", f"one or more of {', '.join(ACCELERATOR_NAMES)}")
    for name in config.accelerators:
        if name not in ACCELERATOR_NAMES:
            errors.add("accelerators", name, f"one or more of {', '.join(ACCELERATOR_NAMES)}")
    if len(set(config.accelerators)) != len(config.accelerators):
        errors.add("accelerators", ",".join(config.accelerators), "distinct accelerator names")
    for name in config.ingress_weights:
        if name not in config.accelerators:
            errors.add("ingressWeights", name, f"enabled accelerators: {', '.join(config.accelerators)}")
    if not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", config.model_id):
        errors.add("modelId", config.model_id, "a Hugging Face model id like org/name, or tiny")
    serving = config.serving
    if serving.min_replicas > serving.max_replicas:
        errors.add("serving.minReplicas", serving.min_replicas, f"at most maxReplicas ({serving.max_replicas})")
    for key, size in (("height", serving.height), ("width", serving.width)):
        if size % contract.IMAGE_SIZE_MULTIPLE:
            errors.add(f"serving.{key}", size, f"a multiple of {contract.IMAGE_SIZE_MULTIPLE}")
    image = config.node_image
    if image.family not in NODE_IMAGE_FAMILIES:
        errors.add("nodeImage.family", image.family, " or ".join(NODE_IMAGE_FAMILIES))
    if image.data_volume_snapshot_id:
        if not SNAPSHOT_ID_PATTERN.match(image.data_volume_snapshot_id):
            errors.add(
                "nodeImage.dataVolumeSnapshotId",
                image.data_volume_snapshot_id,
                "an EBS snapshot id like snap-0123456789abcdef0",
            )
        elif image.family != "bottlerocket":
            errors.add(
                "nodeImage.dataVolumeSnapshotId",
                image.data_volume_snapshot_id,
                "a snapshot only with nodeImage.family=bottlerocket (AL2023 nodes do not mount a data volume)",
            )
    if image.build_snapshot and config.region not in BOTTLEROCKET_ECR_ACCOUNTS:
        errors.add(
            "nodeImage.buildSnapshot",
            True,
            "a Region with Bottlerocket host-container registries "
            f"({', '.join(sorted(BOTTLEROCKET_ECR_ACCOUNTS))}), not {config.region}",
        )
    enabled = [name for name in config.accelerators if name in ACCELERATORS]
    weights = {name: config.ingress_weights.get(name, ACCELERATORS[name].cost_weight) for name in enabled}
    if enabled and not any(weights.values()):
        errors.add("ingressWeights", weights, "at least one enabled accelerator with a weight above 0")
    for email in config.alarms.emails:
        if not EMAIL_PATTERN.match(email):
            errors.add("alarms.emails", email, "email addresses like ops@example.com")


def _validate_tls(config: AppConfig, errors: _Errors) -> None:
    tls = config.tls
    if tls.certificate_arn:
        match = ACM_ARN_PATTERN.match(tls.certificate_arn)
        where = f"in {config.region} and account {config.account}"
        if not match:
            errors.add(
                "tls.certificateArn", tls.certificate_arn, f"an ACM certificate ARN {where}: {EXAMPLE_CERTIFICATE_ARN}"
            )
        elif (match["region"], match["account"]) != (config.region, config.account):
            errors.add(
                "tls.certificateArn",
                tls.certificate_arn,
                f"an ACM certificate {where} (the ALB can only use certificates of its own account and Region)",
            )
    if tls.local_zone_secret and (
        tls.local_zone_secret.startswith("arn:") or not SECRET_NAME_PATTERN.match(tls.local_zone_secret)
    ):
        errors.add(
            "tls.localZoneSecret",
            tls.local_zone_secret,
            "a Secrets Manager secret name (not an ARN): letters, digits and /_+=.@-, up to 512",
        )
    if tls.local_zone_server_name and not contract.is_dns_name(tls.local_zone_server_name, wildcard=True):
        errors.add(
            "tls.localZoneServerName",
            tls.local_zone_server_name,
            "a DNS name such as lz.example.com, or *.lz.example.com ('*' only as the whole leftmost label)",
        )
    elif tls.local_zone_secret and not tls.local_zone_server_name:
        errors.add(
            "tls.localZoneServerName",
            "",
            "the DNS name the certificate in tls.localZoneSecret names, e.g. lz.example.com, whenever "
            "tls.localZoneSecret is set (devices verify that name: node IPs change)",
        )
    if not ALB_SECURITY_POLICY_PATTERN.match(tls.alb_security_policy):
        errors.add(
            "tls.albSecurityPolicy",
            tls.alb_security_policy,
            f"an ELB security policy with TLS 1.2 or later, e.g. {DEFAULT_ALB_SECURITY_POLICY}",
        )


def _validate_security(config: AppConfig, errors: _Errors) -> None:
    if config.auth.mode not in contract.AUTH_MODES:
        errors.add("auth.mode", config.auth.mode, " or ".join(contract.AUTH_MODES))


def _validate_pipeline(pipeline: PipelineConfig, errors: _Errors) -> None:
    if len(set(pipeline.deployments)) != len(pipeline.deployments):
        errors.add("pipeline.deployments", ",".join(pipeline.deployments), "distinct deployment names")
    if pipeline.source not in PIPELINE_SOURCES:
        errors.add("pipeline.source", pipeline.source, " or ".join(PIPELINE_SOURCES))
    if pipeline.log_retention_days not in LOG_RETENTION_DAYS:
        allowed = ", ".join(map(str, LOG_RETENTION_DAYS))
        errors.add("pipeline.logRetentionDays", pipeline.log_retention_days, f"one of {allowed}")
    if not re.fullmatch(r"[\w./-]{1,255}", pipeline.branch) or ".." in pipeline.branch:
        errors.add("pipeline.branch", pipeline.branch, "a Git branch name such as main")
    if pipeline.source == "s3":
        if not S3_KEY_PATTERN.match(pipeline.source_object_key) or pipeline.source_object_key.startswith("/"):
            errors.add("pipeline.sourceObjectKey", pipeline.source_object_key, "an S3 key like source/app.zip")
        return
    if pipeline.source != "codeconnections":
        return
    if not CONNECTION_ARN_PATTERN.match(pipeline.connection_arn):
        errors.add(
            "pipeline.connectionArn",
            pipeline.connection_arn,
            "a CodeConnections ARN like arn:aws:codeconnections:us-west-2:123456789012:connection/<uuid> "
            "when pipeline.source=codeconnections",
        )
    if not GITHUB_REPOSITORY_PATTERN.match(pipeline.repository):
        errors.add("pipeline.repository", pipeline.repository, "a GitHub repository as owner/name")
    if pipeline.github_token_secret and not SECRET_NAME_PATTERN.match(pipeline.github_token_secret):
        errors.add(
            "pipeline.githubTokenSecret", pipeline.github_token_secret, "a Secrets Manager secret name (not an ARN)"
        )


def config_warnings(config: AppConfig) -> list[str]:
    """Allowed but weaker choices, one ``warning: ...`` line each (app.py prints them once per synth)."""
    warnings: list[str] = []
    if not config.tls.certificate_arn:
        warnings.append(
            "warning: no tls.certificateArn: the Region's ALB serves plain HTTP; "
            f"set tls.certificateArn to an ACM certificate of {config.region} for HTTPS"
        )
    if config.local_zones and not config.tls.local_zone_secret:
        zones = ", ".join(zone.name for zone in config.local_zones)
        warnings.append(
            f"warning: no tls.localZoneSecret: the Local Zone NodePorts ({zones}) serve plain HTTP; set "
            "tls.localZoneSecret to a Secrets Manager secret holding "
            f'{{"{contract.TLS_SECRET_CERTIFICATE_FIELD}": ..., "{contract.TLS_SECRET_PRIVATE_KEY_FIELD}": ...}} '
            "for HTTPS"
        )
    if config.tls.local_zone_server_name and not config.tls.local_zone_secret:
        warnings.append(
            f"warning: tls.localZoneServerName={config.tls.local_zone_server_name} without tls.localZoneSecret: "
            "no Local Zone endpoint serves TLS, so no device verifies that name"
        )
    usable = instance_families(config.accelerators, large=config.enable_large_nvidia_instances)
    for zone in config.local_zones:
        unused = [family for family in zone.instance_families if family not in usable]
        if unused:
            warnings.append(
                f"warning: localZones[{zone.name}].instanceFamilies {', '.join(unused)}: no enabled accelerator "
                f"({', '.join(config.accelerators)}) runs on them, so the zone gets no NodePool for them"
            )
    if config.auth.mode == "none":
        warnings.append(
            "warning: auth.mode=none: anyone who can reach the endpoints can generate images; "
            "auth.mode=token requires a token from the inventory API"
        )
    return warnings


def cli_context(argv: Sequence[str]) -> dict[str, object]:
    """cdk.json context plus ``-c key=value`` / ``--context key=value`` from ``argv``."""
    context: dict[str, object] = dict(json.loads((CDK_JSON).read_text()).get("context", {}))
    args = iter(argv)
    for arg in args:
        if arg in ("-c", "--context"):
            pair = next(args, "")
        elif arg.startswith(("-c=", "--context=")):
            pair = arg.split("=", 1)[1]
        else:
            raise ConfigError("argument", arg, "-c key=value (or --context key=value)")
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError("argument", pair, "-c key=value (or --context key=value)")
        context[key] = value
    return context


def is_config_key(key: str) -> bool:
    """Whether a context key is ours (camelCase, or ``object.sub``), not the CDK's (``@aws-cdk/...``)."""
    return bool(_OUR_KEY.match(key))


def context_keys() -> tuple[str, ...]:
    """The context keys users may set (README table, error messages)."""
    return tuple(_KEYS)


def config_from_node(get_all_context: Callable[[], Mapping[str, object]]) -> AppConfig:
    """Adapter for ``app.node.get_all_context`` so callers need not know the key mapping."""
    return load_config(get_all_context())


__all__ = [
    "AlarmsConfig",
    "AppConfig",
    "AuthConfig",
    "ConfigError",
    "ConfigErrors",
    "LocalZoneConfig",
    "NodeImageConfig",
    "PipelineConfig",
    "ServingConfig",
    "TlsConfig",
    "cli_context",
    "config_errors",
    "config_from_node",
    "config_warnings",
    "context_keys",
    "load_config",
    "raise_collected",
    "validate",
]
