"""ImagePipelineStack: builds every image the app runs, per architecture, on x86 and Graviton
CodeBuild hosts in parallel, and joins each image's architectures into the multi-arch manifest
list the charts deploy. Two image stages, so that a first release converges:

    Source ──> RuntimeImages: Runtime-<accelerator>-<arch>, Publisher-<arch>   (run order 1, parallel)
                              RuntimeManifest-<accelerator>, PublisherManifest (run order 2)
           ──> ServingImages: Serve-<accelerator>-<arch>                       (run order 1, parallel)
                              ServingManifest-<accelerator>                    (run order 2)
           ──> DataVolumeSnapshot: DataVolumeSnapshot   (only with nodeImage.buildSnapshot)

Why two stages and not one build action that makes both images: a manifest list needs every
architecture of its image, which different hosts build, so it can only be joined by a later run
order; and a run order starts only when every action before it in the stage has succeeded. With
the model-free images (what the compile jobs run: ``<version>-<accelerator>-runtime``) and the
publisher in a stage of their own, their manifest lists are published before anything that
depends on a compiled model starts, whatever happens to the serving builds. The serving builds
never fail for lack of a model either: a build whose compiled model is not in S3 yet says so and
succeeds without pushing, and its manifest step skips likewise (ci_build/build-image.sh,
ci_build/publish-manifests.sh). Tags are immutable and a published one is skipped, so releasing
the pipeline again after the compile builds exactly the serving images that are missing.

:func:`pipeline_steps` describes every action as plain data (stage, run order, buildspec,
environment); the stack turns it into CodeBuild projects and the tests run the same buildspecs
with that environment against stub ``aws``/``docker``. Permissions are per project: push to the
one image repository (and the build cache for builds), pull the one Deep Learning Container
repository its accelerator needs (server builds only), read the one model-bucket prefix of its
accelerator (serving builds only).

With ``nodeImage.buildSnapshot`` a last stage builds a Bottlerocket data-volume EBS snapshot that
holds every serving image (ci_build/build-data-volume-snapshot.sh, after
aws-samples/bottlerocket-images-cache): a throwaway Bottlerocket instance in a subnet of its own
(no internet route: VPC endpoints for SSM, ECR, EC2 and S3 only) pulls the images into its data
volume, is stopped, the volume is snapshotted and the instance terminated. The snapshot id goes
to an SSM parameter (:data:`DATA_VOLUME_SNAPSHOT_PARAMETER`) for ``nodeImage.dataVolumeSnapshotId``.
The project's role may launch only that kind of instance (tag, IMDSv2, encrypted volumes, that
subnet, security group, instance type and instance profile) and stop, terminate and snapshot only
what carries the tag.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import aws_cdk as cdk
from aws_cdk import aws_codebuild as codebuild
from aws_cdk import aws_codepipeline as codepipeline
from aws_cdk import aws_codepipeline_actions as actions
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecr as ecr
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from constructs import Construct

from plan import images, model_artifacts, naming, versions
from plan.accelerators import ACCELERATORS, Accelerator
from plan.bottlerocket import BOTTLEROCKET_ECR_ACCOUNTS
from plan.config import AppConfig
from plan.images import ImageTarget
from stacks import nag
from stacks.ci_storage import CiStorage, CiStorageProps
from stacks.pipeline_source import PipelineSource

BUILD_SPEC: Final = "ci_build/buildspec-build.yml"
MANIFEST_SPEC: Final = "ci_build/buildspec-manifest.yml"
RUNTIME_STAGE: Final = "RuntimeImages"
SERVING_STAGE: Final = "ServingImages"
IMAGE_STAGES: Final = (RUNTIME_STAGE, SERVING_STAGE)
SNAPSHOT_SPEC: Final = "ci_build/buildspec-snapshot.yml"
SNAPSHOT_STAGE: Final = "DataVolumeSnapshot"
SNAPSHOT_ACTION: Final = "DataVolumeSnapshot"
PIPELINE_STAGES: Final = (*IMAGE_STAGES, SNAPSHOT_STAGE)  # the snapshot stage only when configured
# The build infrastructure's one snapshot parameter (plan.naming.BUILD_PREFIX): the latest snapshot id.
DATA_VOLUME_SNAPSHOT_PARAMETER: Final = naming.DATA_VOLUME_SNAPSHOT_PARAMETER
# What the snapshot project may create, stop, terminate and snapshot: resources with this tag.
SNAPSHOT_TAG_KEY: Final = "edge-diffusion.aws/purpose"
SNAPSHOT_TAG_VALUE: Final = "data-volume-snapshot"
# The public parameter of the latest Bottlerocket aws-k8s AMI for the cluster's Kubernetes version.
BOTTLEROCKET_AMI_PARAMETER: Final = (
    f"/aws/service/bottlerocket/aws-k8s-{versions.KUBERNETES_VERSION}/x86_64/latest/image_id"
)
BOTTLEROCKET_HOST_CONTAINERS: Final = ("bottlerocket-admin", "bottlerocket-control")
# Interface endpoints the builder's subnet needs: the SSM agent (ssm, ssmmessages, ec2messages),
# image pulls (ecr.api, ecr.dkr; layers from S3 through the gateway endpoint) and Bottlerocket's
# boot-time EC2 lookups (ec2).
SNAPSHOT_ENDPOINTS: Final = ("ssm", "ssmmessages", "ec2messages", "ecr.api", "ecr.dkr", "ec2")
BUILD_RUN_ORDER: Final = 1
MANIFEST_RUN_ORDER: Final = 2
# ECR actions of a `docker push` / `docker pull` and the tag lookups of the build scripts.
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
    # The data-volume snapshot: every serving image, compressed and unpacked (DLC bases are
    # 10-20 GB each), on one gp3 volume; nodes restoring it need a data volume at least this big.
    snapshot_volume_gib: int = 200
    snapshot_instance_type: str = "m6i.large"  # x86_64 Bottlerocket; it pulls arm64 images too
    snapshot_timeout_minutes: int = 240
    snapshot_poll_seconds: int = 15
    snapshot_ssm_online_timeout_s: int = 900
    snapshot_command_timeout_s: int = 3600  # one image pull
    snapshot_completion_timeout_s: int = 7200


@dataclass(frozen=True)
class PipelineStep:
    """One CodeBuild action of an image stage, as plain data.

    ``dockerfile_target`` is the Dockerfile target a build step builds (``None``: a manifest step);
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


