"""ci_build/Dockerfile: its stages and build args against the accelerator table, the build script
and the runtime contract; the code and the requirements each image ships; hadolint; the helper
scripts. The buildspecs and the build scripts run with stub tools in test_buildspecs.py."""

from __future__ import annotations

import ast
import http.server
import json
import os
import re
import shlex
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from plan import contract, images, versions
from plan.accelerators import ACCELERATORS
from plan.images import BUILD_ARGS, BUILDSPEC_COMPUTED_ARGS
from tests.conftest import ROOT
from tests.tls_ca import Ca

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


BUILD_SCRIPT = CI / "build-image.sh"


def build_script() -> str:
    return BUILD_SCRIPT.read_text()


def script_build_args() -> dict[str, str]:
    """``--build-arg name="${VAR}"`` pairs of the build script."""
    pairs = re.findall(r'--build-arg\s+(\w+)="\$\{(\w+)\}"', build_script())
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


# --- build args: Dockerfile <-> build script <-> CodeBuild project ------------------------------


def test_dockerfile_args_are_exactly_the_build_args(dockerfile: Dockerfile) -> None:
    declared = arg_names(dockerfile.global_args)
    for stage in dockerfile.stages.values():
        declared |= arg_names(stage.all("ARG"))
    assert declared == set(BUILD_ARGS)


def test_build_script_passes_every_build_arg_and_nothing_else() -> None:
    passed = script_build_args()
    assert set(passed) == set(BUILD_ARGS)
    assert all(variable == name.upper() for name, variable in passed.items())


def test_every_build_arg_variable_has_a_source() -> None:
    """Each build arg comes from the serving build's project, from CodeBuild, or from the script
    itself (the promoted model's prefix and sha256), never from two of them."""
    from plan.config import load_config
    from stacks.image_pipeline import SCRIPT_COMPUTED_ARGS
    from tests.ci_build.buildspec_runner import steps_of
    from tests.conftest import plan_context

    (step,) = [s for s in steps_of(load_config(plan_context())) if s.action_name == "Serve-cpu-arm64"]
    from_project = set(step.env)
    computed = {name.upper() for name in SCRIPT_COMPUTED_ARGS}
    assert BUILDSPEC_COMPUTED_ARGS <= SCRIPT_COMPUTED_ARGS
    assert not computed & from_project, "a value the script computes is not the project's to set"
    script = build_script()
    for variable in set(script_build_args().values()):
        assert variable in from_project | computed | CODEBUILD_BUILTIN_ENV, variable
    for variable in computed:
        assert f"{variable}=" in script, f"the build script never sets {variable}"
    assert from_project | computed | CODEBUILD_BUILTIN_ENV >= {v.upper() for v in BUILD_ARGS}


def test_model_secret_id_matches_the_buildspec(dockerfile: Dockerfile) -> None:
    runs = " ".join(dockerfile.stages["assets"].all("RUN"))
    assert f"type=secret,id={images.AWS_CREDENTIALS_SECRET_ID}," in runs
    assert f'--secret "id={images.AWS_CREDENTIALS_SECRET_ID},' in build_script()
    # Credentials never travel as a build arg or an ENV.
    assert not any("AWS_SECRET" in arg or "AWS_ACCESS" in arg for arg in dockerfile.global_args)


# --- the image that runs -----------------------------------------------------------------------


