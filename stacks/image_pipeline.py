"""ImagePipelineStack: builds the serving images of every enabled accelerator, per architecture,
on x86 and Graviton CodeBuild hosts in parallel, then joins each accelerator's architectures into
the multi-arch manifest list the charts deploy (``<repo>:<version>-<accelerator>``).

    Source ──> Images: Build-<accelerator>-<arch> (run order 1, all in parallel, x86 or Graviton)
                       Manifest-<accelerator>     (run order 2: after every build of its accelerator)

The builds run ci_build/buildspec-build.yml against ci_build/Dockerfile from the source, so a
change to either ships through the same pipeline. Permissions are per project: push to the one
serving repository and the build-cache repository, pull the one Deep Learning Container
repository its accelerator needs, read the one model-bucket prefix of its accelerator.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import aws_cdk as cdk
from aws_cdk import aws_codebuild as codebuild
from aws_cdk import aws_codepipeline as codepipeline
from aws_cdk import aws_codepipeline_actions as actions
from aws_cdk import aws_ecr as ecr
from aws_cdk import aws_iam as iam
from aws_cdk import aws_s3 as s3
from constructs import Construct

from spec import images, model_artifacts, naming, versions
from spec.accelerators import ACCELERATORS, Accelerator
from spec.config import AppConfig
from spec.images import ImageTarget
from stacks import nag
from stacks.ci_storage import CiStorage, CiStorageProps
from stacks.pipeline_source import PipelineSource

BUILD_SPEC: Final = "ci_build/buildspec-build.yml"
MANIFEST_SPEC: Final = "ci_build/buildspec-manifest.yml"
BUILD_RUN_ORDER: Final = 1
MANIFEST_RUN_ORDER: Final = 2
# ECR actions of a `docker push` / `docker pull` and the tag lookups of the buildspecs.
ECR_PULL_ACTIONS: Final = ("ecr:BatchCheckLayerAvailability", "ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer")
ECR_PUSH_ACTIONS: Final = (
    "ecr:CompleteLayerUpload",
    "ecr:InitiateLayerUpload",
    "ecr:PutImage",
    "ecr:UploadLayerPart",
)
ECR_DESCRIBE_ACTIONS: Final = ("ecr:DescribeImages",)
BUILD_IMAGES: Final = {
    "amd64": codebuild.LinuxBuildImage.from_code_build_image_id(versions.CODEBUILD_X86_IMAGE),
    "arm64": codebuild.LinuxArmBuildImage.from_code_build_image_id(versions.CODEBUILD_ARM_IMAGE),
}


@dataclass(frozen=True)
class ImagePipelineProps:
    """Sizes and time limits of the image builds; defaults in one place."""

    # 8 vCPU, 15 GB, 128 GB disk: DLC bases are ~10-20 GB and the model layer several GB more.
    build_compute: codebuild.ComputeType = codebuild.ComputeType.LARGE
    build_timeout_minutes: int = 180
    manifest_timeout_minutes: int = 20
    cache_image_days: int = 30  # build-cache entries not refreshed for this long are dropped


class ImagePipelineStack(cdk.Stack):
    """CodePipeline (V2) that builds, pushes and joins the serving images."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: AppConfig,
        repository: ecr.IRepository,
        mirror_repository_names: Sequence[str] = (),
        props: ImagePipelineProps | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(scope, construct_id, **kwargs)
        mirrors = [
            ecr.Repository.from_repository_name(self, f"Mirror{i}", name)
            for i, name in enumerate(mirror_repository_names)
        ]
        # By its config-derived name (stacks/naming.py), as the charts do: no CloudFormation export
        # that would pin the registry stack, and IAM statements with plain ARNs.
        model_bucket = s3.Bucket.from_bucket_name(self, "ModelBucket", naming.model_bucket_name(config))
        props = props or ImagePipelineProps()
        self.config = config
        self.storage = CiStorage(
            self, "Storage", props=CiStorageProps(log_retention_days=config.pipeline.log_retention_days)
        )
        source_bucket = (
            self.storage.encrypted_bucket("SourceBucket", event_bridge_enabled=True)
            if config.pipeline.source == "s3"
            else None
        )
        self.source = PipelineSource(config.pipeline, source_bucket)
        self.cache_repository = ecr.Repository(
            self,
            "BuildCacheRepository",
            repository_name=f"{naming.image_repository_name(config)}-buildcache",
            image_scan_on_push=False,  # cache manifests, never run: the pushed images are scanned
            image_tag_mutability=ecr.TagMutability.MUTABLE,  # each build overwrites its cache ref
            encryption=ecr.RepositoryEncryption.KMS,
            empty_on_delete=True,
            removal_policy=cdk.RemovalPolicy.DESTROY,  # a cache: rebuilt by the next build
            lifecycle_rules=[
                ecr.LifecycleRule(
                    description=f"drop cache entries not refreshed for {props.cache_image_days} days",
                    tag_status=ecr.TagStatus.ANY,
                    max_image_age=cdk.Duration.days(props.cache_image_days),
                )
            ],
        )

        targets = images.image_targets(config.accelerators)
        self.build_projects = {
            target: ImageBuildProject(
                self,
                f"Build{target.id}",
                config=config,
                target=target,
                repository=repository,
                cache_repository=self.cache_repository,
                model_bucket=model_bucket,
                storage=self.storage,
                props=props,
            ).project
            for target in targets
        }
        accelerators = [ACCELERATORS[name] for name in config.accelerators]
        self.manifest_projects = {
            accelerator.name: ManifestProject(
                self,
                f"Manifest{accelerator.name.capitalize()}",
                config=config,
                accelerator=accelerator,
                repository=repository,
                mirrors=mirrors,
                storage=self.storage,
                props=props,
            ).project
            for accelerator in accelerators
        }

        source_output = codepipeline.Artifact("Source")
        self.pipeline = codepipeline.Pipeline(
            self,
            "Pipeline",
            pipeline_name=f"{config.cluster_name}-images",
            pipeline_type=codepipeline.PipelineType.V2,
            artifact_bucket=self.storage.artifact_bucket,
            cross_account_keys=False,
            restart_execution_on_update=False,
            stages=[
                codepipeline.StageProps(stage_name="Source", actions=[self.source.action(source_output)]),
                codepipeline.StageProps(
                    stage_name="Images",
                    actions=[
                        *self._build_actions(targets, source_output),
                        *self._manifest_actions(accelerators, source_output),
                    ],
                ),
            ],
        )
        self.source.trigger(self, "SourceTrigger", self.pipeline)
        self.storage.acknowledge_artifact_access(self.pipeline)

    def _build_actions(self, targets: Sequence[ImageTarget], source: codepipeline.Artifact) -> list[actions.Action]:
        return [
            actions.CodeBuildAction(
                action_name=build_action_name(target),
                project=self.build_projects[target],
                input=source,
                run_order=BUILD_RUN_ORDER,
            )
            for target in targets
        ]

    def _manifest_actions(
        self, accelerators: Sequence[Accelerator], source: codepipeline.Artifact
    ) -> list[actions.Action]:
        # Run order 2 starts only when every run-order-1 build of the stage has succeeded, so each
        # manifest list is created after all architecture images of its accelerator are pushed.
        return [
            actions.CodeBuildAction(
                action_name=manifest_action_name(accelerator),
                project=self.manifest_projects[accelerator.name],
                input=source,
                run_order=MANIFEST_RUN_ORDER,
            )
            for accelerator in accelerators
        ]