@dataclass(frozen=True)
class SnapshotHost:
    """Where the snapshot builder instance runs, as the stack creates it (or tests name it)."""

    subnet_id: str
    security_group_id: str
    instance_profile: str  # instance profile name


def snapshot_images(config: AppConfig) -> tuple[tuple[str, str], ...]:
    """(tag, platform) of every serving image the snapshot holds: each accelerator's manifest list,
    for the architecture of that accelerator's nodes."""
    version = config.serving.image_version
    return tuple((images.image_tag(name, version), f"linux/{ACCELERATORS[name].arch}") for name in config.accelerators)


def snapshot_step(
    config: AppConfig, *, repository_uri: str, host: SnapshotHost, props: ImagePipelineProps
) -> PipelineStep:
    """The action of the snapshot stage: plain data, like the image steps."""
    env = {
        "REPOSITORY_URI": repository_uri,
        "IMAGE_VERSION": config.serving.image_version,
        "SERVING_IMAGES": " ".join(f"{tag}={platform}" for tag, platform in snapshot_images(config)),
        "AMI_PARAMETER": BOTTLEROCKET_AMI_PARAMETER,
        "INSTANCE_TYPE": props.snapshot_instance_type,
        "SUBNET_ID": host.subnet_id,
        "SECURITY_GROUP_ID": host.security_group_id,
        "INSTANCE_PROFILE": host.instance_profile,
        "DATA_VOLUME_GIB": str(props.snapshot_volume_gib),
        "SNAPSHOT_PARAMETER": DATA_VOLUME_SNAPSHOT_PARAMETER,
        "PURPOSE_TAG_KEY": SNAPSHOT_TAG_KEY,
        "PURPOSE_TAG_VALUE": SNAPSHOT_TAG_VALUE,
        "POLL_SECONDS": str(props.snapshot_poll_seconds),
        "SSM_ONLINE_TIMEOUT_S": str(props.snapshot_ssm_online_timeout_s),
        "COMMAND_TIMEOUT_S": str(props.snapshot_command_timeout_s),
        "SNAPSHOT_TIMEOUT_S": str(props.snapshot_completion_timeout_s),
    }
    return PipelineStep(
        stage=SNAPSHOT_STAGE,
        action_name=SNAPSHOT_ACTION,
        construct_id=_construct_id(SNAPSHOT_ACTION),
        run_order=BUILD_RUN_ORDER,
        buildspec=SNAPSHOT_SPEC,
        env=env,
        arch="amd64",
        description="Build the Bottlerocket data-volume snapshot holding the serving images",
        log_prefix="snapshot/data-volume",
    )


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
            **{arg.upper(): value for arg, value in images.build_arg_values(config, target).items()},
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
            construct_id=_construct_id(name),
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
            construct_id=_construct_id(name),
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
                config, repository_uri=repository_uri, host=snapshot_host, props=props or ImagePipelineProps()
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
                    props=props,
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
            environment_variables=_plain(step.env),
            encryption_key=storage.key,
            timeout=cdk.Duration.minutes(
                props.build_timeout_minutes if step.is_build else props.manifest_timeout_minutes
            ),
            logging=_logging(storage, step.log_prefix),
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


