"""Karpenter v1 capacity: EC2NodeClasses per location and a NodePool per accelerator placement.

The Region gets one EC2NodeClass (private subnets) and every Local Zone its own (the zone's
public subnet, gp2 root volumes); each placement of :func:`plan.topology.placements` gets
a NodePool restricted to its instance families and, in a Local Zone, to the zone and to
on-demand capacity. With ``serving.spot`` the regional pools allow Spot and On-Demand, and
Karpenter v1 launches Spot first ("If a NodePool is compatible with multiple capacity types,
Karpenter will prioritize reserved capacity, followed by spot, then finally on-demand":
aws/karpenter-provider-aws v1.14.1, website/content/en/preview/concepts/nodepools.md); the
interruption queue drains a Spot node on its two-minute warning. Local Zones stay On-Demand, and
compile jobs select On-Demand nodes of the regional pool (charts/compile_jobs.py). Serving pods
select their pool by name (``karpenter.sh/nodepool``).
Node image: AL2023 by default, or Bottlerocket with a data volume restored from a snapshot
(docs/adr/0013-bottlerocket-nodes-with-a-snapshot-data-volume.md).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Final

import cdk8s
from constructs import Construct

from charts import pods as pod_parts
from charts.compile_jobs import CompileJobSettings
from charts.imports.aws.k8s import karpenter as ec2nc
from charts.imports.sh import karpenter as kpool
from plan import capacity, naming, topology, versions
from plan.accelerators import Accelerator, Taint
from plan.config import AppConfig
from plan.topology import Location, Placement

# EKS tags the cluster security group it creates with this key (value: cluster name). Nodes
# need that group to reach the control plane and the other nodes.
EKS_CLUSTER_SG_TAG_KEY: Final = "aws:eks:cluster-name"
PRIVATE_TIER: Final = "private"
NODE_CLASS_GROUP: Final = "karpenter.k8s.aws"
NODE_CLASS_KIND: Final = "EC2NodeClass"
ROOT_DEVICE: Final = "/dev/xvda"  # AL2023 root volume; Bottlerocket's OS volume
BOTTLEROCKET_DATA_DEVICE: Final = "/dev/xvdb"  # Bottlerocket: images, logs, the kubelet's root
# Bottlerocket settings (TOML) merged by Karpenter into the user data it generates: a device
# handed to a pod by a device plugin (/dev/neuron*) belongs to the pod's runAsUser/runAsGroup.
BOTTLEROCKET_USER_DATA: Final = "[settings.kubernetes]\ndevice-ownership-from-security-context = true\n"
_TAINT_EFFECTS: Final = {
    "NoSchedule": kpool.NodePoolSpecTemplateSpecTaintsEffect.NO_SCHEDULE,
    "PreferNoSchedule": kpool.NodePoolSpecTemplateSpecTaintsEffect.PREFER_NO_SCHEDULE,
    "NoExecute": kpool.NodePoolSpecTemplateSpecTaintsEffect.NO_EXECUTE,
}


@dataclass(frozen=True)
class RootVolume:
    """The node's root EBS volume: it holds container images (20+ GB serving images, unpacked)."""

    size: str = "200Gi"
    volume_type: ec2nc.Ec2NodeClassSpecBlockDeviceMappingsEbsVolumeType = (
        ec2nc.Ec2NodeClassSpecBlockDeviceMappingsEbsVolumeType.GP3
    )
    iops: int | None = 6000  # gp3 only: faster image pulls and unpacking
    throughput: int | None = 500  # MiB/s, gp3 only


REGIONAL_ROOT_VOLUME: Final = RootVolume()
# gp3 is not offered in every Local Zone; gp2 is, and has no iops/throughput settings.
LOCAL_ZONE_ROOT_VOLUME: Final = RootVolume(
    volume_type=ec2nc.Ec2NodeClassSpecBlockDeviceMappingsEbsVolumeType.GP2, iops=None, throughput=None
)
# Bottlerocket's OS volume holds only the OS image and its settings (Karpenter's default size).
BOTTLEROCKET_OS_VOLUME_SIZE: Final = "4Gi"
# A volume restored from a snapshot reads its blocks from S3 on first access; a provisioned
# initialization rate (100-300 MiB/s, the CRD's volumeInitializationRate) makes that predictable.
# gp3 volumes in the Region only: the Local Zone classes keep EBS's default lazy loading.
SNAPSHOT_INITIALIZATION_RATE_MIBS: Final = 300


