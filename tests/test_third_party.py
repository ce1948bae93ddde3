"""third_party/: every vendored file is the upstream blob its folder's SOURCES.md names (git blob
sha1 and sha256 of its bytes), and every file there has a row, so nothing is edited in place and
nothing arrives unrecorded. The negative tests change a temporary copy."""

from __future__ import annotations

import hashlib
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ROOT

THIRD_PARTY = ROOT / "third_party"
SOURCES = "SOURCES.md"
COLUMNS = ("local file", "repository", "upstream path", "ref", "commit", "git blob sha1", "sha256", "license")
# SPDX id -> phrases of its licence text (MIT-0 is MIT without the attribution condition).
LICENSE_TEXT = {
    "Apache-2.0": ("Apache License", "Version 2.0, January 2004"),
    "MIT-0": ("Permission is hereby granted, free of charge", "to permit persons to whom the Software is furnished"),
}
MIT_ATTRIBUTION = "The above copyright notice and this permission notice shall be included"


@dataclass(frozen=True)
class Source:
    """One row of a SOURCES.md table."""

    listed_in: Path
    local_file: str  # relative to the SOURCES.md folder
    repository: str
    upstream_path: str
    ref: str
    commit: str
    git_blob_sha1: str
    sha256: str
    license: str

    @property
    def path(self) -> Path:
        return self.listed_in.parent / self.local_file


