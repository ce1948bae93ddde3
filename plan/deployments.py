"""Deployments: named, committed configurations of the app, and the plan of one synth that holds them.

The build infrastructure (image repository, model bucket, image pipeline, deploy pipeline and
its source) exists once per account and Region; every deployment of the app (``dev``,
``staging``, ``production``, a developer's own) is a network, a cluster and an inventory that
*reference* it and never create it. A deployment is ``deployments/<name>.json``: its keys
override ``cdk.json``'s context, and the workstation and the pipeline both read that file, so
the pipeline deploys exactly what ``cdk deploy`` from a workstation would.

Who deploys a deployment is configuration too: the ones named in ``pipeline.deployments`` are
stages of the self-mutating deploy pipeline, in that order (a manual approval before each after
the first); any other is deployed from a workstation with ``-c deployment=<name>``. A deployment
has one deploy path at a time: its stacks are synthesized either at the top level or inside the
pipeline, never both, and under the same stack names either way, so moving one from the
workstation to the pipeline hands the same CloudFormation stacks over.

``-c key=value`` overrides apply to the workstation deployment only; a pipeline deployment
refuses them, since the pipeline's synth (``make synth``, no ``-c``) would not see them.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

from plan import model_artifacts
from plan.config import (
    CDK_JSON,
    DEVELOPMENT_KEY,
    AppConfig,
    ConfigError,
    cli_context,
    is_config_key,
    load_config,
    raise_collected,
)

T = TypeVar("T")
DEPLOYMENTS_DIR: Final = CDK_JSON.parent / "deployments"
PROMOTIONS_PATH: Final = CDK_JSON.parent / model_artifacts.PROMOTIONS_FILE
DEFAULT_DEPLOYMENT: Final = "dev"
DEPLOYMENT_KEY: Final = "deployment"  # context key: the workstation deployment
# Context key `make destroy` sets: the stacks are being deleted, so rules that protect what a deploy
# would create (HTTPS required) do not stand in the way of removing a deployment made before them.
TEARDOWN_KEY: Final = "teardown"
DEPLOYMENT_NAME_PATTERN: Final = re.compile(r"^[a-z][a-z0-9]{0,15}$")
# Keys of the build infrastructure, shared by every deployment: cdk.json (or -c) only. The
# model is one too: the image pipeline bakes it into the serving images every deployment runs.
SHARED_KEYS: Final = ("account", "region", "pipeline", "modelId", "modelRevision")
# Serving keys the images are built and the models compiled for: the image pipeline builds one
# serving.imageVersion, and every deployment's compile job writes the one artifact prefix of the
# model, so its shape (height, width, static batch), its compiled kernels (torchCompile) and the VAE it
# ships (vae) are shared too.
SHARED_SERVING_KEYS: Final = ("imageVersion", "height", "width", "maxBatch", "torchCompile", "vae")
STACK_PREFIX: Final = "EdgeDiffusion"
# The last part of each stack name (stack_name: composition names the stacks with it, preflight
# looks them up with it, the Makefile asks `python -m plan.deployments` for them).
REGISTRY, IMAGE_PIPELINE, DEPLOY_PIPELINE = "Registry", "ImagePipeline", "DeployPipeline"
NETWORK, CLUSTER, INVENTORY, OBSERVABILITY = "Network", "Cluster", "Inventory", "Observability"
BUILD_PARTS: Final = (REGISTRY, IMAGE_PIPELINE)  # what `make deploy-build` deploys, in this order
DEPLOYMENT_PARTS: Final = (NETWORK, INVENTORY, CLUSTER, OBSERVABILITY)  # a deployment's, in create order
# The committed example values: fine to synthesize, never to deploy from the pipeline.
EXAMPLE_ACCOUNT: Final = "111111111111"
DOCUMENTATION_NETWORKS: Final = tuple(
    ipaddress.ip_network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32")
)
WORKSTATION: Final = "workstation"
PIPELINE: Final = "pipeline"


@dataclass(frozen=True)
class Deployment:
    """One named deployment of the app, its config, and who deploys it."""

    name: str
    config: AppConfig
    deployed_by: str  # WORKSTATION or PIPELINE


@dataclass(frozen=True)
class Plan:
    """What one synth builds: the shared build infrastructure and the deployments on it."""

    shared: AppConfig  # account, region and pipeline of the build infrastructure
    selected_name: str  # -c deployment=<name>
    workstation: Deployment | None  # the -c deployment=<name> one, unless the pipeline deploys it
    pipeline: tuple[Deployment, ...]  # pipeline.deployments, in deploy order

    @property
    def deployments(self) -> tuple[Deployment, ...]:
        return (*((self.workstation,) if self.workstation else ()), *self.pipeline)

    def named(self, name: str) -> Deployment:
        """The deployment called ``name``, on whichever path deploys it."""
        return next(d for d in self.deployments if d.name == name)

    @property
    def selected(self) -> Deployment:
        """The deployment the command line chose (``-c deployment=<name>``, default dev)."""
        return self.workstation or self.named(self.selected_name)


def cdk_json_context() -> dict[str, object]:
    """The committed context of ``cdk.json``."""
    return dict(json.loads(CDK_JSON.read_text()).get("context", {}))


def read_deployment_file(name: str, directory: Path = DEPLOYMENTS_DIR) -> dict[str, object]:
    """The keys of ``deployments/<name>.json``; one-line errors for a missing or bad file."""
    if not DEPLOYMENT_NAME_PATTERN.match(name):
        raise ConfigError(DEPLOYMENT_KEY, name, "1-16 lowercase letters or digits, starting with a letter")
    path = directory / f"{name}.json"
    known = sorted(p.stem for p in directory.glob("*.json"))
    if not path.is_file():
        raise ConfigError(DEPLOYMENT_KEY, name, f"a file deployments/<name>.json; there are: {', '.join(known)}")
    try:
        keys = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"deployments/{name}.json", err.msg, "a JSON object of config keys") from None
    if not isinstance(keys, dict):
        raise ConfigError(f"deployments/{name}.json", type(keys).__name__, "a JSON object of config keys")
    serving = keys.get("serving")
    shared_here = {key: keys[key] for key in SHARED_KEYS if key in keys}
    shared_here |= {
        f"serving.{sub}": value
        for sub, value in ((serving or {}) if isinstance(serving, dict) else {}).items()
        if sub in SHARED_SERVING_KEYS
    }
    shared_here |= {key: keys[key] for key in keys if key in shared_serving_keys()}
    shared = (*SHARED_KEYS, *shared_serving_keys())
    raise_collected(
        ConfigError(
            f"deployments/{name}.json:{key}",
            value,
            f"nothing here: {', '.join(shared)} belong to the shared build infrastructure (cdk.json)",
        )
        for key, value in shared_here.items()
    )
    return keys


def shared_serving_keys() -> tuple[str, ...]:
    """``serving.imageVersion`` and the other shared serving keys, as dotted context keys."""
    return tuple(f"serving.{sub}" for sub in SHARED_SERVING_KEYS)


def _shared_serving(shared: AppConfig | None) -> dict[str, object]:
    """The shared serving values as dotted keys, which win over a deployment's ``serving`` object:
    a deployment that sets other serving keys still gets the images' version and shape."""
    if shared is None:
        return {}
    serving = shared.serving
    values = (
        serving.image_version,
        serving.height,
        serving.width,
        serving.max_batch,
        serving.torch_compile,
        serving.vae,
    )
    return dict(zip(shared_serving_keys(), values, strict=True))