@dataclass(frozen=True)
class DisruptionSettings:
    """How eagerly Karpenter replaces nodes. Accelerator nodes take minutes to become useful
    (image pull, model download and load), so they are consolidated slowly, one at a time."""

    consolidate_after: str = "10m"
    budget_nodes: str = "1"
    # No drift replacement (AMI or config change) during business hours (UTC): a replaced
    # accelerator node means minutes of lost capacity.
    drift_freeze_schedule: str = "0 8 * * mon-fri"
    drift_freeze_duration: str = "10h"
    expire_after: str = "720h"
    termination_grace_period: str = "30m"  # longer than a serving pod's drain
    # Regional pools also run the compile jobs, whose pods Karpenter must not evict (do-not-disrupt)
    # before their deadline: an expired or drifted node waits that long for a compile to finish.
    compile_grace_margin_s: int = 600

    def regional_termination_grace_period(self, compile_deadline_s: int) -> str:
        """The grace period of a pool that runs compile jobs: the longer of a serving drain and a compile."""
        serving_s = _duration_s(self.termination_grace_period)
        return f"{max(serving_s, compile_deadline_s + self.compile_grace_margin_s) // 60}m"


@dataclass(frozen=True)
class NodePoolSettings:
    """Defaults of every NodePool, in one place."""

    regional_capacity_types: tuple[str, ...] = ("on-demand",)  # serving: no Spot interruptions
    regional_spot_capacity_types: tuple[str, ...] = ("spot", "on-demand")  # serving.spot: Spot first
    local_zone_capacity_types: tuple[str, ...] = ("on-demand",)  # Local Zones have no Spot for G/Inf
    disruption: DisruptionSettings = field(default_factory=DisruptionSettings)
    max_devices_per_node: int = capacity.MAX_DEVICES_PER_NODE  # see plan.capacity
    vcpus_per_cpu_pod: int = capacity.VCPUS_PER_CPU_POD
    compile_deadline_s: int = CompileJobSettings().deadline_s  # the compile jobs' activeDeadlineSeconds


