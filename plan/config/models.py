"""``AppConfig``: everything a deployment of the app can vary, and the rules between its values.

Each top-level key is one field with its default, its bounds and the line the README's table shows
(``plan.config.reference``); rules over several values are the model's validator, so a chart or a
stack never meets a config it would have to refuse.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from typing import Annotated, Final, Self

from pydantic import Field, model_validator
from pydantic.dataclasses import dataclass

from plan import contract
from plan.accelerators import ACCELERATOR_NAMES, ACCELERATORS, instance_families
from plan.bottlerocket import BOTTLEROCKET_ECR_ACCOUNTS
from plan.config.rules import (
    MODEL_CONFIG,
    Flag,
    Integer,
    Number,
    Refusal,
    check,
    cidr_prefix,
    distinct,
    ip_version,
    matching,
    one_of,
    refusal,
    refuse,
)
from plan.config.sections import (
    ACM_ARN_PATTERN,
    EXAMPLE_CERTIFICATE_ARN,
    AlarmsConfig,
    AuthConfig,
    LocalZoneConfig,
    NodeImageConfig,
    PipelineConfig,
    ServingConfig,
    TlsConfig,
)
from plan.local_zones import local_zone_hint
from plan.prices import INSTANCE_TYPE_PATTERN  # the keys of onDemandPrices are the price table's

REGION_PATTERN: Final = re.compile(r"^[a-z]{2}(-gov)?-[a-z]+-\d$")
LOCAL_ZONE_PATTERN: Final = re.compile(r"^(?P<region>[a-z]{2}(-gov)?-[a-z]+-\d)-[a-z]{3}-\d[a-z]$")
ARN_PATTERN: Final = re.compile(r"^arn:aws[a-z-]*:iam::\d{12}:(role|user)/[\w+=,.@/-]+$")
CLUSTER_NAME_PATTERN: Final = re.compile(r"^[a-zA-Z][a-zA-Z0-9-]{0,62}$")
MODEL_ID_PATTERN: Final = re.compile(r"^[\w.-]+(/[\w.-]+)?$")
ENDPOINT_ACCESS_MODES: Final = ("private", "public_and_private")
# How devices authenticate to the endpoint inventory's read API: SigV4 with IAM credentials
# they already have, or credentials from a Cognito identity pool (signed-in users only).
INVENTORY_AUTH_MODES: Final = ("iam", "cognito")
# The key that allows a deployment plain HTTP (cdk.json's dev deployment sets it).
DEVELOPMENT_KEY: Final = "development"
MIN_AVAILABILITY_ZONES: Final = 2  # EKS wants subnets in two AZs, and so does an internet-facing ALB
MAX_LOCAL_ZONES: Final = 8
# The inventory API's functions carry every serving zone's deviceCidrs as JSON in their environment,
# which Lambda caps at 4 KB for all variables together; the rest takes about 500 bytes.
MAX_DEVICE_CIDRS_JSON: Final = 3000
NAT_PER_AZ: Final = "per-az"
NAT_ONE: Final = "one"
NAT_GATEWAY_MODES: Final = (NAT_PER_AZ, NAT_ONE)
LARGE_FAMILIES: Final = frozenset(instance_families(ACCELERATOR_NAMES, large=True)) - frozenset(
    instance_families(ACCELERATOR_NAMES, large=False)
)

Cidr = Annotated[
    str,
    check(lambda text: cidr_prefix(text) is not None, "an IPv4 or IPv6 CIDR such as 203.0.113.0/24 (host bits zero)"),
]
AdminCidr = Annotated[
    Cidr, check(lambda text: cidr_prefix(text) != 0, "specific admin networks, not the whole Internet")
]
VpcCidr = Annotated[
    str,
    check(
        lambda text: ip_version(text) == 4 and (cidr_prefix(text) or 0) in range(16, 21),
        "an IPv4 CIDR from /16 to /20 such as 10.0.0.0/16 (host bits zero)",
    ),
]
Accelerator = Annotated[str, one_of(ACCELERATOR_NAMES, f"one or more of {', '.join(ACCELERATOR_NAMES)}")]
Accelerators = Annotated[
    tuple[Accelerator, ...],
    check(bool, f"one or more of {', '.join(ACCELERATOR_NAMES)}"),
    check(distinct, "distinct accelerator names"),
]
InstanceType = Annotated[str, matching(INSTANCE_TYPE_PATTERN, "EC2 instance types such as g5.xlarge")]


@dataclass(frozen=True, config=MODEL_CONFIG)
class AppConfig:
    """Everything a deployment of the app can vary. Defaults: a runnable example."""

    account: Annotated[str, matching(re.compile(r"\d{12}"), "a 12-digit AWS account id")] = Field(
        default="111111111111", description="target AWS account (12 digits)"
    )
    region: Annotated[str, matching(REGION_PATTERN, "an AWS Region code such as us-west-2 or eu-central-1")] = Field(
        default="us-west-2", description="target Region"
    )
    cluster_name: Annotated[
        str, matching(CLUSTER_NAME_PATTERN, "1-63 letters, digits or '-', starting with a letter")
    ] = Field(
        default="edge-diffusion",
        description="EKS cluster name, Karpenter discovery tag and prefix of physical names (one per deployment)",
    )
    availability_zones: tuple[str, ...] = Field(
        default=("us-west-2a", "us-west-2b", "us-west-2c"),
        description="regional AZs of the VPC and the cluster, two or more (never Local Zones)",
    )
    vpc_cidr: VpcCidr = Field(
        default="10.0.0.0/16", description="VPC CIDR, /16 to /20; Local Zone subnets are carved from its tail"
    )
    local_zones: tuple[LocalZoneConfig, ...] = Field(
        default=(LocalZoneConfig("us-west-2-lax-1a"),),
        description=(
            'Local Zones of `region` to serve from: `zone`, `zone:g5+g6`, `[{"name": ..., "instanceFamilies": [...]}]`'
        ),
    )
    client_cidrs: tuple[Cidr, ...] = Field(
        default=("192.0.2.0/24",),  # RFC 5737 documentation range
        description="networks devices come from, allowed to the endpoints (the default is a documentation range)",
    )
    allow_public_node_ports: Flag = Field(
        default=False, description="required to put `0.0.0.0/0` or `::/0` in `clientCidrs`"
    )
    development: Flag = Field(
        default=False,
        description=(
            "may serve plain HTTP (warned); read from the deployment's own file only, never inherited "
            "(`deployments/dev.json` sets it) ([more](docs/configuration.md#tls))"
        ),
    )
    admin_principal_arns: tuple[
        Annotated[str, matching(ARN_PATTERN, "IAM role or user ARNs like arn:aws:iam::123456789012:role/Admin")], ...
    ] = Field(default=(), description="IAM roles and users given cluster-admin access entries")
    endpoint_access: Annotated[str, one_of(ENDPOINT_ACCESS_MODES)] = Field(
        default="private", description="EKS API endpoint: `private` or `public_and_private` (needs `publicAccessCidrs`)"
    )
    public_access_cidrs: tuple[AdminCidr, ...] = Field(
        default=(), description="admin networks allowed to the public API endpoint"
    )
    accelerators: Accelerators = Field(default=ACCELERATOR_NAMES, description="accelerators to serve on")
    nat_gateways: Annotated[str, one_of(NAT_GATEWAY_MODES)] = Field(
        default=NAT_PER_AZ,
        description=(
            "NAT gateways: `per-az` (an AZ outage takes only its own egress) or `one` (cheaper idle, one AZ's "
            "outage takes all egress) ([more](docs/configuration.md#natgateways))"
        ),
    )
    enable_large_nvidia_instances: Flag = Field(
        default=False, description="p4d/p5 in the NVIDIA NodePool: fast, and costly"
    )
    model_id: Annotated[str, matching(MODEL_ID_PATTERN, "a Hugging Face model id like org/name, or tiny")] = Field(
        default=contract.DEFAULT_MODEL_ID, description="the model the compile jobs compile and the servers load"
    )
    model_revision: str = Field(
        default=contract.DEFAULT_MODEL_REVISION, min_length=1, description="its revision on the Hub"
    )
    ingress_weights: Mapping[str, Annotated[Integer, Field(ge=0, le=999)]] = Field(
        default_factory=dict,
        description='ALB weight per accelerator, e.g. `{"neuron": 3, "nvidia": 1}`; unset: its cost weight',
    )
    inventory_auth: Annotated[str, one_of(INVENTORY_AUTH_MODES)] = Field(
        default="iam",
        description=(
            "how devices sign calls to the inventory API: `iam` (SigV4) or `cognito` "
            "([more](docs/configuration.md#inventoryauth))"
        ),
    )
    serving: ServingConfig = Field(default_factory=ServingConfig)
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)
    tls: TlsConfig = Field(default_factory=TlsConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    node_image: NodeImageConfig = Field(default_factory=NodeImageConfig)
    alarms: AlarmsConfig = Field(default_factory=AlarmsConfig)
    on_demand_prices: Mapping[InstanceType, Annotated[Number, Field(gt=0)]] = Field(
        default_factory=dict, description="instance type -> USD per On-Demand hour, over the table in `plan/prices.py`"
    )
    spot_prices: Mapping[InstanceType, Annotated[Number, Field(gt=0)]] = Field(
        default_factory=dict,
        description="instance type -> USD per Spot hour you read (`make cost`; [how](docs/scaling.md#spot))",
    )

    @property
    def env_name(self) -> str:
        return f"{self.account}/{self.region}"

    @property
    def serving_local_zones(self) -> tuple[str, ...]:
        """The Local Zones that get serving pods: those with a family an enabled accelerator runs on."""
        usable = instance_families(self.accelerators, large=self.enable_large_nvidia_instances)
        return tuple(zone.name for zone in self.local_zones if any(f in usable for f in zone.instance_families))

    @model_validator(mode="after")
    def _rules(self) -> Self:
        refuse(
            [
                *self._zones(),
                *self._networks(),
                *self._weights(),
                *self._placements(),
                *self._device_networks(),
                *self._region_services(),
                *self._transport(),
            ]
        )
        return self

    def _zones(self) -> Iterator[Refusal]:
        """AZs and Local Zones of the Region, and the families its NodePools may launch."""
        region, azs = self.region, self.availability_zones
        foreign = [az for az in azs if not re.fullmatch(rf"{re.escape(region)}[a-z]", az)]
        if foreign or len(azs) < MIN_AVAILABILITY_ZONES or not distinct(azs):
            allowed = f"two or more distinct AZs of {region} such as {region}a,{region}b (EKS and the ALB need two)"
            yield refusal("availability_zones", ",".join(foreign or azs), allowed, reads=["region"])
        names = [zone.name for zone in self.local_zones]
        if not distinct(names):
            yield refusal("local_zones", ",".join(names), "distinct Local Zone names")
        if len(names) > MAX_LOCAL_ZONES:
            yield refusal("local_zones", ",".join(names), f"at most {MAX_LOCAL_ZONES} Local Zones per VPC")
        for i, zone in enumerate(self.local_zones):
            match = LOCAL_ZONE_PATTERN.match(zone.name)
            if not match or match["region"] != region:
                yield refusal(("local_zones", i, "name"), zone.name, local_zone_hint(region), reads=["region"])
            for j, family in enumerate(zone.instance_families):
                if family in LARGE_FAMILIES and not self.enable_large_nvidia_instances:
                    yield refusal(
                        ("local_zones", i, "instance_families", j),
                        family,
                        f"{family} only with enableLargeNvidiaInstances=true",
                        reads=["enable_large_nvidia_instances"],
                    )

    def _networks(self) -> Iterator[Refusal]:
        """Who may reach the endpoints and the cluster's API."""
        public = [i for i, cidr in enumerate(self.client_cidrs) if cidr_prefix(cidr) == 0]
        if not self.allow_public_node_ports:
            allowed = "specific client networks; 0.0.0.0/0 or ::/0 only with allowPublicNodePorts=true"
            for i in public:
                yield refusal(("client_cidrs", i), self.client_cidrs[i], allowed, reads=["allow_public_node_ports"])
        if (self.allow_public_node_ports or not public) and 4 not in {ip_version(c) for c in self.client_cidrs}:
            # The ALB is IPv4: without an IPv4 client network its controller would admit 0.0.0.0/0.
            yield refusal("client_cidrs", ",".join(self.client_cidrs), "at least one IPv4 CIDR for the ALB")
        if self.endpoint_access == "public_and_private" and not self.public_access_cidrs:
            allowed = "one or more admin CIDRs when endpointAccess=public_and_private"
            yield refusal("public_access_cidrs", "", allowed, reads=["endpoint_access"])

    def _weights(self) -> Iterator[Refusal]:
        """The ALB's weights: of enabled accelerators, and not all 0 (it would have no target)."""
        for name in self.ingress_weights:
            if name not in self.accelerators:
                allowed = f"enabled accelerators: {', '.join(self.accelerators)}"
                yield refusal("ingress_weights", name, allowed, reads=["accelerators"])
        weights = {
            name: self.ingress_weights.get(name, ACCELERATORS[name].cost_weight)
            for name in self.accelerators
            if name in ACCELERATORS
        }
        if weights and not any(weights.values()):
            allowed = "at least one enabled accelerator with a weight above 0"
            yield refusal("ingress_weights", weights, allowed, reads=["accelerators"])

    @property
    def placement_keys(self) -> tuple[str, ...]:
        """Every placement's key (its NodePool's name): each accelerator in the Region, and in each
        Local Zone offering one of its families (``plan.topology.placements`` builds the same)."""
        keys: list[str] = []
        for name in self.accelerators:
            families = instance_families((name,), large=self.enable_large_nvidia_instances)
            keys.append(name)
            keys += [f"{name}-{z.name}" for z in self.local_zones if any(f in families for f in z.instance_families)]
        return tuple(keys)

    def _placements(self) -> Iterator[Refusal]:
        """``serving.placements`` names placements this deployment has; Spot only in the Region."""
        keys = self.placement_keys
        zones = {z.name for z in self.local_zones}
        for key, own in self.serving.placements.items():
            if own.spot and any(key.endswith(f"-{zone}") for zone in zones):
                allowed = "false or unset: Local Zone NodePools launch On-Demand only (Spot is not offered there)"
                yield refusal(("serving", "placements", key, "spot"), True, allowed)
            if key not in keys:
                reads = ["accelerators", "local_zones", "enable_large_nvidia_instances"]
                yield refusal(
                    "serving.placements", key, f"placements of this deployment: {', '.join(keys)}", reads=reads
                )

    def device_cidrs_json(self) -> str:
        """The serving Local Zones' deviceCidrs as the inventory API's functions get them (stacks/inventory.py)."""
        zones = {z.name: list(z.device_cidrs) for z in self.local_zones if z.name in self.serving_local_zones}
        return json.dumps(zones, separators=(",", ":"), sort_keys=True)

    def _device_networks(self) -> Iterator[Refusal]:
        """deviceCidrs that fit the inventory functions' environment."""
        size = len(self.device_cidrs_json())
        if size > MAX_DEVICE_CIDRS_JSON:
            allowed = (
                f"at most {MAX_DEVICE_CIDRS_JSON} characters of deviceCidrs across the Local Zones together "
                f"({size} given: the inventory API's functions carry them in Lambda's 4 KB environment); "
                "aggregate them into fewer, wider networks"
            )
            count = sum(len(z.device_cidrs) for z in self.local_zones)
            yield refusal("local_zones", f"{count} deviceCidrs", allowed, reads=["accelerators"])

    def _region_services(self) -> Iterator[Refusal]:
        """What only some Regions and this account can give: the ALB's certificate, Bottlerocket's registries."""
        match = ACM_ARN_PATTERN.match(self.tls.certificate_arn)
        if match and (match["region"], match["account"]) != (self.region, self.account):
            allowed = (
                f"an ACM certificate in {self.region} and account {self.account} "
                "(the ALB can only use certificates of its own account and Region)"
            )
            yield refusal("tls.certificate_arn", self.tls.certificate_arn, allowed, reads=["region", "account"])
        if self.node_image.build_snapshot and self.region not in BOTTLEROCKET_ECR_ACCOUNTS:
            allowed = (
                "a Region with Bottlerocket host-container registries "
                f"({', '.join(sorted(BOTTLEROCKET_ECR_ACCOUNTS))}), not {self.region}"
            )
            yield refusal("node_image.build_snapshot", True, allowed, reads=["region"])

    def _transport(self) -> Iterator[Refusal]:
        """HTTPS on every path devices take, unless this is a development deployment.

        Devices send their bearer tokens, prompts and images to the Region's ALB and to the NodePorts
        of each Local Zone that gets serving pods; without a certificate each is plain HTTP. Whatever
        ``auth.mode`` is: without tokens, prompts and images still cross the network, and
        ``auth.mode=none`` must not be the way around this rule.
        """
        if self.development:
            return
        plain = f"over plain HTTP; plain HTTP only with {DEVELOPMENT_KEY}=true"
        if not self.tls.certificate_arn:
            allowed = (
                f"an ACM certificate of {self.region} and account {self.account} ({EXAMPLE_CERTIFICATE_ARN}): "
                f"without one the Region's ALB serves tokens, prompts and images {plain}"
            )
            yield refusal("tls.certificate_arn", "", allowed, reads=["development", "region", "account"])
        zones = ", ".join(self.serving_local_zones)
        if zones and not self.tls.local_zone_secret:
            allowed = (
                "a Secrets Manager secret name holding the Local Zone pods' certificate (docs/configuration.md#tls), "
                f"with tls.localZoneServerName: without one the NodePorts of {zones} serve tokens, prompts and images "
                f"{plain}"
            )
            reads = ["development", "local_zones", "accelerators", "enable_large_nvidia_instances"]
            yield refusal("tls.local_zone_secret", "", allowed, reads=reads)