def test_final_stage_is_the_serving_image_and_every_target_runs_as_non_root(dockerfile: Dockerfile) -> None:
    final = list(dockerfile.stages)[-1]
    assert final == images.SERVE_TARGET
    for target in (images.SERVE_TARGET, images.RUNTIME_TARGET, images.PUBLISHER_TARGET):
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
FIRST_PARTY = ("runtime", "plan")
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
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from plan import contract`
    return {m for m in found if m.split(".")[0] in FIRST_PARTY and module_file(m)}


def shipped_files(packages: tuple[str, ...] = SHIPPED_PACKAGES) -> set[Path]:
    """Every file the shipped packages need: their own, what they import, and the packages above."""
    todo = [p for package in packages for p in (ROOT / package).rglob("*.py")]
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


def copied_sources(dockerfile: Dockerfile, stage: str = "code") -> list[str]:
    """Repository paths a code stage copies (a directory ends with '/')."""
    sources: list[str] = []
    for args in dockerfile.stages[stage].all("COPY"):
        *paths, dest = shlex.split(args)
        assert dest.startswith(CODE_DIR), args
        for path in paths:
            assert not path.startswith("--"), f"the code stage copies from the build context only: {args}"
            assert dest.removeprefix(CODE_DIR) == (path if path.endswith("/") else path.rsplit("/", 1)[0] + "/")
        sources += paths
    return sources


def assert_copies_exactly(sources: list[str], packages: tuple[str, ...]) -> None:
    def copied(path: Path) -> bool:
        rel = path.relative_to(ROOT).as_posix()
        return any(rel == s or (s.endswith("/") and rel.startswith(s)) for s in sources)

    needed = shipped_files(packages)
    missing = sorted(str(p.relative_to(ROOT)) for p in needed if not copied(p))
    assert not missing, f"imported by the shipped programs but not copied: {missing}"
    unused = [s for s in sources if not s.endswith("/") and ROOT / s not in needed]
    assert not unused, f"copied but imported by none of the shipped programs: {unused}"
    needed_paths = [p.relative_to(ROOT).as_posix() for p in needed]
    unused_dirs = [s for s in sources if s.endswith("/") and not any(rel.startswith(s) for rel in needed_paths)]
    assert not unused_dirs, f"directories copied but imported by none of the shipped programs: {unused_dirs}"
    assert not any(copied(p) for package in UNSHIPPED_PACKAGES for p in (ROOT / package).rglob("*.py"))
    assert {p.relative_to(ROOT).parts[0] for p in needed} == set(FIRST_PARTY)


def test_images_copy_exactly_the_code_their_programs_import(dockerfile: Dockerfile) -> None:
    sources = copied_sources(dockerfile)
    for source in sources:
        assert not source.startswith(UNSHIPPED_PACKAGES), f"{source}: the device client and the benchmark stay out"
    assert_copies_exactly(sources, SHIPPED_PACKAGES)


# --- the publisher image ------------------------------------------------------------------------

PUBLISHER_PACKAGES = ("runtime/inventory",)
PUBLISHER_REQUIREMENTS = ROOT / "runtime/requirements-publisher.txt"


def pins(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            out[name.lower()] = version
    return out


def third_party_imports(paths: set[Path]) -> set[str]:
    """Top-level modules the files import that are neither first-party nor the standard library."""
    found: set[str] = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                found.add(node.module.split(".")[0])
    return {m for m in found if m not in FIRST_PARTY and m not in sys.stdlib_module_names and m != "__future__"}


def test_publisher_copies_exactly_the_code_the_inventory_imports(dockerfile: Dockerfile) -> None:
    sources = copied_sources(dockerfile, "publisher-code")
    assert_copies_exactly(sources, PUBLISHER_PACKAGES)
    assert not any(s.startswith(("runtime/server", "runtime/compile", "runtime/artifacts")) for s in sources)
    assert dockerfile.stages["publisher"].all("COPY") == [f"--from=publisher-code {CODE_DIR} {CODE_DIR}"]


def test_publisher_installs_only_what_the_inventory_imports_pinned_as_the_server(dockerfile: Dockerfile) -> None:
    publisher = dockerfile.stages[images.PUBLISHER_TARGET]
    assert publisher.base == f"base-{images.PUBLISHER_BASE_ACCELERATOR}"
    (install, _user) = publisher.all("RUN")
    assert "source=runtime/requirements-publisher.txt" in install and "--no-cache-dir" in install
    assert "requirements.txt," not in install and "extra-index-url" not in install  # no torch
    wanted = pins(PUBLISHER_REQUIREMENTS)
    imported = {name.replace("-", "_") for name in wanted}  # pydantic-settings is imported as pydantic_settings
    assert imported == third_party_imports(shipped_files(PUBLISHER_PACKAGES))
    assert imported == {"boto3", "httpx", "pydantic", "pydantic_settings"}
    server = pins(ROOT / "runtime/requirements.txt")
    assert all(wanted[name] == server[name] for name in wanted), "pinned as in runtime/requirements.txt"


def test_publisher_runs_the_inventory_module(dockerfile: Dockerfile) -> None:
    publisher = dockerfile.stages[images.PUBLISHER_TARGET]
    assert publisher.all("CMD") == [json.dumps(["python", "-m", contract.INVENTORY_MODULE])]
    assert publisher.all("ENTRYPOINT") == ["[]"]
    assert dockerfile.env(images.PUBLISHER_TARGET)["PYTHONPATH"] == CODE_DIR.rstrip("/")
    # The server images' user, so the chart's security context fits every image.
    assert publisher.all("USER") == dockerfile.stages[images.RUNTIME_TARGET].all("USER")


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


def test_healthcheck_speaks_https_when_the_server_terminates_tls(tmp_path: Path) -> None:
    chain, key = Ca.make("healthcheck-test-ca").issue()
    (tmp_path / "chain.pem").write_bytes(chain)
    (tmp_path / "key.pem").write_bytes(key)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "chain.pem", tmp_path / "key.pem")
    server = http.server.HTTPServer(("127.0.0.1", 0), _Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = str(server.server_address[1])

        def check(**env: str) -> int:
            full = {**os.environ, contract.ENV_PORT: port, **env}
            for name in (contract.ENV_TLS_CERT_FILE, contract.ENV_TLS_SECRET_ID):
                if name not in env:
                    full.pop(name, None)
            command = [sys.executable, str(CI / "healthcheck.py"), contract.HEALTH_PATH]
            return subprocess.run(command, env=full, timeout=30, capture_output=True).returncode

        assert check(**{contract.ENV_TLS_CERT_FILE: str(tmp_path / "chain.pem")}) == 0
        assert check(**{contract.ENV_TLS_SECRET_ID: "edge-diffusion/lz-tls"}) == 0
        assert check() == 1  # plain HTTP against a TLS listener fails: the check follows the server's mode
    finally:
        server.shutdown()
        server.server_close()


def test_the_serving_build_verifies_its_model_with_the_standard_library_alone(tmp_path: Path) -> None:
    """The assets stage runs ``python -m runtime.artifacts verify`` on a base image with only the AWS
    CLI installed: the command must import nothing beyond the standard library (``-S``: no
    site-packages at all), and still say in one line what is wrong."""
    run = subprocess.run(
        [sys.executable, "-S", "-m", "runtime.artifacts", "verify", str(tmp_path)],
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": os.environ.get("PATH", "")},
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 1, run.stderr
    (line,) = run.stderr.strip().splitlines()
    assert line.startswith("python -m runtime.artifacts: error: ") and "manifest" in line, line
