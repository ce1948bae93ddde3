"""ci_build/: the Dockerfile's stages and build args against the accelerator table, the buildspecs
and the runtime contract; hadolint; the helper scripts; the build buildspec run with stub tools."""

from __future__ import annotations

import ast
import http.server
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from spec import contract, images, versions
from spec.accelerators import ACCELERATORS
from spec.images import BUILD_ARGS, BUILDSPEC_COMPUTED_ARGS
from tests.conftest import ROOT

CI = ROOT / "ci_build"
DOCKERFILE = CI / "Dockerfile"
CODEBUILD_BUILTIN_ENV = {"AWS_REGION"}  # set by CodeBuild in every build


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)  # (INSTRUCTION, arguments)

    def all(self, instruction: str) -> list[str]:
        return [args for ins, args in self.instructions if ins == instruction]


@dataclass
class Dockerfile:
    global_args: list[str]
    stages: dict[str, Stage]

    def chain(self, name: str) -> list[Stage]:
        """The stage and the stages it is built FROM (a variable base resolves per accelerator, so stop)."""
        out = [self.stages[name]]
        while out[-1].base in self.stages:
            out.append(self.stages[out[-1].base])
        return out

    def env(self, name: str) -> dict[str, str]:
        """ENV values a stage sees (its own and its ancestors')."""
        values: dict[str, str] = {}
        for stage in reversed(self.chain(name)):
            for args in stage.all("ENV"):
                for pair in shlex.split(args):
                    key, _, value = pair.partition("=")
                    values[key] = value
        return values


def logical_lines(text: str) -> Iterator[str]:
    """Dockerfile lines with continuations joined and comments dropped."""
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#") and not current:
            continue
        if line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        if current.strip():
            yield current.strip()
        current = ""


def parse_dockerfile(path: Path = DOCKERFILE) -> Dockerfile:
    global_args: list[str] = []
    stages: dict[str, Stage] = {}
    stage: Stage | None = None
    for line in logical_lines(path.read_text()):
        instruction, _, args = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            match = re.fullmatch(r"(?:--platform=\S+\s+)?(\S+)\s+AS\s+(\S+)", args.strip(), re.IGNORECASE)
            assert match, f"every FROM names its stage: {line}"
            stage = Stage(name=match[2], base=match[1])
            assert stage.name not in stages, f"duplicate stage {stage.name}"
            stages[stage.name] = stage
        elif stage is None:
            assert instruction == "ARG", f"only ARG may come before the first FROM: {line}"
            global_args.append(args.strip())
        else:
            stage.instructions.append((instruction, args.strip()))
    return Dockerfile(global_args=global_args, stages=stages)


@pytest.fixture(scope="module")
def dockerfile() -> Dockerfile:
    return parse_dockerfile()


def arg_names(specs: list[str]) -> set[str]:
    return {spec.split("=", 1)[0] for spec in specs}


def buildspec_commands(name: str) -> str:
    spec = yaml.safe_load((CI / name).read_text())
    return "\n".join(command for phase in spec["phases"].values() for command in phase["commands"])


def buildspec_build_args() -> dict[str, str]:
    """``--build-arg name="${VAR}"`` pairs of the build buildspec."""
    pairs = re.findall(r'--build-arg\s+(\w+)="\$\{(\w+)\}"', buildspec_commands("buildspec-build.yml"))
    return dict(pairs)


# --- stages ----------------------------------------------------------------------------------


def test_every_accelerator_has_its_base_deps_and_assets_stage(dockerfile: Dockerfile) -> None:
    accelerators_in_file = set(ACCELERATORS)
    for family in ("base", "deps", "assets"):
        in_file = {name.removeprefix(f"{family}-") for name in dockerfile.stages if name.startswith(f"{family}-")}
        assert in_file == accelerators_in_file, family