def git_blob_sha1(data: bytes) -> str:
    """What ``git hash-object`` prints for a file with these bytes."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def parse_sources(path: Path) -> list[Source]:
    """The rows of the one table in a SOURCES.md (lines starting with ``|``)."""
    header, separator, *rows = (line for line in path.read_text().splitlines() if line.startswith("|"))
    assert tuple(_cells(header)) == COLUMNS, f"{path}: table header"
    assert all(re.fullmatch(r":?-+:?", cell) for cell in _cells(separator)), f"{path}: separator row"
    sources = []
    for row in rows:
        cells = _cells(row)
        assert len(cells) == len(COLUMNS), f"{path}: {row}"
        sources.append(Source(path, *cells))
    return sources


def origins(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir())


def all_sources(root: Path) -> list[Source]:
    return [source for sources in sorted(root.glob(f"*/{SOURCES}")) for source in parse_sources(sources)]


def problems(root: Path) -> list[str]:
    """Every way the files under ``root`` disagree with the SOURCES.md files there."""
    found: list[str] = []
    listed: set[Path] = set()
    for source in all_sources(root):
        name = source.path.relative_to(root).as_posix()
        if source.path in listed:
            found.append(f"{name}: listed twice")
        listed.add(source.path)
        if not source.path.is_file():
            found.append(f"{name}: listed in {source.listed_in.relative_to(root)} but missing")
            continue
        data = source.path.read_bytes()
        if git_blob_sha1(data) != source.git_blob_sha1:
            found.append(f"{name}: git blob {git_blob_sha1(data)}, recorded {source.git_blob_sha1}")
        if hashlib.sha256(data).hexdigest() != source.sha256:
            found.append(f"{name}: sha256 {hashlib.sha256(data).hexdigest()}, recorded {source.sha256}")
    for origin in origins(root):
        for required in (SOURCES, "LICENSE"):
            if not (origin / required).is_file():
                found.append(f"{origin.name}/{required}: missing")
    unlisted_allowed = {root / "README.md"} | {origin / SOURCES for origin in origins(root)}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        if path not in listed and path not in unlisted_allowed:
            found.append(f"{path.relative_to(root).as_posix()}: in third_party/ but in no {SOURCES}")
    return found


# --- the vendored files ------------------------------------------------------------------------


def test_git_blob_sha1_is_what_git_hash_object_prints() -> None:
    assert git_blob_sha1(b"") == "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"
    assert git_blob_sha1(b"hello\n") == "ce013625030ba8dba906f756967f9e9ca394464a"


def test_every_origin_has_a_sources_table_with_rows() -> None:
    assert [o.name for o in origins(THIRD_PARTY)] == sorted(
        ["aws-load-balancer-controller", "karpenter", "keda", "neuron", "nvidia-device-plugin", "volcano"]
    )
    for origin in origins(THIRD_PARTY):
        assert parse_sources(origin / SOURCES), origin.name


def test_sources_rows_are_well_formed() -> None:
    for source in all_sources(THIRD_PARTY):
        where = f"{source.listed_in.parent.name}/{source.local_file}"
        assert re.fullmatch(r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+", source.repository), where
        assert source.upstream_path and not source.upstream_path.startswith("/"), where
        assert re.fullmatch(r"(tag|branch) \S+", source.ref), where
        assert re.fullmatch(r"[0-9a-f]{40}", source.commit), where
        assert re.fullmatch(r"[0-9a-f]{40}", source.git_blob_sha1), where
        assert re.fullmatch(r"[0-9a-f]{64}", source.sha256), where
        assert source.license in LICENSE_TEXT, where
        assert ".." not in Path(source.local_file).parts and not Path(source.local_file).is_absolute(), where


def test_every_vendored_file_is_the_recorded_upstream_blob_and_listed() -> None:
    assert problems(THIRD_PARTY) == []


def test_each_origins_license_file_is_the_licence_its_rows_name() -> None:
    for origin in origins(THIRD_PARTY):
        (spdx,) = {source.license for source in parse_sources(origin / SOURCES)}
        text = " ".join((origin / "LICENSE").read_text().split())
        for phrase in LICENSE_TEXT[spdx]:
            assert phrase in text, (origin.name, spdx, phrase)
        if spdx == "MIT-0":
            assert MIT_ATTRIBUTION not in text, origin.name


def test_make_imports_and_the_validators_have_their_crds() -> None:
    for origin in ("karpenter", "keda", "volcano"):
        crds = sorted((THIRD_PARTY / origin / "crds").glob("*.yaml"))
        assert crds, origin
        listed = {s.path for s in parse_sources(THIRD_PARTY / origin / SOURCES)}
        assert set(crds) <= listed, origin


# --- the check catches what it is for (on a temporary copy) -----------------------------------


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    root = tmp_path / "third_party"
    shutil.copytree(THIRD_PARTY, root)
    assert problems(root) == []
    return root


def test_a_changed_byte_is_caught(copy: Path) -> None:
    crd = copy / "keda" / "crds" / "keda.sh_scaledobjects.yaml"
    data = bytearray(crd.read_bytes())
    data[len(data) // 2] ^= 0x01
    crd.write_bytes(bytes(data))
    found = problems(copy)
    assert len(found) == 2
    assert all(p.startswith("keda/crds/keda.sh_scaledobjects.yaml: ") for p in found)
    assert any("git blob" in p for p in found)
    assert any("sha256" in p for p in found)


def test_a_reformatted_file_is_caught(copy: Path) -> None:
    policy = copy / "aws-load-balancer-controller" / "iam_policy-v2.17.1.json"
    policy.write_bytes(policy.read_bytes().replace(b"\n", b"\r\n"))
    assert [p.split(":")[0] for p in problems(copy)] == ["aws-load-balancer-controller/iam_policy-v2.17.1.json"] * 2


def test_an_unlisted_file_is_caught(copy: Path) -> None:
    (copy / "volcano" / "crds" / "batch.volcano.sh_commands.yaml").write_text("kind: CustomResourceDefinition\n")
    assert problems(copy) == ["volcano/crds/batch.volcano.sh_commands.yaml: in third_party/ but in no SOURCES.md"]


def test_a_missing_file_or_license_is_caught(copy: Path) -> None:
    (copy / "neuron" / "my-scheduler.yml").unlink()
    (copy / "nvidia-device-plugin" / "LICENSE").unlink()
    assert problems(copy) == [
        "neuron/my-scheduler.yml: listed in neuron/SOURCES.md but missing",
        "nvidia-device-plugin/LICENSE: listed in nvidia-device-plugin/SOURCES.md but missing",
        "nvidia-device-plugin/LICENSE: missing",
    ]
