"""`cdk diff` on every pull request: a CodeBuild project started by the GitHub webhook of the
CodeConnections connection, that diffs the deploy pipeline's stage stacks against what is deployed,
using only the CDK bootstrap lookup role (read-only), and reports back to the pull request.

Reporting: CodeBuild sets a commit status on the pull request that links to the build log with
the diff; when ``pipeline.githubTokenSecret`` names a Secrets Manager secret (a fine-grained
GitHub token allowed to write pull-request comments), the diff is also posted as a comment.
Pull requests from forks run only after a maintainer approves them with a comment.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import aws_cdk as cdk
from aws_cdk import aws_codebuild as codebuild
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_logs as logs
from aws_cdk import aws_secretsmanager as secretsmanager
from constructs import Construct

from plan import versions
from plan.config import PipelineConfig
from stacks import nag
from stacks.codebuild_projects import acknowledge_codebuild_defaults

PR_EVENTS: Final = (
    codebuild.EventAction.PULL_REQUEST_CREATED,
    codebuild.EventAction.PULL_REQUEST_UPDATED,
    codebuild.EventAction.PULL_REQUEST_REOPENED,
)
# The default qualifier of `cdk bootstrap`; its lookup role has ReadOnlyAccess (KMS decrypt denied).
BOOTSTRAP_QUALIFIER: Final = "hnb659fds"
DIFF_FILE: Final = "cdk-diff.txt"
COMMENT_LIMIT: Final = 60000  # GitHub rejects comments over 65,536 characters


@dataclass(frozen=True)
class PullRequestDiffProps:
    """Size and time limit of the diff builds; defaults in one place."""

    compute: codebuild.ComputeType = codebuild.ComputeType.MEDIUM
    timeout_minutes: int = 45


def lookup_role_arn(account: str, region: str, qualifier: str = BOOTSTRAP_QUALIFIER) -> str:
    return f"arn:aws:iam::{account}:role/cdk-{qualifier}-lookup-role-{account}-{region}"


class PullRequestDiff(Construct):
    """CodeBuild project with a pull-request webhook that runs `cdk diff` read-only."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        pipeline: PipelineConfig,
        stack_selectors: Sequence[str],
        encryption_key: kms.IKey,
        log_group: logs.ILogGroup,
        props: PullRequestDiffProps | None = None,
    ) -> None:
        super().__init__(scope, construct_id)
        if pipeline.source != "codeconnections":
            raise ValueError("pull-request diffs need a GitHub source (pipeline.source=codeconnections)")
        props = props or PullRequestDiffProps()
        stack = cdk.Stack.of(self)
        owner, repo = pipeline.repository.split("/", 1)
        env: dict[str, codebuild.BuildEnvironmentVariable] = {
            "STACKS": codebuild.BuildEnvironmentVariable(value=" ".join(stack_selectors)),
            "GITHUB_REPOSITORY": codebuild.BuildEnvironmentVariable(value=pipeline.repository),
        }
        token: secretsmanager.ISecret | None = None
        if pipeline.github_token_secret:
            token = secretsmanager.Secret.from_secret_name_v2(self, "GitHubToken", pipeline.github_token_secret)
            env["GITHUB_TOKEN"] = codebuild.BuildEnvironmentVariable(
                type=codebuild.BuildEnvironmentVariableType.SECRETS_MANAGER, value=pipeline.github_token_secret
            )

        self.project = codebuild.Project(
            self,
            "Project",
            description=f"cdk diff of the deploy pipeline's stages for pull requests on {pipeline.repository}",
            source=codebuild.Source.git_hub(
                owner=owner,
                repo=repo,
                webhook=True,
                report_build_status=True,
                build_status_context="cdk diff",
                webhook_filters=[codebuild.FilterGroup.in_event_of(*PR_EVENTS).and_base_branch_is(pipeline.branch)],
            ),
            build_spec=codebuild.BuildSpec.from_object(_build_spec()),
            environment=codebuild.BuildEnvironment(
                build_image=codebuild.LinuxBuildImage.from_code_build_image_id(versions.CODEBUILD_X86_IMAGE),
                compute_type=props.compute,
            ),
            environment_variables=env,
            encryption_key=encryption_key,
            timeout=cdk.Duration.minutes(props.timeout_minutes),
            logging=codebuild.LoggingOptions(
                cloud_watch=codebuild.CloudWatchLoggingOptions(log_group=log_group, prefix="pr-diff")
            ),
        )
        cfn = self.project.node.default_child
        assert isinstance(cfn, codebuild.CfnProject)
        # Clone and report through the CodeConnections connection (no OAuth token in the account).
        cfn.add_property_override("Source.Auth", {"Type": "CODECONNECTIONS", "Resource": pipeline.connection_arn})
        # Untrusted code from forks runs only after a maintainer's approving comment.
        cfn.add_property_override(
            "Triggers.PullRequestBuildPolicy",
            {"RequiresCommentApproval": "FORK_PULL_REQUESTS", "ApproverRoles": ["GITHUB_MAINTAIN", "GITHUB_ADMIN"]},
        )
        self.project.add_to_role_policy(
            iam.PolicyStatement(
                sid="UseConnection",
                actions=[
                    "codeconnections:GetConnection",
                    "codeconnections:GetConnectionToken",
                    "codeconnections:UseConnection",
                    "codestar-connections:GetConnection",
                    "codestar-connections:GetConnectionToken",
                    "codestar-connections:UseConnection",
                ],
                resources=[pipeline.connection_arn],
            )
        )
        # The only AWS access of the diff: assume the bootstrap lookup role (read-only), which the
        # CDK CLI does by itself for `cdk diff`.
        self.project.add_to_role_policy(
            iam.PolicyStatement(
                sid="AssumeCdkLookupRole",
                actions=["sts:AssumeRole"],
                resources=[lookup_role_arn(stack.account, stack.region)],
            )
        )
        if token is not None:
            token.grant_read(self.project)


