"""The README works when pasted: every command of its ```bash blocks runs here as written, or is
dry-run (``make -n``) because it talks to AWS and says so; what it says a command prints, and the
errors its troubleshooting table quotes, are what the code prints. Conventions: tests/readme_doc.py."""

from __future__ import annotations

import http.server
import importlib
import json
import os
import re
import shlex
import signal
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import pytest

from tests import readme_doc
from tests.readme_doc import README, ROOT, Command

TEXT: Final = README.read_text(encoding="utf-8")
COMMANDS: Final = readme_doc.commands(TEXT)
BLOCKS: Final = sorted({command.block for command in COMMANDS})
LOCAL_SERVER: Final = "127.0.0.1:7860"  # where `make serve` listens; the test's server listens elsewhere
PYTHON: Final = ".venv/bin/python"
# Make targets whose recipe the test runs (after `make -n` shows it); the others are only dry-run:
# they run the whole suite, serve until stopped, or rewrite committed files.
RUN_RECIPE: Final = frozenset({"synth", "manifests", "breaking-point"})
# What the commands write in their working directory: never a link back into the repository.
WRITTEN: Final = frozenset({"cdk.out", "dist", "out.png", "endpoints.json", "app.zip"})
# The generated output and caches of the repository are not part of a sandbox.
NOT_LINKED: Final = WRITTEN | {".git", ".pytest_cache", ".mypy_cache", ".ruff_cache", ".hypothesis"}
TIMEOUT_S: Final = 300
NEEDS: Final = readme_doc.NEEDS_ACCOUNT
# Commands that call AWS: the AWS CLI, the CDK CLI, and the make targets that run either.
AWS_CALLS: Final = re.compile(
    r"(^|&& |; )(aws |npx cdk |node_modules/\.bin/cdk "
    r"|make (diff|deploy|deploy-build|deploy-pipeline|destroy|preflight) )"
)


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "HF_HUB_OFFLINE": "1"}
    env.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")
    return {**env, **extra}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pattern(quoted: str) -> re.Pattern[str]:
    """A quoted line as a regex: ``...`` is any text, ``<name>`` a placeholder, the rest literal."""
    parts = re.split(r"(\.\.\.|<[A-Za-z][^<>]*>)", quoted)
    regex = "".join(".*" if p == "..." else ".+" if p.startswith("<") else re.escape(p) for p in parts)
    return re.compile(regex)