def test_accelerator_stages_set_the_runtime_device_of_their_accelerator(dockerfile: Dockerfile) -> None:
    for accelerator in ACCELERATORS.values():
        assert dockerfile.env(f"assets-{accelerator.name}")["MODEL_DEVICE"] == accelerator.device
        assert dockerfile.env(f"deps-{accelerator.name}")[contract.ENV_DEVICE] == accelerator.device


def test_accelerator_is_selected_by_stage_name_never_inside_a_run(dockerfile: Dockerfile) -> None:
    selected = {stage.base for stage in dockerfile.stages.values() if "${accelerator}" in stage.base}
    assert selected == {"assets-${accelerator}", "deps-${accelerator}"}
    for stage in dockerfile.stages.values():
        for run in stage.all("RUN"):
            assert "${accelerator}" not in run, f"{stage.name} branches on the accelerator inside RUN"


def test_bases_come_from_build_args_without_defaults(dockerfile: Dockerfile) -> None:
    bases = {name: dockerfile.stages[f"base-{accelerator}"].base for name, accelerator in (("cuda", "nvidia"),)}
    assert bases["cuda"] == (
        "${dlc_account}.dkr.ecr.${dlc_region}.amazonaws.com/"
        f"{versions.DLC_PYTORCH_INFERENCE_GPU_REPOSITORY}:${{cuda_base_tag}}"
    )
    assert dockerfile.stages["base-neuron"].base == (
        "${dlc_account}.dkr.ecr.${dlc_region}.amazonaws.com/"
        f"{versions.DLC_PYTORCH_INFERENCE_NEURONX_REPOSITORY}:${{neuron_base_tag}}"
    )
    assert dockerfile.stages["base-cpu"].base == "${cpu_base_image}"
    # No defaults: stacks/versions.py is the only place a base version is written.
    assert all("=" not in arg for arg in dockerfile.global_args)
    for accelerator, repository in images.DLC_REPOSITORIES.items():
        assert f"/{repository}:" in dockerfile.stages[f"base-{accelerator}"].base


# --- build args: Dockerfile <-> buildspec <-> CodeBuild project --------------------------------


def test_dockerfile_args_are_exactly_the_build_args(dockerfile: Dockerfile) -> None:
    declared = arg_names(dockerfile.global_args)
    for stage in dockerfile.stages.values():
        declared |= arg_names(stage.all("ARG"))
    assert declared == set(BUILD_ARGS)


def test_buildspec_passes_every_build_arg_and_nothing_else() -> None:
    passed = buildspec_build_args()
    assert set(passed) == set(BUILD_ARGS)
    assert all(variable == name.upper() for name, variable in passed.items())


def test_every_build_arg_variable_has_a_source() -> None:
    from spec.config import AppConfig

    target = images.image_targets(["cpu"])[0]
    from_project = {name.upper() for name in images.build_arg_values(AppConfig(), target)}
    computed = {name.upper() for name in BUILDSPEC_COMPUTED_ARGS}
    commands = buildspec_commands("buildspec-build.yml")
    for variable in set(buildspec_build_args().values()):
        assert variable in from_project | computed | CODEBUILD_BUILTIN_ENV, variable
    for variable in computed:
        assert f"{variable}=" in commands, f"the buildspec never sets {variable}"
    assert from_project | computed | CODEBUILD_BUILTIN_ENV >= {v.upper() for v in BUILD_ARGS}


def test_model_secret_id_matches_the_buildspec(dockerfile: Dockerfile) -> None:
    runs = " ".join(dockerfile.stages["assets"].all("RUN"))
    assert f"type=secret,id={images.AWS_CREDENTIALS_SECRET_ID}," in runs
    assert f'--secret "id={images.AWS_CREDENTIALS_SECRET_ID},' in buildspec_commands("buildspec-build.yml")
    # Credentials never travel as a build arg or an ENV.
    assert not any("AWS_SECRET" in arg or "AWS_ACCESS" in arg for arg in dockerfile.global_args)


# --- the image that runs -----------------------------------------------------------------------


