"""ImagePipelineStack: builds every image the app runs, per architecture, on x86 and Graviton
CodeBuild hosts in parallel, and joins each image's architectures into the multi-arch manifest
list the charts deploy:

    Source ──> RuntimeImages: Runtime-<accelerator>-<arch>, Publisher-<arch>   (run order 1, parallel)
                              RuntimeManifest-<accelerator>, PublisherManifest (run order 2)
           ──> ServingImages: Serve-<accelerator>-<arch>                       (run order 1, parallel)
                              ServingManifest-<accelerator>                    (run order 2)
           ──> DataVolumeSnapshot   (only with nodeImage.buildSnapshot: stacks/snapshot_builder.py)

Why two image stages: the model-free runtime images the compile jobs run, and the publisher, are
published before anything that needs a compiled model, so a first release converges
(docs/adr/0014-two-image-stages-so-a-first-release-converges.md). A serving build bakes only the
artifact ``ci_build/promoted-models.json`` promotes, from the prefix of the cluster that compiled it
(docs/adr/0016-serving-images-bake-only-promoted-models.md).

:func:`pipeline_steps` describes every action as plain data; the stack turns it into CodeBuild
projects, each allowed only what its step needs (push to the image repository, pull its one Deep
Learning Container base, read its model's artifact of its device), and the tests run the same buildspecs
with the same environment against stub ``aws``/``docker``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import aws_cdk as cdk
from aws_cdk import aws_codebuild as codebuild
from aws_cdk import aws_codepipeline as codepipeline
from aws_cdk import aws_codepipeline_actions as actions
from aws_cdk import aws_ecr as ecr
from aws_cdk import aws_iam as iam
from aws_cdk import aws_s3 as s3
from constructs import Construct

from plan import images, model_artifacts, naming, versions
from plan.accelerators import ACCELERATORS, Accelerator
from plan.config import AppConfig
from plan.images import ImageTarget
from stacks import nag
from stacks.ci_storage import CiStorage, CiStorageProps
from stacks.codebuild_projects import (
    BUILD_IMAGES,
    ECR_DESCRIBE_ACTIONS,
    ECR_PULL_ACTIONS,
    ECR_PUSH_ACTIONS,
    PipelineStep,
    acknowledge_codebuild_defaults,
    grant_ecr_auth,
    logging_options,
    pascal_id,
    plain_environment,
)
from stacks.pipeline_source import PipelineSource
from stacks.snapshot_builder import (
    SNAPSHOT_STAGE,
    SnapshotBuilder,
    SnapshotHost,
    SnapshotProject,
    SnapshotProps,
    snapshot_step,
)

BUILD_SPEC: Final = "ci_build/buildspec-build.yml"
MANIFEST_SPEC: Final = "ci_build/buildspec-manifest.yml"
RUNTIME_STAGE: Final = "RuntimeImages"
SERVING_STAGE: Final = "ServingImages"
IMAGE_STAGES: Final = (RUNTIME_STAGE, SERVING_STAGE)
PIPELINE_STAGES: Final = (*IMAGE_STAGES, SNAPSHOT_STAGE)  # the snapshot stage only when configured
BUILD_RUN_ORDER: Final = 1
MANIFEST_RUN_ORDER: Final = 2
# Build args ci_build/build-image.sh computes rather than the project setting them: the model's S3
# prefix comes from the promotion it finds (the promoted cluster's), its sha256 from the promotion too.
SCRIPT_COMPUTED_ARGS: Final = images.BUILDSPEC_COMPUTED_ARGS


@dataclass(frozen=True)
class ImagePipelineProps:
    """Sizes and time limits of the image builds; defaults in one place."""

    # 8 vCPU, 15 GB, 128 GB disk: DLC bases are ~10-20 GB and the model layer several GB more.
    build_compute: codebuild.ComputeType = codebuild.ComputeType.LARGE
    build_timeout_minutes: int = 180
    manifest_timeout_minutes: int = 20
    cache_image_days: int = 30  # build-cache entries not refreshed for this long are dropped
    snapshot: SnapshotProps = field(default_factory=SnapshotProps)  # the DataVolumeSnapshot stage's


def pipeline_steps(
    config: AppConfig,
    *,
    repository_uri: str,
    cache_repository_uri: str,
    snapshot_host: SnapshotHost | None = None,
    props: ImagePipelineProps | None = None,
) -> tuple[PipelineStep, ...]:
    """Every action of the pipeline's build stages, in stage and run order (the snapshot stage
    when ``nodeImage.buildSnapshot``: then ``snapshot_host`` says where its instance runs)."""
    version = config.serving.image_version
    targets = images.image_targets(config.accelerators)
    accelerators = [ACCELERATORS[name] for name in config.accelerators]

    def build(stage: str, target: ImageTarget, dockerfile_target: str, tag: str, name: str) -> PipelineStep:
        env = {
            **{
                arg.upper(): value
                for arg, value in images.build_arg_values(config, target).items()
                if arg not in SCRIPT_COMPUTED_ARGS
            },
            # Every cluster's artifacts are under it; the promotion names the cluster (plan.model_artifacts).
            "MODELS_BASE_URI": naming.models_base_uri(config),
            "MODEL_PROMOTIONS": model_artifacts.PROMOTIONS_FILE,
            "TARGET": dockerfile_target,
            "IMAGE_TAG": tag,
            "IMAGE_VERSION": version,
            "ARCH": target.arch,
            "ACCELERATOR": target.accelerator.name,
            "MODEL_DEVICE": target.accelerator.device,
            "REPOSITORY_URI": repository_uri,
            "CACHE_REPOSITORY_URI": cache_repository_uri,
            "BUILDKIT_IMAGE": versions.BUILDKIT_IMAGE,
        }
        return PipelineStep(
            stage=stage,
            action_name=name,
            construct_id=pascal_id(name),
            run_order=BUILD_RUN_ORDER,
            buildspec=BUILD_SPEC,
            env=env,
            arch=target.arch,
            description=f"Build and push {tag} (ci_build/Dockerfile target {dockerfile_target})",
            log_prefix=f"build/{name.lower()}",
            dockerfile_target=dockerfile_target,
            target=target,
        )

    def manifest(stage: str, list_tag: str, sources: Sequence[str], name: str, *, skip_missing: bool) -> PipelineStep:
        env = {
            "REPOSITORY_URI": repository_uri,
            "LIST_TAG": list_tag,
            "SOURCE_TAGS": " ".join(sources),
            "IF_MISSING": "skip" if skip_missing else "fail",
        }
        return PipelineStep(
            stage=stage,
            action_name=name,
            construct_id=pascal_id(name),
            run_order=MANIFEST_RUN_ORDER,
            buildspec=MANIFEST_SPEC,
            env=env,
            arch="amd64",
            description=f"Create the {list_tag} manifest list",
            log_prefix=f"manifest/{name.lower()}",
        )

    def of(accelerator: Accelerator) -> list[ImageTarget]:
        return [t for t in targets if t.accelerator.name == accelerator.name]

    publishers = images.publisher_targets()
    snapshot: tuple[PipelineStep, ...] = ()
    if config.node_image.build_snapshot:
        if snapshot_host is None:
            raise ValueError("nodeImage.buildSnapshot: the snapshot step needs the host its instance runs in")
        snapshot = (
            snapshot_step(
                config,
                repository_uri=repository_uri,
                host=snapshot_host,
                props=(props or ImagePipelineProps()).snapshot,
            ),
        )
    return (
        *(
            build(RUNTIME_STAGE, t, images.RUNTIME_TARGET, t.runtime_arch_tag(version), runtime_action_name(t))
            for t in targets
        ),
        *(
            build(
                RUNTIME_STAGE,
                t,
                images.PUBLISHER_TARGET,
                images.publisher_arch_tag(version, t.arch),
                publisher_action_name(t.arch),
            )
            for t in publishers
        ),
        *(
            manifest(
                RUNTIME_STAGE,
                images.runtime_tag(a.name, version),
                [t.runtime_arch_tag(version) for t in of(a)],
                runtime_manifest_action_name(a),
                skip_missing=False,
            )
            for a in accelerators
        ),
        manifest(
            RUNTIME_STAGE,
            images.publisher_tag(version),
            [images.publisher_arch_tag(version, t.arch) for t in publishers],
            PUBLISHER_MANIFEST_ACTION,
            skip_missing=False,
        ),
        *(build(SERVING_STAGE, t, images.SERVE_TARGET, t.arch_tag(version), serve_action_name(t)) for t in targets),
        *(
            manifest(
                SERVING_STAGE,
                images.image_tag(a.name, version),
                [t.arch_tag(version) for t in of(a)],
                serving_manifest_action_name(a),
                skip_missing=True,
            )
            for a in accelerators
        ),
        *snapshot,
    )


def runtime_action_name(target: ImageTarget) -> str:
    return f"Runtime-{target.accelerator.name}-{target.arch}"


def publisher_action_name(arch: str) -> str:
    return f"Publisher-{arch}"


def serve_action_name(target: ImageTarget) -> str:
    return f"Serve-{target.accelerator.name}-{target.arch}"


def runtime_manifest_action_name(accelerator: Accelerator) -> str:
    return f"RuntimeManifest-{accelerator.name}"


PUBLISHER_MANIFEST_ACTION: Final = "PublisherManifest"


def serving_manifest_action_name(accelerator: Accelerator) -> str:
    return f"ServingManifest-{accelerator.name}"


class ImagePipelineStack(cdk.Stack):
    """CodePipeline (V2) that builds, pushes and joins the runtime, publisher and serving images."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: AppConfig,
        repository: ecr.IRepository,
        props: ImagePipelineProps | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(scope, construct_id, **kwargs)
        # By its config-derived name (plan/naming.py), as the charts do: no CloudFormation export
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
            repository_name=naming.BUILD_CACHE_REPOSITORY_NAME,
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

        self.snapshot_builder = (
            SnapshotBuilder(self, "SnapshotBuilder", config=config) if config.node_image.build_snapshot else None
        )
        self.steps = pipeline_steps(
            config,
            repository_uri=repository.repository_uri,
            cache_repository_uri=self.cache_repository.repository_uri,
            snapshot_host=self.snapshot_builder.host if self.snapshot_builder else None,
            props=props,
        )
        self.projects = {
            step.action_name: (
                SnapshotProject(
                    self,
                    step.construct_id,
                    config=config,
                    step=step,
                    builder=self.snapshot_builder,
                    repository=repository,
                    storage=self.storage,
                    props=props.snapshot,
                ).project
                if step.stage == SNAPSHOT_STAGE and self.snapshot_builder
                else StepProject(
                    self,
                    step.construct_id,
                    config=config,
                    step=step,
                    repository=repository,
                    cache_repository=self.cache_repository,
                    model_bucket=model_bucket,
                    storage=self.storage,
                    props=props,
                ).project
            )
            for step in self.steps
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
                *(
                    codepipeline.StageProps(
                        stage_name=stage,
                        actions=[
                            actions.CodeBuildAction(
                                action_name=step.action_name,
                                project=self.projects[step.action_name],
                                input=source_output,
                                run_order=step.run_order,
                            )
                            for step in self.steps
                            if step.stage == stage
                        ],
                    )
                    for stage in PIPELINE_STAGES
                    if any(step.stage == stage for step in self.steps)
                ),
            ],
        )
        self.source.trigger(self, "SourceTrigger", self.pipeline)
        self.storage.acknowledge_artifact_access(self.pipeline)


