"""The release rehearsal: the first release from an empty account, a second release, and a
``cdk destroy`` followed by a create, walked step by step over what the app really synthesizes
(``tests/release/rehearsal.py`` says what is modelled). One test per thing a release needs;
the negative tests show each check catches the design it guards against."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from plan import contract, naming
from plan.deployments import DEFAULT_DEPLOYMENT, load_plan
from stacks.image_pipeline import IMAGE_STAGES, pipeline_steps
from tests.ci_build.buildspec_runner import Stubs, load_buildspec, make_stubs, run_buildspec
from tests.conftest import FIXTURE_DEPLOYMENTS, ROOT, Synth, plan_context
from tests.release import rehearsal
from tests.release.rehearsal import Account, MakeDeploy, ReleaseError, Stack

DEPLOY_PIPELINE = "EdgeDiffusion-DeployPipeline"
WORKSTATION = "dev"
DEVICES = ("cpu", "cuda", "neuron")  # what the session's accelerators compile for


@pytest.fixture(scope="module")
def stacks(synth: Synth) -> dict[str, Stack]:
    return rehearsal.read_assembly(synth.outdir)


@pytest.fixture(scope="module")
def make() -> MakeDeploy:
    return rehearsal.read_makefile(ROOT / "Makefile", WORKSTATION)


@dataclass
class Walk:
    """One walk of the release: the account, and the stacks deployed in the order they were."""

    account: Account = field(default_factory=Account)
    order: list[str] = field(default_factory=list)


def deploy_everything(stacks: dict[str, Stack], make: MakeDeploy, account: Account) -> list[str]:
    """The documented order (README "Deploying for real"): the build infrastructure, the deploy
    pipeline (which then deploys its stages), the workstation deployment."""
    order: list[str] = []
    for stack in rehearsal.stacks_named(stacks, make.build_stacks):
        account.deploy(stack, imports_existing=make.build_imports_existing, by="make deploy-build")
        order.append(stack.name)
    account.deploy(stacks[DEPLOY_PIPELINE], imports_existing=False, by="make deploy-pipeline")
    order.append(DEPLOY_PIPELINE)
    for stage, names in rehearsal.pipeline_stages(stacks[DEPLOY_PIPELINE].template):
        for stack in rehearsal.stacks_named(stacks, names):
            account.deploy(stack, imports_existing=False, by=f"deploy pipeline stage {stage}")
            order.append(stack.name)
    for stack in rehearsal.stacks_named(stacks, make.deployment_stacks):
        account.deploy(stack, imports_existing=make.deployment_imports_existing, by="make deploy")
        order.append(stack.name)
    return order


@pytest.fixture(scope="module")
def first_release(stacks: dict[str, Stack], make: MakeDeploy) -> Walk:
    walk = Walk()
    walk.order = deploy_everything(stacks, make, walk.account)
    return walk


def test_every_stack_is_deployed_once_by_exactly_one_path(stacks: dict[str, Stack], first_release: Walk) -> None:
    assert sorted(first_release.order) == sorted(set(first_release.order))
    assert set(first_release.order) == set(stacks), "a stack no documented step deploys, or one deployed twice"


def test_no_physical_name_is_created_twice(first_release: Walk) -> None:
    """Both paths exist at once in one account: a name two stacks create would fail the second."""
    owners = first_release.account.names
    assert owners and all(owner is not None for owner in owners.values())


def test_stacks_come_after_what_they_depend_on(first_release: Walk, stacks: dict[str, Stack]) -> None:
    position = {name: i for i, name in enumerate(first_release.order)}
    for name in first_release.order:
        assert all(position[dep] < position[name] for dep in stacks[name].dependencies), name


def test_the_pipeline_synthesizes_what_a_workstation_synthesizes(stacks: dict[str, Stack], make: MakeDeploy) -> None:
    """Its synth is `make synth` with no -c but the default deployment's name (which selects
    nothing the pipeline's stages read), and each stage's config is the committed file's."""
    assert rehearsal.synth_commands(stacks[DEPLOY_PIPELINE].template) == ["make synth"]
    default = f"-c deployment={DEFAULT_DEPLOYMENT}"
    assert any(default in line for line in make.synth_recipe)
    assert not any(" -c " in f" {line.replace(default, '')} " or "--context" in line for line in make.synth_recipe), (
        make.synth_recipe
    )


