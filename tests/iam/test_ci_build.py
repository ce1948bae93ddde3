"""The image pipeline's builds as their CodeBuild projects' roles: every action of the synthesized
pipeline, in stage and run order, runs its buildspec (``ci_build/build-image.sh``, ``ecr.sh``,
``publish-manifests.sh``) with its project's environment from the template against the stub ``aws``
and ``docker`` of ``tests.ci_build.buildspec_runner``; each recorded call is mapped to what AWS
authorizes (:mod:`tests.iam.ci_calls`) and evaluated against that project's role policies and the
model bucket's policy with :func:`tests.iam.policy.decide` (moto's evaluator ignores conditions such
as ``s3:prefix``: see :mod:`tests.iam.policy`). Two pipeline runs: before any compile (serving builds
find no promoted model and read nothing) and after one per device, promoted (they list and read the
promoted cluster's manifest, export the role's credentials and download the model in the build); and
a run where two clusters compiled, which reads the promoted one's prefix only.

Not covered: the data-volume snapshot stage (``build-data-volume-snapshot.sh``); the session's
config does not build it, and its EC2/SSM calls are not mapped (:mod:`tests.iam.ci_calls` reports
them as not modeled).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from plan import images, naming
from plan.config import load_config
from plan.deployments import load_plan
from tests.ci_build.buildspec_runner import Stubs, load_buildspec, make_stubs, run_buildspec
from tests.conftest import FIXTURE_DEPLOYMENTS, ROOT, Synth, plan_context
from tests.iam.ci_calls import Context, aws_requests, docker_requests
from tests.iam.harness import ACCOUNT
from tests.iam.policy import Principal, Request, UnmodeledError, decide
from tests.iam.templates import (
    Resolver,
    RolePolicies,
    exports,
    properties,
    resource_policy,
    resources,
    role_policies,
)

# Generated names no build script calls: the projects' log groups and report groups, the pipeline's
# artifact bucket and key (CodeBuild itself uses them).
OPAQUE_TYPES = ("AWS::Logs::LogGroup", "AWS::CodeBuild::Project", "AWS::KMS::Key", "AWS::S3::Bucket")


@dataclass(frozen=True)
class Project:
    """One pipeline action and the CodeBuild project that runs it."""

    action: str
    logical_id: str
    buildspec: str
    env: Mapping[str, str]
    role: RolePolicies


@dataclass(frozen=True)
class Templates:
    pipeline: dict[str, Any]
    registry: dict[str, Any]


@pytest.fixture(scope="module")
def templates(synth: Synth) -> Templates:
    return Templates(synth.template_json(synth.stacks.build.images), synth.template_json(synth.stacks.registry))


def pipeline_projects(templates: Templates) -> tuple[list[Project], dict[str, Any]]:
    """Every CodeBuild action of the pipeline in stage and run order; and bucket name -> bucket policy."""
    registry = Resolver(templates.registry, account=ACCOUNT, region="us-west-2")
    resolver = Resolver(
        templates.pipeline,
        account=ACCOUNT,
        region="us-west-2",
        opaque_types=OPAQUE_TYPES,
        imports=exports(templates.registry, registry),
    )
    (pipeline,) = resources(templates.pipeline, "AWS::CodePipeline::Pipeline").values()
    projects = []
    for stage in pipeline["Properties"]["Stages"]:
        for action in sorted(stage["Actions"], key=lambda a: a.get("RunOrder", 1)):
            reference = action.get("Configuration", {}).get("ProjectName")
            if reference is None:
                continue  # the source action
            props = properties(templates.pipeline, reference["Ref"])
            variables = props["Environment"]["EnvironmentVariables"]
            assert {v.get("Type", "PLAINTEXT") for v in variables} == {"PLAINTEXT"}
            env = {v["Name"]: resolver.resolve(v["Value"]) for v in variables}
            role_id = props["ServiceRole"]["Fn::GetAtt"][0]
            role = role_policies(templates.pipeline, role_id, resolver)
            projects.append(Project(action["Name"], reference["Ref"], props["Source"]["BuildSpec"], env, role))
    policies = {
        properties(templates.registry, p["Properties"]["Bucket"]["Ref"])["BucketName"]: resource_policy(
            templates.registry, logical_id, registry
        )
        for logical_id, p in resources(templates.registry, "AWS::S3::BucketPolicy").items()
        if "BucketName" in properties(templates.registry, p["Properties"]["Bucket"]["Ref"])
    }
    return projects, policies


@dataclass(frozen=True)
class Evaluated:
    project: Project
    command: str
    request: Request
    allowed: bool
    reason: str

    def line(self) -> str:
        r, where = self.request, f"{self.project.action} ({self.project.logical_id})"
        return f"{where}: {r.action} on {r.resource} denied by {self.reason} [{self.command}]"


def run_pipeline(
    projects: list[Project], bucket_policies: Mapping[str, Any], stubs: Stubs, tmp_path: Path
) -> tuple[list[Evaluated], list[str]]:
    """Run every action once; evaluate each recorded call. Returns the evaluations and the failures."""
    evaluated: list[Evaluated] = []
    failures: list[str] = []
    for project in projects:
        stubs.reset_logs()
        run = run_buildspec(
            load_buildspec(project.buildspec), stubs.env_for(project.env), ROOT, tmp_path / "runs" / project.action
        )
        assert run.returncode == 0, f"{project.action}: {run.stderr}"
        ctx = Context(
            ACCOUNT,
            project.env.get("AWS_REGION", "us-west-2"),
            stubs.root / "s3",
            ROOT / "ci_build" / "Dockerfile",
        )
        principal = Principal(f"arn:aws:iam::{ACCOUNT}:role/{project.role.logical_id}", ACCOUNT)
        documents = list(project.role.documents.values())
        mappers: dict[str, Callable[..., list[Request]]] = {"aws": aws_requests, "docker": docker_requests}
        for tool, mapper in mappers.items():
            for line in stubs.log(tool):
                try:
                    requests = mapper(line.split()[1:], ctx)
                    for request in requests:
                        bucket = request.resource.removeprefix("arn:aws:s3:::").split("/", 1)[0]
                        policy = bucket_policies.get(bucket) if request.action.startswith("s3:") else None
                        decision = decide(request, principal, documents, policy)
                        evaluated.append(Evaluated(project, line, request, decision.allowed, decision.reason))
                except UnmodeledError as exc:
                    failures.append(f"{project.action} ({project.logical_id}): {exc} [{line}]")
    failures += [e.line() for e in evaluated if not e.allowed]
    return evaluated, failures


def two_pipeline_runs(
    templates: Templates, tmp_path: Path, change: Callable[[Project], Project] | None = None
) -> tuple[list[Evaluated], list[str]]:
    projects, bucket_policies = pipeline_projects(templates)
    if change is not None:
        projects = [change(p) for p in projects]
    (repository,) = {p.env["REPOSITORY_URI"] for p in projects}
    stubs = make_stubs(tmp_path, repository_uri=repository)
    evaluated, failures = run_pipeline(projects, bucket_policies, stubs, tmp_path / "first")
    config = load_config(plan_context())
    serving = [p for p in projects if p.env.get("TARGET") == images.SERVE_TARGET]
    assert {p.env["MODELS_BASE_URI"] for p in serving} == {naming.models_base_uri(config)}
    for device in sorted({p.env["MODEL_DEVICE"] for p in serving}):
        stubs.put_model(config, device)
        stubs.promote(config, device)
    more, also = run_pipeline(projects, bucket_policies, stubs, tmp_path / "second")
    return evaluated + more, failures + also


def test_every_call_of_two_pipeline_runs_is_allowed_by_its_projects_role(templates: Templates, tmp_path: Path) -> None:
    evaluated, failures = two_pipeline_runs(templates, tmp_path)
    assert not failures, "\n".join(failures)
    seen = {(e.request.operation, e.request.action) for e in evaluated}
    assert seen >= {
        ("ecr:GetAuthorizationToken", "ecr:GetAuthorizationToken"),
        ("ecr:DescribeImages", "ecr:DescribeImages"),
        ("s3:ListObjectsV2", "s3:ListBucket"),  # build-image.sh, then `aws s3 sync` in the build
        ("s3:GetObject", "s3:GetObject"),  # the manifest (aws s3 cp) and the model files
        ("docker push", "ecr:PutImage"),
        ("docker push (cache)", "ecr:PutImage"),
        ("docker pull (cache)", "ecr:BatchGetImage"),
        ("docker buildx imagetools create", "ecr:PutImage"),
    }
    in_build = {
        e.request.action for e in evaluated if e.command.startswith("docker buildx build") and "s3:" in e.request.action
    }
    assert in_build == {"s3:ListBucket", "s3:GetObject"}  # the model download in the serve stage, as this role
    dlc = {
        e.request.resource
        for e in evaluated
        if e.request.operation.startswith("docker pull ") and "(cache)" not in e.request.operation
    }
    assert dlc and all(":763104351884:repository/pytorch-inference" in arn for arn in dlc), dlc


def test_a_serving_build_without_its_list_grant_is_denied_naming_project_action_and_bucket(
    templates: Templates, tmp_path: Path
) -> None:
    def without_list(project: Project) -> Project:
        if project.action != "Serve-cpu-arm64":
            return project
        return Project(
            project.action,
            project.logical_id,
            project.buildspec,
            project.env,
            project.role.without_action("s3:ListBucket"),
        )

    _, failures = two_pipeline_runs(templates, tmp_path, without_list)
    assert failures
    assert all(f.startswith("Serve-cpu-arm64 (ServeCpuArm64Project") for f in failures), failures
    first = failures[0]
    assert (
        "s3:ListBucket on arn:aws:s3:::edge-diffusion-models-123456789012-us-west-2 denied by its role's policies"
        in first
    )
    assert "[aws s3api list-objects-v2 --bucket edge-diffusion-models-123456789012-us-west-2 --prefix models/" in first


def test_serving_builds_read_only_the_promoted_clusters_artifact_as_their_role(
    templates: Templates, tmp_path: Path
) -> None:
    """Dev and staging both compiled every device; staging's are promoted. Every S3 request of every
    serving build, the one inside the Docker build included, is for staging's artifact, and allowed."""
    projects, bucket_policies = pipeline_projects(templates)
    (repository,) = {p.env["REPOSITORY_URI"] for p in projects}
    stubs = make_stubs(tmp_path, repository_uri=repository)
    config = load_config(plan_context())
    staging = load_plan({**plan_context(), "deployment": "dev"}, FIXTURE_DEPLOYMENTS).named("staging").config
    serving = [p for p in projects if p.env.get("TARGET") == images.SERVE_TARGET]
    devices = sorted({p.env["MODEL_DEVICE"] for p in serving})
    for device in devices:
        stubs.put_model(config, device, created_at="compiled on dev")
        stubs.put_model(config, device, cluster=staging.cluster_name, created_at="compiled on staging")
        stubs.promote(config, device, cluster=staging.cluster_name)
    evaluated, failures = run_pipeline(projects, bucket_policies, stubs, tmp_path / "run")
    assert not failures, "\n".join(failures)
    reads = [e for e in evaluated if e.project in serving and e.request.action.startswith("s3:")]
    assert {e.request.action for e in reads} == {"s3:ListBucket", "s3:GetObject"}
    for e in reads:
        device = e.project.env["MODEL_DEVICE"]
        promoted = stubs.model_uri(config, device, cluster=staging.cluster_name).split("/", 3)[3]
        listed = e.request.action == "s3:ListBucket"
        where = e.request.context["s3:prefix"][0] if listed else e.request.resource.split("/", 1)[1]
        assert where.startswith(promoted), (e.project.action, e.command, where)
    assert {e.project.action for e in reads} == {p.action for p in serving}
