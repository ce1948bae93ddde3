"""Where the app runs: which accelerator serves from which location, and what every object is called.

Every chart derives its per-accelerator and per-location objects from :func:`placements`, so
the NodePool a Kubernetes Deployment selects, the ScaledObject that scales it and the Service in front
of it always agree on names, labels and zones.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from plan import contract, images, naming
from plan.accelerators import ACCELERATORS, Accelerator
from plan.config import AppConfig
from plan.config.models import NAT_ONE
from plan.local_zones import LOCAL_ZONES as LOCAL_ZONES  # where the app can run: the Region's real Local Zones

NAMESPACE: Final = "edge-diffusion"  # serving Kubernetes Deployments, KEDA objects and compile jobs
APP_NAME: Final = "stable-diffusion"
PART_OF: Final = "edge-diffusion"
# Node labels set by our NodePools: the device plugins select their nodes with them.
NODE_LABEL_ACCELERATOR: Final = contract.LABEL_ACCELERATOR
NODE_LABEL_LOCATION: Final = naming.LOCATION_TAG_KEY
# Well-known labels.
NODEPOOL_LABEL: Final = "karpenter.sh/nodepool"
ZONE_LABEL: Final = "topology.kubernetes.io/zone"
ARCH_LABEL: Final = "kubernetes.io/arch"
OS_LABEL: Final = "kubernetes.io/os"
INSTANCE_FAMILY_LABEL: Final = "karpenter.k8s.aws/instance-family"
CAPACITY_TYPE_LABEL: Final = "karpenter.sh/capacity-type"


@dataclass(frozen=True)
class Location:
    """The Region or one Local Zone."""

    zone: str | None  # Local Zone name; None for the Region's AZs

    @property
    def is_local_zone(self) -> bool:
        return self.zone is not None

    @property
    def suffix(self) -> str:
        """Appended to object names: nothing in the Region, ``-<zone>`` in a Local Zone."""
        return f"-{self.zone}" if self.zone else ""

    @property
    def tag_value(self) -> str:
        """Value of the location tag on subnets and node labels (naming.LOCATION_TAG_KEY)."""
        return self.zone or naming.REGION_LOCATION

    def metric_value(self, config: AppConfig) -> str:
        """The runtime's Location metric dimension: the Region name or the Local Zone name."""
        return self.zone or config.region

    def zones(self, config: AppConfig) -> tuple[str, ...]:
        return (self.zone,) if self.zone else config.availability_zones

    @property
    def node_class_name(self) -> str:
        return f"local-zone-{self.zone}" if self.zone else "regional"


REGION: Final = Location(zone=None)


def locations(config: AppConfig) -> tuple[Location, ...]:
    return (REGION, *(Location(zone.name) for zone in config.local_zones))


def enabled_accelerators(config: AppConfig) -> tuple[Accelerator, ...]:
    return tuple(ACCELERATORS[name] for name in config.accelerators)


def regional_families(accelerator: Accelerator, config: AppConfig) -> tuple[str, ...]:
    """Instance families Karpenter may launch for ``accelerator`` in the Region."""
    large = accelerator.large_instance_families if config.enable_large_nvidia_instances else ()
    return (*accelerator.instance_families, *large)


@dataclass(frozen=True)
class Placement:
    """One accelerator serving from one location: one NodePool, Kubernetes Deployment, Service, ScaledObject."""

    accelerator: Accelerator
    location: Location
    instance_families: tuple[str, ...]

    @property
    def node_pool_name(self) -> str:
        return f"{self.accelerator.name}{self.location.suffix}"

    @property
    def name(self) -> str:
        """The Kubernetes Deployment, its Service, ServiceAccount, PodDisruptionBudget and ScaledObject."""
        return f"{APP_NAME}-{self.accelerator.name}{self.location.suffix}"

    @property
    def selector_labels(self) -> dict[str, str]:
        return {"app.kubernetes.io/name": APP_NAME, "app.kubernetes.io/instance": self.name}

    @property
    def labels(self) -> dict[str, str]:
        return {
            **self.selector_labels,
            "app.kubernetes.io/component": "serving",
            "app.kubernetes.io/part-of": PART_OF,
            contract.LABEL_ACCELERATOR: self.accelerator.name,
            NODE_LABEL_LOCATION: self.location.tag_value,
        }

    @property
    def node_selector(self) -> dict[str, str]:
        """Pins pods to this placement's NodePool and, in a Local Zone, to the zone."""
        selector = {NODEPOOL_LABEL: self.node_pool_name}
        if self.location.zone:
            selector[ZONE_LABEL] = self.location.zone
        return selector