def bash(script: str, cwd: Path, env: dict[str, str], timeout: float = TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def make_dry_run(args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """``make -n`` of a README make command (its arguments as the shell parses them)."""
    return bash(f"make -n --no-print-directory {args}", cwd, _env(), timeout=60)


def make_parts(command: Command) -> tuple[str, dict[str, str]]:
    """(target, {VARIABLE: value}) of ``make TARGET [VAR=value ...]``."""
    words = shlex.split(command.text)
    assert words[0] == "make" and len(words) >= 2, f"README line {command.line}: make TARGET [VAR=value ...]"
    targets = [w for w in words[1:] if "=" not in w]
    assert len(targets) == 1, f"README line {command.line}: one make target per command, not {targets}"
    variables = dict(w.split("=", 1) for w in words[1:] if "=" in w)
    return targets[0], variables


def dry_run_checked(command: Command, cwd: Path = ROOT) -> list[str]:
    """The recipe ``make -n`` shows: the target exists, takes the variables shown, and uses their values."""
    target, variables = make_parts(command)
    result = make_dry_run(command.text.removeprefix("make "), cwd)
    assert result.returncode == 0, f"README line {command.line}: {command.text}\n{result.stderr}"
    recipe = result.stdout
    for name, value in variables.items():
        assert value in recipe, f"README line {command.line}: make {target} ignores {name}={value}:\n{recipe}"
    return recipe.splitlines()


def config_args(recipe: list[str]) -> str | None:
    """The ``-c deployment=... -c ...`` arguments the recipe passes to the app, as shell text."""
    line = next((line for line in recipe if " -c deployment=" in line), None)
    return None if line is None else line[line.index("-c deployment=") :]


# --- The sandbox: the repository's files, linked, in a directory of its own ---------------------------
@dataclass
class Sandbox:
    """A working directory that looks like the repository root: what a command writes stays here."""

    path: Path
    port: int
    env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def make(cls, path: Path, port: int) -> Sandbox:
        listed = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()
        names = {name.split("/", 1)[0] for name in listed} | {".venv", "node_modules"}
        for name in sorted(names - NOT_LINKED):
            if (ROOT / name).exists():
                (path / name).symlink_to(ROOT / name)
        return cls(path, port, _env(CDK_OUTDIR=str(path / "cdk.out")))

    def text(self, command: Command) -> str:
        """The command as run: the local server's address is the test's server."""
        return command.text.replace(LOCAL_SERVER, f"127.0.0.1:{self.port}")

    def run(self, script: str) -> subprocess.CompletedProcess[str]:
        assert not any((self.path / name).is_symlink() for name in WRITTEN)
        return bash(script, self.path, self.env)


# --- The local server the `# with make serve running` commands call ----------------------------------
@dataclass
class LocalServer:
    """``make serve``'s command (as ``make -n serve`` shows it) on a free port, started on first use."""

    port: int = field(default_factory=_free_port)
    process: subprocess.Popen[bytes] | None = None
    log: Path | None = None

    def ensure(self, log: Path, *extra: str) -> None:
        if self.process is not None:
            return
        recipe = make_dry_run("serve").stdout.splitlines()
        line = next(line for line in recipe if "-m runtime.server" in line)
        self.log = log
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                ["bash", "-c", f"exec env {line} --port {self.port} --metrics-port 0 {' '.join(extra)}"],
                cwd=ROOT,
                env=_env(),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"make serve's server exited {self.process.returncode}: {log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=2) as answer:
                    if answer.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.25)
        pytest.fail(f"make serve's server not ready after 180 s: {log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


@pytest.fixture(scope="module")
def local_server() -> Iterator[LocalServer]:
    server = LocalServer()
    try:
        yield server
    finally:
        server.stop()


# --- Running one README command ---------------------------------------------------------------------
def app_synth(line: str) -> str:
    """The recipe's ``cdk synth`` line as ``python app.py`` (the CLI's synth without the CLI)."""
    return re.sub(r"^\S*node_modules/\.bin/cdk synth( --quiet)?( --output \S+)?", f"{PYTHON} app.py", line)


def run_make(command: Command, sandbox: Sandbox) -> list[subprocess.CompletedProcess[str]]:
    target, _ = make_parts(command)
    recipe = dry_run_checked(Command(sandbox.text(command), command.comment, command.line, command.block), sandbox.path)
    if target not in RUN_RECIPE:
        return []
    lines = [app_synth(line) for line in recipe if re.match(r"^\S*node_modules/\.bin/cdk synth ", line)]
    lines += [line for line in recipe if re.match(rf"^{re.escape(PYTHON)} -m (?!pip )", line)]
    assert lines, f"README line {command.line}: nothing to run in make -n {target}:\n" + "\n".join(recipe)
    results = []
    for line in lines:
        result = sandbox.run(line)
        results.append(result)
        if result.returncode != 0:
            break
    return results


def check_prints(command: Command, results: list[subprocess.CompletedProcess[str]]) -> None:
    output = [line.strip() for result in results for line in (result.stdout + result.stderr).splitlines()]
    shown = "\n".join(output[-40:])
    failed = [result for result in results if result.returncode != 0]
    if command.fails:
        assert failed, f"README line {command.line}: {command.text} was to fail, and exited 0:\n{shown}"
    else:
        assert not failed, f"README line {command.line}: {command.text} exited {failed[0].returncode}:\n{shown}"
    for expected in command.prints:
        regex = pattern(expected.strip())
        assert any(regex.fullmatch(line) for line in output), (
            f"README line {command.line}: {command.text} did not print\n  {expected}\nit printed:\n{shown}"
        )


def check_marked(command: Command) -> None:
    """A command that needs an AWS account: its make target exists and takes its variables, and the
    config it passes is valid; nothing else of it runs here."""
    if not command.text.startswith("make "):
        return
    recipe = dry_run_checked(command)
    args = config_args(recipe)
    if args is None or command.placeholders:
        return
    result = bash(f"{PYTHON} -m plan.deployments --stacks {args}", ROOT, _env(), timeout=60)
    assert result.returncode == 0, (
        f"README line {command.line}: {command.text}: the config is refused:\n{result.stderr}"
    )


@pytest.mark.parametrize(
    "block", BLOCKS, ids=[f"line-{next(c.line for c in COMMANDS if c.block == b)}" for b in BLOCKS]
)
def test_readme_bash_block(block: int, tmp_path: Path, local_server: LocalServer) -> None:
    """The commands of one ```bash block, in order, in one working directory."""
    sandbox = Sandbox.make(tmp_path, local_server.port)
    for command in (c for c in COMMANDS if c.block == block):
        if command.needs_account:
            check_marked(command)
            continue
        assert not command.placeholders, (
            f"README line {command.line}: {command.text} has placeholders {command.placeholders}: "
            f"fill them in, or end it with '# {readme_doc.NEEDS_ACCOUNT}' if it needs AWS"
        )
        if command.needs_server:
            local_server.ensure(tmp_path.parent / "make-serve.log")
        if command.text.startswith("make "):
            results = run_make(command, sandbox)
        else:
            results = [sandbox.run(sandbox.text(command))]
        check_prints(command, results)


def test_every_command_is_run_or_says_it_needs_an_aws_account() -> None:
    """Commands that call AWS cannot run here: they must say so. A command that says so and calls
    no AWS API itself names something of your account (a ``<placeholder>``); nothing else may."""
    for command in COMMANDS:
        calls_aws = bool(AWS_CALLS.search(command.text))
        if calls_aws:
            assert command.needs_account, f"README line {command.line}: {command.text}: end it with '# {NEEDS}'"
        elif command.needs_account:
            assert command.placeholders, f"README line {command.line}: {command.text} runs here: drop '# {NEEDS}'"
    marked = sum(c.needs_account for c in COMMANDS)
    print(f"README commands: {len(COMMANDS) - marked} run or dry-run here, {marked} need an AWS account")
    assert len(COMMANDS) - marked >= 10 and marked >= 5


def test_the_readme_opens_with_make_synth_and_make_test_then_its_contents() -> None:
    lines = TEXT.splitlines()
    assert lines[0].startswith("# ") and lines[2] == "```bash", lines[:3]
    first = [c.text for c in COMMANDS if c.block == 0]
    assert first == ["make synth", "make test"], first
    after = next(line for line in lines[lines.index("```", 3) + 1 :] if line.strip())
    assert after == "<!-- toc:begin -->", after


def test_generated_blocks_are_up_to_date() -> None:
    """The contents (the ## headings) and the make targets (``make help``)."""
    assert readme_doc.render(TEXT) == TEXT, "README.md is stale: run .venv/bin/python -m tests.readme_doc --write"


def test_every_make_target_is_in_the_readme() -> None:
    listed = set(re.findall(r"^\| `make ([a-z-]+)` \|", TEXT, re.MULTILINE))
    assert {target for target, _ in readme_doc.make_help()} == listed


def test_tables_written_by_hand_stay_readable() -> None:
    long = [(n, len(row)) for n, row in readme_doc.table_rows(TEXT) if len(row) > readme_doc.MAX_ROW]
    assert not long, f"README rows over {readme_doc.MAX_ROW} characters (line, length): {long}"


def test_links_lead_somewhere() -> None:
    anchors = readme_doc.anchors(TEXT)
    prose = "\n".join(line for _, line in readme_doc.outside_code(TEXT))
    for target in re.findall(r"\]\(([^)\s]+)\)", prose):
        if target.startswith(("http://", "https://")):
            continue
        if target.startswith("#"):
            assert target[1:] in anchors, f"README links to #{target[1:]}, which no heading is"
        else:
            assert (ROOT / target.split("#", 1)[0]).exists(), f"README links to {target}, which does not exist"


# --- The troubleshooting table: what it quotes is what the code prints --------------------------------
def troubleshooting_quotes() -> list[str]:
    section = TEXT.split("\n## Troubleshooting\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| you see")]
    quotes = [quote for row in rows for quote in re.findall(r"`([^`]+)`", row.split(" | ")[0])]
    # Names of commands, states and statuses, not printed lines.
    return [q for q in quotes if not re.fullmatch(r"make [a-z-]+|[A-Za-z-]+|\d{3}", q)]


def _run(args: list[str], **extra: str) -> list[str]:
    result = subprocess.run(args, cwd=ROOT, env=_env(**extra), capture_output=True, text=True, timeout=300, check=False)
    return (result.stdout + result.stderr).splitlines()


def _require_account() -> list[str]:
    recipe = dry_run_checked(Command("make diff", "", 0, -1))
    line = next(line for line in recipe if "--require-account" in line)
    return bash(line, ROOT, _env()).stderr.splitlines()


def _preflight_checks() -> Any:
    """The checks module of what ``make preflight`` runs."""
    recipe = make_dry_run("preflight").stdout
    module = re.search(rf"^{re.escape(PYTHON)} -m (?!pip )(\S+)", recipe, re.MULTILINE)
    assert module, recipe
    return importlib.import_module(f"{module.group(1)}.checks")


class _Client:
    def __init__(self, **answers: Any) -> None:
        self.answers = answers

    def __getattr__(self, name: str) -> Callable[..., Any]:
        return lambda **_: self.answers[name]


class _Session:
    def __init__(self, **clients: _Client) -> None:
        self.clients = clients

    def client(self, service_name: str, region_name: str | None = None) -> Any:
        return self.clients[service_name]


def _preflight(check: str, **clients: _Client) -> list[str]:
    from plan.config import cli_context
    from plan.deployments import load_plan

    checks = _preflight_checks()
    deployment = load_plan(cli_context(["-c", "deployment=dev"])).selected
    return [result.line for result in getattr(checks, check)(checks.Target(deployment, _Session(**clients)))]


def _example_account() -> list[str]:
    return _preflight("check_credentials", sts=_Client(get_caller_identity={"Account": "222222222222"}))


def _zone_not_opted_in() -> list[str]:
    zone = {"ZoneName": "us-west-2-lax-1a", "GroupName": "us-west-2-lax-1", "OptInStatus": "not-opted-in"}
    return _preflight("check_local_zones", ec2=_Client(describe_availability_zones={"AvailabilityZones": [zone]}))


def _invalid_config(tmp_path: Path) -> list[str]:
    return _run([PYTHON, "app.py", "-c", "localZones=us-east-1-bos-1a"], CDK_OUTDIR=str(tmp_path / "cdk.out"))


def _nag_finding(tmp_path: Path) -> list[str]:
    """app.py's synth of an app with a cdk-nag finding (a queue without TLS or a dead-letter queue)."""
    script = (
        "import sys, aws_cdk as cdk\n"
        "from aws_cdk import aws_sqs as sqs\n"
        "from cdk_nag import AwsSolutionsChecks\n"
        "import app\n"
        "staging, out = sys.argv[1:]\n"
        "application = cdk.App(outdir=staging)\n"
        "sqs.Queue(cdk.Stack(application, 'Canary'), 'Queue')\n"
        "cdk.Validations.of(application).add_plugins(AwsSolutionsChecks(application))\n"
        "from pathlib import Path\n"
        "sys.exit(app.synthesize(application, Path(staging), Path(out), announce=True))\n"
    )
    (tmp_path / "staging").mkdir()
    return _run([PYTHON, "-c", script, str(tmp_path / "staging"), str(tmp_path / "cdk.out")])


def _expired_token() -> list[str]:
    import datetime

    import jwt
    from cryptography.hazmat.primitives.asymmetric import rsa

    from runtime.client.client import RequestRejectedError
    from runtime.server.auth import TokenError, TokenVerifier

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=1)
    claims = {"iss": "edge-diffusion", "aud": "serving", "sub": "device", "iat": past, "exp": past}
    token = jwt.encode(claims, key, algorithm="RS256")
    verifier = TokenVerifier(key.public_key(), issuer="edge-diffusion", audience="serving")
    with pytest.raises(TokenError) as refused:
        verifier.verify_header(f"Bearer {token}")
    return [str(RequestRejectedError(401, refused.value.message))]


