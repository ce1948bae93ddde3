"""The GPU kit: the benchmark and every package it needs but torch, for a CUDA host without internet.

Here, on any machine whose pip reaches PyPI, with the repo's .venv (`make deps`):

    .venv/bin/python -m runtime.bench.kit build        # dist/gpu-kit/ and dist/gpu-kit.tar.gz

There, on a CUDA host whose Python has torch (a CUDA build) and no internet:

    tar xzf gpu-kit.tar.gz && cd gpu-kit && python3 -m runtime.bench.kit run

`build` reads the runtime's requirement files without torch, follows their dependencies through
the metadata of the environment it runs in (the .venv those files installed: the versions the
tests run), and downloads each package as a wheel for the target platform (manylinux x86_64,
CPython 3.11 by default) with `pip download --no-deps`; beside the wheels it puts the repo's
runtime/ and plan/ and a manifest (kit.json). torch is left out: a multi-GB CUDA build is the
host's own, matched to its driver.

`run` installs the wheels into the running Python's environment with
`pip install --no-index --find-links wheels` (its pip configuration and PIP_* variables ignored,
so nothing is fetched and the host's torch is kept), then runs `python -m runtime.bench.gpu`
with the remaining flags: SD 2.1 at 20 steps guided and the SD-Turbo class at 1 step, batch 1,
4 and 8, 512x512 float16, in a table headed by the GPU's name.

Standard library only at import: `run` starts before any package of the kit is installed, so this
module reads its few flags itself, with the same one-line errors as the settings framework.
"""

from __future__ import annotations

import datetime
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Final

from runtime.errors import error_exit

PROG: Final = "python -m runtime.bench.kit"
ROOT: Final = Path(__file__).resolve().parents[2]  # the repo here; the unpacked kit there
REQUIREMENTS: Final = (Path("runtime/requirements.txt"),)
EXCLUDED: Final = ("torch",)  # the host's own CUDA build
CODE: Final = ("runtime", "plan")
DEFAULT_OUT: Final = Path("dist/gpu-kit")
DEFAULT_PYTHON: Final = "3.11"
MANIFEST: Final = "kit.json"
WHEELS: Final = "wheels"
KIT_REQUIREMENTS: Final = "requirements.txt"
BENCH_MODULE: Final = "runtime.bench.gpu"
# manylinux_2_N wheels run on glibc 2.N and later; pip matches these tags exactly, so each is named.
# 2.28 (RHEL 8, Debian 10, Ubuntu 18.10) and older: every current CUDA host image has a newer glibc.
PLATFORMS: Final = (
    *(f"manylinux_2_{n}_x86_64" for n in range(28, 16, -1)),
    "manylinux2014_x86_64",  # pip adds manylinux2010 and manylinux1
)
USAGE: Final = (
    f"usage: {PROG} build [--out DIR] [--python-version X.Y] [--requirements FILE]... [--exclude NAME,...]\n"
    f"       {' ' * len(PROG)}       [-- PIP DOWNLOAD OPTIONS]\n"
    f"       {PROG} run [BENCHMARK FLAGS] (see python -m {BENCH_MODULE} --help)"
)


class KitError(Exception):
    """The kit cannot be built or run; the message is one line saying why and what to do."""

    code = 1


class UsageError(KitError):
    """A flag or command that is not allowed (exit 2, as the settings framework's refusals)."""

    code = 2


# --- build: which packages, at which versions -----------------------------------------------------


def canonical(name: str) -> str:
    """A distribution name as PEP 503 compares them."""
    from packaging.utils import canonicalize_name

    return str(canonicalize_name(name))


def read_requirements(path: Path) -> list[str]:
    """A requirement file's requirement lines, following ``-r`` includes; comments and blanks dropped."""
    lines: list[str] = []
    try:
        text = path.read_text()
    except OSError as exc:
        raise KitError(f"requirements file {str(path)!r} cannot be read: {exc.strerror}") from None
    for raw in text.splitlines():
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith(("-r ", "--requirement ")):
            lines += read_requirements(path.parent / line.split(None, 1)[1])
        elif line.startswith("-"):
            raise UsageError(f"{path}: option {line!r} is not allowed in a kit's requirements; allowed: -r FILE")
        else:
            lines.append(line)
    return lines