def test_final_stage_is_the_serving_image_run_as_non_root(dockerfile: Dockerfile) -> None:
    final = list(dockerfile.stages)[-1]
    assert final == "serve"
    for target in ("serve", "runtime"):
        users = [user for stage in dockerfile.chain(target) for user in stage.all("USER")]
        assert users, f"{target} sets no USER"
        uid, _, gid = users[0].partition(":")  # chain() starts at the stage itself: its last USER wins
        assert uid.isdigit() and int(uid) != 0, users[0]
        assert gid.isdigit() and int(gid) != 0, users[0]
        assert dockerfile.stages[target].instructions[-1][0] == "USER", "USER must be the last word"


def test_healthcheck_probes_the_contract_path_on_the_contract_port(dockerfile: Dockerfile) -> None:
    chain = dockerfile.chain("serve")
    checks = [check for stage in chain for check in stage.all("HEALTHCHECK")]
    assert len(checks) == 1
    command = json.loads(checks[0].split("CMD", 1)[1])
    assert command[-1] == contract.HEALTH_PATH
    assert [port for stage in chain for port in stage.all("EXPOSE")] == [str(contract.PORT)]
    env = dockerfile.env("serve")
    assert env[contract.ENV_PORT] == str(contract.PORT)
    assert env[contract.ENV_MODEL_SOURCE].startswith("/")
    assert [cmd for stage in chain for cmd in stage.all("CMD")] == ['["python", "-m", "runtime.server"]']


def test_serve_puts_the_model_layer_below_the_code_layer(dockerfile: Dockerfile) -> None:
    copies = dockerfile.stages["serve"].all("COPY")
    assert copies[0].startswith("--from=assets ") and copies[1] == CODE_COPY
    assert dockerfile.stages["runtime"].all("COPY") == [CODE_COPY]


# The programs the images run (the server, the compile job, the artifacts CLI, the publisher), and
# the ones they must not carry.
SHIPPED_PACKAGES = ("runtime/server", "runtime/compile", "runtime/artifacts", "runtime/inventory")
UNSHIPPED_PACKAGES = ("runtime/client", "runtime/bench")
FIRST_PARTY = ("runtime", "spec")
CODE_DIR = "/opt/edge-diffusion/"
CODE_COPY = f"--from=code {CODE_DIR} {CODE_DIR}"


