"""The GPU kit: which packages it takes, the kit it builds, and its offline install and run.

Nothing here reaches an index: the packages are made up (their metadata in a temporary site, their
wheels in a temporary folder that pip reads with --no-index), so a package that installs came from
the kit.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

import pytest

from runtime.bench import kit
from tests.runtime.conftest import ROOT

# name, version, Requires-Dist: an app that needs torch (left out with its CUDA library), a base
# dependency torch shares, an extra, and dependencies for other platforms and Pythons.
PACKAGES: dict[str, tuple[str, list[str]]] = {
    "kit-app": (
        "1.0",
        [
            "kit-lib>=1",
            "torch>=2",
            "kit-extraful[fast]==2.0",
            "kit-windows; sys_platform == 'win32'",
            "kit-old; python_version < '3.8'",
        ],
    ),
    "torch": ("2.0", ["kit-nvidia", "kit-lib"]),
    "kit-lib": ("1.5", []),
    "kit-extraful": ("2.0", ["kit-speedup; extra == 'fast'", "kit-slow; extra == 'slow'"]),
    "kit-speedup": ("1.0", []),
    "kit-nvidia": ("1.0", []),
    "kit-slow": ("1.0", []),
}
NEEDED = ["kit-app==1.0", "kit-extraful==2.0", "kit-lib==1.5", "kit-speedup==1.0"]


def dist_name(name: str) -> str:
    return name.replace("-", "_")


def metadata_text(name: str, version: str, requires: Sequence[str]) -> str:
    extras = sorted({r.split("extra == '")[1].rstrip("'") for r in requires if "extra == '" in r})
    lines = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
    lines += [f"Provides-Extra: {extra}" for extra in extras] + [f"Requires-Dist: {r}" for r in requires]
    return "\n".join(lines) + "\n"


def fake_site(path: Path, packages: dict[str, tuple[str, list[str]]] = PACKAGES) -> Path:
    """An environment's metadata: one .dist-info per package."""
    for name, (version, requires) in packages.items():
        info = path / f"{dist_name(name)}-{version}.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(metadata_text(name, version, requires))
    return path