class KarpenterChart(cdk8s.Chart):
    """EC2NodeClasses (Region + each Local Zone) and one NodePool per placement."""

    def __init__(
        self, scope: Construct, construct_id: str, *, config: AppConfig, settings: NodePoolSettings | None = None
    ) -> None:
        super().__init__(scope, construct_id, disable_resource_name_hashes=True)
        self.settings = settings or NodePoolSettings()
        self.node_classes = {location: self._node_class(config, location) for location in topology.locations(config)}
        self.node_pools = {
            placement.node_pool_name: self._node_pool(config, placement) for placement in topology.placements(config)
        }

    def _node_class(self, config: AppConfig, location: Location) -> ec2nc.Ec2NodeClass:
        if location.is_local_zone:
            subnet_tags = {naming.DISCOVERY_TAG_KEY: config.cluster_name, naming.LOCATION_TAG_KEY: location.tag_value}
            volume = LOCAL_ZONE_ROOT_VOLUME
        else:
            subnet_tags = {
                naming.DISCOVERY_TAG_KEY: config.cluster_name,
                naming.LOCATION_TAG_KEY: location.tag_value,
                naming.TIER_TAG_KEY: PRIVATE_TIER,
            }
            volume = REGIONAL_ROOT_VOLUME
        return ec2nc.Ec2NodeClass(
            self,
            f"NodeClass-{location.node_class_name}",
            metadata=cdk8s.ApiObjectMetadata(name=location.node_class_name),
            spec=ec2nc.Ec2NodeClassSpec(
                role=naming.karpenter_node_role_name(config),
                # The alias resolves the standard, NVIDIA or Neuron AMI of the family per instance type.
                ami_selector_terms=[ec2nc.Ec2NodeClassSpecAmiSelectorTerms(alias=ami_alias(config))],
                subnet_selector_terms=[ec2nc.Ec2NodeClassSpecSubnetSelectorTerms(tags=subnet_tags)],
                security_group_selector_terms=[
                    # The cluster security group (control plane <-> nodes) ...
                    ec2nc.Ec2NodeClassSpecSecurityGroupSelectorTerms(
                        tags={EKS_CLUSTER_SG_TAG_KEY: config.cluster_name}
                    ),
                    # ... and the NodePort group, which admits only the configured client CIDRs.
                    ec2nc.Ec2NodeClassSpecSecurityGroupSelectorTerms(
                        tags={naming.DISCOVERY_TAG_KEY: config.cluster_name}
                    ),
                ],
                # IMDSv2 only, and one hop: pods (one hop further, in their own network namespace)
                # cannot read the node role's credentials. They get theirs from EKS Pod Identity
                # (the agent listens on the host network, not IMDS) and their Region from AWS_REGION.
                metadata_options=ec2nc.Ec2NodeClassSpecMetadataOptions(
                    http_endpoint=ec2nc.Ec2NodeClassSpecMetadataOptionsHttpEndpoint.ENABLED,
                    http_protocol_i_pv6=ec2nc.Ec2NodeClassSpecMetadataOptionsHttpProtocolIPv6.DISABLED,
                    http_put_response_hop_limit=1,
                    http_tokens=ec2nc.Ec2NodeClassSpecMetadataOptionsHttpTokens.REQUIRED,
                ),
                block_device_mappings=block_devices(config, volume, local_zone=location.is_local_zone),
                user_data=BOTTLEROCKET_USER_DATA if bottlerocket(config) else None,
                tags={naming.LOCATION_TAG_KEY: location.tag_value},
            ),
        )

    def _node_pool(self, config: AppConfig, placement: Placement) -> kpool.NodePool:
        accelerator, location = placement.accelerator, placement.location
        settings = self.settings
        if location.is_local_zone:
            capacity_types = settings.local_zone_capacity_types
        elif topology.takes_spot(config, placement):
            capacity_types = settings.regional_spot_capacity_types
        else:
            capacity_types = settings.regional_capacity_types
        requirements = [
            _requirement(topology.INSTANCE_FAMILY_LABEL, placement.instance_families),
            _requirement(topology.ARCH_LABEL, (accelerator.arch,)),
            _requirement(topology.OS_LABEL, ("linux",)),
            _requirement(topology.CAPACITY_TYPE_LABEL, capacity_types),
            # The node class only selects subnets of this location; the zone requirement also
            # makes Karpenter's scheduling simulation (and the pods' nodeSelector) agree with it.
            _requirement(topology.ZONE_LABEL, location.zones(config)),
            _requirement(pod_parts.INSTANCE_SIZE_LABEL, instance_sizes(placement)),
        ]
        disruption = settings.disruption
        return kpool.NodePool(
            self,
            f"NodePool-{placement.node_pool_name}",
            metadata=cdk8s.ApiObjectMetadata(name=placement.node_pool_name),
            spec=kpool.NodePoolSpec(
                # Higher weight = preferred: cheaper accelerators first when a pod fits several pools.
                weight=accelerator.cost_weight,
                limits=pool_limits(accelerator, config, settings),
                disruption=kpool.NodePoolSpecDisruption(
                    consolidation_policy=kpool.NodePoolSpecDisruptionConsolidationPolicy.WHEN_EMPTY_OR_UNDERUTILIZED,
                    consolidate_after=disruption.consolidate_after,
                    budgets=[
                        kpool.NodePoolSpecDisruptionBudgets(nodes=disruption.budget_nodes),
                        kpool.NodePoolSpecDisruptionBudgets(
                            nodes="0",
                            reasons=[kpool.NodePoolSpecDisruptionBudgetsReasons.DRIFTED],
                            schedule=disruption.drift_freeze_schedule,
                            duration=disruption.drift_freeze_duration,
                        ),
                    ],
                ),
                template=kpool.NodePoolSpecTemplate(
                    metadata=kpool.NodePoolSpecTemplateMetadata(
                        labels={
                            topology.NODE_LABEL_ACCELERATOR: accelerator.name,
                            topology.NODE_LABEL_LOCATION: location.tag_value,
                        }
                    ),
                    spec=kpool.NodePoolSpecTemplateSpec(
                        node_class_ref=kpool.NodePoolSpecTemplateSpecNodeClassRef(
                            group=NODE_CLASS_GROUP, kind=NODE_CLASS_KIND, name=location.node_class_name
                        ),
                        requirements=requirements,
                        taints=[_taint(accelerator.taint)] if accelerator.taint else None,
                        expire_after=disruption.expire_after,
                        termination_grace_period=(
                            disruption.termination_grace_period
                            if location.is_local_zone
                            else disruption.regional_termination_grace_period(settings.compile_deadline_s)
                        ),
                    ),
                ),
            ),
        )


def _duration_s(duration: str) -> int:
    """Seconds of a Karpenter duration made of hours, minutes and seconds ("30m", "1h30m")."""
    parts = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", duration)
    if not parts or not duration:
        raise ValueError(f"duration {duration!r}: allowed hours, minutes and seconds such as 30m or 1h30m")
    hours, minutes, seconds = (int(p or 0) for p in parts.groups())
    return hours * 3600 + minutes * 60 + seconds