def target_environment(python_version: str) -> dict[str, str]:
    """PEP 508 marker values of the target: CPython ``python_version`` on Linux x86_64."""
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    full = platform.python_version() if here == python_version else f"{python_version}.0"
    return {
        "implementation_name": "cpython",
        "implementation_version": full,
        "os_name": "posix",
        "platform_machine": "x86_64",
        "platform_python_implementation": "CPython",
        "platform_release": "",
        "platform_system": "Linux",
        "platform_version": "",
        "python_full_version": full,
        "python_version": python_version,
        "sys_platform": "linux",
    }


@dataclass(frozen=True)
class Pin:
    """One package of the kit: its name as published, its version, and who needs it."""

    name: str
    version: str
    needed_by: str

    def __str__(self) -> str:
        return f"{self.name}=={self.version}"


def installed(path: Sequence[str] | None = None) -> dict[str, Any]:
    """The distributions of an environment (this one by default) by canonical name."""
    found: dict[str, Any] = {}
    dists = metadata.distributions() if path is None else metadata.distributions(path=list(path))
    for dist in dists:
        name = dist.metadata["Name"]
        if name:
            found.setdefault(canonical(name), dist)
    return found


def closure(
    roots: Iterable[str], dists: Mapping[str, Any], environment: Mapping[str, str], excluded: Iterable[str] = EXCLUDED
) -> list[Pin]:
    """Every package ``roots`` need on the target, at the versions in ``dists``, without ``excluded``.

    A dependency reached only through an excluded package (torch's CUDA libraries, triton) is
    left out with it. Raises KitError when a needed package is missing or at a version the
    requirement does not allow: the environment is not the one the requirement files describe.
    """
    from packaging.requirements import InvalidRequirement, Requirement

    skip = {canonical(name) for name in excluded}
    pins: dict[str, Pin] = {}
    seen: set[tuple[str, str]] = set()  # (package, extra) already followed
    queue: list[tuple[str, str]] = [(line, "the requirement files") for line in roots]
    while queue:
        text, parent = queue.pop(0)
        try:
            req = Requirement(text)
        except InvalidRequirement as exc:
            raise KitError(f"requirement {text!r} (of {parent}) cannot be read: {exc}") from None
        key = canonical(req.name)
        if key in skip:
            continue
        if req.marker is not None and not req.marker.evaluate({**environment, "extra": ""}):
            continue
        dist = dists.get(key)
        if dist is None:
            raise KitError(
                f"{req.name} (needed by {parent}) is not installed in {sys.prefix}: build the kit from the "
                "environment the requirement files installed (make deps)"
            )
        version = dist.version
        if req.specifier and not req.specifier.contains(version, prereleases=True):
            raise KitError(
                f"{req.name}{req.specifier} (needed by {parent}) is installed at {version} in {sys.prefix}: "
                "build the kit from the environment the requirement files installed (make deps)"
            )
        pins.setdefault(key, Pin(dist.metadata["Name"], version, parent))
        for extra in ("", *sorted(req.extras)):
            if (key, extra) in seen:
                continue
            seen.add((key, extra))
            for dep in dist.requires or []:
                dep_req = Requirement(dep)
                if _wanted(dep_req.marker, environment, extra):
                    dep_req.marker = None
                    queue.append((str(dep_req), f"{dist.metadata['Name']}{f'[{extra}]' if extra else ''}"))
    return sorted(pins.values(), key=lambda pin: canonical(pin.name))


def _wanted(marker: Any, environment: Mapping[str, str], extra: str) -> bool:
    """Whether a dependency applies on the target: for ``extra`` "", the base ones; else only that extra's own."""
    if marker is None:
        return extra == ""
    base = bool(marker.evaluate({**environment, "extra": ""}))
    return base if extra == "" else bool(marker.evaluate({**environment, "extra": extra})) and not base


def roots_of(lines: Iterable[str], excluded: Iterable[str] = EXCLUDED) -> list[str]:
    """The requirement lines without the excluded packages (torch)."""
    from packaging.requirements import InvalidRequirement, Requirement

    skip = {canonical(name) for name in excluded}
    roots = []
    for line in lines:
        try:
            name = Requirement(line).name
        except InvalidRequirement as exc:
            raise KitError(f"requirement {line!r} cannot be read: {exc}") from None
        if canonical(name) not in skip:
            roots.append(line)
    return roots


