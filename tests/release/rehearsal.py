"""A release rehearsal: what an AWS account holds after each step of a release, from nothing.

It reads what a release really runs: the synthesized cloud assembly (stacks, their
dependencies, their named resources and deletion policies, the deploy pipeline's stages and
the charts each cluster applies), the Makefile targets a person runs, and the image
pipeline's buildspec scripts (run by ``tests.ci_build.buildspec_runner`` with stub ``aws`` and
``docker`` that keep the registry's tags and the bucket's artifacts). Each step checks what
it needs exists and records what it creates; a step that CloudFormation, a pipeline or the
cluster would refuse raises :class:`ReleaseError` with one line saying why.

What AWS does, modelled here:
- CloudFormation creates a stack only after the stacks it depends on; a resource with a
  static physical name fails to create when that name exists, unless the change set imports
  existing resources (``--import-existing-resources``: only retained, unowned ones).
- Deleting a stack keeps its ``Retain`` resources, unowned; a stack cannot be deleted while a
  stack that depends on it exists; inside a stack, resources are deleted in reverse
  ``DependsOn`` order.
- A Kubernetes Job (compile, Volcano) needs its image when it runs; a Kubernetes Deployment retries its
  pull, so its image may arrive later in the same release.

What the cluster's controllers do with the manifests a cluster stack applies (admission on
create and update, finalizers on delete) is modelled in :mod:`tests.release.cluster_sim`.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

# Resource types whose physical name is unique in an account and Region, and the property
# that names it. Only static (string) names can collide; generated names cannot.
NAME_PROPERTIES: Final[Mapping[str, str]] = {
    "AWS::ECR::Repository": "RepositoryName",
    "AWS::S3::Bucket": "BucketName",
    "AWS::EKS::Cluster": "Name",
    "AWS::EKS::Nodegroup": "NodegroupName",
    "AWS::IAM::Role": "RoleName",
    "AWS::IAM::ManagedPolicy": "ManagedPolicyName",
    "AWS::SQS::Queue": "QueueName",
    "AWS::DynamoDB::Table": "TableName",
    "AWS::Lambda::Function": "FunctionName",
    "AWS::Logs::LogGroup": "LogGroupName",
    "AWS::CodePipeline::Pipeline": "Name",
    "AWS::CodeBuild::Project": "Name",
    "AWS::Events::Rule": "Name",
    "AWS::KMS::Alias": "AliasName",
    "AWS::SecretsManager::Secret": "Name",
}
RETAINED: Final = ("Retain", "RetainExceptOnCreate")
MANIFEST_TYPE: Final = "Custom::AWSCDK-EKS-KubernetesResource"
HELM_TYPE: Final = "Custom::AWSCDK-EKS-HelmChart"


class ReleaseError(AssertionError):
    """A step of the release would fail in a real account (the message says which and why)."""


@dataclass(frozen=True)
class Stack:
    """One CloudFormation stack of the assembly, top level or inside a pipeline stage."""

    name: str  # the CloudFormation stack name
    artifact_id: str
    template: Mapping[str, Any]
    dependencies: tuple[str, ...]  # stack names


@dataclass(frozen=True)
class NamedResource:
    kind: str
    name: str
    retained: bool
    stack: str
    logical_id: str

    @property
    def key(self) -> tuple[str, str]:
        return (self.kind, self.name)


def read_assembly(outdir: Path) -> dict[str, Stack]:
    """Every stack of a cloud assembly and of its nested (pipeline stage) assemblies, by name."""
    manifest = json.loads((outdir / "manifest.json").read_text())
    artifacts: Mapping[str, Any] = manifest["artifacts"]
    names = {
        artifact_id: a.get("properties", {}).get("stackName", artifact_id)
        for artifact_id, a in artifacts.items()
        if a["type"] == "aws:cloudformation:stack"
    }
    stacks: dict[str, Stack] = {}
    for artifact_id, artifact in artifacts.items():
        if artifact["type"] == "aws:cloudformation:stack":
            template = json.loads((outdir / artifact["properties"]["templateFile"]).read_text())
            deps = tuple(names[d] for d in artifact.get("dependencies", ()) if d in names)
            stacks[names[artifact_id]] = Stack(names[artifact_id], artifact_id, template, deps)
        elif artifact["type"] == "cdk:cloud-assembly":
            nested = read_assembly(outdir / artifact["properties"]["directoryName"])
            clash = set(nested) & set(stacks)
            if clash:
                raise ReleaseError(f"stacks {sorted(clash)} are synthesized twice (two deploy paths)")
            stacks.update(nested)
    return stacks


def named_resources(stack: Stack) -> list[NamedResource]:
    found = []
    for logical_id, resource in stack.template.get("Resources", {}).items():
        prop = NAME_PROPERTIES.get(resource["Type"])
        name = resource.get("Properties", {}).get(prop) if prop else None
        if isinstance(name, str):
            retained = resource.get("DeletionPolicy") in RETAINED
            found.append(NamedResource(resource["Type"], name, retained, stack.name, logical_id))
    return found


@dataclass
class Account:
    """What an AWS account and Region hold, step by step."""

    stacks: dict[str, Stack] = field(default_factory=dict)  # deployed, by name
    names: dict[tuple[str, str], str | None] = field(default_factory=dict)  # -> owning stack; None: retained
    image_tags: set[str] = field(default_factory=set)
    log: list[str] = field(default_factory=list)

    def deploy(self, stack: Stack, *, imports_existing: bool, by: str) -> None:
        for dependency in stack.dependencies:
            if dependency not in self.stacks:
                raise ReleaseError(f"{by}: {stack.name} needs {dependency}, which no earlier step deploys")
        updating = stack.name in self.stacks
        for resource in named_resources(stack):
            owner = self.names.get(resource.key, "")
            if owner == stack.name or owner == "":
                pass
            elif owner is None and imports_existing and resource.retained:
                self.log.append(f"{by}: {stack.name} imports the retained {resource.kind} {resource.name}")
            elif owner is None:
                raise ReleaseError(
                    f"{by}: {stack.name} cannot create {resource.kind} {resource.name}: it was retained by an "
                    "earlier delete and this deploy does not import existing resources"
                )
            else:
                raise ReleaseError(
                    f"{by}: {stack.name} cannot create {resource.kind} {resource.name}: {owner} already has it"
                )
            self.names[resource.key] = stack.name
        self.stacks[stack.name] = stack
        self.log.append(f"{by}: {'updated' if updating else 'created'} {stack.name}")

    def destroy(self, name: str) -> None:
        dependents = [s.name for s in self.stacks.values() if name in s.dependencies]
        if dependents:
            raise ReleaseError(f"cdk destroy: {name} is still needed by {dependents}")
        stack = self.stacks.pop(name)
        for resource in named_resources(stack):
            if resource.retained:
                self.names[resource.key] = None  # kept by CloudFormation, owned by no stack
            else:
                self.names.pop(resource.key, None)
        self.log.append(f"cdk destroy: deleted {name}")


# --- What a person runs: the Makefile ------------------------------------------------------


@dataclass(frozen=True)
class MakeDeploy:
    """The stacks ``make deploy-build`` and ``make deploy`` deploy, and how."""

    build_stacks: tuple[str, ...]
    deployment_stacks: tuple[str, ...]
    build_imports_existing: bool
    deployment_imports_existing: bool
    synth_recipe: tuple[str, ...]


def read_makefile(path: Path, deployment: str) -> MakeDeploy:
    """What ``make deploy-build`` and ``make deploy DEPLOYMENT=<deployment>`` run, and what the deploy
    pipeline's ``make synth`` runs, as ``make -n`` prints them: make itself expands the stack lists
    (it asks ``python -m plan.deployments``), so these are the commands a person runs."""
    build = _cdk_deploys(make_dry_run(path, "deploy-build", f"DEPLOYMENT={deployment}"))
    both = _cdk_deploys(make_dry_run(path, "deploy", f"DEPLOYMENT={deployment}"))
    deploy = [command for command in both if command not in build]  # make deploy runs deploy-build first
    if any("--all" in command for command in (*build, *deploy)):
        raise ReleaseError("make deploy runs `cdk deploy --all`: every deploy path of every deployment at once")
    return MakeDeploy(
        build_stacks=tuple(stack for command in build for stack in _stacks(command)),
        deployment_stacks=tuple(stack for command in deploy for stack in _stacks(command)),
        build_imports_existing=any("--import-existing-resources" in command for command in build),
        deployment_imports_existing=any("--import-existing-resources" in command for command in deploy),
        synth_recipe=tuple(make_dry_run(path, "synth")),  # as the pipeline runs it: no DEPLOYMENT
    )


def make_dry_run(path: Path, target: str, *variables: str) -> list[str]:
    """The commands of ``make <target>`` (and of what it depends on), one per line, run nowhere."""
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    run = subprocess.run(
        ["make", "-n", "--no-print-directory", "-C", str(path.parent), "-f", path.name, target, *variables],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if run.returncode != 0:
        raise ReleaseError(f"make -n {target} {' '.join(variables)} fails: {run.stderr.strip()}")
    return run.stdout.splitlines()


def _cdk_deploys(lines: Iterable[str]) -> list[tuple[str, ...]]:
    """The arguments after ``cdk deploy`` of each command that runs it."""
    found = []
    for line in lines:
        words = line.split()
        for i, word in enumerate(words[:-1]):
            if Path(word).name == "cdk" and words[i + 1] == "deploy":
                found.append(tuple(words[i + 2 :]))
                break
    return found


def _stacks(arguments: Sequence[str]) -> list[str]:
    """The stack selectors of ``cdk deploy <stacks> --option ...``: the words before the first option."""
    stacks = []
    for word in arguments:
        if word.startswith("-"):
            break
        stacks.append(word)
    return stacks


# --- What the deploy pipeline runs ----------------------------------------------------------


def pipeline_stages(template: Mapping[str, Any]) -> list[tuple[str, list[str]]]:
    """``(stage name, CloudFormation stacks it deploys in run order)`` of a CodePipeline template."""
    (pipeline,) = [r for r in template["Resources"].values() if r["Type"] == "AWS::CodePipeline::Pipeline"]
    stages = []
    for stage in pipeline["Properties"]["Stages"]:
        actions = sorted(stage["Actions"], key=lambda a: a.get("RunOrder", 1))
        deployed = list(
            dict.fromkeys(
                a["Configuration"]["StackName"]
                for a in actions
                if a["ActionTypeId"]["Provider"] == "CloudFormation" and "StackName" in a.get("Configuration", {})
            )
        )
        stages.append((stage["Name"], deployed))
    return stages


def synth_commands(template: Mapping[str, Any]) -> list[str]:
    """The commands of the deploy pipeline's Synth action."""
    (pipeline,) = [r for r in template["Resources"].values() if r["Type"] == "AWS::CodePipeline::Pipeline"]
    (build,) = [s for s in pipeline["Properties"]["Stages"] if s["Name"] == "Build"]
    (action,) = build["Actions"]
    project = template["Resources"][action["Configuration"]["ProjectName"]["Ref"]]
    return list(json.loads(project["Properties"]["Source"]["BuildSpec"])["phases"]["build"]["commands"])