def bottlerocket(config: AppConfig) -> bool:
    return config.node_image.family == "bottlerocket"


def ami_alias(config: AppConfig) -> str:
    """The pinned alias of the configured node image family (plan.versions)."""
    return versions.BOTTLEROCKET_AMI_ALIAS if bottlerocket(config) else versions.AL2023_AMI_ALIAS


def _ebs(
    volume: RootVolume,
    *,
    size: str | None = None,
    snapshot_id: str | None = None,
    initialization_rate: int | None = None,
) -> ec2nc.Ec2NodeClassSpecBlockDeviceMappingsEbs:
    return ec2nc.Ec2NodeClassSpecBlockDeviceMappingsEbs(
        volume_size=size or volume.size,
        volume_type=volume.volume_type,
        iops=volume.iops,
        throughput=volume.throughput,
        snapshot_id=snapshot_id,
        volume_initialization_rate=initialization_rate,
        encrypted=True,
        delete_on_termination=True,
    )


def block_devices(
    config: AppConfig, volume: RootVolume, *, local_zone: bool
) -> list[ec2nc.Ec2NodeClassSpecBlockDeviceMappings]:
    """AL2023: one root volume of ``volume``. Bottlerocket: a small OS volume and a data volume of
    ``volume`` (the kubelet's root), restored from ``nodeImage.dataVolumeSnapshotId`` when set.

    The data volume keeps ``volume.size``: EC2 refuses a volume smaller than its snapshot, so the
    snapshot's volume must be at most that size, and the rest is room for images the snapshot
    lacks (a newer ``serving.imageVersion``).
    """
    if not bottlerocket(config):
        return [ec2nc.Ec2NodeClassSpecBlockDeviceMappings(device_name=ROOT_DEVICE, root_volume=True, ebs=_ebs(volume))]
    snapshot = config.node_image.data_volume_snapshot_id or None
    rate = SNAPSHOT_INITIALIZATION_RATE_MIBS if snapshot and not local_zone else None
    os_volume = RootVolume(size=BOTTLEROCKET_OS_VOLUME_SIZE, volume_type=volume.volume_type, iops=None, throughput=None)
    return [
        ec2nc.Ec2NodeClassSpecBlockDeviceMappings(device_name=ROOT_DEVICE, ebs=_ebs(os_volume)),
        ec2nc.Ec2NodeClassSpecBlockDeviceMappings(
            device_name=BOTTLEROCKET_DATA_DEVICE,
            root_volume=True,
            ebs=_ebs(volume, snapshot_id=snapshot, initialization_rate=rate),
        ),
    ]


def pool_limits(
    accelerator: Accelerator, config: AppConfig, settings: NodePoolSettings
) -> dict[str, kpool.NodePoolSpecLimits]:
    """Cap what a pool may launch at what its pods can use: the serving maximum plus one
    compile job, counted in the resource that costs (devices; vCPUs for CPU pools)."""
    limit = capacity.node_pool_limit(
        accelerator.device_resource,
        accelerator.devices_per_pod,
        config.serving.max_replicas,
        max_devices_per_node=settings.max_devices_per_node,
        vcpus_per_cpu_pod=settings.vcpus_per_cpu_pod,
    )
    return {limit.resource: kpool.NodePoolSpecLimits.from_number(limit.amount)}


def instance_sizes(placement: Placement) -> tuple[str, ...]:
    """The serving sizes of the accelerator and, in the Region (where compile jobs run), its compile
    sizes: a compile pod selects its sizes by node affinity, serving pods fit the smallest."""
    accelerator = placement.accelerator
    sizes = accelerator.serving_instance_sizes
    if not placement.location.is_local_zone:
        sizes = (*sizes, *(s for s in accelerator.compile.instance_sizes if s not in sizes))
    return sizes


def _requirement(key: str, values: tuple[str, ...]) -> kpool.NodePoolSpecTemplateSpecRequirements:
    return kpool.NodePoolSpecTemplateSpecRequirements(
        key=key, operator=kpool.NodePoolSpecTemplateSpecRequirementsOperator.IN, values=list(values)
    )


def _taint(taint: Taint) -> kpool.NodePoolSpecTemplateSpecTaints:
    return kpool.NodePoolSpecTemplateSpecTaints(key=taint.key, effect=_TAINT_EFFECTS[taint.effect], value=taint.value)