def _overrides(context: Mapping[str, object], committed: Mapping[str, object]) -> dict[str, object]:
    """The keys the command line changed (``-c``): context values that differ from cdk.json's."""
    return {k: v for k, v in context.items() if is_config_key(k) and committed.get(k, object()) != v}


def check_deployable_from_pipeline(deployment: Deployment) -> None:
    """A pipeline deploys unattended: the committed example networks must have been replaced
    (the example account is the shared config's, checked once in ``_check_plan``)."""
    where = f"deployments/{deployment.name}.json"
    raise_collected(
        ConfigError(f"{where}:clientCidrs", cidr, "the networks your devices come from, not a documentation range")
        for cidr in deployment.config.client_cidrs
        if _documentation_range(ipaddress.ip_network(cidr))
    )


def _documentation_range(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
    return any(net.version == doc.version and net.subnet_of(doc) for doc in DOCUMENTATION_NETWORKS)  # type: ignore[arg-type]


def _without_development(context: Mapping[str, object]) -> dict[str, object]:
    """The context less ``development``: a deployment file that leaves it out gets false (HTTPS
    required), whatever cdk.json says; cdk.json's value covers the shared build configuration only."""
    return {k: v for k, v in context.items() if k != DEVELOPMENT_KEY}


def load_plan(context: Mapping[str, object], directory: Path = DEPLOYMENTS_DIR) -> Plan:
    """Build the plan from the CDK context (cdk.json plus ``-c``) and the deployment files.

    Every bad value of every deployment is reported at once (ConfigErrors), each once.
    """
    committed = cdk_json_context()
    context = dict[str, object](context)
    name = str(context.pop(DEPLOYMENT_KEY, DEFAULT_DEPLOYMENT))
    teardown = str(context.pop(TEARDOWN_KEY, False)).lower() == "true"
    deleting: dict[str, object] = {DEVELOPMENT_KEY: True} if teardown else {}
    overrides = _overrides(context, committed)
    errors: list[ConfigError] = []
    shared = _attempt(errors, load_config, context)
    pipeline_names = shared.pipeline.deployments if shared else _pipeline_names(context)
    # A pipeline deployment sees what the pipeline's synth sees: cdk.json, the shared keys, its file.
    # `development` is never inherited: a deployment serves plain HTTP only if its own file says so.
    base: dict[str, object] = {
        **_without_development(committed),
        **{k: context[k] for k in SHARED_KEYS if k in context},
    }
    pinned = _shared_serving(shared)
    pipeline: list[Deployment] = []
    for listed in pipeline_names:
        # A typo in pipeline.deployments fails here, with the list of files.
        keys = _attempt(errors, read_deployment_file, listed, directory)
        if keys is not None:
            config = _attempt(errors, load_config, {**base, **keys, **pinned, **deleting}, file=(listed, keys))
            if config:
                pipeline.append(Deployment(listed, config, PIPELINE))
    workstation: Deployment | None = None
    if name in pipeline_names:
        changed = sorted(k for k in overrides if k not in (*SHARED_KEYS, *shared_serving_keys()))
        if changed:
            errors.append(
                ConfigError(
                    "-c " + ",".join(changed),
                    name,
                    f"no -c overrides for {name}: the pipeline deploys it from deployments/{name}.json "
                    "(commit the change)",
                )
            )
    else:
        own = _attempt(errors, read_deployment_file, name, directory)
        if own is not None:
            keys = {**_without_development(context), **own, **overrides, **pinned, **deleting}
            config = _attempt(errors, load_config, keys, file=(name, own), overridden=overrides)
            workstation = Deployment(name, config, WORKSTATION) if config else None
    raise_collected(errors)
    assert shared is not None
    plan = Plan(shared=shared, selected_name=name, workstation=workstation, pipeline=tuple(pipeline))
    _check_plan(plan, teardown)
    return plan


def _attempt(
    errors: list[ConfigError],
    load: Callable[..., T],
    *args: Any,
    file: tuple[str, Mapping[str, object]] | None = None,
    overridden: Mapping[str, object] | None = None,
) -> T | None:
    """``load(*args)``, or None with its errors kept; an error in a key the deployment file sets (and
    ``-c`` does not: ``overridden``) names the file."""
    try:
        return load(*args)
    except ConfigError as err:
        for error in err.errors:
            name, keys = file or ("", {})
            if _sets(keys, error.key) and not _sets(overridden or {}, error.key):
                error = ConfigError(f"deployments/{name}.json:{error.key}", error.value, error.allowed)
            errors.append(error)
        return None


def _sets(keys: Mapping[str, object], key: str) -> bool:
    """Whether a deployment file's ``keys`` set the value an error names (``serving.minReplicas``):
    the key itself, dotted or nested, or a value above it that is not an object (a whole list, a
    string the config parses); a file's ``serving`` object that leaves ``minReplicas`` out does not."""
    parts = [part.split("[", 1)[0] for part in key.split(".")]
    for i in range(len(parts), 0, -1):  # a dotted key in the file: "serving.maxBatch": 8
        if ".".join(parts[:i]) in keys:
            node: object = keys[".".join(parts[:i])]
            for part in parts[i:]:
                if not isinstance(node, Mapping):
                    return True
                if part not in node:
                    return False
                node = node[part]
            return True
    return False


def _pipeline_names(context: Mapping[str, object]) -> tuple[str, ...]:
    """pipeline.deployments when the shared config had errors elsewhere (to report the files' errors too)."""
    raw = context.get("pipeline")
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError:
            return ()
    names = raw.get("deployments") if isinstance(raw, dict) else None
    if isinstance(names, list) and all(isinstance(n, str) for n in names):
        return tuple(names)
    return ()


def promoted_model_conflicts(shared: AppConfig, promotions: Path | None = None) -> list[ConfigError]:
    """The shared model against what serving.imageVersion's images carry: an artifact promoted for that
    version is what the image pipeline builds them from, and tags are immutable, so another model or
    revision needs a new version (its pods would refuse the image's model and restart)."""
    try:
        text = (promotions or PROMOTIONS_PATH).read_text()
        promoted = model_artifacts.promoted_models(text, shared.serving.image_version)
    except (OSError, ValueError) as exc:
        problem = exc.strerror if isinstance(exc, OSError) else str(exc)
        layout = f'{{"{model_artifacts.PROMOTED_KEY}": [...]}}, as python -m runtime.artifacts promote writes it'
        return [ConfigError(model_artifacts.PROMOTIONS_FILE, problem, layout)]
    version, wanted = shared.serving.image_version, (shared.model_id, shared.model_revision)
    others = sorted(found for found in promoted if found != wanted)
    if not others:
        return []
    same_model = shared.model_id in {model for model, _ in others}
    key, value = ("modelRevision", shared.model_revision) if same_model else ("modelId", shared.model_id)
    carried = ", ".join(f"{model}@{revision}" for model, revision in others)
    return [
        ConfigError(
            key,
            value,
            f"what serving.imageVersion {version}'s images carry ({carried}: {model_artifacts.PROMOTIONS_FILE}); "
            "another model needs a new serving.imageVersion (image tags are immutable)",
        )
    ]


def _check_plan(plan: Plan, teardown: bool = False) -> None:
    # Deleting a deployment needs no images: a model changed since is no reason to keep it.
    errors: list[ConfigError] = [] if teardown else promoted_model_conflicts(plan.shared)
    if plan.pipeline:
        if plan.shared.account == EXAMPLE_ACCOUNT:
            errors.append(
                ConfigError(
                    "account",
                    plan.shared.account,
                    "your AWS account id, not the example, when pipeline.deployments is set",
                )
            )
        for deployment in plan.pipeline:
            _attempt(errors, check_deployable_from_pipeline, deployment)
    clusters: dict[str, str] = {}
    built = plan.shared.accelerators
    for deployment in plan.deployments:
        for accelerator in deployment.config.accelerators:
            if accelerator not in built:
                errors.append(
                    ConfigError(
                        f"deployments/{deployment.name}.json:accelerators",
                        accelerator,
                        f"accelerators the image pipeline builds (cdk.json accelerators: {', '.join(built)})",
                    )
                )
        other = clusters.setdefault(deployment.config.cluster_name, deployment.name)
        if other != deployment.name:
            errors.append(
                ConfigError(
                    f"deployments/{deployment.name}.json:clusterName",
                    deployment.config.cluster_name,
                    f"a name no other deployment uses ({other} has it): physical names derive from it",
                )
            )
    raise_collected(errors)


def stack_name(part: str, deployment: Deployment | None = None) -> str:
    """The CloudFormation name of a stack, the same on either deploy path: ``EdgeDiffusion-<part>``
    of the build infrastructure, ``EdgeDiffusion-<deployment>-<part>`` of a deployment's."""
    return "-".join((STACK_PREFIX, *((deployment.name,) if deployment else ()), part))


def build_stack_names() -> tuple[str, ...]:
    """The build infrastructure's stacks ``make deploy-build`` deploys, in deploy order."""
    return tuple(stack_name(part) for part in BUILD_PARTS)


def stack_names(deployment: Deployment) -> tuple[str, ...]:
    """``EdgeDiffusion-<name>-<part>`` of each of the deployment's stacks, in create order."""
    return tuple(stack_name(part, deployment) for part in DEPLOYMENT_PARTS)


def stack_selectors(deployment: Deployment) -> tuple[str, ...]:
    """How the CDK CLI names the deployment's stacks: by name at the top level of the app, by
    path inside the deploy pipeline's stage (``EdgeDiffusion-DeployPipeline/<name>/<stack>``)."""
    names = stack_names(deployment)
    if deployment.deployed_by == PIPELINE:
        return tuple(f"{stack_name(DEPLOY_PIPELINE)}/{deployment.name}/{name}" for name in names)
    return names


def main(argv: list[str] | None = None) -> int:
    """``python -m plan.deployments --stacks|--workstation-stacks|--build-stacks [-c deployment=<name>]
    [-c key=value ...]``: stack names for the Makefile's ``cdk`` commands, from the functions
    composition names the stacks with; one line per config error (exit 2)."""
    parser = argparse.ArgumentParser(prog="python -m plan.deployments", description=main.__doc__)
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--stacks", action="store_true", help="the deployment's stack selectors (make destroy)")
    which.add_argument(
        "--workstation-stacks",
        action="store_true",
        help="the deployment's stack names (make diff, make deploy); refuses one the deploy pipeline deploys",
    )
    which.add_argument("--build-stacks", action="store_true", help="the build infrastructure's (make deploy-build)")
    parser.add_argument("-c", "--context", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    if args.build_stacks:
        print(" ".join(build_stack_names()))
        return 0
    try:
        context = cli_context([t for pair in args.context for t in ("-c", pair)])
        plan = load_plan(context)
    except ConfigError as err:
        print("\n".join(err.lines()), file=sys.stderr)
        return 2
    deployment = plan.selected
    if args.workstation_stacks and deployment.deployed_by == PIPELINE:
        print(
            f"error: the deploy pipeline deploys {deployment.name} (pipeline.deployments): commit "
            f"deployments/{deployment.name}.json and push, or take it out of pipeline.deployments",
            file=sys.stderr,
        )
        return 2
    print(" ".join(stack_selectors(deployment)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
