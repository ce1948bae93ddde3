"""Run CodeBuild buildspecs the way CodeBuild promises to, against stub ``aws`` and ``docker``.

Buildspec 0.2 carries only the working directory and environment variables from one command to
the next, so :func:`run_buildspec` runs each command in its own shell (the buildspec's
``env.shell``) and starts the next one from exactly that: ``pwd`` and ``env -0`` captured at the
end of the previous command (no shell functions, no unexported variables, no shell options).

:func:`make_stubs` puts stub ``aws`` and ``docker`` on a PATH; they record their calls and keep a
small registry (the tags pushed) and model bucket (the manifests compile jobs publish, under each
cluster's prefix) on disk, and a promotions file that stands in for the source's
``ci_build/promoted-models.json`` (:meth:`Stubs.promote` records in it what ``python -m
runtime.artifacts promote`` would), so :func:`run_pipeline` can replay whole executions of the
image pipeline (:func:`stacks.image_pipeline.pipeline_steps`, in stage and run order).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from plan import model_artifacts, naming
from plan.config import AppConfig
from plan.model_artifacts import IMAGE_VERSION_OPTION, MANIFEST_NAME
from runtime.artifacts.manifest import ArtifactSpec, Manifest, Shapes
from runtime.artifacts.promotions import Promotion, record_promotion, write_promotions
from runtime.compile.settings import DEVICE_DTYPES
from stacks.codebuild_projects import PipelineStep
from stacks.image_pipeline import IMAGE_STAGES, pipeline_steps
from tests.conftest import ROOT

PHASES = ("install", "pre_build", "build", "post_build")
REGISTRY = "111111111111.dkr.ecr.us-west-2.amazonaws.com"
REPOSITORY_URI = f"{REGISTRY}/edge-diffusion/stable-diffusion"
CACHE_REPOSITORY_URI = f"{REPOSITORY_URI}-buildcache"


@dataclass
class BuildspecRun:
    returncode: int
    stdout: str
    stderr: str
    failed_command: str | None = None
    commands: list[str] = field(default_factory=list)


def run_buildspec(spec: Mapping[str, Any], env: Mapping[str, str], cwd: Path, state: Path) -> BuildspecRun:
    """Run a buildspec's commands, each in its own ``env.shell``, carrying over only the working
    directory and the exported environment. A failure in ``install``/``pre_build`` ends the build;
    one in ``build`` still runs ``post_build`` (as CodeBuild does); the build then fails."""
    shell = spec.get("env", {}).get("shell", "sh")
    environment, directory = dict(env), cwd
    out: list[str] = []
    err: list[str] = []
    run = BuildspecRun(returncode=0, stdout="", stderr="")
    state.mkdir(parents=True, exist_ok=True)
    for phase in PHASES:
        if phase not in spec.get("phases", {}) or (run.returncode and phase != "post_build"):
            continue
        for command in spec["phases"][phase].get("commands", []):
            env_file, pwd_file = state / "env", state / "pwd"
            env_file.unlink(missing_ok=True)
            wrapped = f"trap 'env -0 >{env_file}; pwd >{pwd_file}' EXIT\n{command}"
            result = subprocess.run(
                [shell, "-c", wrapped],
                env=environment,
                cwd=directory,
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            run.commands.append(command)
            out.append(result.stdout)
            err.append(result.stderr)
            if result.returncode:
                run.returncode = run.returncode or result.returncode
                run.failed_command = run.failed_command or command
                break
            environment = dict(
                entry.split("=", 1)
                for entry in env_file.read_text().split("\0")
                if "=" in entry and not entry.startswith("BASH_FUNC_")  # exported functions are not promised
            )
            directory = Path(pwd_file.read_text().strip())
    run.stdout, run.stderr = "".join(out), "".join(err)
    return run


def load_buildspec(path: str) -> dict[str, Any]:
    spec: dict[str, Any] = yaml.safe_load((ROOT / path).read_text())
    return spec


def inline_spec(*commands: str) -> dict[str, Any]:
    return {"version": 0.2, "env": {"shell": "bash"}, "phases": {"build": {"commands": list(commands)}}}


# --- stub aws and docker, with a registry and a model bucket on disk -----------------------------

STUB_AWS = """
import json, os, sys
from pathlib import Path

