"""The build infrastructure every deployment in an account and Region shares.

The image repository and model bucket (``EdgeDiffusion-Registry``), the image pipeline and its
source (``EdgeDiffusion-ImagePipeline``), and the self-mutating deploy pipeline
(``EdgeDiffusion-DeployPipeline``, only when ``pipeline.deployments`` names deployments). They
are created once, from the shared config (``cdk.json``: account, region, pipeline, model);
deployments reference them by their config-derived names and never create them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aws_cdk as cdk
from constructs import Construct

from plan.deployments import DEPLOY_PIPELINE, IMAGE_PIPELINE, REGISTRY, Deployment, Plan, stack_name
from stacks.deploy_pipeline import DeployPipelineStack
from stacks.image_pipeline import ImagePipelineStack
from stacks.registry import RegistryStack


@dataclass(frozen=True)
class BuildInfrastructure:
    registry: RegistryStack
    images: ImagePipelineStack
    deploy: DeployPipelineStack | None

    @property
    def all(self) -> tuple[cdk.Stack, ...]:
        return (self.registry, self.images, *((self.deploy,) if self.deploy else ()))


def add_build_infrastructure(
    scope: Construct,
    plan: Plan,
    *,
    add_deployment_stacks: Callable[[Construct, Deployment], Any],
) -> BuildInfrastructure:
    """Add the shared stacks; the deploy pipeline's stages are built by ``add_deployment_stacks``."""
    config = plan.shared
    env = cdk.Environment(account=config.account, region=config.region)
    registry = RegistryStack(scope, stack_name(REGISTRY), config=config, env=env)
    images = ImagePipelineStack(
        scope, stack_name(IMAGE_PIPELINE), config=config, repository=registry.repository, env=env
    )
    deploy = (
        DeployPipelineStack(
            scope,
            stack_name(DEPLOY_PIPELINE),
            config=config,
            source=images.source,
            deployments=plan.pipeline,
            add_deployment_stacks=add_deployment_stacks,
            env=env,
        )
        if plan.pipeline
        else None
    )
    return BuildInfrastructure(registry=registry, images=images, deploy=deploy)