# --- build: the directory and the tarball -------------------------------------------------------


def download_command(pins: Sequence[Pin], wheels: Path, python_version: str, pip_options: Sequence[str]) -> list[str]:
    """``pip download`` of exactly these versions as wheels for the target, dependencies not followed."""
    abi = "cp" + python_version.replace(".", "")
    platforms = [arg for tag in PLATFORMS for arg in ("--platform", tag)]
    return [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--disable-pip-version-check",
        "--quiet",
        "--no-deps",
        "--only-binary=:all:",
        "--implementation",
        "cp",
        "--python-version",
        python_version,
        "--abi",
        abi,
        *platforms,
        "--dest",
        str(wheels),
        *pip_options,
        *(str(pin) for pin in pins),
    ]


def directory_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def build(
    out: Path,
    python_version: str = DEFAULT_PYTHON,
    requirement_files: Sequence[Path] = REQUIREMENTS,
    pip_options: Sequence[str] = (),
    excluded: Sequence[str] = EXCLUDED,
    source: Path = ROOT,
    dists: Mapping[str, Any] | None = None,
    log: Any = print,
) -> Path:
    """Build the kit in ``out`` (replacing it) and ``out``.tar.gz; returns the tarball's path.

    ``excluded`` packages (torch always) are left out with what only they need.
    """
    excluded = tuple(dict.fromkeys((*EXCLUDED, *excluded)))
    lines = [line for path in requirement_files for line in read_requirements(source / path)]
    roots = roots_of(lines, excluded)
    env = target_environment(python_version)
    pins = closure(roots, installed() if dists is None else dists, env, excluded)
    if out.exists():
        shutil.rmtree(out)
    wheels = out / WHEELS
    wheels.mkdir(parents=True)
    log(
        f"downloading {len(pins)} wheels for CPython {python_version} manylinux x86_64 "
        f"(left out: {', '.join(excluded)})"
    )
    done = subprocess.run(download_command(pins, wheels, python_version, pip_options), check=False)
    if done.returncode != 0:
        raise KitError(f"pip download failed (exit {done.returncode}); its lines above name the package")
    have = {canonical(f.name.split("-")[0]) for f in wheels.glob("*.whl")}
    missing = [str(pin) for pin in pins if canonical(pin.name) not in have]
    if missing:
        raise KitError(f"pip download left out {', '.join(missing)}")
    for package in CODE:
        shutil.copytree(source / package, out / package, ignore=shutil.ignore_patterns("__pycache__", "*.py[co]"))
    (out / KIT_REQUIREMENTS).write_text(
        "# The benchmark's requirements without torch (the host's own); pip install --no-index --find-links wheels\n"
        + "".join(f"{line}\n" for line in roots)
    )
    manifest = {
        "python_version": python_version,
        "platforms": list(PLATFORMS),
        "excluded": list(excluded),
        "requirements": roots,
        "packages": {pin.name: pin.version for pin in pins},
        "built": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "commit": _commit(source),
        "run": f"python3 -m runtime.bench.kit run  (then the flags of python -m {BENCH_MODULE})",
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    tarball = out.parent / f"{out.name}.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(out, arcname=out.name)
    log(
        f"kit: {out} ({directory_size(out) / 2**20:.1f} MiB, {len(pins)} wheels) and {tarball} "
        f"({tarball.stat().st_size / 2**20:.1f} MiB)"
    )
    log(f"on the CUDA host: tar xzf {tarball.name} && cd {out.name} && python3 -m runtime.bench.kit run")
    return tarball


def _commit(source: Path) -> str | None:
    try:
        done = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True, check=False
        )
    except OSError:
        return None
    return done.stdout.strip() or None


# --- run: on the CUDA host ---------------------------------------------------------------------


def install_command(kit: Path) -> list[str]:
    """pip install of the kit's requirements from its wheels alone: no index, no configuration, no PIP_* variable."""
    return [
        sys.executable,
        "-m",
        "pip",
        "--isolated",
        "install",
        "--disable-pip-version-check",
        "--no-index",
        "--find-links",
        str(kit / WHEELS),
        "-r",
        str(kit / KIT_REQUIREMENTS),
    ]