def _untrusted_certificate(tmp_path: Path) -> list[str]:
    """The client against an HTTPS server whose CA it does not trust."""
    from tests.tls_ca import Ca

    _, chain, key = Ca.make("private CA").write(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(chain, key)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"https://127.0.0.1:{server.server_address[1]}"
        out = tmp_path / "out.png"
        return _run(
            [PYTHON, "-m", "runtime.client", "a cat", "-o", str(out), "--fallback-url", url, "--deadline", "10"]
        )
    finally:
        server.shutdown()


def _over_deadline(tmp_path: Path) -> list[str]:
    """The 422 of the tiny server with a deadline no request meets: refused up front, not after it."""
    server = LocalServer()
    try:
        server.ensure(tmp_path / "server.log", "--request-timeout-s", "0.001", "--no-ui")
        body = json.dumps({"prompt": "a cat", "steps": 4, "width": 64, "height": 64}).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{server.port}/v1/images", body, {"Content-Type": "application/json"}
        )
        with pytest.raises(urllib.error.HTTPError) as answer:
            urllib.request.urlopen(request, timeout=60)
        assert answer.value.code == 422
        return [json.loads(answer.value.read())["error"]]
    finally:
        server.stop()


def _client_without_httpx() -> list[str]:
    script = "import runpy, sys; sys.modules['httpx'] = None; runpy.run_module('runtime.client', run_name='__main__')"
    return _run([PYTHON, "-c", script])