def module_file(module: str) -> Path | None:
    """The repository file of a first-party module (a package is its __init__.py)."""
    base = ROOT / module.replace(".", "/")
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(path: Path) -> set[str]:
    """First-party modules a file imports, anywhere in it (function-level imports included)."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            parent = package.rsplit(".", node.level - 1)[0] if node.level else ""
            base = ".".join(part for part in (parent, node.module or "") if part)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from spec import contract`
    return {m for m in found if m.split(".")[0] in FIRST_PARTY and module_file(m)}


def shipped_files() -> set[Path]:
    """Every file the shipped packages need: their own, what they import, and the packages above."""
    todo = [p for package in SHIPPED_PACKAGES for p in (ROOT / package).rglob("*.py")]
    needed: set[Path] = set()
    while todo:
        path = todo.pop()
        if path in needed:
            continue
        needed.add(path)
        for parent in path.relative_to(ROOT).parents:
            if parent.parts and (init := ROOT / parent / "__init__.py").is_file():
                todo.append(init)
        todo.extend(f for m in imported_modules(path) if (f := module_file(m)) is not None)
    return needed


def copied_sources(dockerfile: Dockerfile) -> list[str]:
    """Repository paths the code stage copies (a directory ends with '/')."""
    sources: list[str] = []
    for args in dockerfile.stages["code"].all("COPY"):
        *paths, dest = shlex.split(args)
        assert dest.startswith(CODE_DIR), args
        for path in paths:
            assert not path.startswith("--"), f"the code stage copies from the build context only: {args}"
            assert dest.removeprefix(CODE_DIR) == (path if path.endswith("/") else path.rsplit("/", 1)[0] + "/")
        sources += paths
    return sources


def test_images_copy_exactly_the_code_their_programs_import(dockerfile: Dockerfile) -> None:
    sources = copied_sources(dockerfile)
    for source in sources:
        assert not source.startswith(UNSHIPPED_PACKAGES), f"{source}: the device client and the benchmark stay out"

    def copied(path: Path) -> bool:
        rel = path.relative_to(ROOT).as_posix()
        return any(rel == s or (s.endswith("/") and rel.startswith(s)) for s in sources)

    needed = shipped_files()
    missing = sorted(str(p.relative_to(ROOT)) for p in needed if not copied(p))
    assert not missing, f"imported by the shipped programs but not copied: {missing}"
    unused = [s for s in sources if not s.endswith("/") and ROOT / s not in needed]
    assert not unused, f"copied but imported by none of the shipped programs: {unused}"
    assert not any(copied(p) for package in UNSHIPPED_PACKAGES for p in (ROOT / package).rglob("*.py"))
    assert {p.relative_to(ROOT).parts[0] for p in needed} == set(FIRST_PARTY)


def test_model_is_verified_against_its_manifest(dockerfile: Dockerfile) -> None:
    runs = dockerfile.stages["assets"].all("RUN")
    assert any("aws s3 sync" in run and "sha256sum --check" in run for run in runs)
    (verify,) = [run for run in runs if "python -m runtime.artifacts verify /model" in run]
    assert f"--mount=type=bind,from=code,source={CODE_DIR.rstrip('/')},target=/opt/verify" in verify


def test_hadolint_is_clean() -> None:
    hadolint = Path(sys.executable).with_name("hadolint")
    result = subprocess.run([str(hadolint), str(DOCKERFILE)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerignore_sends_only_what_the_dockerfile_reads() -> None:
    lines = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line and not line.startswith("#")]
    assert lines[0] == "*"
    assert {"!runtime/", "!ci_build/"} <= set(lines)


def test_neuron_requirements_share_the_server_pins() -> None:
    def pins(path: Path) -> dict[str, str]:
        out = {}
        for line in path.read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                name, _, version = line.partition("==")
                out[name.lower()] = version
        return out

    cpu, neuron = pins(ROOT / "runtime/requirements.txt"), pins(ROOT / "runtime/requirements-neuron.txt")
    assert "torch" not in neuron, "the Neuron DLC brings torch"
    overridden = {"diffusers", "transformers", "gradio"}  # optimum-neuron's older stack
    for name in (set(cpu) & set(neuron)) - overridden:
        assert cpu[name] == neuron[name], name
    assert {"optimum-neuron"} <= set(neuron)


# --- helper scripts ----------------------------------------------------------------------------


def write_stub(directory: Path, name: str, body: str) -> None:
    path = directory / name
    path.write_text("#!/usr/bin/env bash\n" + body)
    path.chmod(0o755)


def test_pip_install_on_dlc_keeps_the_framework_and_drops_torch_pins(tmp_path: Path) -> None:
    log = tmp_path / "pip.log"
    write_stub(
        tmp_path,
        "python",
        f"""if [ "$3" = list ]; then
  printf 'torch==2.8.0\\ntorch-neuronx==2.8.0.2.10\\nnumpy==1.26.4\\nboto3==1.0\\n'; exit 0