def placements(config: AppConfig) -> tuple[Placement, ...]:
    """Every enabled accelerator in the Region, and in each Local Zone that offers one of its families.

    A Local Zone hosts an accelerator only with the families configured for that zone which
    the accelerator may use in the Region too (large NVIDIA families only when enabled).
    """
    result: list[Placement] = []
    for accelerator in enabled_accelerators(config):
        families = regional_families(accelerator, config)
        result.append(Placement(accelerator, REGION, families))
        for zone in config.local_zones:
            zone_families = tuple(family for family in zone.instance_families if family in families)
            if zone_families:
                result.append(Placement(accelerator, Location(zone.name), zone_families))
    return tuple(result)


def workload_dimensions(placement: Placement, config: AppConfig) -> dict[str, str]:
    """Container Insights' dimension values for the pods of ``placement``'s Kubernetes Deployment: what
    the dashboard graphs and the utilization trigger reads."""
    values = (config.cluster_name, NAMESPACE, placement.name)
    return dict(zip(contract.CONTAINER_INSIGHTS_WORKLOAD_DIMENSIONS, values, strict=True))


def demand_dimensions(location: str, config: AppConfig) -> dict[str, str]:
    """The dimension values the inventory API records DeviceDemand for ``location`` (the Region's or a
    Local Zone's name) with: what the wake trigger, the alarm and the dashboard read."""
    values = {contract.DIMENSION_CLUSTER: config.cluster_name, contract.DIMENSION_LOCATION: location}
    return {name: values[name] for name in contract.DEVICE_DEMAND_DIMENSIONS}


def takes_spot(
    config: AppConfig, placement: Placement, *, spot: bool | None = None, min_replicas: int | None = None
) -> bool:
    """Whether ``placement``'s NodePool may launch Spot: never in a Local Zone; a placement's own
    ``spot`` when set; else with ``serving.spot``, except for a placement held at exactly one pod. An
    interruption, or a consolidation from On-Demand to Spot, takes a single always-on pod away for a
    whole cold start, and that pod is what keeps the Region serving while others sleep; at 0 the
    Region's other placements serve while it wakes, at 2 or more the others carry on
    (docs/scaling.md#spot). ``spot=False`` and ``min_replicas`` stand in for the config's (plan.costs:
    the same deployment all On-Demand, or with every placement at one pod)."""
    if placement.location.is_local_zone or spot is False:
        return False
    own = config.serving.spot_of(placement.node_pool_name)
    if own is not None:
        return own
    if not (config.serving.spot or spot):
        return False
    pods = config.serving.min_replicas_of(placement.node_pool_name) if min_replicas is None else min_replicas
    return pods != 1


def nat_gateway_count(config: AppConfig, mode: str | None = None) -> int:
    """NAT gateways of the VPC under ``natGateways`` (``mode`` overrides it): one per regional AZ, or
    one in the first AZ that every AZ's private subnets route to (docs/configuration.md#natgateways)."""
    return 1 if (mode or config.nat_gateways) == NAT_ONE else len(config.availability_zones)


def image_uri(config: AppConfig, accelerator: Accelerator) -> str:
    """The accelerator's variant of the serving image (a multi-arch manifest list from ci_build)."""
    return f"{naming.image_repository_uri(config)}:{config.serving.image_version}-{accelerator.name}"


def runtime_image_uri(config: AppConfig, accelerator: Accelerator) -> str:
    """The variant's image without a baked model (Dockerfile target ``runtime``): what compile
    jobs run, since the serving image can only be built after a compile has published."""
    return f"{image_uri(config, accelerator)}{images.RUNTIME_TAG_SUFFIX}"


def ingress_weights(config: AppConfig) -> Mapping[str, int]:
    """ALB weight per enabled accelerator: config.ingress_weights, else the accelerator's cost weight."""
    return {acc.name: config.ingress_weights.get(acc.name, acc.cost_weight) for acc in enabled_accelerators(config)}