class StepProject(Construct):
    """The CodeBuild project of one pipeline step, with exactly the permissions the step needs."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: AppConfig,
        step: PipelineStep,
        repository: ecr.IRepository,
        cache_repository: ecr.IRepository,
        model_bucket: s3.IBucket,
        storage: CiStorage,
        props: ImagePipelineProps,
    ) -> None:
        super().__init__(scope, construct_id)
        self.project = codebuild.PipelineProject(
            self,
            "Project",
            description=step.description,
            build_spec=codebuild.BuildSpec.from_source_filename(step.buildspec),
            environment=codebuild.BuildEnvironment(
                build_image=BUILD_IMAGES[step.arch],
                compute_type=props.build_compute if step.is_build else codebuild.ComputeType.SMALL,
                # The Docker daemon of `docker buildx build` / `docker buildx imagetools`.
                privileged=True,
            ),
            environment_variables=plain_environment(step.env),
            encryption_key=storage.key,
            timeout=cdk.Duration.minutes(
                props.build_timeout_minutes if step.is_build else props.manifest_timeout_minutes
            ),
            logging=logging_options(storage, step.log_prefix),
        )
        grant_ecr_auth(self.project)
        if step.is_build:
            grant_repositories(self.project, [repository, cache_repository])
        else:
            grant_repositories(self.project, [repository])
        if step.dlc_repository:
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
                                resource_name=step.dlc_repository,
                            ),
                            cdk.Stack.of(self),
                        )
                    ],
                )
            )
        if step.reads_model and step.target is not None:
            grant_model_prefix(self.project, model_bucket, model_key_prefix(config, step.target.accelerator))
        nag.acknowledge(
            self.project,
            "AwsSolutions-CB3",
            "Privileged mode runs the Docker daemon that `docker buildx` needs; the project runs only "
            f"{step.buildspec} (and the ci_build/ script it calls) from the pipeline's own source.",
        )
        acknowledge_codebuild_defaults(self.project)
        storage.acknowledge_artifact_access(self.project)


def model_key_prefix(config: AppConfig, accelerator: Accelerator) -> str:
    """``models/*/<model>/<revision>/<device>/``: one accelerator's artifact of the model as any cluster
    compiled it. Which cluster's the build reads is the promotion's choice, made in the pipeline's
    source after this role exists; integrity comes from the promoted sha256, not from this scope."""
    return model_artifacts.any_cluster_artifact_key_pattern(config.model_id, config.model_revision, accelerator.device)


def grant_repositories(project: codebuild.IProject, repositories: Sequence[ecr.IRepository]) -> None:
    """Pull, push and look tags up in exactly these repositories."""
    project.add_to_role_policy(
        iam.PolicyStatement(
            actions=[*ECR_PULL_ACTIONS, *ECR_DESCRIBE_ACTIONS, *ECR_PUSH_ACTIONS],
            resources=[repository.repository_arn for repository in repositories],
        )
    )


def grant_model_prefix(project: codebuild.IProject, bucket: s3.IBucket, prefix: str) -> None:
    """Read one compiled artifact: list its prefix (`aws s3 sync`, the manifest lookup) and get its
    objects. Read only: no build writes the bucket."""
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
        "Read-only access to one device's compiled artifact of the model as each cluster published it: the "
        "promotion in the pipeline's source picks the cluster at build time, and its manifest lists the files, "
        "whose names the compile job chooses.",
    )