fi
shift 3
echo "$@" >>{log}
while [ $# -gt 0 ]; do case $1 in --constraint|--requirement) cat "$2" >>{log}; shift;; esac; shift; done
""",
    )
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("torch==2.13.0\ntorchvision==0.1\ndiffusers==0.42.1\n")
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    result = subprocess.run(
        ["bash", str(CI / "pip-install-on-dlc.sh"), str(requirements)], env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    installed = log.read_text()
    assert "--no-cache-dir" in installed
    assert "torch==2.8.0" in installed and "torch-neuronx==2.8.0.2.10" in installed and "numpy==1.26.4" in installed
    assert "torch==2.13.0" not in installed and "boto3==1.0" not in installed
    assert "torchvision==0.1" in installed and "diffusers==0.42.1" in installed


def test_pip_install_on_dlc_refuses_a_base_without_torch(tmp_path: Path) -> None:
    write_stub(tmp_path, "python", "echo 'boto3==1.0'\n")
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("diffusers==0.42.1\n")
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    result = subprocess.run(
        ["bash", str(CI / "pip-install-on-dlc.sh"), str(requirements)], env=env, capture_output=True, text=True
    )
    assert result.returncode == 1
    assert "no torch" in result.stderr


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == contract.HEALTH_PATH else 503)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_healthcheck_script_exit_codes() -> None:
    server = http.server.HTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:

        def check(path: str, port: int) -> int:
            env = {**os.environ, contract.ENV_PORT: str(port)}
            return subprocess.run([sys.executable, str(CI / "healthcheck.py"), path], env=env, timeout=30).returncode

        port = server.server_address[1]
        assert check(contract.HEALTH_PATH, port) == 0
        assert check(contract.READY_PATH, port) == 1
        assert check(contract.HEALTH_PATH, free_port()) == 1
        assert check("healthz", port) == 2
    finally:
        server.shutdown()
        server.server_close()


# --- the build buildspec, run with stub aws and docker ----------------------------------------


@pytest.fixture
def stub_tools(tmp_path: Path) -> Path:
    """`aws` and `docker` stubs: docker logs its arguments; aws answers from files in tmp_path."""
    write_stub(
        tmp_path,
        "aws",
        f"""case "$1 $2" in
  "ecr get-login-password") echo token;;
  "ecr describe-images")
    tag=${{6#imageTag=}}
    if grep -qx "$4" {tmp_path}/missing-repositories 2>/dev/null; then
      echo "An error occurred (RepositoryNotFoundException) when calling the DescribeImages operation" >&2; exit 254; fi
    if grep -qx "$tag" {tmp_path}/existing 2>/dev/null; then echo sha256:abc; else
      echo "An error occurred (ImageNotFoundException) when calling the DescribeImages operation" >&2; exit 254; fi;;
  "s3 cp") if [ -f {tmp_path}/manifest.json ]; then cat {tmp_path}/manifest.json; else
      echo "fatal error: An error occurred (404) when calling the HeadObject operation" >&2; exit 1; fi;;
  "configure export-credentials") echo '{{"Version": 1, "AccessKeyId": "AKIDEXAMPLE"}}';;
  *) echo "unexpected aws $*" >&2; exit 2;;