class SnapshotBuilder(Construct):
    """Where the snapshot's throwaway Bottlerocket instance runs: one isolated subnet (no route to
    the internet), VPC endpoints for what the instance calls, a security group that allows HTTPS to
    them only, and an instance role that can run the SSM agent and pull Bottlerocket's own host
    containers (the serving images are pulled with the project's pull-only ECR token)."""

    VPC_CIDR: Final = "10.255.0.0/24"

    def __init__(self, scope: Construct, construct_id: str, *, config: AppConfig) -> None:
        super().__init__(scope, construct_id)
        stack = cdk.Stack.of(self)
        self.vpc = ec2.Vpc(
            self,
            "Vpc",
            ip_addresses=ec2.IpAddresses.cidr(self.VPC_CIDR),
            availability_zones=[config.availability_zones[0]],
            nat_gateways=0,
            subnet_configuration=[
                ec2.SubnetConfiguration(name="builder", subnet_type=ec2.SubnetType.PRIVATE_ISOLATED, cidr_mask=26)
            ],
            restrict_default_security_group=False,  # CDK's custom resource; nothing uses the default group
        )
        log_group = logs.LogGroup(
            self,
            "FlowLogGroup",
            retention=logs.RetentionDays.ONE_YEAR,
            removal_policy=cdk.RemovalPolicy.DESTROY,
        )
        flow_role = iam.Role(self, "FlowLogRole", assumed_by=iam.ServicePrincipal("vpc-flow-logs.amazonaws.com"))
        self.vpc.add_flow_log(
            "FlowLog",
            destination=ec2.FlowLogDestination.to_cloud_watch_logs(log_group, flow_role),
            traffic_type=ec2.FlowLogTrafficType.ALL,
        )
        subnets = ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_ISOLATED)
        self.security_group = ec2.SecurityGroup(
            self,
            "InstanceSecurityGroup",
            vpc=self.vpc,
            description="Data-volume snapshot builder: no inbound; HTTPS to the VPC endpoints and S3 only",
            allow_all_outbound=False,
        )
        endpoint_group = ec2.SecurityGroup(
            self,
            "EndpointSecurityGroup",
            vpc=self.vpc,
            description="VPC endpoints of the snapshot builder: HTTPS from its instance only",
            allow_all_outbound=False,
        )
        endpoint_group.add_ingress_rule(self.security_group, ec2.Port.tcp(443), "HTTPS from the builder instance")
        for service in SNAPSHOT_ENDPOINTS:
            self.vpc.add_interface_endpoint(
                _construct_id(service.replace(".", "-")) + "Endpoint",
                service=ec2.InterfaceVpcEndpointAwsService(service),
                subnets=subnets,
                security_groups=[endpoint_group],
                open=False,
                private_dns_enabled=True,
            )
        self.vpc.add_gateway_endpoint("S3Endpoint", service=ec2.GatewayVpcEndpointAwsService.S3, subnets=[subnets])
        # HTTPS out, to whatever the subnet routes to: the endpoints above and, through the gateway
        # endpoint's route, S3 (image layers). The subnet has no other route (no IGW, no NAT); S3's
        # managed prefix list id differs per Region and needs an API lookup, which synth never makes.
        self.security_group.add_egress_rule(
            ec2.Peer.any_ipv4(), ec2.Port.tcp(443), "HTTPS to the VPC endpoints and S3 (the only routes)"
        )
        self.role = iam.Role(
            self,
            "InstanceRole",
            assumed_by=iam.ServicePrincipal("ec2.amazonaws.com"),
            description="The data-volume snapshot builder instance: SSM agent and Bottlerocket host containers",
            managed_policies=[iam.ManagedPolicy.from_aws_managed_policy_name("AmazonSSMManagedInstanceCore")],
        )
        bottlerocket = BOTTLEROCKET_ECR_ACCOUNTS[config.region]
        self.role.add_to_policy(
            iam.PolicyStatement(sid="EcrLogin", actions=["ecr:GetAuthorizationToken"], resources=["*"])
        )
        self.role.add_to_policy(
            iam.PolicyStatement(
                sid="PullBottlerocketHostContainers",
                actions=list(ECR_PULL_ACTIONS),
                resources=[
                    f"arn:{stack.partition}:ecr:{config.region}:{bottlerocket}:repository/{name}"
                    for name in BOTTLEROCKET_HOST_CONTAINERS
                ],
            )
        )
        # Bottlerocket's Kubernetes settings generator (pluto, bottlerocket-core-kit sources/api/pluto)
        # asks EC2 for the instance's private DNS name at boot (hostname-override-source
        # private-dns-name), retrying for five minutes and then exiting with an error; max-pods
        # comes from its own table, the cluster DNS IP from IMDS when no cluster is configured.
        self.role.add_to_policy(
            iam.PolicyStatement(sid="DescribeOwnInstance", actions=["ec2:DescribeInstances"], resources=["*"])
        )
        self.profile = iam.InstanceProfile(self, "InstanceProfile", role=self.role)
        self.host = SnapshotHost(
            subnet_id=self.vpc.isolated_subnets[0].subnet_id,
            security_group_id=self.security_group.security_group_id,
            instance_profile=self.profile.instance_profile_name,
        )
        nag.acknowledge(
            self.role,
            nag.aws_managed_policy_finding("AmazonSSMManagedInstanceCore"),
            "The SSM agent's documented policy: the pipeline drives the instance through SSM Run Command only.",
        )
        nag.acknowledge(
            self.role,
            nag.wildcard_resource_finding("*"),
            "ecr:GetAuthorizationToken and ec2:DescribeInstances have no resource-level permissions.",
        )