# --- What a cluster stack applies -------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    kind: str  # Deployment, Job, DaemonSet, ...
    name: str
    images: tuple[str, ...]
    scheduling_gates: tuple[str, ...] = ()  # a gated pod is not scheduled, and Karpenter launches nothing for it

    @property
    def runs_to_completion(self) -> bool:
        """A Job fails after its retries when its image is missing; a Kubernetes Deployment keeps pulling."""
        return self.kind == "Job"


def _pod_spec(obj: Mapping[str, Any]) -> Iterable[Mapping[str, Any]]:
    spec = obj.get("spec", {})
    if obj["kind"] == "Job" and obj["apiVersion"].startswith("batch.volcano.sh"):
        for task in spec.get("tasks", []):
            yield task["template"]["spec"]
    elif "template" in spec:
        yield spec["template"]["spec"]


def workloads(template: Mapping[str, Any]) -> list[Workload]:
    found = []
    for resource in template["Resources"].values():
        manifest = resource.get("Properties", {}).get("Manifest") if resource["Type"] == MANIFEST_TYPE else None
        if not isinstance(manifest, str):
            continue
        for obj in json.loads(manifest):
            images = tuple(
                c["image"]
                for pod in _pod_spec(obj)
                for c in (*pod.get("initContainers", []), *pod.get("containers", []))
            )
            gates = tuple(g["name"] for pod in _pod_spec(obj) for g in pod.get("schedulingGates", []))
            if images:
                found.append(Workload(obj["kind"], obj["metadata"]["name"], images, gates))
    return found


