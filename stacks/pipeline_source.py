"""Where both pipelines get the repository: a GitHub repository through a CodeConnections
connection, or a zip in an S3 bucket (for accounts without a connection, e.g. air-gapped ones).

The S3 bucket is created once (in the image pipeline stack) and shared; each pipeline starts
on an EventBridge "Object Created" rule for the zip's key, so no polling and no CloudTrail
trail are needed.
"""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_codepipeline as codepipeline
from aws_cdk import aws_codepipeline_actions as actions
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_s3 as s3
from aws_cdk import pipelines
from constructs import Construct

from plan.config import PipelineConfig

SOURCE_ACTION_NAME = "Source"


class PipelineSource:
    """The configured source, usable by a CodePipeline and by a CDK Pipeline."""

    def __init__(self, config: PipelineConfig, bucket: s3.IBucket | None) -> None:
        if (config.source == "s3") != (bucket is not None):
            raise ValueError("an S3 pipeline source needs its bucket, and only an S3 source has one")
        self.config = config
        self.bucket = bucket

    @property
    def is_s3(self) -> bool:
        return self.bucket is not None

    @property
    def description(self) -> str:
        if self.bucket is not None:
            return f"s3://<source bucket>/{self.config.source_object_key}"
        return f"github.com/{self.config.repository}@{self.config.branch}"

    def action(self, output: codepipeline.Artifact) -> codepipeline.IAction:
        """Source action of a plain CodePipeline (the image pipeline)."""
        if self.bucket is not None:
            return actions.S3SourceAction(
                action_name=SOURCE_ACTION_NAME,
                bucket=self.bucket,
                bucket_key=self.config.source_object_key,
                output=output,
                trigger=actions.S3Trigger.NONE,  # started by the EventBridge rule of `trigger`
            )
        owner, repo = self.config.repository.split("/", 1)
        return actions.CodeStarConnectionsSourceAction(
            action_name=SOURCE_ACTION_NAME,
            connection_arn=self.config.connection_arn,
            owner=owner,
            repo=repo,
            branch=self.config.branch,
            output=output,
            trigger_on_push=True,
        )

    def cdk_pipeline_input(self) -> pipelines.CodePipelineSource:
        """Source of a CDK Pipeline (the deploy pipeline)."""
        if self.bucket is not None:
            return pipelines.CodePipelineSource.s3(
                self.bucket,
                self.config.source_object_key,
                action_name=SOURCE_ACTION_NAME,
                trigger=actions.S3Trigger.NONE,
            )
        return pipelines.CodePipelineSource.connection(
            self.config.repository,
            self.config.branch,
            connection_arn=self.config.connection_arn,
            action_name=SOURCE_ACTION_NAME,
            trigger_on_push=True,
        )

    def trigger(self, scope: Construct, construct_id: str, pipeline: codepipeline.IPipeline) -> events.Rule | None:
        """For an S3 source: start ``pipeline`` when a new zip lands (CodeConnections triggers itself)."""
        if self.bucket is None:
            return None
        return events.Rule(
            scope,
            construct_id,
            description=f"Start {cdk.Stack.of(scope).stack_name} when {self.config.source_object_key} is uploaded",
            event_pattern=events.EventPattern(
                source=["aws.s3"],
                detail_type=["Object Created"],
                detail={
                    "bucket": {"name": [self.bucket.bucket_name]},
                    "object": {"key": [self.config.source_object_key]},
                },
            ),
            targets=[targets.CodePipeline(pipeline)],
        )
