"""The config's objects (``serving``, ``pipeline``, ``tls``, ``auth``, ``nodeImage``, ``alarms``) and a
Local Zone: one field per key, with its default, its bounds and the line the README's table shows.

Frozen pydantic dataclasses: the rest of the code reads plain attributes (``config.serving.max_batch``)
and builds variants with ``dataclasses.replace``, which validates again.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Annotated, Any, Final, Literal, Self

from pydantic import Field, model_validator
from pydantic.dataclasses import dataclass

from plan import contract
from plan.accelerators import ACCELERATOR_NAMES, instance_families
from plan.config.rules import (
    MODEL_CONFIG,
    Flag,
    Integer,
    Number,
    Refusal,
    check,
    cidr_prefix,
    config_key,
    distinct,
    matching,
    one_of,
    refusal,
    refuse,
)

DEFAULT_LOCAL_ZONE_FAMILIES: Final = ("g5",)
# Where the image and deploy pipelines get the source: a GitHub repository through an AWS
# CodeConnections connection, or a zip in an S3 bucket the image pipeline stack creates (air-gapped).
PIPELINE_SOURCES: Final = ("s3", "codeconnections")
CONNECTION_ARN_PATTERN: Final = re.compile(
    r"^arn:aws[a-z-]*:(codeconnections|codestar-connections):[a-z0-9-]+:\d{12}:connection/[0-9a-f-]{36}$"
)
GITHUB_REPOSITORY_PATTERN: Final = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})/[A-Za-z0-9._-]{1,100}$")
S3_KEY_PATTERN: Final = re.compile(r"^(?!/)[A-Za-z0-9!_.*'()/-]{1,1024}$")
BRANCH_PATTERN: Final = re.compile(r"^(?!.*\.\.)[\w./-]{1,255}$")
# CloudWatch Logs accepts only these retention periods (days).
LOG_RETENTION_DAYS: Final = (1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557)
# Secrets Manager secret names (not ARNs): 1-512 of these characters.
SECRET_NAME_PATTERN: Final = re.compile(r"^[\w/+=.@-]{1,512}$")
ACM_ARN_PATTERN: Final = re.compile(
    r"^arn:aws[a-z-]*:acm:(?P<region>[a-z0-9-]+):(?P<account>\d{12}):certificate/[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}$"
)
EXAMPLE_CERTIFICATE_ARN: Final = "arn:aws:acm:<region>:<account>:certificate/<uuid>"
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
# autoscaling/v2 HPAScalingRules.stabilizationWindowSeconds accepts 0 to 3600.
MAX_STABILIZATION_WINDOW_S: Final = 3600
# Serving fields renamed for what they do, old -> (new, what it is): the old key is still read,
# with one warning (plan.config.warnings); setting both is an error.
RENAMED: Final = {"keda_cooldown_period_s": ("scale_down_window_s", "the HPA's scale-down window")}

KNOWN_FAMILIES: Final = instance_families(ACCELERATOR_NAMES, large=True)
Family = Annotated[
    str, one_of(KNOWN_FAMILIES, f"instance families of the accelerator table: {', '.join(KNOWN_FAMILIES)}")
]
Email = Annotated[str, matching(EMAIL_PATTERN, "email addresses like ops@example.com")]
SecretName = Annotated[
    str,
    matching(
        SECRET_NAME_PATTERN,
        "a Secrets Manager secret name (not an ARN): letters, digits and /_+=.@-, up to 512",
        optional=True,
    ),
]
DeviceCidr = Annotated[
    str,
    check(lambda text: cidr_prefix(text) is not None, "an IPv4 or IPv6 CIDR such as 203.0.113.0/24 (host bits zero)"),
]
DnsName = Annotated[
    str,
    check(
        lambda name: name == "" or contract.is_dns_name(name, wildcard=True),
        "a DNS name such as lz.example.com, or *.lz.example.com ('*' only as the whole leftmost label)",
    ),
]


@dataclass(frozen=True, config=MODEL_CONFIG)
class LocalZoneConfig:
    """An AWS Local Zone the app serves from (the zone group must be opted in)."""

    name: str = Field(min_length=1, description="the Local Zone, e.g. us-west-2-lax-1a")
    instance_families: tuple[Family, ...] = Field(
        default=DEFAULT_LOCAL_ZONE_FAMILIES, description="instance families its NodePools may launch"
    )
    device_cidrs: tuple[DeviceCidr, ...] = Field(
        default=(),
        description=(
            "networks of the devices this zone is near: their inventory calls wake its placements at "
            "minReplicas 0; none: every device's calls do"
        ),
    )


# What KEDA may scale a placement's pods on (charts/autoscaling.py: one trigger each).
SIGNAL_PENDING: Final = "pending"  # requests queued and in flight, published by the pods
SIGNAL_UTILIZATION: Final = "utilization"  # accelerator utilization (Container Insights)
SIGNAL_LATENCY: Final = "latency"  # p90 inference latency, published by the pods
SIGNALS: Final = (SIGNAL_PENDING, SIGNAL_UTILIZATION, SIGNAL_LATENCY)
DEFAULT_SIGNALS: Final = (SIGNAL_PENDING,)
# How the HPA reads each signal's trigger (charts/autoscaling.py renders it, scaling/hpa.py simulates it):
# AverageValue, a total shared among the pods (desired = ceil(metric / target)); Value, a per-pod level
# (desired = ceil(current pods x metric / target)).
AVERAGE_VALUE: Final = "AverageValue"
VALUE: Final = "Value"
SIGNAL_METRIC_TYPES: Final = {SIGNAL_PENDING: AVERAGE_VALUE, SIGNAL_UTILIZATION: VALUE, SIGNAL_LATENCY: VALUE}
Signals = Annotated[
    tuple[Annotated[str, one_of(SIGNALS)], ...],
    check(bool, f"one or more of {', '.join(SIGNALS)}"),
    check(distinct, "distinct signal names"),
]


@dataclass(frozen=True, config=MODEL_CONFIG)
class PlacementScaling:
    """One placement's own scaling values; an unset one is ``serving``'s."""

    min_replicas: Integer | None = Field(default=None, ge=0, le=100, description="its serving.minReplicas")
    signals: Signals | None = Field(default=None, description="its serving.signals")
    spot: Flag | None = Field(
        default=None,
        description="its serving.spot, and past the rule that keeps a placement of exactly one pod On-Demand",
    )


@dataclass(frozen=True, config=MODEL_CONFIG)
class ServingConfig:
    """Serving and autoscaling knobs of every serving Kubernetes Deployment (docs/scaling.md: why each default)."""

    image_version: str = Field(
        default=contract.OLDEST_IMAGE_VERSION,
        min_length=1,
        description="version of the images to build and run (tags are immutable: a new runtime needs a new version)",
    )
    # 0: the placement sleeps when idle; device demand recorded by the inventory API wakes it.
    min_replicas: Integer = Field(
        default=1,
        ge=0,
        le=100,
        description=(
            "pods per placement at least; 0: it sleeps when idle and device demand wakes it "
            "([docs/scaling.md](docs/scaling.md#scale-to-zero)); 2 in production"
        ),
    )
    scale_to_zero_after_s: Integer = Field(
        default=900,
        ge=60,
        le=86_400,
        description="placements at minReplicas 0: seconds without demand or pending requests before the last pod goes",
    )
    signals: Signals = Field(
        default=DEFAULT_SIGNALS,
        description=(
            f"what KEDA scales pods on: {', '.join(SIGNALS)}, alone or together "
            "([docs/scaling.md](docs/scaling.md#scaling-signals))"
        ),
    )
    utilization_target_percent: Integer = Field(
        default=70, ge=10, le=100, description="signal utilization: accelerator utilization per pod to scale to"
    )
    latency_target_ms: Integer = Field(
        default=6000,
        ge=100,
        le=600_000,
        description="signal latency: p90 inference latency per pod to scale to, above its p90 at the breaking point",
    )
    spot: Flag = Field(
        default=False,
        description=(
            "regional serving NodePools may launch Spot as well as On-Demand; Local Zones and compile jobs stay "
            "On-Demand ([why](docs/scaling.md#spot))"
        ),
    )
    placements: Mapping[str, PlacementScaling] = Field(
        default_factory=dict,
        description=('per placement (`nvidia`, `nvidia-<zone>`): `{"minReplicas": 0, "signals": [...], "spot": true}`'),
    )
    max_replicas: Integer = Field(
        default=4, ge=1, le=1000, description="pods per placement at most; sets the NodePool limits too"
    )
    # floor(4 / 1.1): the HPA's 10 % tolerance then keeps pods at <= 4 pending, the breaking point.
    target_pending_per_replica: Integer = Field(
        default=3,
        ge=1,
        le=1000,
        description=(
            "pending requests (queued and in flight) per pod that KEDA scales to ([docs/scaling.md](docs/scaling.md))"
        ),
    )
    keda_polling_interval_s: Integer = Field(
        default=15, ge=5, le=3600, description="seconds between KEDA's CloudWatch reads (each HPA sync gets the last)"
    )
    scale_down_window_s: Integer = Field(
        default=300,  # Kubernetes' own window
        ge=0,
        le=MAX_STABILIZATION_WINDOW_S,
        description="seconds demand must stay lower before pods are removed: the HPA's scale-down window",
    )
    keda_cooldown_period_s: Integer | None = Field(
        default=None,
        ge=0,
        le=MAX_STABILIZATION_WINDOW_S,
        description=(
            "deprecated: the old name of `serving.scaleDownWindowSeconds` ([why](docs/configuration.md#renamed-keys))"
        ),
    )
    max_batch: Integer = Field(
        default=contract.DEFAULT_MAX_BATCH,
        ge=1,
        le=contract.MAX_BATCH_LIMIT,
        description="images per device call at most, the static batch the Neuron compile is for",
    )
    max_wait_ms: Integer = Field(
        default=contract.DEFAULT_MAX_WAIT_MS,
        ge=0,
        le=contract.MAX_WAIT_MS_LIMIT,
        description="milliseconds a request may wait for others to share its batch",
    )
    height: Integer = Field(
        default=contract.DEFAULT_IMAGE_SIZE,
        ge=contract.IMAGE_SIZE_BOUNDS[0],
        le=contract.IMAGE_SIZE_BOUNDS[1],
        multiple_of=contract.IMAGE_SIZE_MULTIPLE,  # the VAE downsamples by 8
        description="image height in pixels that the pods serve and the compile job compiles for",
    )
    width: Integer = Field(
        default=contract.DEFAULT_IMAGE_SIZE,
        ge=contract.IMAGE_SIZE_BOUNDS[0],
        le=contract.IMAGE_SIZE_BOUNDS[1],
        multiple_of=contract.IMAGE_SIZE_MULTIPLE,
        description="image width in pixels, likewise",
    )
    ui: Flag = Field(
        default=False, description="the Gradio UI on the pods' port (devices use the API; `make serve` turns it on)"
    )
    vae: Literal["full", "tiny"] = Field(
        default="full",
        description=(
            "nvidia and cpu pods decode with `tiny` (TAESD): over 10x faster, less detail; built into the images "
            "([docs/models.md](docs/models.md#tiny-vae-decoder))"
        ),
    )
    torch_compile: Flag = Field(
        default=False,
        description=(
            "nvidia pods torch.compile the UNet and VAE decoder with kernels built into the images "
            "([docs/scaling.md](docs/scaling.md#torchcompile))"
        ),
    )

    @model_validator(mode="before")
    @classmethod
    def _one_name_per_setting(cls, data: Any) -> Any:
        if isinstance(data, dict):  # keys as typed (Python code passes field names: dataclasses.replace)
            refuse(
                refusal(old, data[config_key(old)], f"serving.{config_key(new)} alone (its new name), not both")
                for old, (new, _) in RENAMED.items()
                if config_key(old) in data and config_key(new) in data
            )
        return data

    @model_validator(mode="after")
    def _rules(self) -> Self:
        for old, (new, _) in RENAMED.items():
            if getattr(self, old) is not None:  # set under its old name: the setting takes that value
                object.__setattr__(self, new, getattr(self, old))  # frozen: written once, while validating
        refuse(self._refusals())
        return self

    def _refusals(self) -> Iterator[Refusal]:
        if _version(self.image_version) < _version(contract.OLDEST_IMAGE_VERSION):
            allowed = (
                f"a version like {contract.OLDEST_IMAGE_VERSION} or later: these charts need that runtime (it "
                "exits when its model cannot load, which they ask for); run the image pipeline for it before deploying"
            )
            yield refusal("image_version", self.image_version, allowed)
        if self.min_replicas > self.max_replicas:
            allowed = f"at most maxReplicas ({self.max_replicas})"
            yield refusal("min_replicas", self.min_replicas, allowed, reads=["max_replicas"])
        for key, own in self.placements.items():
            if own.min_replicas is not None and own.min_replicas > self.max_replicas:
                allowed = f"at most maxReplicas ({self.max_replicas})"
                yield refusal(("placements", key, "min_replicas"), own.min_replicas, allowed, reads=["max_replicas"])

    def min_replicas_of(self, key: str) -> int:
        """minReplicas of the placement ``key`` (its NodePool's name: ``nvidia``, ``nvidia-<zone>``)."""
        own = self.placements.get(key)
        return self.min_replicas if own is None or own.min_replicas is None else own.min_replicas

    def spot_of(self, key: str) -> bool | None:
        """The placement ``key``'s own Spot choice, or None: ``serving.spot`` and the single-pod rule decide
        (plan.topology.takes_spot)."""
        own = self.placements.get(key)
        return None if own is None else own.spot

    def signals_of(self, key: str) -> tuple[str, ...]:
        """The signals the placement ``key`` scales on."""
        own = self.placements.get(key)
        return self.signals if own is None or own.signals is None else own.signals


@dataclass(frozen=True, config=MODEL_CONFIG)
class PipelineConfig:
    """Source and logging of the image pipeline, the deploy pipeline and the PR diff builds."""

    source: Annotated[str, one_of(PIPELINE_SOURCES)] = Field(
        default="s3",  # needs nothing else to synthesize
        description="`s3` (a zip in a bucket the stack creates) or `codeconnections` (GitHub)",
    )
    connection_arn: str = Field(default="", description="codeconnections: the CodeConnections connection to GitHub")
    repository: str = Field(default="", description="codeconnections: the GitHub repository, `owner/name`")
    branch: Annotated[str, matching(BRANCH_PATTERN, "a Git branch name such as main")] = Field(
        default="main", description="the branch the pipelines build"
    )
    source_object_key: Annotated[str, matching(S3_KEY_PATTERN, "an S3 key like source/app.zip")] = Field(
        default="source/edge-diffusion.zip", description="s3: the key of this repository's zip in the source bucket"
    )
    log_retention_days: Annotated[Integer, one_of(LOG_RETENTION_DAYS)] = Field(
        default=90, description="days the pipelines' logs are kept (a CloudWatch Logs period)"
    )
    pr_diffs: Flag = Field(default=True, description="codeconnections: `cdk diff` on pull requests")
    github_token_secret: SecretName = Field(
        default="", description="Secrets Manager secret name of a GitHub token: PR diffs posted as comments"
    )
    deployments: Annotated[tuple[str, ...], check(distinct, "distinct deployment names")] = Field(
        default=(), description="deployments the deploy pipeline deploys, in order; none: no deploy pipeline"
    )

    @model_validator(mode="after")
    def _rules(self) -> Self:
        refuse(self._refusals())
        return self

    def _refusals(self) -> Iterator[Refusal]:
        if self.source != "codeconnections":
            return
        if not CONNECTION_ARN_PATTERN.match(self.connection_arn):
            allowed = (
                "a CodeConnections ARN like arn:aws:codeconnections:us-west-2:123456789012:connection/<uuid> "
                "when pipeline.source=codeconnections"
            )
            yield refusal("connection_arn", self.connection_arn, allowed, reads=["source"])
        if not GITHUB_REPOSITORY_PATTERN.match(self.repository):
            yield refusal("repository", self.repository, "a GitHub repository as owner/name", reads=["source"])


@dataclass(frozen=True, config=MODEL_CONFIG)
class TlsConfig:
    """HTTPS of the device-facing endpoints; empty values mean plain HTTP, which only a development
    deployment may have (``AppConfig.development``, with a warning)."""

    certificate_arn: Annotated[
        str, matching(ACM_ARN_PATTERN, f"an ACM certificate ARN: {EXAMPLE_CERTIFICATE_ARN}", optional=True)
    ] = Field(
        default="",
        description=(
            "ACM certificate (this account and Region) of the ALB's HTTPS-only listener; required unless `development`"
        ),
    )
    # Its SecretString is JSON {"certificate", "privateKey"} (contract.TLS_SECRET_*_FIELD).
    local_zone_secret: SecretName = Field(
        default="",
        description=(
            "Secrets Manager secret name of the Local Zone pods' certificate ([format](docs/configuration.md#tls)); "
            "required with Local Zones unless `development`"
        ),
    )
    # Devices reach changing node IPs, so they send this name as SNI and verify the certificate
    # against it. A wildcard (*.lz.example.com) gives each Local Zone its own name, the zone's for "*".
    local_zone_server_name: DnsName = Field(
        default="",
        description="the DNS name that certificate names, which devices verify (required with `localZoneSecret`)",
    )
    alb_security_policy: Annotated[
        str,
        matching(
            ALB_SECURITY_POLICY_PATTERN,
            f"an ELB security policy with TLS 1.2 or later, e.g. {DEFAULT_ALB_SECURITY_POLICY}",
        ),
    ] = Field(default=DEFAULT_ALB_SECURITY_POLICY, description="the ALB's TLS policy (TLS 1.2 or later)")

    def server_name_in(self, zone: str) -> str:
        """The name devices verify in ``zone``: the configured one, a wildcard's "*" made the zone."""
        name = self.local_zone_server_name
        return f"{zone}{name[1:]}" if name.startswith("*.") else name

    @model_validator(mode="after")
    def _rules(self) -> Self:
        refuse(self._refusals())
        return self

    def _refusals(self) -> Iterator[Refusal]:
        if self.local_zone_secret and not self.local_zone_server_name:
            allowed = (
                "the DNS name the certificate in tls.localZoneSecret names, e.g. lz.example.com, whenever "
                "tls.localZoneSecret is set (devices verify that name: node IPs change)"
            )
            yield refusal("local_zone_server_name", "", allowed, reads=["local_zone_secret"])


@dataclass(frozen=True, config=MODEL_CONFIG)
class AuthConfig:
    """How inference requests are authorized: short-lived tokens from the inventory API, or not at all."""

    mode: Annotated[str, one_of(contract.AUTH_MODES)] = Field(
        default="token",
        description="`token`: each request carries a short-lived JWT from the inventory API; `none` (warned)",
    )
    token_ttl_s: Integer = Field(
        default=contract.DEFAULT_TOKEN_TTL_S,
        ge=contract.TOKEN_TTL_BOUNDS[0],
        le=contract.TOKEN_TTL_BOUNDS[1],
        description="seconds a token lives",
    )


@dataclass(frozen=True, config=MODEL_CONFIG)
class NodeImageConfig:
    """The OS image of accelerator nodes, and whether serving images come pre-pulled on a snapshot."""

    family: Annotated[str, one_of(NODE_IMAGE_FAMILIES)] = Field(
        default="al2023", description="OS of the accelerator nodes: `al2023` or `bottlerocket`"
    )
    data_volume_snapshot_id: Annotated[
        str, matching(SNAPSHOT_ID_PATTERN, "an EBS snapshot id like snap-0123456789abcdef0", optional=True)
    ] = Field(
        default="",
        description=(
            "bottlerocket: EBS snapshot of a data volume holding the serving images "
            "([more](docs/configuration.md#nodeimage))"
        ),
    )
    build_snapshot: Flag = Field(
        default=False, description="the image pipeline builds that snapshot after each image build (cdk.json only)"
    )

    @model_validator(mode="after")
    def _rules(self) -> Self:
        refuse(self._refusals())
        return self

    def _refusals(self) -> Iterator[Refusal]:
        if self.data_volume_snapshot_id and self.family != "bottlerocket":
            allowed = "a snapshot only with nodeImage.family=bottlerocket (AL2023 nodes do not mount a data volume)"
            yield refusal("data_volume_snapshot_id", self.data_volume_snapshot_id, allowed, reads=["family"])


@dataclass(frozen=True, config=MODEL_CONFIG)
class AlarmsConfig:
    """CloudWatch alarm thresholds of a deployment, and who is told when one fires."""

    latency_p99_slo_ms: Integer = Field(
        default=10_000, ge=100, le=600_000, description="p99 inference latency of a placement that alarms, in ms"
    )
    server_error_percent: Number = Field(
        default=1.0, gt=0, le=100, description="server errors that alarm, in percent of requests"
    )
    pending_pods_minutes: Integer = Field(
        default=15, ge=1, le=1440, description="minutes serving pods may stay Pending (capacity, quota, image pull)"
    )
    emails: tuple[Email, ...] = Field(default=(), description="email addresses the alarms notify (each confirms once)")


def _version(text: str) -> tuple[int, ...]:
    """The leading dotted numbers of a version (``1.10.2-rc1`` -> (1, 10, 2)); () when it has none."""
    match = re.match(r"\d+(\.\d+)*", text)
    return tuple(int(part) for part in match[0].split(".")) if match else ()
