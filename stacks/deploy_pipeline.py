"""DeployPipelineStack: a self-mutating CDK Pipeline that deploys the app from the repository.

    Source ──> Build (`make synth`) ──> UpdatePipeline (SelfMutate) ──> Assets
           ──> <first deployment>  ──> approval ──> <next deployment> ──> ...

One stage per deployment named in ``pipeline.deployments`` (``deployments/<name>.json``), in
that order, with a manual approval before every stage after the first: e.g. ``staging`` (the
Region only, no Local Zones: every infrastructure change is proven there first without
consuming scarce Local Zone capacity) then ``production`` (the Region and its Local Zones).
Each stage's stacks are built by ``add_deployment_stacks`` (passed in by ``composition``, the
function app.py uses for a workstation deploy) from the same committed file, under the same
stack names, so the pipeline deploys exactly what ``cdk deploy`` from a workstation would.

The synth step runs ``make synth`` (the same command as a developer, no ``-c``: everything it
needs is committed), with the CDK CLI pinned to package.json's version for self-mutation;
cdk.context.json is committed, so synth never needs a lookup role.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import aws_cdk as cdk
from aws_cdk import aws_codebuild as codebuild
from aws_cdk import aws_codepipeline as codepipeline
from aws_cdk import pipelines
from constructs import Construct

from plan import versions
from plan.config import AppConfig
from plan.deployments import Deployment
from stacks import nag
from stacks.ci_storage import CiStorage, CiStorageProps
from stacks.codebuild_projects import acknowledge_codebuild_defaults
from stacks.pipeline_source import PipelineSource
from stacks.pr_diff import PullRequestDiff, acknowledge_pr_diff_findings

ROOT: Final = Path(__file__).resolve().parents[1]
SYNTH_COMMANDS: Final = ("make synth",)  # exactly a developer's: no -c, the config is committed


def approval_step(deployment: Deployment) -> str:
    """The manual approval before ``deployment``'s stage (every stage after the first)."""
    return f"Promote-{deployment.name}"


def cdk_cli_version() -> str:
    """The aws-cdk CLI version package.json pins (the one `make` uses)."""
    package = json.loads((ROOT / "package.json").read_text())
    return str(package["devDependencies"]["aws-cdk"])


class DeploymentStage(cdk.Stage):
    """One deployment's stacks (``add_deployment_stacks``) as a pipeline stage."""

    def __init__(
        self,
        scope: Construct,
        *,
        deployment: Deployment,
        add_deployment_stacks: Callable[[Construct, Deployment], Any],
        **kwargs: Any,
    ) -> None:
        config = deployment.config
        env = cdk.Environment(account=config.account, region=config.region)
        super().__init__(scope, deployment.name, env=env, **kwargs)
        self.deployment = deployment
        self.stacks = add_deployment_stacks(self, deployment)


@dataclass(frozen=True)
class DeployPipelineProps:
    """Build sizes of the deploy pipeline; defaults in one place."""

    # `make synth` installs the Python and Node dependencies and synthesizes three EKS stacks.
    synth_compute: codebuild.ComputeType = codebuild.ComputeType.MEDIUM
    synth_timeout_minutes: int = 60


def _sub_configuration_role_arns(pipeline: codepipeline.Pipeline) -> None:
    """Write the CloudFormation actions' ``Configuration.RoleArn`` (the bootstrap execution role)
    as ``Fn::Sub`` instead of CDK's empty-delimiter ``Fn::Join`` (cfn-lint E3703)."""
    cfn = pipeline.node.default_child
    assert isinstance(cfn, codepipeline.CfnPipeline)
    stages = cdk.Stack.of(pipeline).resolve(cfn.stages)
    for i, stage in enumerate(stages):
        for j, action in enumerate(stage["actions"]):
            role = (action.get("configuration") or {}).get("RoleArn")
            if isinstance(role, dict) and set(role) == {"Fn::Join"} and role["Fn::Join"][0] == "":
                cfn.add_property_override(
                    f"Stages.{i}.Actions.{j}.Configuration.RoleArn", {"Fn::Sub": _sub_template(role["Fn::Join"][1])}
                )


def _sub_template(parts: list[object]) -> str:
    out = []
    for part in parts:
        if isinstance(part, str):
            out.append(part.replace("${", "${!"))
        elif isinstance(part, dict) and set(part) == {"Ref"}:
            out.append(f"${{{part['Ref']}}}")
        else:
            raise ValueError(f"cannot write {part!r} in Fn::Sub")
    return "".join(out)


