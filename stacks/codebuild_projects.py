"""What every CodeBuild project of the build infrastructure shares: the plain-data step a pipeline
action runs, the build hosts, the ECR grants and the cdk-nag acknowledgements of CDK's defaults.

Why a module of its own: the image pipeline, its snapshot stage, the deploy pipeline and the
pull-request diffs build projects alike, and none of them should import another's stack for it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

import aws_cdk as cdk
from aws_cdk import aws_codebuild as codebuild
from aws_cdk import aws_iam as iam

from plan import images, versions
from plan.images import ImageTarget
from stacks import nag
from stacks.ci_storage import CiStorage

# ECR actions of a `docker push` / `docker pull` and the tag lookups of the build scripts.
ECR_PULL_ACTIONS: Final = ("ecr:BatchCheckLayerAvailability", "ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer")
ECR_PUSH_ACTIONS: Final = (
    "ecr:CompleteLayerUpload",
    "ecr:InitiateLayerUpload",
    "ecr:PutImage",
    "ecr:UploadLayerPart",
)
ECR_DESCRIBE_ACTIONS: Final = ("ecr:DescribeImages",)
# The CodeBuild images of each architecture's hosts (versions.CODEBUILD_X86_IMAGE, versions.CODEBUILD_ARM_IMAGE).
BUILD_IMAGES: Final = {
    "amd64": codebuild.LinuxBuildImage.from_code_build_image_id(versions.CODEBUILD_X86_IMAGE),
    "arm64": codebuild.LinuxArmBuildImage.from_code_build_image_id(versions.CODEBUILD_ARM_IMAGE),
}


@dataclass(frozen=True)
class PipelineStep:
    """One CodeBuild action of a pipeline stage, as plain data: the stack turns it into a project,
    and the tests run its buildspec with its environment against stub ``aws``/``docker``.

    ``dockerfile_target`` is the Dockerfile target a build step builds (``None``: any other step);
    ``target`` the accelerator and architecture whose build args it uses.
    """

    stage: str
    action_name: str
    construct_id: str
    run_order: int
    buildspec: str
    env: Mapping[str, str]
    arch: str
    description: str
    log_prefix: str
    dockerfile_target: str | None = None
    target: ImageTarget | None = None

    @property
    def is_build(self) -> bool:
        return self.dockerfile_target is not None

    @property
    def dlc_repository(self) -> str | None:
        """The Deep Learning Container repository the build pulls its base from (servers only)."""
        if self.target is None or self.dockerfile_target == images.PUBLISHER_TARGET:
            return None
        return self.target.dlc_repository

    @property
    def reads_model(self) -> bool:
        return self.dockerfile_target == images.SERVE_TARGET


def pascal_id(name: str) -> str:
    """``RuntimeManifest-cpu`` -> ``RuntimeManifestCpu``: a construct id from an action or service name."""
    return "".join(part[:1].upper() + part[1:] for part in name.split("-"))


def plain_environment(env: Mapping[str, str]) -> dict[str, codebuild.BuildEnvironmentVariable]:
    return {name: codebuild.BuildEnvironmentVariable(value=value) for name, value in env.items()}


def logging_options(storage: CiStorage, prefix: str) -> codebuild.LoggingOptions:
    """The project's logs in the pipeline's retained log group, under a prefix of its own."""
    return codebuild.LoggingOptions(
        cloud_watch=codebuild.CloudWatchLoggingOptions(log_group=storage.log_group, prefix=prefix)
    )


def nag_resource(arn: str) -> str:
    """An ARN as cdk-nag renders it (the partition token)."""
    return arn.replace(cdk.Aws.PARTITION, "<AWS::Partition>")


def grant_ecr_auth(project: codebuild.IProject) -> None:
    """`aws ecr get-login-password`: GetAuthorizationToken has no resource-level permissions."""
    project.add_to_role_policy(
        iam.PolicyStatement(sid="EcrLogin", actions=["ecr:GetAuthorizationToken"], resources=["*"])
    )
    nag.acknowledge(
        project,
        nag.wildcard_resource_finding("*"),
        "ecr:GetAuthorizationToken does not support resource-level permissions; every other ECR action "
        "is scoped to named repositories.",
    )


def acknowledge_codebuild_defaults(project: codebuild.Project) -> None:
    """The wildcards of the policy CDK gives every CodeBuild project: its default log group's
    streams and its report groups, both named after the project."""
    stack = cdk.Stack.of(project)
    project_id = stack.get_logical_id(project.node.default_child)  # type: ignore[arg-type]
    where = f"{stack.region}:{stack.account}"
    nag.acknowledge(
        project,
        nag.wildcard_resource_finding(f"arn:<AWS::Partition>:logs:{where}:log-group:/aws/codebuild/<{project_id}>:*"),
        "Log streams of this project's own default log group (CodeBuild names a stream per build).",
    )
    nag.acknowledge(
        project,
        nag.wildcard_resource_finding(f"arn:<AWS::Partition>:codebuild:{where}:report-group/<{project_id}>-*"),
        "Report groups CodeBuild creates for this project, named after it.",
    )