esac
""",
    )
    write_stub(tmp_path, "docker", f'[ "$1" = login ] && cat >/dev/null; echo "docker $*" >>{tmp_path}/docker.log\n')
    return tmp_path


def run_build_buildspec(stub_tools: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        **{name.upper(): f"value-of-{name}" for name in BUILD_ARGS if name not in BUILDSPEC_COMPUTED_ARGS},
        "PATH": f"{stub_tools}:{os.environ['PATH']}",
        "ARCH": "arm64",
        "ACCELERATOR": "cpu",
        "MODEL_DEVICE": "cpu",
        "IMAGE_VERSION": "1.2.3",
        "REPOSITORY_URI": "111111111111.dkr.ecr.us-west-2.amazonaws.com/edge-diffusion/stable-diffusion",
        "CACHE_REPOSITORY_URI": "111111111111.dkr.ecr.us-west-2.amazonaws.com/edge-diffusion/stable-diffusion-bc",
        "BUILDKIT_IMAGE": versions.BUILDKIT_IMAGE,
        "AWS_REGION": "us-west-2",
        "MODEL_S3_PREFIX": "s3://bucket/models/tiny/main",
    }
    script = buildspec_commands("buildspec-build.yml")
    return subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, cwd=stub_tools, timeout=60)


def docker_builds(stub_tools: Path) -> list[str]:
    return [line for line in (stub_tools / "docker.log").read_text().splitlines() if " buildx build " in line]


def test_build_buildspec_builds_runtime_then_serve_with_the_manifest_hash(stub_tools: Path) -> None:
    manifest = b'{"format": 1}\n'
    (stub_tools / "manifest.json").write_bytes(manifest)
    result = run_build_buildspec(stub_tools)
    assert result.returncode == 0, result.stderr
    runtime, serve = docker_builds(stub_tools)
    assert "--target runtime" in runtime and ":1.2.3-cpu-arm64-runtime" in runtime and "--secret" not in runtime
    assert "--target serve" in serve and "--tag 111111111111.dkr.ecr" in serve and ":1.2.3-cpu-arm64 " in serve
    import hashlib

    assert f"model_manifest_sha256={hashlib.sha256(manifest).hexdigest()}" in serve
    assert "--secret id=aws_credentials,src=" in serve and "--platform linux/arm64" in serve
    assert "mode=max,image-manifest=true,oci-mediatypes=true" in serve
    for name in BUILD_ARGS:
        assert f"--build-arg {name}=" in serve


def test_build_buildspec_leaves_published_tags_alone(stub_tools: Path) -> None:
    (stub_tools / "existing").write_text("1.2.3-cpu-arm64-runtime\n1.2.3-cpu-arm64\n")
    result = run_build_buildspec(stub_tools)
    assert result.returncode == 0, result.stderr
    assert docker_builds(stub_tools) == []
    assert "already published" in result.stdout


def test_build_buildspec_without_a_compiled_model_names_the_compile_image(stub_tools: Path) -> None:
    result = run_build_buildspec(stub_tools)
    assert result.returncode != 0
    assert "no compiled model at s3://bucket/models/tiny/main/cpu/manifest.json" in result.stderr
    assert ":1.2.3-cpu-runtime" in result.stderr
    assert len(docker_builds(stub_tools)) == 1  # the runtime image was still built


def test_manifest_buildspec_joins_every_arch_of_the_variant(stub_tools: Path) -> None:
    registry = "111111111111.dkr.ecr.us-west-2.amazonaws.com"
    (stub_tools / "missing-repositories").write_text("not-deployed/stable-diffusion\n")
    env = {
        **os.environ,
        "PATH": f"{stub_tools}:{os.environ['PATH']}",
        "ACCELERATOR": "cpu",
        "ARCHES": "amd64 arm64",
        "IMAGE_VERSION": "1.2.3",
        "REPOSITORY_URI": f"{registry}/edge-diffusion/stable-diffusion",
        "MIRROR_REPOSITORY_URIS": " ".join(
            f"{registry}/{name}/stable-diffusion" for name in ("edge-diffusion-region", "not-deployed")
        ),
    }
    script = buildspec_commands("buildspec-manifest.yml")
    result = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    creates = [line for line in (stub_tools / "docker.log").read_text().splitlines() if "imagetools create" in line]
    repo = env["REPOSITORY_URI"]
    assert creates == [
        f"docker buildx imagetools create --tag {repo}:1.2.3-cpu-runtime "
        f"{repo}:1.2.3-cpu-amd64-runtime {repo}:1.2.3-cpu-arm64-runtime",
        f"docker buildx imagetools create --tag {repo}:1.2.3-cpu {repo}:1.2.3-cpu-amd64 {repo}:1.2.3-cpu-arm64",
        # the Region stage's repository gets copies; a repository not deployed yet is skipped
        f"docker buildx imagetools create --tag {registry}/edge-diffusion-region/stable-diffusion:1.2.3-cpu-runtime "
        f"{repo}:1.2.3-cpu-runtime",
        f"docker buildx imagetools create --tag {registry}/edge-diffusion-region/stable-diffusion:1.2.3-cpu "
        f"{repo}:1.2.3-cpu",
    ]
    assert "not-deployed/stable-diffusion does not exist (yet): skipped" in result.stdout