def test_stage_configs_are_the_committed_files(synth: Synth) -> None:
    for name, stage in synth.stacks.pipeline.items():
        alone = load_plan({**plan_context(), "deployment": name, "pipeline": {}}, FIXTURE_DEPLOYMENTS)
        assert alone.workstation is not None
        assert alone.workstation.config.cluster_name == stage.deployment.config.cluster_name
        assert alone.workstation.config.client_cidrs == stage.deployment.config.client_cidrs
        assert alone.workstation.config.local_zones == stage.deployment.config.local_zones


def destroy_everything(account: Account, order: list[str]) -> None:
    for name in reversed(order):
        account.destroy(name)


def test_destroy_then_create_adopts_what_was_retained(stacks: dict[str, Stack], make: MakeDeploy) -> None:
    account = Account()
    order = deploy_everything(stacks, make, account)
    destroy_everything(account, order)
    retained = {key for key, owner in account.names.items() if owner is None}
    assert ("AWS::ECR::Repository", "edge-diffusion/stable-diffusion") in retained
    deploy_everything(stacks, make, account)  # raises if a retained name blocks a create
    assert any("imports the retained AWS::ECR::Repository" in line for line in account.log)


def test_second_release_updates_every_stack_in_place(stacks: dict[str, Stack], make: MakeDeploy) -> None:
    account = Account()
    deploy_everything(stacks, make, account)
    deploy_everything(stacks, make, account)
    assert sum(line.endswith(tuple(f"updated {n}" for n in stacks)) for line in account.log) == len(stacks)


# --- The cluster: controllers, charts and their images ------------------------------------


def cluster_stacks(stacks: dict[str, Stack]) -> list[Stack]:
    return [s for s in stacks.values() if s.name.endswith("-Cluster")]


def test_karpenter_crds_are_upgraded_by_their_own_chart_first(stacks: dict[str, Stack]) -> None:
    """Helm never upgrades a chart's crds/: a second release with a new Karpenter needs karpenter-crd."""
    for stack in cluster_stacks(stacks):
        helm = rehearsal.helm_releases(stack.template)
        crd_id, crds = helm["karpenter-crd"]
        karpenter_id, karpenter = helm["karpenter"]
        assert crds["Version"] == karpenter["Version"]
        assert crd_id in rehearsal.depends_on(stack.template, karpenter_id)
        assert str(karpenter.get("SkipCrds")).lower() == "true"


def test_compile_jobs_get_pods_karpenter_can_see(stacks: dict[str, Stack]) -> None:
    """A Volcano PodGroup held in the enqueue action never creates pods, so Karpenter adds no node."""
    for stack in cluster_stacks(stacks):
        _, volcano = rehearsal.helm_releases(stack.template)["volcano"]
        actions = scheduler_actions(volcano)
        assert "allocate" in actions and "enqueue" not in actions, actions


def scheduler_actions(helm_release: Mapping[str, Any]) -> list[str]:
    values = yaml.safe_load(helm_release["Values"]) if isinstance(helm_release.get("Values"), str) else {}
    config_text = _find_scheduler_config(values)
    if config_text is None:  # the chart's default scheduler config (volcano-scheduler.conf)
        return ["enqueue", "allocate", "backfill"]
    config = yaml.safe_load(config_text)
    return [a.strip() for a in str(config["actions"]).split(",")]


def _find_scheduler_config(values: Any) -> str | None:
    if isinstance(values, dict):
        for key, value in values.items():
            if "scheduler_config" in key and isinstance(value, str) and "actions" in value:
                return value
            found = _find_scheduler_config(value)
            if found:
                return found
    return None