root = Path(os.environ["STUB_ROOT"])
args = sys.argv[1:]
with open(root / "aws.log", "a") as log:
    log.write("aws " + " ".join(args) + "\\n")


def opt(name):
    return args[args.index(name) + 1]


def fail(message, code=254):
    print(message, file=sys.stderr)
    sys.exit(code)


registry = root / "registry"
fault = (root / "fault").read_text().strip() if (root / "fault").exists() else ""
match args[:2]:
    case ["--version"]:
        print("aws-cli/2.27.0 Python/3.13.2 Linux/6.1 exe/x86_64.amzn.2023")
    case ["ecr", "get-login-password"]:
        print("token")
    case ["ecr", "describe-images"]:
        if fault == "ecr":
            fail("An error occurred (AccessDeniedException) when calling the DescribeImages operation")
        tag = opt("--image-ids").removeprefix("imageTag=")
        if opt("--repository-name") != os.environ["STUB_REPOSITORY"]:
            fail("An error occurred (RepositoryNotFoundException) when calling the DescribeImages operation")
        if tag in registry.read_text().split():
            print("sha256:" + "0" * 64)
        else:
            fail("An error occurred (ImageNotFoundException) when calling the DescribeImages operation")
    case ["s3api", "list-objects-v2"]:
        if fault == "s3":
            fail("An error occurred (AccessDenied) when calling the ListObjectsV2 operation: Access Denied")
        bucket = root / "s3" / opt("--bucket")
        files = sorted(p for p in bucket.rglob("*") if p.is_file()) if bucket.exists() else []
        keys = [k for k in (p.relative_to(bucket).as_posix() for p in files) if k.startswith(opt("--prefix"))]
        print("\\t".join(keys) if keys else "None")
    case ["s3", "cp"]:
        path = root / "s3" / args[-2].removeprefix("s3://")
        if not path.is_file():
            fail("fatal error: An error occurred (404) when calling the HeadObject operation: Not Found", 1)
        sys.stdout.write(path.read_text())
    case ["configure", "export-credentials"]:
        print(json.dumps({"Version": 1, "AccessKeyId": "AKIDEXAMPLE", "SecretAccessKey": "x"}))
    case ["ec2" | "ssm", _]:
        ec2_ssm(args, fault)
    case _:
        fail("unexpected aws " + " ".join(args), 2)
"""

# EC2 and SSM as the data-volume snapshot script uses them: instances with states, their volumes,
# snapshots, parameters and Run Command invocations, kept in ec2.json under STUB_ROOT. Faults
# (the `fault` file): run-instances, ssm-offline (the agent never checks in), pull (a pull fails),
# snapshot-error. The state records what AWS would hold, so tests assert on it, not on the log alone.
STUB_EC2 = """
def load():
    path = root / "ec2.json"
    if path.exists():
        return json.loads(path.read_text())
    return {"instances": {}, "snapshots": {}, "parameters": {}, "commands": {}, "counter": 0}


def save(state):
    (root / "ec2.json").write_text(json.dumps(state, indent=1))


def new_id(state, prefix):
    state["counter"] += 1
    return f"{prefix}-{state['counter']:017x}"


def values(name):
    out, i = [], args.index(name) + 1
    while i < len(args) and not args[i].startswith("--"):
        out.append(args[i])
        i += 1
    return out


def tags_of(spec):
    # "ResourceType=instance,Tags=[{Key=a,Value=b},{Key=c,Value=d}]"
    kind, _, rest = spec.partition(",Tags=[")
    pairs = [p.strip("{}") for p in rest.rstrip("]").split("},{")]
    return kind.removeprefix("ResourceType="), dict(
        (p.split(",Value=")[0].removeprefix("Key="), p.split(",Value=")[1]) for p in pairs
    )


def instance(state, instance_id):
    if instance_id not in state["instances"]:
        fail(f"An error occurred (InvalidInstanceID.NotFound): The instance ID '{instance_id}' does not exist")
    return state["instances"][instance_id]


