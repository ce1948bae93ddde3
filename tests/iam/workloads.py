"""The workloads' programs as their pods run them: arguments and environment from the cluster template.

The compile job's model export is the one part replaced (it would download and compile a real
model): :func:`fake_export` writes a few small files and one of 9 MiB, so uploads and downloads go
through S3 multipart and ranged GETs as large weights do.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

import pytest

import runtime.compile.job as job_module
from plan import contract
from runtime.artifacts.store import artifact_uri
from tests.iam.conftest import World
from tests.iam.templates import Pod, pods

LARGE: Final = "unet/diffusion_pytorch_model.safetensors"  # over s3transfer's 8 MiB multipart threshold
FIRST_ARTIFACT: Final[Mapping[str, bytes]] = {
    "model_index.json": b'{"_class_name": "StableDiffusionPipeline"}',
    "scheduler/scheduler_config.json": b"{}",
    "text_encoder/model.safetensors": b"te" * 1000,
    LARGE: b"\x01" * (9 * 1024 * 1024),
}
# After a library upgrade: the scheduler config changed, the text encoder is gone.
SECOND_ARTIFACT: Final[Mapping[str, bytes]] = {
    **{k: v for k, v in FIRST_ARTIFACT.items() if k != "text_encoder/model.safetensors"},
    "scheduler/scheduler_config.json": b'{"steps": 25}',
}
# The pods' filesystem layout is not reproduced here; everything else of their environment is.
NOT_CARRIED: Final = ("HOME", "XDG_CACHE_HOME")


def arg(args: tuple[str, ...], flag: str) -> str:
    return args[args.index(flag) + 1]


def pod_env(found: Pod, **extra: str) -> dict[str, str]:
    """The container's environment as the pod gets it (offline: no Hub downloads in tests)."""
    env = {k: v for k, v in found.container.env.items() if k not in NOT_CARRIED}
    return {**env, "HF_HUB_OFFLINE": "1", **extra}


def compile_job(world: World, device: str = "cuda") -> Pod:
    """The Volcano Job that compiles for ``device``, as the cluster template applies it."""
    (job,) = [p for p in pods(world.templates.cluster, "Job") if arg(p.container.args, "--device") == device]
    assert job.container.command[-2:] == ("-m", contract.COMPILE_MODULE), job.container.command
    return job


def destination(job: Pod) -> str:
    """Where the job publishes: ``s3://<bucket>/models/<cluster>/<model>/<revision>/<device>/``."""
    args = job.container.args
    return artifact_uri(arg(args, "--out"), arg(args, "--model"), arg(args, "--revision"), arg(args, "--device"))


def fake_export(files: Mapping[str, bytes]) -> Callable[..., None]:
    def export(cfg: Any, out_dir: Path, staging: Path) -> None:
        for rel, data in files.items():
            (out_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            (out_dir / rel).write_bytes(data)

    return export


def publish_as_compiler(world: World, monkeypatch: pytest.MonkeyPatch, device: str) -> str:
    """Run the compile job for ``device`` once, as its role; returns where it published."""
    from runtime.compile.__main__ import main

    job = compile_job(world, device)
    monkeypatch.setattr(job_module, "export", fake_export(FIRST_ARTIFACT))
    with world.aws.acting_as(world.pod_workload(job), pod_env(job)):
        assert main(list(job.container.args)) == 0
    return destination(job)