def test_deleting_a_cluster_drains_karpenter_nodes_before_their_access_goes(stacks: dict[str, Stack]) -> None:
    for stack in cluster_stacks(stacks):
        template = stack.template
        helm = rehearsal.helm_releases(template)
        karpenter_id, _ = helm["karpenter"]
        (pools,) = [lid for lid in template["Resources"] if "Chartkarpenter" in lid]
        (access,) = [
            lid
            for lid, r in template["Resources"].items()
            if r["Type"] == "AWS::EKS::AccessEntry" and "KarpenterNodeRole" in str(r["Properties"]["PrincipalArn"])
        ]
        assert rehearsal.deleted_before(template, pools, karpenter_id), "NodePools must go before the controller"
        assert rehearsal.deleted_before(template, karpenter_id, access), "the controller must go before node access"


def workloads_of(stacks: dict[str, Stack]) -> Iterator[tuple[str, rehearsal.Workload]]:
    for stack in cluster_stacks(stacks):
        for workload in rehearsal.workloads(stack.template):
            yield stack.name, workload


# --- Images: the image pipeline's buildspecs and scripts, run as CodeBuild runs them -------------


@dataclass
class ImageRegistry:
    """The one image repository, filled by runs of the image pipeline (stub aws/docker)."""

    config: Any
    stubs: Stubs
    repository_uri: str

    def run_pipeline(self) -> list[str]:
        """One execution: stages in order, run orders in order; a failed action stops it.
        Returns the tags this execution pushed."""
        before = set(self.stubs.published())
        steps = pipeline_steps(
            self.config, repository_uri=self.repository_uri, cache_repository_uri=f"{self.repository_uri}-buildcache"
        )
        for stage in IMAGE_STAGES:
            for order in sorted({s.run_order for s in steps if s.stage == stage}):
                for step in (s for s in steps if s.stage == stage and s.run_order == order):
                    state = self.stubs.root / "runs" / f"{len(before)}-{step.action_name}"
                    run = run_buildspec(load_buildspec(step.buildspec), self.stubs.env_for(step.env), ROOT, state)
                    if run.returncode:
                        raise ReleaseError(f"image pipeline: {step.action_name} failed: {run.stderr.strip()[-300:]}")
        return sorted(set(self.stubs.published()) - before)

    def has(self, image: str) -> bool:
        repository, _, tag = image.rpartition(":")
        return repository == self.repository_uri and tag in self.stubs.published()


EXTERNAL_REGISTRIES = ("nvcr.io/", "public.ecr.aws/")  # device plugins: pinned upstream images


def missing_images(registry: ImageRegistry, stacks: dict[str, Stack], *, jobs_only: bool) -> list[str]:
    return sorted(
        f"{stack} {w.kind}/{w.name}: {image}"
        for stack, w in workloads_of(stacks)
        if w.runs_to_completion or not jobs_only
        for image in w.images
        if not image.startswith(EXTERNAL_REGISTRIES) and not registry.has(image)
    )


def ungated_pods_without_images(registry: ImageRegistry, stacks: dict[str, Stack]) -> list[str]:
    """Workloads that would get a node for pods that cannot pull their image yet."""
    return sorted(
        f"{stack} {w.kind}/{w.name}: {image} is not built and its pods are not gated ({contract.SCHEDULING_GATE_IMAGE})"
        for stack, w in workloads_of(stacks)
        for image in w.images
        if not image.startswith(EXTERNAL_REGISTRIES)
        and not registry.has(image)
        and contract.SCHEDULING_GATE_IMAGE not in w.scheduling_gates
    )


@pytest.fixture
def registry(synth: Synth, tmp_path: Path) -> ImageRegistry:
    config = synth.stacks.plan.shared
    uri = naming.image_repository_uri(config)
    return ImageRegistry(config=config, stubs=make_stubs(tmp_path, uri), repository_uri=uri)