def build_action_name(target: ImageTarget) -> str:
    return f"Build-{target.accelerator.name}-{target.arch}"


def manifest_action_name(accelerator: Accelerator) -> str:
    return f"Manifest-{accelerator.name}"


class ImageBuildProject(Construct):
    """A privileged CodeBuild project that builds one accelerator's image on one architecture."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: AppConfig,
        target: ImageTarget,
        repository: ecr.IRepository,
        cache_repository: ecr.IRepository,
        model_bucket: s3.IBucket,
        storage: CiStorage,
        props: ImagePipelineProps,
    ) -> None:
        super().__init__(scope, construct_id)
        env = {
            **{arg.upper(): value for arg, value in images.build_arg_values(config, target).items()},
            "ARCH": target.arch,
            "ACCELERATOR": target.accelerator.name,
            "MODEL_DEVICE": target.accelerator.device,
            "IMAGE_VERSION": config.serving.image_version,
            "REPOSITORY_URI": repository.repository_uri,
            "CACHE_REPOSITORY_URI": cache_repository.repository_uri,
            "BUILDKIT_IMAGE": versions.BUILDKIT_IMAGE,
        }
        self.project = codebuild.PipelineProject(
            self,
            "Project",
            description=f"Build and push {target.arch_tag(config.serving.image_version)} (ci_build/Dockerfile)",
            build_spec=codebuild.BuildSpec.from_source_filename(BUILD_SPEC),
            environment=codebuild.BuildEnvironment(
                build_image=BUILD_IMAGES[target.arch],
                compute_type=props.build_compute,
                privileged=True,  # the Docker daemon of `docker buildx build`
            ),
            environment_variables=_plain(env),
            encryption_key=storage.key,
            timeout=cdk.Duration.minutes(props.build_timeout_minutes),
            logging=_logging(storage, f"build/{target.accelerator.name}-{target.arch}"),
        )
        grant_ecr_auth(self.project)
        grant_repository(self.project, repository, push=True)
        grant_repository(self.project, cache_repository, push=True)
        if target.dlc_repository:
            self.project.add_to_role_policy(
                iam.PolicyStatement(
                    sid="PullDeepLearningContainerBase",
                    actions=list(ECR_PULL_ACTIONS),
                    resources=[
                        cdk.Arn.format(
                            cdk.ArnComponents(
                                service="ecr",
                                account=versions.DLC_REGISTRY_ACCOUNT,
                                resource="repository",
                                resource_name=target.dlc_repository,
                            ),
                            cdk.Stack.of(self),
                        )
                    ],
                )
            )
        grant_model_prefix(self.project, model_bucket, model_key_prefix(config, target.accelerator))
        nag.acknowledge(
            self.project,
            "AwsSolutions-CB3",
            "Privileged mode runs the Docker daemon that `docker buildx build` needs to build the image; "
            "the project runs only ci_build/buildspec-build.yml from the pipeline's own source.",
        )
        acknowledge_codebuild_defaults(self.project)
        storage.acknowledge_artifact_access(self.project)


class ManifestProject(Construct):
    """A CodeBuild project that joins one accelerator's architecture images into manifest lists."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: AppConfig,
        accelerator: Accelerator,
        repository: ecr.IRepository,
        mirrors: Sequence[ecr.IRepository],
        storage: CiStorage,
        props: ImagePipelineProps,
    ) -> None:
        super().__init__(scope, construct_id)
        version = config.serving.image_version
        env = {
            "ACCELERATOR": accelerator.name,
            "ARCHES": " ".join(images.image_arches(accelerator)),
            "IMAGE_VERSION": version,
            "REPOSITORY_URI": repository.repository_uri,
            "MIRROR_REPOSITORY_URIS": " ".join(mirror.repository_uri for mirror in mirrors),
        }
        self.project = codebuild.PipelineProject(
            self,
            "Project",
            description=f"Create {images.image_tag(accelerator.name, version)} manifest lists",
            build_spec=codebuild.BuildSpec.from_source_filename(MANIFEST_SPEC),
            environment=codebuild.BuildEnvironment(
                build_image=BUILD_IMAGES["amd64"],
                compute_type=codebuild.ComputeType.SMALL,
                privileged=True,  # the docker CLI of `docker buildx imagetools` talks to the daemon
            ),
            environment_variables=_plain(env),
            encryption_key=storage.key,
            timeout=cdk.Duration.minutes(props.manifest_timeout_minutes),
            logging=_logging(storage, f"manifest/{accelerator.name}"),
        )
        grant_ecr_auth(self.project)
        grant_repository(self.project, repository, push=True)
        for mirror in mirrors:
            grant_repository(self.project, mirror, push=True)
        nag.acknowledge(
            self.project,
            "AwsSolutions-CB3",
            "Privileged mode runs the Docker daemon behind `docker buildx imagetools`; the project runs "
            "only ci_build/buildspec-manifest.yml from the pipeline's own source.",
        )
        acknowledge_codebuild_defaults(self.project)
        storage.acknowledge_artifact_access(self.project)