# Posts the diff's tail as a pull-request comment when a GitHub token is configured.
POST_COMMENT: Final = f"""\
if [ -n "${{GITHUB_TOKEN:-}}" ] && [ "${{CODEBUILD_WEBHOOK_TRIGGER#pr/}}" != "${{CODEBUILD_WEBHOOK_TRIGGER:-}}" ]; then
  pr="${{CODEBUILD_WEBHOOK_TRIGGER#pr/}}"
  python3 -c 'import json, sys; d = sys.stdin.read()[-{COMMENT_LIMIT}:]; \
print(json.dumps({{"body": "### cdk diff\\n```\\n" + d + "\\n```"}}))' <{DIFF_FILE} >comment.json
  curl -fsS -X POST -H "Authorization: Bearer ${{GITHUB_TOKEN}}" -H "Accept: application/vnd.github+json" \
    "https://api.github.com/repos/${{GITHUB_REPOSITORY}}/issues/${{pr}}/comments" --data @comment.json >/dev/null
fi
"""


def _build_spec() -> dict[str, object]:
    return {
        "version": "0.2",
        "env": {"shell": "bash"},
        "phases": {
            "install": {"commands": ["make deps"]},
            "build": {
                "commands": [
                    "set -o pipefail -o noglob",  # STACKS holds patterns such as Pipeline/**
                    # --no-change-set: the lookup role may read templates, not create change sets.
                    f"node_modules/.bin/cdk diff --no-change-set ${{STACKS}} 2>&1 | tee {DIFF_FILE}",
                ]
            },
            "post_build": {"commands": [POST_COMMENT]},
        },
    }


def acknowledge_pr_diff_findings(diff: PullRequestDiff) -> None:
    """The wildcards of the policy CDK gives every CodeBuild project."""
    acknowledge_codebuild_defaults(diff.project)
    nag.acknowledge(
        diff.project,
        "AwsSolutions-IAM5[Action::kms:GenerateDataKey*]",
        "CDK's grant on this stack's own CI key, which encrypts the build's logs and artifacts.",
    )
    nag.acknowledge(
        diff.project,
        "AwsSolutions-IAM5[Action::kms:ReEncrypt*]",
        "CDK's grant on this stack's own CI key, which encrypts the build's logs and artifacts.",
    )