def compile_outputs(stacks: dict[str, Stack]) -> dict[str, list[tuple[str, str]]]:
    """Cluster stack -> ``(--out, --device)`` of each compile Job it applies."""
    found: dict[str, list[tuple[str, str]]] = {}
    for stack in cluster_stacks(stacks):
        manifests = [
            r["Properties"]["Manifest"]
            for r in stack.template["Resources"].values()
            if r["Type"] == rehearsal.MANIFEST_TYPE
        ]
        for obj in (o for m in manifests if isinstance(m, str) for o in json.loads(m)):
            if obj["kind"] == "Job" and obj["apiVersion"].startswith("batch.volcano.sh"):
                args = obj["spec"]["tasks"][0]["template"]["spec"]["containers"][0]["args"]
                found.setdefault(stack.name, []).append((arg(args, "--out"), arg(args, "--device")))
    return found


def arg(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def compile_models(registry: ImageRegistry, stacks: dict[str, Stack]) -> dict[str, list[str]]:
    """What the compile Jobs do once their pods run: each cluster's publish each device's model under
    the cluster's own prefix. Returns cluster name -> the devices it compiled."""
    base = naming.models_base_uri(registry.config) + "/"
    compiled: dict[str, list[str]] = {}
    for outputs in compile_outputs(stacks).values():
        for out, device in outputs:
            cluster = out.removeprefix(base)
            assert out.startswith(base) and cluster and "/" not in cluster, out  # a prefix of its own
            registry.stubs.put_model(registry.config, device, cluster=cluster, created_at=f"compiled on {cluster}")
            compiled.setdefault(cluster, []).append(device)
    return {cluster: sorted(devices) for cluster, devices in compiled.items()}


def first_pipeline_cluster(synth: Synth) -> str:
    """The cluster of the deploy pipeline's first stage: the one this rehearsal trusts to compile for all."""
    return str(synth.stacks.plan.pipeline[0].config.cluster_name)


def test_first_release_has_every_image_before_a_pod_needs_it(
    stacks: dict[str, Stack], make: MakeDeploy, registry: ImageRegistry, synth: Synth
) -> None:
    account = Account()
    for stack in rehearsal.stacks_named(stacks, make.build_stacks):
        account.deploy(stack, imports_existing=make.build_imports_existing, by="make deploy-build")
    first = registry.run_pipeline()  # the source upload starts the image pipeline
    assert first and all("-runtime" in tag or "-publisher" in tag for tag in first), first  # no serving image yet
    # The clusters apply their charts: the compile Jobs run now and need their images now.
    assert missing_images(registry, stacks, jobs_only=True) == []
    # A Kubernetes Deployment whose image is not built yet waits behind the gate the publisher opens once it
    # is: a pod that cannot pull must not make Karpenter launch (and bill) an accelerator node.
    assert ungated_pods_without_images(registry, stacks) == []
    compiled = compile_models(registry, stacks)
    assert len(compiled) == len(cluster_stacks(stacks)) and all(
        devices == list(DEVICES) for devices in compiled.values()
    ), compiled
    assert registry.run_pipeline() == []  # compiled, not promoted: no serving image carries it
    trusted = first_pipeline_cluster(synth)
    for device in compiled[trusted]:  # `python -m runtime.artifacts promote`, committed, pushed
        registry.stubs.promote(registry.config, device, cluster=trusted)
    second = registry.run_pipeline()  # the push releases the pipeline again
    assert {t.rpartition("-")[2] for t in second} >= {"nvidia", "neuron", "cpu"}, second
    # Every Kubernetes Deployment (serving, publisher) now pulls an image that exists.
    assert missing_images(registry, stacks, jobs_only=False) == []
    assert registry.run_pipeline() == []  # a pipeline run with nothing changed rebuilds nothing


def test_models_left_under_the_old_shared_prefix_are_never_baked(
    stacks: dict[str, Stack], registry: ImageRegistry, synth: Synth
) -> None:
    """An account released before compile jobs had prefixes of their own: the bucket (retained, and
    adopted again after a destroy) still holds what any cluster could write under ``models/<model>/``.
    The next release builds its serving images only from what it promotes, from a cluster's prefix."""
    config, stubs = registry.config, registry.stubs
    legacy = {device: stubs.put_model(config, device, base=naming.models_base_uri(config)) for device in DEVICES}
    first = registry.run_pipeline()
    assert first and all("-runtime" in tag or "-publisher" in tag for tag in first), first
    compiled = compile_models(registry, stacks)
    trusted = first_pipeline_cluster(synth)
    promoted = {stubs.promote(config, device, cluster=trusted).manifest_sha256 for device in compiled[trusted]}
    assert registry.run_pipeline()
    baked = {
        b.split("--build-arg model_manifest_sha256=")[1].split()[0] for b in stubs.builds() if "--target serve" in b
    }
    assert baked == promoted and not baked & set(legacy.values())


# --- The rehearsal catches the old designs ---------------------------------------------------


def _stack(name: str, resources: dict[str, Any], deps: tuple[str, ...] = ()) -> Stack:
    return Stack(name, name, {"Resources": resources}, deps)


REPO = {"Type": "AWS::ECR::Repository", "Properties": {"RepositoryName": "edge-diffusion/stable-diffusion"}}


def test_two_paths_creating_one_name_fail() -> None:
    account = Account()
    account.deploy(_stack("EdgeDiffusion-Registry", {"Repo": REPO}), imports_existing=False, by="make deploy")
    with pytest.raises(ReleaseError, match="EdgeDiffusion-Registry already has it"):
        account.deploy(_stack("Stage-EdgeDiffusion-Registry", {"Repo": REPO}), imports_existing=False, by="pipeline")


def test_a_retained_name_blocks_a_create_that_does_not_import() -> None:
    retained = {**REPO, "DeletionPolicy": "Retain"}
    account = Account()
    account.deploy(_stack("Registry", {"Repo": retained}), imports_existing=False, by="make deploy")
    account.destroy("Registry")
    with pytest.raises(ReleaseError, match="retained by an earlier delete"):
        account.deploy(_stack("Registry", {"Repo": retained}), imports_existing=False, by="make deploy")
    account.deploy(_stack("Registry", {"Repo": retained}), imports_existing=True, by="make deploy")


def test_a_stack_before_its_dependency_fails() -> None:
    with pytest.raises(ReleaseError, match="needs EdgeDiffusion-dev-Network, which no earlier step deploys"):
        Account().deploy(
            _stack("EdgeDiffusion-dev-Cluster", {}, ("EdgeDiffusion-dev-Network",)), imports_existing=False, by="x"
        )


def test_make_deploy_all_is_refused(tmp_path: Path) -> None:
    makefile = tmp_path / "Makefile"
    makefile.write_text(
        "BUILD_STACKS := A\nDEPLOYMENT_STACKS = B\nsynth:\n\tcdk synth\n"
        "deploy-build:\n\tcdk deploy A\ndeploy:\n\tcdk deploy --all\n"
    )
    with pytest.raises(ReleaseError, match="--all"):
        rehearsal.read_makefile(makefile, "dev")


def test_the_default_volcano_scheduler_is_refused(stacks: dict[str, Stack]) -> None:
    stack = cluster_stacks(stacks)[0]
    _, volcano = rehearsal.helm_releases(stack.template)["volcano"]
    assert "enqueue" in scheduler_actions({**copy.deepcopy(volcano), "Values": "{}"})


def test_the_old_delete_order_is_caught() -> None:
    template = {
        "Resources": {
            "ClusterChartkarpenterX": {"Type": rehearsal.MANIFEST_TYPE, "DependsOn": ["Karpenter"]},
            "Karpenter": {"Type": rehearsal.HELM_TYPE, "Properties": {"Release": "karpenter"}},
            "Access": {"Type": "AWS::EKS::AccessEntry", "Properties": {}},
        }
    }
    assert rehearsal.deleted_before(template, "ClusterChartkarpenterX", "Karpenter")
    assert not rehearsal.deleted_before(template, "Karpenter", "Access")