def _model_that_cannot_load() -> list[str]:
    """A pod's server (the charts set EDGE_DIFFUSION_EXIT_ON_FAILED_LOAD) whose model cannot load: it exits."""
    server = [PYTHON, "-m", "runtime.server", "--model", "tiny", "--host", "127.0.0.1"]
    ports = ["--port", str(_free_port()), "--metrics-port", str(_free_port())]
    env = {"EDGE_DIFFUSION_AUTH": "none", "EDGE_DIFFUSION_EXIT_ON_FAILED_LOAD": "1"}
    return _run([*server, *ports], **env, EDGE_DIFFUSION_MODEL_SOURCE="/nonexistent/model-dir")


# Each quote of the troubleshooting table -> what prints it (the quote's start picks the producer).
PRODUCERS: Final[dict[str, Callable[[Path], list[str]]]] = {
    "error: account is the example": lambda _: _require_account(),
    "FAIL credentials:": lambda _: _example_account(),
    "error: invalid config": _invalid_config,
    "error: AwsSolutions-": _nag_finding,
    "FAIL local zone": lambda _: _zone_not_opted_in(),
    "request rejected (401)": lambda _: _expired_token(),
    "TLS verification failed": _untrusted_certificate,
    "steps: ": _over_deadline,
    "python -m runtime.client: error:": lambda _: _client_without_httpx(),
    "exiting (EDGE_DIFFUSION_EXIT_ON_FAILED_LOAD)": lambda _: _model_that_cannot_load(),
}


def test_troubleshooting_quotes_what_the_code_prints(tmp_path: Path) -> None:
    quotes = troubleshooting_quotes()
    assert len(quotes) >= len(PRODUCERS) - 1, quotes
    for number, quote in enumerate(quotes):
        producer = next((p for start, p in PRODUCERS.items() if quote.startswith(start)), None)
        assert producer is not None, f"troubleshooting quotes `{quote}`: add what prints it to PRODUCERS"
        work = tmp_path / str(number)
        work.mkdir()
        printed = [line.strip() for line in producer(work)]
        regex = pattern(quote)
        assert any(regex.search(line) for line in printed), f"`{quote}` is not what the code prints:\n" + "\n".join(
            printed[-20:]
        )


def test_the_client_is_run_with_the_project_python() -> None:
    """``python -m runtime.client`` needs the client's requirements: the README runs it with .venv's."""
    for command in COMMANDS:
        assert not re.match(r"^python3? ", command.text), f"README line {command.line}: use {PYTHON}"