def install_environment() -> dict[str, str]:
    """The environment pip runs in: with PIP_CONFIG_FILE=os.devnull pip reads no configuration file at all."""
    return {**os.environ, "PIP_CONFIG_FILE": os.devnull}


def check_host(kit: Path) -> None:
    """Refuse, in one line, a directory that is no kit, another Python than its wheels', or a Python without torch."""
    try:
        manifest = json.loads((kit / MANIFEST).read_text())
    except (OSError, ValueError):
        raise KitError(f"{kit} is not an unpacked kit (no readable {MANIFEST}): build one with {PROG} build") from None
    wanted, here = str(manifest.get("python_version")), f"{sys.version_info.major}.{sys.version_info.minor}"
    if here != wanted or platform.machine() != "x86_64" or sys.implementation.name != "cpython":
        raise KitError(
            f"the kit's wheels are for CPython {wanted} on Linux x86_64; this is {sys.implementation.name} "
            f"{platform.python_version()} on {platform.machine()}: rebuild it with --python-version {here}"
        )
    if importlib.util.find_spec("torch") is None:
        raise KitError(
            f"{sys.executable} has no torch: the kit brings every package but torch; run it with the "
            "Python that has the host's CUDA build of torch"
        )


def run(bench_args: Sequence[str], kit: Path = ROOT) -> int:
    """Install the kit's wheels offline into this Python's environment, then run the benchmark."""
    check_host(kit)
    print(f"installing the kit's wheels offline: {' '.join(install_command(kit)[1:])}", flush=True)
    done = subprocess.run(install_command(kit), env=install_environment(), check=False)
    if done.returncode != 0:
        raise KitError(f"pip could not install the kit's wheels (exit {done.returncode}): its lines above say why")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}  # no internet: nothing may try the Hub
    return subprocess.run([sys.executable, "-m", BENCH_MODULE, *bench_args], cwd=kit, env=env, check=False).returncode


# --- command line ----------------------------------------------------------------------------


@dataclass(frozen=True)
class BuildArgs:
    out: Path = DEFAULT_OUT
    python_version: str = DEFAULT_PYTHON
    requirements: tuple[Path, ...] = REQUIREMENTS
    pip_options: tuple[str, ...] = ()
    exclude: tuple[str, ...] = EXCLUDED


def parse_build(argv: Sequence[str]) -> BuildArgs:
    """build's flags; everything after ``--`` goes to pip download (e.g. --no-index --find-links DIR)."""
    values: dict[str, Any] = {}
    requirements: list[Path] = []
    exclude: list[str] = list(EXCLUDED)
    args = list(argv)
    pip_options: tuple[str, ...] = ()
    if "--" in args:
        cut = args.index("--")
        args, pip_options = args[:cut], tuple(args[cut + 1 :])
    it = iter(args)
    for arg in it:
        flag, has_inline, inline = arg.partition("=")
        if flag not in ("--out", "--python-version", "--requirements", "--exclude"):
            raise UsageError(f"unrecognized arguments: {arg}")
        value = inline if has_inline else next(it, None)
        if not value or value.startswith("--"):
            raise UsageError(f"argument {flag}: expected one argument")
        if flag == "--out":
            values["out"] = Path(value)
        elif flag == "--requirements":
            requirements.append(Path(value))
        elif flag == "--exclude":
            exclude += [name for name in value.replace(",", " ").split() if name]
        else:
            parts = value.split(".")
            if len(parts) != 2 or not all(p.isdigit() for p in parts) or parts[0] != "3":
                raise UsageError(f"argument --python-version: {value!r} is not allowed; allowed: 3.N, e.g. 3.11")
            values["python_version"] = value
    return BuildArgs(
        requirements=tuple(requirements) or REQUIREMENTS,
        pip_options=pip_options,
        exclude=tuple(dict.fromkeys(exclude)),
        **values,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if args else 2
    command, rest = args[0], args[1:]
    try:
        if command == "build":
            build_args = parse_build(rest)
            build(
                build_args.out,
                build_args.python_version,
                build_args.requirements,
                build_args.pip_options,
                build_args.exclude,
            )
            return 0
        if command == "run":
            return run(rest)
        raise UsageError(f"command {command!r} is not allowed; allowed: build, run")
    except KitError as exc:
        return error_exit(PROG, exc, exc.code)


if __name__ == "__main__":
    sys.exit(main())