def ec2_ssm(args, fault):
    state = load()
    match args[:2]:
        case ["ssm", "get-parameter"]:
            name = opt("--name")
            if name.startswith("/aws/service/bottlerocket/"):
                print("ami-0bottlerocket00001")
            elif name in state["parameters"]:
                print(state["parameters"][name])
            else:
                fail("An error occurred (ParameterNotFound) when calling the GetParameter operation")
        case ["ssm", "put-parameter"]:
            state["parameters"][opt("--name")] = opt("--value")
        case ["ec2", "describe-snapshots"]:
            if "--snapshot-ids" in args:
                snapshot = state["snapshots"][opt("--snapshot-ids")]
                state_now = "error" if fault == "snapshot-error" else snapshot["state"]
                snapshot["polls"] += 1
                snapshot["state"] = "completed" if snapshot["polls"] >= 2 else "pending"
                print(state_now)
            else:
                wanted = [f for f in values("--filters") if f.startswith("Name=tag:")]
                key, _, value = wanted[0].removeprefix("Name=tag:").partition(",Values=")
                snapshots = state["snapshots"].items()
                found = [i for i, s in snapshots if s["tags"].get(key) == value and s["state"] == "completed"]
                print(found[0] if found else "None")
        case ["ec2", "run-instances"]:
            if fault == "run-instances":
                fail("An error occurred (UnauthorizedOperation) when calling the RunInstances operation")
            metadata = dict(kv.split("=") for kv in opt("--metadata-options").split(","))
            devices = json.loads(opt("--block-device-mappings"))
            specs = dict(tags_of(spec) for spec in values("--tag-specifications"))
            instance_id = new_id(state, "i")
            state["instances"][instance_id] = {
                "state": "pending",
                "image": opt("--image-id"),
                "type": opt("--instance-type"),
                "subnet": opt("--subnet-id"),
                "security_groups": values("--security-group-ids"),
                "profile": opt("--iam-instance-profile"),
                "metadata": metadata,
                "devices": devices,
                "user_data": opt("--user-data"),
                "tags": specs,
                "volume": new_id(state, "vol"),
                "pulled": [],
            }
            print(instance_id)
        case ["ec2", "wait"]:
            i = instance(state, opt("--instance-ids"))
            if args[2] == "instance-running":
                i["state"] = "running"
            elif args[2] == "instance-stopped":
                if i["state"] != "stopping":
                    fail("Waiter InstanceStopped failed: Max attempts exceeded", 255)
                i["state"] = "stopped"
            else:
                fail("unexpected aws " + " ".join(args), 2)
        case ["ssm", "describe-instance-information"]:
            instance_id = opt("--filters").split("Values=")[1]
            online = instance(state, instance_id)["state"] == "running" and fault != "ssm-offline"
            print("Online" if online else "None")
        case ["ssm", "send-command"]:
            i = instance(state, opt("--instance-ids"))
            if i["state"] != "running":
                fail("An error occurred (InvalidInstanceId) when calling the SendCommand operation")
            assert opt("--document-name") == "AWS-RunShellScript"
            parameters = json.loads(opt("--parameters"))
            (command,) = parameters["commands"]
            failed = fault == "pull" and " images pull " in command
            if " images pull " in command and not failed:
                i["pulled"].append(command)
            command_id = new_id(state, "cmd")
            state["commands"][command_id] = {
                "command": command,
                "comment": opt("--comment"),
                "timeout": parameters["executionTimeout"],
                "status": "Failed" if failed else "Success",
                "polls": 0,
            }
            print(command_id)
        case ["ssm", "get-command-invocation"]:
            command = state["commands"][opt("--command-id")]
            command["polls"] += 1
            if opt("--query") == "StandardErrorContent":
                print("ctr: failed to resolve reference: unexpected status 403 Forbidden")
            elif command["polls"] == 1:
                save(state)
                fail("An error occurred (InvocationDoesNotExist) when calling the GetCommandInvocation operation")
            else:
                print(command["status"] if command["polls"] > 2 else "InProgress")
        case ["ec2", "stop-instances"]:
            instance(state, opt("--instance-ids"))["state"] = "stopping"
        case ["ec2", "describe-instances"]:
            print(instance(state, opt("--instance-ids"))["volume"])
        case ["ec2", "create-snapshot"]:
            volume = opt("--volume-id")
            (owner,) = [i for i in state["instances"].values() if i["volume"] == volume]
            _, tags = tags_of(opt("--tag-specifications"))
            snapshot_id = new_id(state, "snap")
            state["snapshots"][snapshot_id] = {
                "volume": volume,
                "tags": tags,
                "state": "pending",
                "polls": 0,
                "instance_state": owner["state"],
                "pulled": list(owner["pulled"]),
            }
            print(snapshot_id)
        case ["ec2", "terminate-instances"]:
            instance(state, opt("--instance-ids"))["state"] = "terminated"
        case _:
            fail("unexpected aws " + " ".join(args), 2)
    save(state)
