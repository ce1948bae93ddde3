"""The Bottlerocket data-volume snapshot of the serving images: the last stage of the image pipeline
when ``nodeImage.buildSnapshot`` is set (after aws-samples/bottlerocket-images-cache).

A throwaway Bottlerocket instance pulls every serving image into its data volume, is stopped, the
volume is snapshotted and the instance terminated (ci_build/build-data-volume-snapshot.sh); the
snapshot id goes to an SSM parameter (:data:`DATA_VOLUME_SNAPSHOT_PARAMETER`) for
``nodeImage.dataVolumeSnapshotId``. Why its own network and a narrow role: the instance runs in a
subnet with no internet route (VPC endpoints for SSM, ECR, EC2 and S3 only), and the project may
launch only that kind of instance (tag, IMDSv2, encrypted volumes, that subnet, security group,
instance type and instance profile) and stop, terminate and snapshot only what carries the tag.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import aws_cdk as cdk
from aws_cdk import aws_codebuild as codebuild
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecr as ecr
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs
from constructs import Construct

from plan import images, naming, versions
from plan.accelerators import ACCELERATORS
from plan.bottlerocket import BOTTLEROCKET_ECR_ACCOUNTS
from plan.config import AppConfig
from stacks import nag
from stacks.ci_storage import CiStorage
from stacks.codebuild_projects import (
    BUILD_IMAGES,
    ECR_DESCRIBE_ACTIONS,
    ECR_PULL_ACTIONS,
    PipelineStep,
    acknowledge_codebuild_defaults,
    grant_ecr_auth,
    logging_options,
    nag_resource,
    pascal_id,
    plain_environment,
)

SNAPSHOT_SPEC: Final = "ci_build/buildspec-snapshot.yml"
SNAPSHOT_STAGE: Final = "DataVolumeSnapshot"
SNAPSHOT_ACTION: Final = "DataVolumeSnapshot"
SNAPSHOT_RUN_ORDER: Final = 1  # the one action of its stage
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


@dataclass(frozen=True)
class SnapshotProps:
    """Size, instance type and time limits of the snapshot build; defaults in one place."""

    # Every serving image, compressed and unpacked (DLC bases are 10-20 GB each), on one gp3
    # volume; nodes restoring the snapshot need a data volume at least this big.
    volume_gib: int = 200
    instance_type: str = "m6i.large"  # x86_64 Bottlerocket; it pulls arm64 images too
    timeout_minutes: int = 240
    poll_seconds: int = 15
    ssm_online_timeout_s: int = 900
    command_timeout_s: int = 3600  # one image pull
    completion_timeout_s: int = 7200


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


def snapshot_step(config: AppConfig, *, repository_uri: str, host: SnapshotHost, props: SnapshotProps) -> PipelineStep:
    """The action of the snapshot stage: plain data, like the image steps."""
    env = {
        "REPOSITORY_URI": repository_uri,
        "IMAGE_VERSION": config.serving.image_version,
        "SERVING_IMAGES": " ".join(f"{tag}={platform}" for tag, platform in snapshot_images(config)),
        "AMI_PARAMETER": BOTTLEROCKET_AMI_PARAMETER,
        "INSTANCE_TYPE": props.instance_type,
        "SUBNET_ID": host.subnet_id,
        "SECURITY_GROUP_ID": host.security_group_id,
        "INSTANCE_PROFILE": host.instance_profile,
        "DATA_VOLUME_GIB": str(props.volume_gib),
        "SNAPSHOT_PARAMETER": DATA_VOLUME_SNAPSHOT_PARAMETER,
        "PURPOSE_TAG_KEY": SNAPSHOT_TAG_KEY,
        "PURPOSE_TAG_VALUE": SNAPSHOT_TAG_VALUE,
        "POLL_SECONDS": str(props.poll_seconds),
        "SSM_ONLINE_TIMEOUT_S": str(props.ssm_online_timeout_s),
        "COMMAND_TIMEOUT_S": str(props.command_timeout_s),
        "SNAPSHOT_TIMEOUT_S": str(props.completion_timeout_s),
    }
    return PipelineStep(
        stage=SNAPSHOT_STAGE,
        action_name=SNAPSHOT_ACTION,
        construct_id=pascal_id(SNAPSHOT_ACTION),
        run_order=SNAPSHOT_RUN_ORDER,
        buildspec=SNAPSHOT_SPEC,
        env=env,
        arch="amd64",
        description="Build the Bottlerocket data-volume snapshot holding the serving images",
        log_prefix="snapshot/data-volume",
    )


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
                pascal_id(service.replace(".", "-")) + "Endpoint",
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
        props: SnapshotProps,
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
            environment_variables=plain_environment(step.env),
            encryption_key=storage.key,
            timeout=cdk.Duration.minutes(props.timeout_minutes),
            logging=logging_options(storage, step.log_prefix),
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
                        "ec2:InstanceType": props.instance_type,
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
            nag.acknowledge(self.project, nag.wildcard_resource_finding(nag_resource(resource)), reason)
        acknowledge_codebuild_defaults(self.project)
        storage.acknowledge_artifact_access(self.project)
