"""Typed configuration of the app, read once from CDK context and validated at synth time.

Values come from ``cdk.json`` ``context`` and ``-c key=value`` overrides (strings on the
command line, JSON types in cdk.json); defaults below make a runnable example. A bad value
stops synth with one line that names the key, the value and what is allowed
(:class:`ConfigError`, printed by ``app.py``), never a traceback.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

from spec import contract
from spec.accelerators import ACCELERATOR_NAMES

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


class ConfigError(ValueError):
    """A configuration value is invalid; the message is one line meant for the user."""

    def __init__(self, key: str, value: object, allowed: str) -> None:
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"invalid config {key}={value!r}: allowed {allowed}")


@dataclass(frozen=True)
class LocalZoneConfig:
    """An AWS Local Zone the app serves from (the zone group must be opted in)."""

    name: str
    instance_families: tuple[str, ...] = DEFAULT_LOCAL_ZONE_FAMILIES


@dataclass(frozen=True)
class ServingConfig:
    """Serving and autoscaling knobs shared by every serving Deployment."""

    image_version: str = "1.0.0"
    # At least 1: the pods publish the metric KEDA scales on, so at 0 nothing would scale up.
    min_replicas: int = 1
    max_replicas: int = 4
    target_pending_per_replica: int = 4  # KEDA target: pending requests per replica
    keda_polling_interval_s: int = 30
    keda_cooldown_period_s: int = 300
    max_batch: int = contract.DEFAULT_MAX_BATCH
    max_wait_ms: int = contract.DEFAULT_MAX_WAIT_MS
    height: int = contract.DEFAULT_IMAGE_SIZE
    width: int = contract.DEFAULT_IMAGE_SIZE


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
}
# Context keys that belong to the CDK itself, not to us.
_OUR_KEY: Final = re.compile(r"^[a-z][a-zA-Z0-9]*$")


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


def _as_str(key: str, raw: object) -> str:
    if not isinstance(raw, str) or not raw:
        raise ConfigError(key, raw, "a non-empty string")
    return raw


def _as_mapping(key: str, raw: object) -> dict[str, Any]:
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError:
            raise ConfigError(key, raw, "a JSON object") from None
    if not isinstance(raw, dict):
        raise ConfigError(key, raw, "a JSON object")
    return raw


def _cidr(key: str, raw: object) -> str:
    try:
        return str(ipaddress.ip_network(str(raw), strict=True))
    except ValueError:
        raise ConfigError(key, raw, "an IPv4 or IPv6 CIDR such as 203.0.113.0/24 (host bits zero)") from None


def _local_zone(key: str, raw: object) -> LocalZoneConfig:
    """A zone is a name, ``name:family+family`` on the command line, or a JSON object."""
    if isinstance(raw, str):
        name, _, families = raw.partition(":")
        fam = tuple(f for f in families.split("+") if f) or DEFAULT_LOCAL_ZONE_FAMILIES
        return LocalZoneConfig(name.strip(), fam)
    if isinstance(raw, dict) and isinstance(raw.get("name"), str):
        fam_raw = raw.get("instanceFamilies", list(DEFAULT_LOCAL_ZONE_FAMILIES))
        return LocalZoneConfig(raw["name"], tuple(str(f) for f in _as_list(key, fam_raw)))
    raise ConfigError(key, raw, 'a zone name, "zone:g5+g6", or {"name": ..., "instanceFamilies": [...]}')


def _parse_value(key: str, raw: object) -> object:
    match key:
        case "availabilityZones" | "clientCidrs" | "adminPrincipalArns" | "publicAccessCidrs":
            return tuple(str(v) for v in _as_list(key, raw))
        case "accelerators":
            return tuple(str(v) for v in _as_list(key, raw))
        case "localZones":
            return tuple(_local_zone(key, v) for v in _as_list(key, raw))
        case "allowPublicNodePorts" | "enableLargeNvidiaInstances":
            return _as_bool(key, raw)
        case "ingressWeights":
            weights = _as_mapping(key, raw)
            return {str(k): _as_int(f"{key}.{k}", v, 0, 999) for k, v in weights.items()}
        case "serving":
            return _parse_serving(_as_mapping(key, raw))
        case "pipeline":
            return _parse_pipeline(_as_mapping(key, raw))
        case _:
            return _as_str(key, raw)


_SERVING_BOUNDS: Final = {
    "min_replicas": (1, 100),
    "max_replicas": (1, 1000),
    "target_pending_per_replica": (1, 1000),
    "keda_polling_interval_s": (5, 3600),
    "keda_cooldown_period_s": (0, 86400),
    "max_batch": (1, contract.MAX_BATCH_LIMIT),
    "max_wait_ms": (0, contract.MAX_WAIT_MS_LIMIT),
    "height": contract.IMAGE_SIZE_BOUNDS,
    "width": contract.IMAGE_SIZE_BOUNDS,
}


def _parse_serving(raw: Mapping[str, Any]) -> ServingConfig:
    changes: dict[str, Any] = {}
    for key, value in raw.items():
        attr = _SERVING_KEYS.get(key)
        if attr is None:
            raise ConfigError(f"serving.{key}", value, f"one of {', '.join(_SERVING_KEYS)}")
        if attr == "image_version":
            changes[attr] = _as_str(f"serving.{key}", value)
        else:
            changes[attr] = _as_int(f"serving.{key}", value, *_SERVING_BOUNDS[attr])
    return replace(ServingConfig(), **changes)


def _parse_pipeline(raw: Mapping[str, Any]) -> PipelineConfig:
    changes: dict[str, Any] = {}
    for key, value in raw.items():
        attr = _PIPELINE_KEYS.get(key)
        if attr is None:
            raise ConfigError(f"pipeline.{key}", value, f"one of {', '.join(_PIPELINE_KEYS)}")
        if attr == "log_retention_days":
            changes[attr] = _as_int(f"pipeline.{key}", value, 1, max(LOG_RETENTION_DAYS))
        elif attr == "pr_diffs":
            changes[attr] = _as_bool(f"pipeline.{key}", value)
        elif attr == "deployments":
            changes[attr] = tuple(str(v) for v in _as_list(f"pipeline.{key}", value))
        else:
            changes[attr] = _as_str(f"pipeline.{key}", value)
    return replace(PipelineConfig(), **changes)


def load_config(context: Mapping[str, object]) -> AppConfig:
    """Build and validate the config from CDK context (all of it: cdk.json plus -c)."""
    changes: dict[str, Any] = {}
    for key, raw in context.items():
        if key in _KEYS:
            changes[_KEYS[key]] = _parse_value(key, raw)
        elif is_config_key(key):
            raise ConfigError(key, raw, f"a known key: {', '.join(_KEYS)}")
    config = replace(AppConfig(), **changes)
    validate(config)
    return config


def validate(config: AppConfig) -> None:
    """Check values against each other; raise ConfigError on the first bad one."""
    if not re.fullmatch(r"\d{12}", config.account):
        raise ConfigError("account", config.account, "a 12-digit AWS account id")
    if not REGION_PATTERN.match(config.region):
        raise ConfigError("region", config.region, "an AWS Region name such as us-west-2")
    if not CLUSTER_NAME_PATTERN.match(config.cluster_name):
        raise ConfigError("clusterName", config.cluster_name, "1-63 letters, digits or '-', starting with a letter")
    _validate_network(config)
    _validate_workloads(config)
    _validate_pipeline(config.pipeline)


def _validate_network(config: AppConfig) -> None:
    if not config.availability_zones:
        raise ConfigError("availabilityZones", "", f"one or more AZs of {config.region}, e.g. {config.region}a")
    for az in config.availability_zones:
        if not re.fullmatch(rf"{re.escape(config.region)}[a-z]", az):
            raise ConfigError("availabilityZones", az, f"regional AZs of {config.region} such as {config.region}a")
    if len(set(config.availability_zones)) != len(config.availability_zones):
        raise ConfigError("availabilityZones", ",".join(config.availability_zones), "distinct AZ names")
    vpc = ipaddress.ip_network(_cidr("vpcCidr", config.vpc_cidr))
    if vpc.version != 4 or not 16 <= vpc.prefixlen <= 20:
        raise ConfigError("vpcCidr", config.vpc_cidr, "an IPv4 CIDR from /16 to /20")
    names = [zone.name for zone in config.local_zones]
    if len(set(names)) != len(names):
        raise ConfigError("localZones", ",".join(names), "distinct Local Zone names")
    if len(names) > 8:
        raise ConfigError("localZones", ",".join(names), "at most 8 Local Zones per VPC")
    for zone in config.local_zones:
        match = LOCAL_ZONE_PATTERN.match(zone.name)
        if not match or match["region"] != config.region:
            raise ConfigError(
                "localZones", zone.name, f"Local Zones of {config.region}, named like {config.region}-lax-1a"
            )
        for family in zone.instance_families:
            if not INSTANCE_FAMILY_PATTERN.match(family):
                raise ConfigError(f"localZones[{zone.name}].instanceFamilies", family, "EC2 families such as g5")
    for cidr in config.client_cidrs:
        net = ipaddress.ip_network(_cidr("clientCidrs", cidr))
        if net.prefixlen == 0 and not config.allow_public_node_ports:
            raise ConfigError(
                "clientCidrs", cidr, "specific client networks; 0.0.0.0/0 or ::/0 only with allowPublicNodePorts=true"
            )
    if config.inventory_auth not in INVENTORY_AUTH_MODES:
        raise ConfigError("inventoryAuth", config.inventory_auth, " or ".join(INVENTORY_AUTH_MODES))
    if config.endpoint_access not in ENDPOINT_ACCESS_MODES:
        raise ConfigError("endpointAccess", config.endpoint_access, " or ".join(ENDPOINT_ACCESS_MODES))
    for cidr in config.public_access_cidrs:
        if ipaddress.ip_network(_cidr("publicAccessCidrs", cidr)).prefixlen == 0:
            raise ConfigError("publicAccessCidrs", cidr, "specific admin networks, not the whole Internet")
    if config.endpoint_access == "public_and_private" and not config.public_access_cidrs:
        raise ConfigError("publicAccessCidrs", "", "one or more admin CIDRs when endpointAccess=public_and_private")
    for arn in config.admin_principal_arns:
        if not ARN_PATTERN.match(arn):
            raise ConfigError(
                "adminPrincipalArns", arn, "IAM role or user ARNs like arn:aws:iam::123456789012:role/Admin"
            )


def _validate_workloads(config: AppConfig) -> None:
    if not config.accelerators:
        raise ConfigError("accelerators", "", f"one or more of {', '.join(ACCELERATOR_NAMES)}")
    for name in config.accelerators:
        if name not in ACCELERATOR_NAMES:
            raise ConfigError("accelerators", name, f"one or more of {', '.join(ACCELERATOR_NAMES)}")
    if len(set(config.accelerators)) != len(config.accelerators):
        raise ConfigError("accelerators", ",".join(config.accelerators), "distinct accelerator names")
    for name in config.ingress_weights:
        if name not in config.accelerators:
            raise ConfigError("ingressWeights", name, f"enabled accelerators: {', '.join(config.accelerators)}")
    if not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", config.model_id):
        raise ConfigError("modelId", config.model_id, "a Hugging Face model id like org/name, or tiny")
    serving = config.serving
    if serving.min_replicas > serving.max_replicas:
        raise ConfigError("serving.minReplicas", serving.min_replicas, f"at most maxReplicas ({serving.max_replicas})")
    for key, size in (("height", serving.height), ("width", serving.width)):
        if size % contract.IMAGE_SIZE_MULTIPLE:
            raise ConfigError(f"serving.{key}", size, f"a multiple of {contract.IMAGE_SIZE_MULTIPLE}")


def _validate_pipeline(pipeline: PipelineConfig) -> None:
    if len(set(pipeline.deployments)) != len(pipeline.deployments):
        raise ConfigError("pipeline.deployments", ",".join(pipeline.deployments), "distinct deployment names")
    if pipeline.source not in PIPELINE_SOURCES:
        raise ConfigError("pipeline.source", pipeline.source, " or ".join(PIPELINE_SOURCES))
    if pipeline.log_retention_days not in LOG_RETENTION_DAYS:
        allowed = ", ".join(map(str, LOG_RETENTION_DAYS))
        raise ConfigError("pipeline.logRetentionDays", pipeline.log_retention_days, f"one of {allowed}")
    if not re.fullmatch(r"[\w./-]{1,255}", pipeline.branch) or ".." in pipeline.branch:
        raise ConfigError("pipeline.branch", pipeline.branch, "a Git branch name such as main")
    if pipeline.source == "s3":
        if not S3_KEY_PATTERN.match(pipeline.source_object_key) or pipeline.source_object_key.startswith("/"):
            raise ConfigError("pipeline.sourceObjectKey", pipeline.source_object_key, "an S3 key like source/app.zip")
        return
    if not CONNECTION_ARN_PATTERN.match(pipeline.connection_arn):
        raise ConfigError(
            "pipeline.connectionArn",
            pipeline.connection_arn,
            "a CodeConnections ARN like arn:aws:codeconnections:us-west-2:123456789012:connection/<uuid> "
            "when pipeline.source=codeconnections",
        )
    if not GITHUB_REPOSITORY_PATTERN.match(pipeline.repository):
        raise ConfigError("pipeline.repository", pipeline.repository, "a GitHub repository as owner/name")
    if pipeline.github_token_secret and not re.fullmatch(r"[\w/+=.@-]{1,512}", pipeline.github_token_secret):
        raise ConfigError(
            "pipeline.githubTokenSecret", pipeline.github_token_secret, "a Secrets Manager secret name (not an ARN)"
        )


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
    """Whether a context key is ours (camelCase), not the CDK's (``@aws-cdk/...``, ``aws:cdk:...``)."""
    return bool(_OUR_KEY.match(key))


def context_keys() -> tuple[str, ...]:
    """The context keys users may set (README table, error messages)."""
    return tuple(_KEYS)


def config_from_node(get_all_context: Callable[[], Mapping[str, object]]) -> AppConfig:
    """Adapter for ``app.node.get_all_context`` so callers need not know the key mapping."""
    return load_config(get_all_context())


__all__ = [
    "AppConfig",
    "ConfigError",
    "LocalZoneConfig",
    "PipelineConfig",
    "ServingConfig",
    "cli_context",
    "config_from_node",
    "context_keys",
    "load_config",
    "validate",
]