"""

STUB_DOCKER = """
import os, sys
from pathlib import Path

root = Path(os.environ["STUB_ROOT"])
args = sys.argv[1:]
with open(root / "docker.log", "a") as log:
    log.write("docker " + " ".join(args) + "\\n")
registry = root / "registry"
repository = os.environ["STUB_REPOSITORY_URI"]


def publish(ref):
    name, _, tag = ref.rpartition(":")
    assert name == repository, ref
    with open(registry, "a") as f:
        f.write(tag + "\\n")


if args[0] == "login":
    sys.stdin.read()
elif args[:2] == ["buildx", "build"]:
    if "--secret" in args:
        secret = args[args.index("--secret") + 1]
        src = dict(part.split("=", 1) for part in secret.split(","))["src"]
        assert Path(src).is_file(), "the credentials file exists while the build runs"
        with open(root / "secrets", "a") as f:
            f.write(src + "\\n")
    if "--push" in args:
        publish(args[args.index("--tag") + 1])
elif args[:3] == ["buildx", "imagetools", "create"]:
    tags = registry.read_text().split()
    for source in args[5:]:
        if source.rpartition(":")[2] not in tags:
            print(f"ERROR: {source}: not found", file=sys.stderr)
            sys.exit(1)
    publish(args[args.index("--tag") + 1])
"""

# The aws stub: its EC2/SSM part defined before the dispatch that calls it.
AWS_STUB = STUB_AWS.replace("\nregistry = ", STUB_EC2 + "\nregistry = ", 1)


@dataclass
class Stubs:
    root: Path
    env: dict[str, str]

    def log(self, tool: str) -> list[str]:
        path = self.root / f"{tool}.log"
        return path.read_text().splitlines() if path.exists() else []

    def builds(self) -> list[str]:
        return [line for line in self.log("docker") if line.startswith("docker buildx build ")]

    def creates(self) -> list[str]:
        return [line for line in self.log("docker") if line.startswith("docker buildx imagetools create ")]

    def published(self) -> list[str]:
        return (self.root / "registry").read_text().split()

    def ec2(self) -> dict[str, Any]:
        """What the stub EC2 and SSM hold: instances, snapshots, parameters, commands."""
        path = self.root / "ec2.json"
        state: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
        return state

    def reset_logs(self) -> None:
        for tool in ("docker", "aws"):
            (self.root / f"{tool}.log").unlink(missing_ok=True)

    @property
    def promotions(self) -> Path:
        """The promotions file the builds read instead of the source's (which stays as committed)."""
        return self.root / "promoted-models.json"

    def env_for(self, step_env: Mapping[str, str]) -> dict[str, str]:
        """A step's environment: the container's, its project's, and this test's promotions file."""
        env = {**self.env, **step_env}
        if "MODEL_PROMOTIONS" in step_env:
            env["MODEL_PROMOTIONS"] = str(self.promotions)
        return env

    def model_uri(self, config: AppConfig, device: str, *, cluster: str | None = None, base: str | None = None) -> str:
        """``s3://<bucket>/models/<cluster>/<model>/<revision>/<device>/``: where that cluster's compile
        job publishes (default: ``config``'s own cluster); or that artifact under another ``base``."""
        if base is None:
            base = model_artifacts.cluster_models_base_uri(
                naming.model_bucket_name(config), cluster or config.cluster_name
            )
        return model_artifacts.artifact_prefix(base, config.model_id, config.model_revision, device)

    def model_path(
        self, config: AppConfig, device: str, *, cluster: str | None = None, base: str | None = None
    ) -> Path:
        """The stub bucket's file of that manifest."""
        uri = self.model_uri(config, device, cluster=cluster, base=base)
        return self.root / "s3" / uri.removeprefix("s3://") / MANIFEST_NAME

    def put_model(
        self,
        config: AppConfig,
        device: str,
        *,
        cluster: str | None = None,
        base: str | None = None,
        compiled_by: str | None = None,
        created_at: str = "",
    ) -> str:
        """Publish a compiled model's manifest as the compile job of ``cluster`` (default: ``config``'s;
        ``base``: under that base instead, e.g. the old shared one) running runtime image version
        ``compiled_by`` (default: the config's) does; returns its sha256. ``created_at`` tells two
        compiles of one spec apart, as the compile job's timestamp does."""
        version = config.serving.image_version if compiled_by is None else compiled_by
        spec = ArtifactSpec(
            model_id=config.model_id,
            revision=config.model_revision,
            device=device,
            shapes=Shapes(config.serving.height, config.serving.width, config.serving.max_batch),
            dtype=DEVICE_DTYPES[device],
            versions={},
            options={IMAGE_VERSION_OPTION: version},
        )
        manifest = Manifest(spec, files=(), created_at=created_at).to_json().encode()
        path = self.model_path(config, device, cluster=cluster, base=base)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(manifest)
        return hashlib.sha256(manifest).hexdigest()

    def promote(self, config: AppConfig, device: str, *, cluster: str | None = None) -> Promotion:
        """What ``python -m runtime.artifacts promote <that cluster's artifact>`` records (it reads the
        manifest from S3; here from the stub bucket): the manifest's own spec and sha256."""
        body = self.model_path(config, device, cluster=cluster).read_bytes()
        spec = Manifest.from_json(body).spec
        promotion = Promotion(
            model_id=spec.model_id,
            revision=spec.revision,
            device=spec.device,
            image_version=spec.options[IMAGE_VERSION_OPTION],
            cluster=cluster or config.cluster_name,
            manifest_sha256=hashlib.sha256(body).hexdigest(),
        )
        record_promotion(self.promotions, promotion)
        return promotion