def model_key_prefix(config: AppConfig, accelerator: Accelerator) -> str:
    """The model-bucket key prefix of one accelerator's compiled artifact (spec.model_artifacts)."""
    return model_artifacts.artifact_prefix(
        model_artifacts.MODELS_PREFIX, config.model_id, config.model_revision, accelerator.device
    )


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


def grant_repository(project: codebuild.IProject, repository: ecr.IRepository, *, push: bool) -> None:
    """Pull (and push) images and look tags up in exactly one repository."""
    project.add_to_role_policy(
        iam.PolicyStatement(
            actions=[*ECR_PULL_ACTIONS, *ECR_DESCRIBE_ACTIONS, *(ECR_PUSH_ACTIONS if push else ())],
            resources=[repository.repository_arn],
        )
    )


def grant_model_prefix(project: codebuild.IProject, bucket: s3.IBucket, prefix: str) -> None:
    """Read one compiled artifact: list the prefix (`aws s3 sync`) and get its objects."""
    project.add_to_role_policy(
        iam.PolicyStatement(
            sid="ListModelPrefix",
            actions=["s3:ListBucket"],
            resources=[bucket.bucket_arn],
            conditions={"StringLike": {"s3:prefix": [f"{prefix}*"]}},
        )
    )
    project.add_to_role_policy(
        iam.PolicyStatement(
            sid="ReadModelPrefix", actions=["s3:GetObject"], resources=[bucket.arn_for_objects(f"{prefix}*")]
        )
    )
    nag.acknowledge(
        project,
        nag.wildcard_resource_finding(f"arn:<AWS::Partition>:s3:::{bucket.bucket_name}/{prefix}*"),
        "Read-only access to the objects of one compiled artifact: its manifest lists the files, whose "
        "names the compile job chooses.",
    )


def _plain(env: dict[str, str]) -> dict[str, codebuild.BuildEnvironmentVariable]:
    return {name: codebuild.BuildEnvironmentVariable(value=value) for name, value in env.items()}


def _logging(storage: CiStorage, prefix: str) -> codebuild.LoggingOptions:
    return codebuild.LoggingOptions(
        cloud_watch=codebuild.CloudWatchLoggingOptions(log_group=storage.log_group, prefix=prefix)
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
