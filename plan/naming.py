"""Physical names and discovery tags derived from config alone.

The Kubernetes manifests in dist/manifests/ must be plain YAML (no CloudFormation tokens),
so anything a chart refers to on the AWS side (node role, repository, bucket, subnet and
security-group tags) has a name computed here from config, used by both the stack that
creates it and the chart that references it.
"""

from __future__ import annotations

from typing import Final

from plan import contract, model_artifacts
from plan.config import AppConfig

# Karpenter discovers subnets and security groups by this tag (value: cluster name).
DISCOVERY_TAG_KEY: Final = "karpenter.sh/discovery"
# Where a subnet is: "region" for regional subnets, the zone name for a Local Zone subnet.
LOCATION_TAG_KEY: Final = contract.LABEL_LOCATION  # the publisher reads it on Services
# Subnet tier: "public" or "private"; regional nodes go to private subnets.
TIER_TAG_KEY: Final = "edge-diffusion.aws/tier"
REGION_LOCATION: Final = contract.LOCATION_REGION


def karpenter_node_role_name(config: AppConfig) -> str:
    return f"{config.cluster_name}-karpenter-node"


# Prefix of the build infrastructure's names: one per account and Region, shared by every
# deployment (plan.deployments), so it does not come from a deployment's cluster name.
BUILD_PREFIX: Final = "edge-diffusion"
# The one image repository every deployment in the account and Region pulls from.
IMAGE_REPOSITORY_NAME: Final = f"{BUILD_PREFIX}/stable-diffusion"
# The image pipeline's BuildKit layer cache (an ECR repository of its own).
BUILD_CACHE_REPOSITORY_NAME: Final = f"{IMAGE_REPOSITORY_NAME}-buildcache"


def image_repository_uri(config: AppConfig) -> str:
    return f"{config.account}.dkr.ecr.{config.region}.amazonaws.com/{IMAGE_REPOSITORY_NAME}"


def model_bucket_name(config: AppConfig) -> str:
    """The one model-artifact bucket of the account and Region (bucket names are global)."""
    return f"{BUILD_PREFIX}-models-{config.account}-{config.region}"


def models_base_uri(config: AppConfig) -> str:
    """``s3://<model bucket>/models``: the parent of every cluster's artifact prefix."""
    return model_artifacts.models_base_uri(model_bucket_name(config))


def interruption_queue_name(config: AppConfig) -> str:
    return f"{config.cluster_name}-karpenter-interruption"


def inventory_table_name(config: AppConfig) -> str:
    """DynamoDB table of serving endpoints: written by the in-cluster publisher, read by devices."""
    return f"{config.cluster_name}-endpoints"


# Labels of the controllers' managed node group (set by ClusterStack): the controllers' Helm
# Helm releases and any other always-on system pod (the inventory publisher) select these nodes.
CONTROLLER_NODE_LABELS: Final = {"edge-diffusion.aws/role": "controllers"}


# Token signing (inventory API -> serving pods): one KMS key per deployment, found by its alias
# (the pods' role may read its public half by this alias, no cross-stack reference).
def token_signing_key_alias(config: AppConfig) -> str:
    return f"alias/{config.cluster_name}-token-signing"


def token_issuer(config: AppConfig) -> str:
    """The tokens' ``iss``: the token route signs it, the servers require it (cluster names are per deployment)."""
    return contract.token_issuer(config.cluster_name)


# SSM parameter holding the latest Bottlerocket data-volume snapshot id the image pipeline built
# (nodeImage.buildSnapshot); set nodeImage.dataVolumeSnapshotId to its value.
DATA_VOLUME_SNAPSHOT_PARAMETER: Final = f"/{BUILD_PREFIX}/bottlerocket/data-volume-snapshot-id"


def cluster_models_base_uri(config: AppConfig) -> str:
    """``s3://<model bucket>/models/<cluster>``: where this deployment's compile jobs publish, and the
    only prefix its compile role may write (docs/adr/0016-serving-images-bake-only-promoted-models.md)."""
    return model_artifacts.cluster_models_base_uri(model_bucket_name(config), config.cluster_name)


def cluster_models_key_prefix(config: AppConfig) -> str:
    """``models/<cluster>``: the key prefix of :func:`cluster_models_base_uri`."""
    return model_artifacts.cluster_models_key_prefix(config.cluster_name)
