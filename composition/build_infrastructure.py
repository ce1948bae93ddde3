"""The CI/CD stacks of the app: the image pipeline and the self-mutating deploy pipeline.

Added by ``composition.app.build_app`` next to the app's stacks; they share one pipeline source
(the S3 source bucket lives in the image pipeline stack).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import aws_cdk as cdk
from constructs import Construct

from spec import naming
from spec.config import AppConfig
from stacks.deploy_pipeline import DeployPipelineStack, region_stage_config
from stacks.image_pipeline import ImagePipelineStack
from stacks.registry import RegistryStack


@dataclass(frozen=True)
class CiStacks:
    images: ImagePipelineStack
    deploy: DeployPipelineStack


def add_ci_stacks(
    scope: Construct,
    config: AppConfig,
    *,
    registry: RegistryStack,
    prefix: str,
    add_app_stacks: Callable[[Construct, AppConfig], object],
) -> CiStacks:
    """Add the image pipeline (pushing to ``registry``'s repository) and the deploy pipeline."""
    env = cdk.Environment(account=config.account, region=config.region)
    # The Region stage of the deploy pipeline is its own deployment with its own repository: the
    # image pipeline publishes the manifest lists there too, so its pods find their images.
    staging_repository = naming.image_repository_name(region_stage_config(config))
    images = ImagePipelineStack(
        scope,
        f"{prefix}-ImagePipeline",
        config=config,
        repository=registry.repository,
        mirror_repository_names=[staging_repository],
        env=env,
    )
    deploy = DeployPipelineStack(
        scope,
        f"{prefix}-DeployPipeline",
        config=config,
        source=images.source,
        add_app_stacks=add_app_stacks,
        env=env,
    )
    return CiStacks(images=images, deploy=deploy)