def make_stubs(tmp_path: Path, repository_uri: str = REPOSITORY_URI) -> Stubs:
    root = tmp_path / "stubs"
    (root / "bin").mkdir(parents=True)
    (root / "registry").write_text("")
    write_promotions(root / "promoted-models.json", ())  # as committed: nothing promoted
    for name, body in (("aws", AWS_STUB), ("docker", STUB_DOCKER)):
        path = root / "bin" / name
        path.write_text(f"#!{sys.executable}\n" + textwrap.dedent(body))
        path.chmod(0o755)
    env = {
        # What a CodeBuild container starts with, and no more: the project's variables come per step.
        "PATH": f"{root / 'bin'}:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(tmp_path / "home"),
        "AWS_REGION": "us-west-2",
        "CODEBUILD_SRC_DIR": str(ROOT),
        "STUB_ROOT": str(root),
        "STUB_REPOSITORY": repository_uri.split("/", 1)[1],
        "STUB_REPOSITORY_URI": repository_uri,
    }
    return Stubs(root=root, env=env)


def steps_of(config: AppConfig) -> tuple[PipelineStep, ...]:
    return pipeline_steps(config, repository_uri=REPOSITORY_URI, cache_repository_uri=CACHE_REPOSITORY_URI)


def run_step(step: PipelineStep, stubs: Stubs) -> BuildspecRun:
    state = stubs.root / "runs" / step.action_name
    return run_buildspec(load_buildspec(step.buildspec), stubs.env_for(step.env), ROOT, state)


@dataclass
class PipelineRun:
    runs: dict[str, BuildspecRun]

    def out(self, action: str) -> str:
        return self.runs[action].stdout


def run_pipeline(config: AppConfig, stubs: Stubs) -> PipelineRun:
    """One pipeline execution: the image stages in order, each run order after the one before;
    a failed action stops the execution (as CodePipeline does)."""
    stubs.reset_logs()
    runs: dict[str, BuildspecRun] = {}
    steps = steps_of(config)
    for stage in IMAGE_STAGES:
        for order in sorted({s.run_order for s in steps if s.stage == stage}):
            for step in (s for s in steps if s.stage == stage and s.run_order == order):
                runs[step.action_name] = run = run_step(step, stubs)
                if run.returncode:
                    raise AssertionError(f"{step.action_name} failed: {run.stderr}")
    return PipelineRun(runs)
