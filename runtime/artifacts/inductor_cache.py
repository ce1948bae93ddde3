"""The TorchInductor cache a CUDA artifact ships, and the key that says where its kernels run.

The compile job warms the cache on one GPU (``runtime.compile.export.warm_inductor_cache``) and
writes, beside the cache files, the key of that machine: torch, CUDA and Triton versions and the
GPU's name and compute capability. Inductor validates its own entries against these too, but a
mismatch there means a silent recompile of minutes at start-up; comparing the key first lets a pod
say in one line why it compiles from scratch. A pod whose key matches copies the cache to a
writable directory (the image layer is read-only, Inductor writes locks and new entries beside the
old ones), points ``TORCHINDUCTOR_CACHE_DIR`` at it and hot-loads torch's mega-cache
(``torch.compiler.load_cache_artifacts``, torch 2.7 and later) when the artifact carries one.

Importing this module does not import torch.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Final

from plan import contract

log = logging.getLogger(__name__)

# What a kernel compiled by Inductor depends on, in the order a refusal names them.
KEY_FIELDS: Final = ("torch", "cuda", "triton", "gpu", "capability")
CACHE_DIR_ENV: Final = "TORCHINDUCTOR_CACHE_DIR"
FX_GRAPH_CACHE_ENV: Final = "TORCHINDUCTOR_FX_GRAPH_CACHE"


class InductorCacheError(RuntimeError):
    """The cache's key file is unreadable (one line)."""


def current_key() -> dict[str, str]:
    """This process's key: torch, CUDA and Triton versions, GPU 0's name and compute capability (needs CUDA)."""
    import torch

    try:
        triton = metadata.version("triton")
    except metadata.PackageNotFoundError:
        triton = "absent"
    major, minor = torch.cuda.get_device_capability(0)
    return {
        "torch": torch.__version__,
        "cuda": str(torch.version.cuda),
        "triton": triton,
        "gpu": torch.cuda.get_device_name(0),
        "capability": f"{major}.{minor}",
    }


def write_key(cache_dir: Path, key: Mapping[str, str]) -> Path:
    """Write ``key`` as the cache's key file; returns its path."""
    missing = [name for name in KEY_FIELDS if name not in key]
    if missing:
        raise InductorCacheError(f"inductor cache key lacks {', '.join(missing)}; needs {', '.join(KEY_FIELDS)}")
    path = cache_dir / contract.INDUCTOR_CACHE_KEY_NAME
    path.write_text(json.dumps({name: key[name] for name in KEY_FIELDS}, indent=2, sort_keys=True) + "\n")
    return path


def read_key(cache_dir: Path) -> dict[str, str] | None:
    """The cache's key, or None when it has no key file; InductorCacheError when the file is not a key."""
    path = cache_dir / contract.INDUCTOR_CACHE_KEY_NAME
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except ValueError:
        raise InductorCacheError(f"{path}: not JSON") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(name), str) for name in KEY_FIELDS):
        raise InductorCacheError(f"{path}: not an inductor cache key (needs strings {', '.join(KEY_FIELDS)})")
    return {name: data[name] for name in KEY_FIELDS}


def key_difference(shipped: Mapping[str, str], here: Mapping[str, str]) -> str | None:
    """What differs between the cache's key and this pod's, as one line, or None when they match."""
    differing = [name for name in KEY_FIELDS if shipped.get(name) != here.get(name)]
    if not differing:
        return None
    return "; ".join(f"{name} {shipped.get(name)!r} in the cache, {here.get(name)!r} here" for name in differing)


def save_mega_cache(cache_dir: Path) -> bool:
    """Write torch's mega-cache of everything compiled so far in this process; False where torch has none."""
    import torch

    save = getattr(torch.compiler, "save_cache_artifacts", None)
    artifacts = save() if save is not None else None
    if artifacts is None:
        return False
    (cache_dir / contract.INDUCTOR_MEGA_CACHE_NAME).write_bytes(artifacts[0])
    return True


def _load_mega_cache(path: Path) -> bool:
    import torch

    load = getattr(torch.compiler, "load_cache_artifacts", None)
    if load is None or not path.is_file():
        return False
    load(path.read_bytes())
    return True


@dataclass(frozen=True)
class CacheDecision:
    """Whether the pod uses the artifact's cache, and the one line saying so (for the pod log)."""

    used: bool
    message: str


def adopt_cache(
    artifact: Path,
    work_dir: Path,
    here: Mapping[str, str],
    environ: Any = os.environ,
    load_mega: Any = _load_mega_cache,
) -> CacheDecision:
    """Use the artifact's Inductor cache when its key is this pod's, else ignore it and say what differs.

    Used: the cache is copied to ``work_dir`` (writable), ``TORCHINDUCTOR_CACHE_DIR`` points there and
    the mega-cache, if shipped, is hot-loaded into it. Nothing in ``environ`` changes otherwise.
    """
    cache = artifact / contract.INDUCTOR_CACHE_DIRNAME
    if not cache.is_dir():
        return CacheDecision(False, f"no inductor cache in {artifact}: torch.compile compiles from scratch")
    try:
        shipped = read_key(cache)
    except InductorCacheError as exc:
        return CacheDecision(False, f"inductor cache ignored: {exc}")
    if shipped is None:
        return CacheDecision(
            False, f"inductor cache ignored: {cache} has no {contract.INDUCTOR_CACHE_KEY_NAME} (recompile the artifact)"
        )
    difference = key_difference(shipped, here)
    if difference is not None:
        return CacheDecision(False, f"inductor cache ignored: {difference}")
    if work_dir.exists():
        shutil.rmtree(work_dir)
    shutil.copytree(cache, work_dir)
    environ[CACHE_DIR_ENV] = str(work_dir)
    environ[FX_GRAPH_CACHE_ENV] = "1"
    mega = load_mega(work_dir / contract.INDUCTOR_MEGA_CACHE_NAME)
    return CacheDecision(
        True,
        f"inductor cache used: compiled for {shipped['gpu']} (sm {shipped['capability']}), torch {shipped['torch']}, "
        f"CUDA {shipped['cuda']}, triton {shipped['triton']}; copied to {work_dir}"
        + (", mega-cache loaded" if mega else ""),
    )