def make_wheel(folder: Path, name: str, version: str, requires: Sequence[str] = ()) -> Path:
    """A pure-Python wheel whose module says its version."""
    module, info = dist_name(name), f"{dist_name(name)}-{version}.dist-info"
    files = {
        f"{module}/__init__.py": f"VERSION = {version!r}\n",
        f"{info}/METADATA": metadata_text(name, version, requires),
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    files[f"{info}/RECORD"] = "\n".join([*record, f"{info}/RECORD,,"]) + "\n"
    wheel = folder / f"{dist_name(name)}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for path, text in files.items():
            zf.writestr(path, text)
    return wheel


def wheel_folder(path: Path, packages: dict[str, tuple[str, list[str]]] = PACKAGES) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for name, (version, requires) in packages.items():
        make_wheel(path, name, version, requires)
    return path


# --- which packages ------------------------------------------------------------------------------
def test_the_runtime_requirements_without_torch_are_the_roots() -> None:
    lines = kit.read_requirements(ROOT / "runtime/requirements.txt")
    assert any(line.startswith("torch==") for line in lines)
    roots = kit.roots_of(lines)
    assert not any(line.startswith("torch") for line in roots) and len(roots) == len(lines) - 1
    assert any(line.startswith("diffusers==") for line in roots)  # pinned: the kit holds what the tests ran


def test_requirement_files_follow_includes_and_refuse_other_options(tmp_path: Path) -> None:
    (tmp_path / "base.txt").write_text("# comment\nkit-lib==1.5  # pinned\n\n")
    (tmp_path / "all.txt").write_text("-r base.txt\nkit-app==1.0\n")
    assert kit.read_requirements(tmp_path / "all.txt") == ["kit-lib==1.5", "kit-app==1.0"]
    (tmp_path / "bad.txt").write_text("--index-url https://example.invalid/simple\n")
    with pytest.raises(kit.UsageError, match="is not allowed in a kit's requirements; allowed: -r FILE"):
        kit.read_requirements(tmp_path / "bad.txt")
    with pytest.raises(kit.KitError, match="cannot be read"):
        kit.read_requirements(tmp_path / "missing.txt")


def test_the_closure_leaves_out_torch_and_what_only_torch_needs(tmp_path: Path) -> None:
    dists = kit.installed([str(fake_site(tmp_path))])
    pins = kit.closure(["kit-app==1.0"], dists, kit.target_environment("3.11"))
    assert [str(pin) for pin in pins] == NEEDED  # kit-lib stays: kit-app needs it too; kit-nvidia goes with torch
    assert {pin.name: pin.needed_by for pin in pins}["kit-speedup"] == "kit-extraful[fast]"
    with_torch = kit.closure(["kit-app==1.0"], dists, kit.target_environment("3.11"), excluded=())
    assert {"torch", "kit-nvidia"} <= {pin.name for pin in with_torch}


def test_a_package_the_environment_lacks_or_pins_otherwise_is_one_line(tmp_path: Path) -> None:
    dists = kit.installed([str(fake_site(tmp_path))])
    with pytest.raises(kit.KitError) as missing:
        kit.closure(["kit-app==1.0"], dists, kit.target_environment("3.7"))  # kit-old applies to Python 3.7
    assert str(missing.value).startswith("kit-old (needed by kit-app) is not installed in ")
    with pytest.raises(kit.KitError) as other:
        kit.closure(["kit-lib==2.0"], dists, kit.target_environment("3.11"))
    assert str(other.value).startswith("kit-lib==2.0 (needed by the requirement files) is installed at 1.5 in ")
    with pytest.raises(kit.KitError, match="requirement 'kit-lib==' cannot be read"):
        kit.roots_of(["kit-lib=="])


# --- the kit -------------------------------------------------------------------------------------
def build_fake_kit(tmp_path: Path, extra_roots: Sequence[str] = ()) -> Path:
    site = fake_site(tmp_path / "site")
    wheels = wheel_folder(tmp_path / "index")
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("".join(f"{line}\n" for line in ["torch==2.0", "kit-app==1.0", *extra_roots]))
    lines: list[str] = []
    tarball = kit.build(
        tmp_path / "out" / "gpu-kit",
        requirement_files=[requirements],
        pip_options=["--no-index", "--find-links", str(wheels)],
        dists=kit.installed([str(site)]),
        log=lines.append,
    )
    assert lines[-1] == "on the CUDA host: tar xzf gpu-kit.tar.gz && cd gpu-kit && python3 -m runtime.bench.kit run"
    return tarball


def test_the_kit_holds_the_wheels_the_code_and_a_manifest(tmp_path: Path) -> None:
    tarball = build_fake_kit(tmp_path)
    out = tmp_path / "out" / "gpu-kit"
    assert sorted(p.name for p in (out / "wheels").iterdir()) == [
        f"{dist_name(pin.split('==')[0])}-{pin.split('==')[1]}-py3-none-any.whl" for pin in NEEDED
    ]
    assert (out / "requirements.txt").read_text().splitlines()[1:] == ["kit-app==1.0"]  # torch is the host's
    manifest = json.loads((out / "kit.json").read_text())
    assert manifest["python_version"] == "3.11" and manifest["excluded"] == ["torch"]
    assert manifest["packages"] == dict(pin.split("==") for pin in NEEDED)
    assert (out / "runtime/bench/kit.py").read_text() == (ROOT / "runtime/bench/kit.py").read_text()
    assert (out / "plan/contract.py").is_file() and not list(out.rglob("__pycache__"))
    with tarfile.open(tarball) as tar:
        names = tar.getnames()
    assert "gpu-kit/kit.json" in names and "gpu-kit/runtime/bench/gpu.py" in names
    assert "gpu-kit/wheels/kit_app-1.0-py3-none-any.whl" in names


def test_the_download_asks_for_exact_versions_of_wheels_for_the_target() -> None:
    pins = [kit.Pin("kit-app", "1.0", "x")]
    command = kit.download_command(pins, Path("w"), "3.11", ["--no-index"])
    assert command[1:4] == ["-m", "pip", "download"] and command[-2:] == ["--no-index", "kit-app==1.0"]
    for flag in ("--no-deps", "--only-binary=:all:"):
        assert flag in command
    assert command[command.index("--python-version") + 1] == "3.11" and command[command.index("--abi") + 1] == "cp311"
    platforms = [command[i + 1] for i, arg in enumerate(command) if arg == "--platform"]
    assert platforms[0] == "manylinux_2_28_x86_64" and "manylinux_2_17_x86_64" in platforms
    assert all(p.endswith("_x86_64") for p in platforms)


def test_the_install_reads_no_index_and_no_configuration() -> None:
    command = kit.install_command(Path("/k"))
    assert command[1:5] == ["-m", "pip", "--isolated", "install"]  # --isolated: no PIP_* variable, no user config
    assert "--no-index" in command and command[command.index("--find-links") + 1] == "/k/wheels"
    assert kit.install_environment()["PIP_CONFIG_FILE"] == os.devnull  # pip then reads no configuration file


def host_python(tmp_path: Path) -> Path:
    """A fresh environment that has torch (and the rest of this .venv) but none of the made-up packages."""
    venv = tmp_path / "host"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (Path(site) / "host_torch.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


def test_the_kit_installs_offline_and_runs_the_benchmark(tmp_path: Path) -> None:
    """The whole path on a CPU: unpack, install from the kit's wheels alone, run the table with tiny models."""
    tarball = build_fake_kit(tmp_path)
    unpacked = tmp_path / "unpacked"
    with tarfile.open(tarball) as tar:
        tar.extractall(unpacked, filter="data")
    kit_dir = unpacked / "gpu-kit"
    python = host_python(tmp_path)
    bench = ["--device", "cpu", "--size", "64", "--batches", "1", "--calls", "1", "--torch-threads", "1"]
    bench += ["--sd-model", "tiny", "--sd-modes", "2/7.5", "--turbo-model", "tiny", "--turbo-modes", "1/0"]
    env = {**os.environ, "PIP_FIND_LINKS": str(tmp_path / "nowhere"), "PIP_INDEX_URL": "http://127.0.0.1:9/simple"}
    done = subprocess.run(
        [str(python), "-m", "runtime.bench.kit", "run", *bench],
        cwd=kit_dir,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    probe = subprocess.run(
        [str(python), "-c", "import kit_app, kit_speedup; print(kit_app.__file__)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert probe.startswith(str(tmp_path / "host"))  # installed into the host's environment, from the kit
    assert "installing the kit's wheels offline:" in done.stdout
    table = done.stdout[done.stdout.rindex("| model | mode |") :].splitlines()
    assert [line.split(" | ")[1] for line in table[2:4]] == ["2/7.5", "1/0"]


def test_a_kit_for_another_python_or_without_torch_is_refused(tmp_path: Path) -> None:
    (tmp_path / "kit.json").write_text(json.dumps({"python_version": "3.10"}))
    with pytest.raises(kit.KitError) as other:
        kit.check_host(tmp_path)
    assert "the kit's wheels are for CPython 3.10 on Linux x86_64; this is cpython 3.11" in str(other.value)
    assert str(other.value).endswith("rebuild it with --python-version 3.11")
    with pytest.raises(kit.KitError, match="is not an unpacked kit"):
        kit.check_host(tmp_path / "nothing")


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["frob"], 2, "command 'frob' is not allowed; allowed: build, run"),
        (["build", "--python-version", "4"], 2, "argument --python-version: '4' is not allowed; allowed: 3.N"),
        (["build", "--out"], 2, "argument --out: expected one argument"),
        (["build", "--fast"], 2, "unrecognized arguments: --fast"),
        (["run", "--device", "cpu"], 1, "is not an unpacked kit (no readable kit.json)"),  # the repo is no kit
    ],
)
def test_bad_input_is_one_line(argv: list[str], code: int, message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert kit.main(argv) == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"{kit.PROG}: error: ") and message in err, err


def test_build_flags() -> None:
    args = kit.parse_build(["--out", "k", "--python-version=3.12", "--exclude", "gradio,boto3", "--", "--no-index"])
    assert (args.out, args.python_version, args.pip_options) == (Path("k"), "3.12", ("--no-index",))
    assert args.exclude == ("torch", "gradio", "boto3") and args.requirements == kit.REQUIREMENTS