class SnapshotProject(Construct):
    """The CodeBuild project of the snapshot stage, allowed to launch, stop, snapshot and terminate
    exactly one kind of instance."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: AppConfig,
        step: PipelineStep,
        builder: SnapshotBuilder,
        repository: ecr.IRepository,
        storage: CiStorage,
        props: ImagePipelineProps,
    ) -> None:
        super().__init__(scope, construct_id)
        stack = cdk.Stack.of(self)
        self.project = codebuild.PipelineProject(
            self,
            "Project",
            description=step.description,
            build_spec=codebuild.BuildSpec.from_source_filename(step.buildspec),
            environment=codebuild.BuildEnvironment(
                build_image=BUILD_IMAGES[step.arch], compute_type=codebuild.ComputeType.SMALL
            ),
            environment_variables=_plain(step.env),
            encryption_key=storage.key,
            timeout=cdk.Duration.minutes(props.snapshot_timeout_minutes),
            logging=_logging(storage, step.log_prefix),
        )
        region, account, partition = config.region, config.account, stack.partition

        def ec2_arn(resource: str) -> str:
            return f"arn:{partition}:ec2:{region}:{account}:{resource}"

        tagged_request = {f"aws:RequestTag/{SNAPSHOT_TAG_KEY}": SNAPSHOT_TAG_VALUE}
        tagged_resource = {f"aws:ResourceTag/{SNAPSHOT_TAG_KEY}": SNAPSHOT_TAG_VALUE}
        statements = [
            iam.PolicyStatement(
                sid="ReadBottlerocketAmi",
                actions=["ssm:GetParameter"],
                resources=[f"arn:{partition}:ssm:{region}::parameter{BOTTLEROCKET_AMI_PARAMETER}"],
            ),
            iam.PolicyStatement(
                sid="LaunchTaggedInstance",
                actions=["ec2:RunInstances"],
                resources=[ec2_arn("instance/*")],
                conditions={
                    "StringEquals": {
                        **tagged_request,
                        "ec2:MetadataHttpTokens": "required",
                        "ec2:InstanceType": props.snapshot_instance_type,
                        "ec2:InstanceProfile": builder.profile.instance_profile_arn,
                    }
                },
            ),
            iam.PolicyStatement(
                sid="LaunchEncryptedVolumes",
                actions=["ec2:RunInstances"],
                resources=[ec2_arn("volume/*")],
                conditions={"StringEquals": tagged_request, "Bool": {"ec2:Encrypted": "true"}},
            ),
            iam.PolicyStatement(
                sid="LaunchTaggedInterface",
                actions=["ec2:RunInstances"],
                resources=[ec2_arn("network-interface/*")],
                conditions={"StringEquals": tagged_request},
            ),
            iam.PolicyStatement(
                sid="LaunchInBuilderNetwork",
                actions=["ec2:RunInstances"],
                resources=[
                    ec2_arn(f"subnet/{builder.host.subnet_id}"),
                    ec2_arn(f"security-group/{builder.host.security_group_id}"),
                ],
            ),
            iam.PolicyStatement(
                sid="LaunchFromPublicAmi",
                actions=["ec2:RunInstances"],
                resources=[f"arn:{partition}:ec2:{region}::image/*"],
            ),
            iam.PolicyStatement(
                sid="TagOnCreate",
                actions=["ec2:CreateTags"],
                resources=[ec2_arn(r) for r in ("instance/*", "volume/*", "network-interface/*")]
                + [f"arn:{partition}:ec2:{region}::snapshot/*"],
                conditions={"StringEquals": {"ec2:CreateAction": ["RunInstances", "CreateSnapshot"]}},
            ),
            iam.PolicyStatement(
                sid="StopAndTerminateTagged",
                actions=["ec2:StopInstances", "ec2:TerminateInstances"],
                resources=[ec2_arn("instance/*")],
                conditions={"StringEquals": tagged_resource},
            ),
            iam.PolicyStatement(
                sid="SnapshotTaggedVolume",
                actions=["ec2:CreateSnapshot"],
                resources=[ec2_arn("volume/*")],
                conditions={"StringEquals": tagged_resource},
            ),
            iam.PolicyStatement(
                sid="CreateTaggedSnapshot",
                actions=["ec2:CreateSnapshot"],
                resources=[f"arn:{partition}:ec2:{region}::snapshot/*"],
                conditions={"StringEquals": tagged_request},
            ),
            iam.PolicyStatement(
                sid="Describe",
                actions=[
                    "ec2:DescribeInstances",
                    "ec2:DescribeSnapshots",
                    "ssm:DescribeInstanceInformation",
                    "ssm:GetCommandInvocation",
                ],
                resources=["*"],
            ),
            iam.PolicyStatement(
                sid="RunShellOnTaggedInstance",
                actions=["ssm:SendCommand"],
                resources=[ec2_arn("instance/*")],
                conditions={"StringEquals": {f"ssm:resourceTag/{SNAPSHOT_TAG_KEY}": SNAPSHOT_TAG_VALUE}},
            ),
            iam.PolicyStatement(
                sid="RunShellDocument",
                actions=["ssm:SendCommand"],
                resources=[f"arn:{partition}:ssm:{region}::document/AWS-RunShellScript"],
            ),
            iam.PolicyStatement(
                sid="PassBuilderRole",
                actions=["iam:PassRole"],
                resources=[builder.role.role_arn],
                conditions={"StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}},
            ),
            iam.PolicyStatement(
                sid="PublishSnapshotId",
                actions=["ssm:PutParameter"],
                resources=[f"arn:{partition}:ssm:{region}:{account}:parameter{DATA_VOLUME_SNAPSHOT_PARAMETER}"],
            ),
            # Pull only: the token the instance pulls the serving images with is this role's.
            iam.PolicyStatement(
                sid="PullServingImages",
                actions=[*ECR_PULL_ACTIONS, *ECR_DESCRIBE_ACTIONS],
                resources=[repository.repository_arn],
            ),
        ]
        for statement in statements:
            self.project.add_to_role_policy(statement)
        grant_ecr_auth(self.project)
        reasons = {
            ec2_arn("instance/*"): "Instance ids are chosen by EC2 at launch; every action on them requires the "
            "snapshot tag (RunInstances with IMDSv2, one instance type and profile; stop and terminate only tagged).",
            ec2_arn(
                "volume/*"
            ): "Volume ids are chosen at launch: created encrypted and tagged, snapshotted only if tagged.",
            ec2_arn(
                "network-interface/*"
            ): "The instance's interface, created with the snapshot tag in the builder subnet.",
            f"arn:{partition}:ec2:{region}::image/*": "The Bottlerocket AMI id changes with each release (read from "
            "the public SSM parameter at run time); what is launched is constrained by tag, type, profile and subnet.",
            f"arn:{partition}:ec2:{region}::snapshot/*": "Snapshot ids are chosen by EC2; created only with the tag.",
        }
        for resource, reason in reasons.items():
            nag.acknowledge(self.project, nag.wildcard_resource_finding(_nag_resource(resource)), reason)
        acknowledge_codebuild_defaults(self.project)
        storage.acknowledge_artifact_access(self.project)


def _nag_resource(arn: str) -> str:
    """An ARN as cdk-nag renders it (the partition token)."""
    return arn.replace(cdk.Aws.PARTITION, "<AWS::Partition>")


def model_key_prefix(config: AppConfig, accelerator: Accelerator) -> str:
    """The model-bucket key prefix of one accelerator's compiled artifact (plan.model_artifacts)."""
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


def grant_repositories(project: codebuild.IProject, repositories: Sequence[ecr.IRepository]) -> None:
    """Pull, push and look tags up in exactly these repositories."""
    project.add_to_role_policy(
        iam.PolicyStatement(
            actions=[*ECR_PULL_ACTIONS, *ECR_DESCRIBE_ACTIONS, *ECR_PUSH_ACTIONS],
            resources=[repository.repository_arn for repository in repositories],
        )
    )


def grant_model_prefix(project: codebuild.IProject, bucket: s3.IBucket, prefix: str) -> None:
    """Read one compiled artifact: list the prefix (`aws s3 sync`, the manifest lookup) and get its objects."""
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


def _construct_id(action_name: str) -> str:
    """``RuntimeManifest-cpu`` -> ``RuntimeManifestCpu``."""
    return "".join(part[:1].upper() + part[1:] for part in action_name.split("-"))


def _plain(env: Mapping[str, str]) -> dict[str, codebuild.BuildEnvironmentVariable]:
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