class DeployPipelineStack(cdk.Stack):
    """The self-mutating CDK Pipeline of the app, and the pull-request diff builds."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: AppConfig,
        source: PipelineSource,
        deployments: Sequence[Deployment],
        add_deployment_stacks: Callable[[Construct, Deployment], Any],
        props: DeployPipelineProps | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(scope, construct_id, **kwargs)
        props = props or DeployPipelineProps()
        self.storage = CiStorage(
            self, "Storage", props=CiStorageProps(log_retention_days=config.pipeline.log_retention_days)
        )
        build_defaults = pipelines.CodeBuildOptions(
            build_environment=codebuild.BuildEnvironment(
                build_image=codebuild.LinuxBuildImage.from_code_build_image_id(versions.CODEBUILD_X86_IMAGE),
                compute_type=codebuild.ComputeType.SMALL,
            ),
            logging=codebuild.LoggingOptions(
                cloud_watch=codebuild.CloudWatchLoggingOptions(log_group=self.storage.log_group, prefix="deploy")
            ),
        )
        self.cdk_pipeline = pipelines.CodePipeline(
            self,
            "Pipeline",
            pipeline_name=f"{config.cluster_name}-deploy",
            pipeline_type=codepipeline.PipelineType.V2,
            artifact_bucket=self.storage.artifact_bucket,
            cross_account_keys=False,
            self_mutation=True,
            cli_version=cdk_cli_version(),
            publish_assets_in_parallel=False,  # one assets project, not one per asset
            code_build_defaults=build_defaults,
            synth_code_build_defaults=pipelines.CodeBuildOptions(
                build_environment=codebuild.BuildEnvironment(compute_type=props.synth_compute),
                timeout=cdk.Duration.minutes(props.synth_timeout_minutes),
            ),
            synth=pipelines.ShellStep(
                "Synth",
                input=source.cdk_pipeline_input(),
                commands=list(SYNTH_COMMANDS),
                primary_output_directory="cdk.out",
            ),
        )
        self.stages = [
            DeploymentStage(self, deployment=deployment, add_deployment_stacks=add_deployment_stacks)
            for deployment in deployments
        ]
        for previous, stage in zip([None, *self.stages], self.stages, strict=False):
            approval = pipelines.ManualApprovalStep(
                approval_step(stage.deployment),
                comment=f"{previous.deployment.name if previous else ''} is deployed; deploy this change to "
                f"{stage.deployment.name} ({stage.deployment.config.cluster_name} in {config.region})?",
            )
            self.cdk_pipeline.add_stage(stage, pre=[approval] if previous else [])
        self.deployment_stacks = {stage.deployment.name: stage.stacks for stage in self.stages}
        self.cdk_pipeline.build_pipeline()
        _sub_configuration_role_arns(self.cdk_pipeline.pipeline)
        source.trigger(self, "SourceTrigger", self.cdk_pipeline.pipeline)

        self.pr_diff: PullRequestDiff | None = None
        if config.pipeline.source == "codeconnections" and config.pipeline.pr_diffs:
            self.pr_diff = PullRequestDiff(
                self,
                "PullRequestDiff",
                pipeline=config.pipeline,
                stack_selectors=[construct_id, f"{construct_id}/**"],
                encryption_key=self.storage.key,
                log_group=self.storage.log_group,
            )
            acknowledge_pr_diff_findings(self.pr_diff)
        self._acknowledge_findings()

    def _acknowledge_findings(self) -> None:
        """What CDK Pipelines' generated roles need, finding by finding."""
        pipeline = self.cdk_pipeline
        self.storage.acknowledge_artifact_access(pipeline)
        for project in (pipeline.synth_project, pipeline.self_mutation_project):
            assert isinstance(project, codebuild.Project)
            acknowledge_codebuild_defaults(project)
        stack = cdk.Stack.of(self)
        where = f"{stack.region}:{stack.account}"
        mutation = pipeline.self_mutation_project
        nag.acknowledge(
            mutation,
            nag.wildcard_resource_finding(f"arn:*:iam::{stack.account}:role/*"),
            "Self-mutation runs `cdk deploy` of this stack: it may assume only the CDK bootstrap roles of "
            "this account (condition iam:ResourceTag/aws-cdk:bootstrap-role in deploy, file-publishing, "
            "image-publishing), whose names carry the bootstrap qualifier.",
        )
        nag.acknowledge(
            mutation,
            nag.wildcard_resource_finding("*"),
            "cloudformation:DescribeStacks and s3:ListBucket, which the CDK CLI calls to find the bootstrap "
            "stack and its asset bucket before it assumes the bootstrap roles.",
        )
        assets = self.node.find_child("Pipeline").node.find_child("Assets")
        nag.acknowledge(
            assets,
            nag.wildcard_resource_finding("*"),
            "CDK Pipelines' shared asset role starts its own asset-publishing builds (codebuild:StartBuild, "
            "BatchGetBuilds, StopBuild), whose projects are generated after the role.",
        )
        nag.acknowledge(
            assets,
            nag.wildcard_resource_finding(f"arn:<AWS::Partition>:logs:{where}:log-group:/aws/codebuild/*"),
            "Log groups of the asset-publishing projects, which CDK Pipelines creates per asset.",
        )
        nag.acknowledge(
            assets,
            nag.wildcard_resource_finding(f"arn:<AWS::Partition>:codebuild:{where}:report-group/*"),
            "Report groups of the asset-publishing projects, which CDK Pipelines creates per asset.",
        )