def helm_releases(template: Mapping[str, Any]) -> dict[str, tuple[str, Mapping[str, Any]]]:
    """Helm release name -> (logical id, properties) of the Helm releases a cluster stack installs."""
    return {
        r["Properties"]["Release"]: (logical_id, r["Properties"])
        for logical_id, r in template["Resources"].items()
        if r["Type"] == HELM_TYPE
    }


def direct_dependencies(template: Mapping[str, Any], logical_id: str) -> set[str]:
    """The resources ``logical_id`` names itself: DependsOn, Ref and Fn::GetAtt."""
    resources = template["Resources"]
    resource = resources[logical_id]
    deps = resource.get("DependsOn", [])
    out = set([deps] if isinstance(deps, str) else deps)
    text = json.dumps(resource.get("Properties", {}))
    out |= {m for m in re.findall(r'"Ref": "([A-Za-z0-9]+)"', text) if m in resources}
    out |= {m for m in re.findall(r'"Fn::GetAtt": \["([A-Za-z0-9]+)"', text) if m in resources}
    return out


def depends_on(template: Mapping[str, Any], logical_id: str) -> set[str]:
    """Every resource ``logical_id`` depends on, transitively (DependsOn, Ref, Fn::GetAtt)."""
    seen: set[str] = set()
    todo = [logical_id]
    while todo:
        for dep in direct_dependencies(template, todo.pop()) - seen:
            seen.add(dep)
            todo.append(dep)
    return seen


def deleted_before(template: Mapping[str, Any], first: str, then: str) -> bool:
    """CloudFormation deletes ``first`` before ``then`` exactly when ``first`` depends on ``then``."""
    return then in depends_on(template, first)


def stacks_named(stacks: Mapping[str, Stack], names: Sequence[str]) -> list[Stack]:
    missing = [n for n in names if n not in stacks]
    if missing:
        raise ReleaseError(f"the assembly has no stacks {missing}")
    return [stacks[n] for n in names]
