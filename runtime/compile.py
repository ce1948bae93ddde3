"""Compile job: build a model artifact for one accelerator and publish it with its manifest.

    python -m runtime.compile --model tiny|<hub id> [--revision R] --accelerator neuron|cuda|cpu \
        [--height H] [--width W] [--batch-size B] [--dtype float16|bfloat16|float32] \
        [--inductor-cache] --out s3://bucket/prefix | ./local-dir

The artifact lands in `<out>/<model>/<revision>/<chip>/` (see `artifacts.artifact_uri`):

- neuron: optimum-neuron export at static shapes (`NeuronStableDiffusionPipeline.from_pretrained(
  ..., export=True, batch_size=, height=, width=)`), since Neuron graphs are compiled per shape;
- cuda / cpu: the diffusers pipeline saved as safetensors at the serving dtype (float16 for cuda,
  float32 for cpu) so pods load it without conversion; for cuda, `--inductor-cache` also warms a
  TorchInductor cache on the GPU and ships it in `contract.INDUCTOR_CACHE_DIRNAME/`.

When a complete artifact with an identical `BuildSpec` (model, revision, chip, shapes, dtype,
library versions) is already at the destination, nothing is built or uploaded. Every flag
falls back to an environment variable from `spec.contract` so the Volcano Job sets them by
env. Exit codes: 0 done or skipped, 1 the build or upload failed, 2 bad flags or values.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, NoReturn, TypeVar

from runtime.artifacts import (
    DTYPES,
    ArtifactError,
    BuildSpec,
    Manifest,
    PublishResult,
    S3Client,
    Shapes,
    artifact_uri,
    check_model_id,
    check_revision,
    find_published,
    is_s3,
    library_versions,
    parse_s3_uri,
    publish,
    write_manifest,
)
from spec import contract

PROG: Final = f"python -m {contract.COMPILE_MODULE}"
TINY: Final = "tiny"  # runtime.tiny.TINY_MODEL_ID, repeated so parsing flags does not import torch
DEFAULT_REVISION: Final = "main"
DEFAULT_SIZE: Final = 512  # SD 2.1 base's native size
TINY_SIZE: Final = 64  # runtime.tiny.TINY_IMAGE_SIZE
DEFAULT_DTYPE: Final = {"cuda": "float16", "cpu": "float32", "neuron": "bfloat16"}
DTYPE_ALIASES: Final = {"fp16": "float16", "half": "float16", "bf16": "bfloat16", "fp32": "float32", "float": "float32"}
MIN_SIZE: Final = 8
MAX_SIZE: Final = 4096
MAX_BATCH: Final = 64
WARMUP_STEPS: Final = 2

log = logging.getLogger(contract.COMPILE_MODULE)
T = TypeVar("T")


class UsageError(Exception):
    """A flag or environment value is not allowed (exit 2)."""


class CompileError(Exception):
    """The build could not run here, e.g. no GPU for --inductor-cache (exit 1)."""


@dataclass(frozen=True)
class CompileConfig:
    """Everything one compile run needs, validated."""

    model_id: str
    revision: str
    chip: str
    shapes: Shapes
    dtype: str
    out: str
    inductor_cache: bool = False
    work_dir: Path | None = None


# --- flags ---------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse that reports errors in one line (no usage dump) and exits 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def _size(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise UsageError(f"{text!r} is not an integer; allowed: multiples of 8 from {MIN_SIZE} to {MAX_SIZE}") from None
    if value % 8 or not MIN_SIZE <= value <= MAX_SIZE:
        raise UsageError(f"{value} is not allowed; allowed: multiples of 8 from {MIN_SIZE} to {MAX_SIZE}")
    return value


def _batch(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise UsageError(f"{text!r} is not an integer; allowed: 1 to {MAX_BATCH}") from None
    if not 1 <= value <= MAX_BATCH:
        raise UsageError(f"{value} is not allowed; allowed: 1 to {MAX_BATCH}")
    return value


def _accelerator(text: str) -> str:
    if text not in contract.ACCELERATORS:
        raise UsageError(f"{text!r} is not allowed; allowed: {', '.join(contract.ACCELERATORS)}")
    return text


def _dtype(text: str) -> str:
    value = DTYPE_ALIASES.get(text.lower(), text.lower())
    if value not in DTYPES:
        raise UsageError(f"{text!r} is not allowed; allowed: {', '.join(DTYPES)} (or fp16, bf16, fp32)")
    return value


def _model(text: str) -> str:
    try:
        return check_model_id(text)
    except ArtifactError as exc:
        raise UsageError(str(exc)) from None


def _revision(text: str) -> str:
    try:
        return check_revision(text)
    except ArtifactError as exc:
        raise UsageError(str(exc)) from None


def _out(text: str) -> str:
    if not text:
        raise UsageError("'' is not allowed; allowed: s3://bucket[/prefix] or a local directory")
    if is_s3(text):
        try:
            parse_s3_uri(text)
        except ArtifactError as exc:
            raise UsageError(f"{exc}; allowed: s3://bucket[/prefix] or a local directory") from None
    elif "://" in text:
        raise UsageError(f"{text!r} is not allowed; allowed: s3://bucket[/prefix] or a local directory")
    return text


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description=__doc__.split("\n\n")[0] if __doc__ else None)
    env = contract
    p.add_argument("--model", help=f"'tiny' or a Hub id (env {env.ENV_MODEL_ID})")
    p.add_argument("--revision", help=f"Hub revision, default {DEFAULT_REVISION} (env {env.ENV_MODEL_REVISION})")
    p.add_argument("--accelerator", help=f"{'|'.join(env.ACCELERATORS)} (env {env.ENV_ACCELERATOR})")
    p.add_argument("--height", help=f"image height, multiple of 8 (env {env.ENV_COMPILE_HEIGHT})")
    p.add_argument("--width", help=f"image width, multiple of 8 (env {env.ENV_COMPILE_WIDTH})")
    p.add_argument("--batch-size", help=f"prompts per batch; static for neuron (env {env.ENV_COMPILE_BATCH_SIZE})")
    p.add_argument("--dtype", help=f"serving dtype, default per chip {DEFAULT_DTYPE} (env {env.ENV_COMPILE_DTYPE})")
    p.add_argument("--out", help=f"s3://bucket[/prefix] or a local directory (env {env.ENV_COMPILE_OUT})")
    p.add_argument(
        "--inductor-cache", action="store_true", help="cuda only: warm and ship a TorchInductor cache (needs a GPU)"
    )
    p.add_argument("--work-dir", type=Path, help="where to stage the artifact (default: the temp dir)")
    return p


def _pick(
    flag: str, value: str | None, env_name: str, env: Mapping[str, str], convert: Callable[[str], T], default: T | None
) -> T:
    """Flag, else env var, else default; a bad value names where it came from."""
    if value is not None:
        source, raw = f"argument {flag}", value
    elif env.get(env_name):
        source, raw = f"environment {env_name}", env[env_name]
    elif default is not None:
        return default
    else:
        raise UsageError(f"{flag} is required (or set {env_name})")
    try:
        return convert(raw)
    except UsageError as exc:
        raise UsageError(f"{source}: {exc}") from None


def parse_config(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> CompileConfig:
    """Flags over environment over defaults; raises UsageError (or exits 2 on unknown flags)."""
    env = os.environ if env is None else env
    ns = build_parser().parse_args(argv)
    model = _pick("--model", ns.model, contract.ENV_MODEL_ID, env, _model, None)
    chip = _pick("--accelerator", ns.accelerator, contract.ENV_ACCELERATOR, env, _accelerator, None)
    default_size = TINY_SIZE if model == TINY else DEFAULT_SIZE
    dtype = _pick("--dtype", ns.dtype, contract.ENV_COMPILE_DTYPE, env, _dtype, DEFAULT_DTYPE[chip])
    if chip == "cpu" and dtype == "float16":
        raise UsageError("--dtype float16 is not allowed for cpu; allowed: float32, bfloat16")
    if ns.inductor_cache and chip != "cuda":
        raise UsageError(f"--inductor-cache is not allowed for {chip}; allowed only with --accelerator cuda")
    return CompileConfig(
        model_id=model,
        revision=_pick("--revision", ns.revision, contract.ENV_MODEL_REVISION, env, _revision, DEFAULT_REVISION),
        chip=chip,
        shapes=Shapes(
            height=_pick("--height", ns.height, contract.ENV_COMPILE_HEIGHT, env, _size, default_size),
            width=_pick("--width", ns.width, contract.ENV_COMPILE_WIDTH, env, _size, default_size),
            batch_size=_pick("--batch-size", ns.batch_size, contract.ENV_COMPILE_BATCH_SIZE, env, _batch, 1),
        ),
        dtype=dtype,
        out=_pick("--out", ns.out, contract.ENV_COMPILE_OUT, env, _out, None),
        inductor_cache=bool(ns.inductor_cache),
        work_dir=ns.work_dir,
    )


# --- builders ------------------------------------------------------------------------------


def _import_neuron() -> Any:
    """optimum.neuron, imported only for neuron builds (it exists only in the Neuron image)."""
    try:
        import optimum.neuron as neuron
    except ImportError as exc:
        raise CompileError(
            f"--accelerator neuron needs optimum-neuron ({exc}); run the compile job in the Neuron image"
        ) from None
    return neuron


def build_spec(cfg: CompileConfig) -> BuildSpec:
    """The identity of the artifact this config would produce (decides skip vs build)."""
    versions = library_versions(cfg.chip)
    options: dict[str, str] = {}
    if cfg.chip == "neuron":
        neuron = _import_neuron()
        versions.setdefault("optimum-neuron", str(getattr(neuron, "__version__", "unknown")))
    if cfg.inductor_cache:
        import torch

        if not torch.cuda.is_available():
            raise CompileError("--inductor-cache needs a CUDA device (the cache is specific to the GPU it ran on)")
        major, minor = torch.cuda.get_device_capability()
        options = {"inductor_cache": contract.INDUCTOR_CACHE_DIRNAME, "cuda_capability": f"{major}.{minor}"}
    return BuildSpec(
        model_id=cfg.model_id,
        revision=cfg.revision,
        chip=cfg.chip,
        shapes=cfg.shapes,
        dtype=cfg.dtype,
        versions=versions,
        options=options,
    )


def neuron_export_kwargs(cfg: CompileConfig) -> dict[str, Any]:
    """Keyword arguments for `NeuronStableDiffusionPipeline.from_pretrained(model, **kwargs)`.

    The shapes are compiled in: the server rejects other sizes and pads short batches.
    Reduced precision is applied by the Neuron compiler's auto-cast of matmuls (the
    optimum-neuron recipe for SD); float32 disables it.
    """
    kwargs: dict[str, Any] = {
        "export": True,
        "batch_size": cfg.shapes.batch_size,
        "height": cfg.shapes.height,
        "width": cfg.shapes.width,
        "num_images_per_prompt": 1,
    }
    if cfg.dtype == "float32":
        kwargs["auto_cast"] = "none"
    else:
        kwargs["auto_cast"] = "matmul"
        kwargs["auto_cast_type"] = {"bfloat16": "bf16", "float16": "fp16"}[cfg.dtype]
    if cfg.model_id != TINY:
        kwargs["revision"] = cfg.revision
    return kwargs


def _torch_pipeline(cfg: CompileConfig, dtype_name: str) -> Any:
    import torch

    dtype = getattr(torch, dtype_name)
    if cfg.model_id == TINY:
        from runtime.tiny import build_tiny_pipeline

        return build_tiny_pipeline(seed=0, dtype=dtype)
    from diffusers import DiffusionPipeline

    return DiffusionPipeline.from_pretrained(cfg.model_id, revision=cfg.revision, torch_dtype=dtype)


def export_neuron(cfg: CompileConfig, out_dir: Path, staging: Path) -> None:
    """Compile with optimum-neuron at the static shapes and save the compiled pipeline."""
    neuron = _import_neuron()
    source = cfg.model_id
    if cfg.model_id == TINY:  # the tiny model exists only in code: save it so the exporter can read it
        tiny_dir = staging / "tiny-source"
        _torch_pipeline(cfg, "float32").save_pretrained(tiny_dir, safe_serialization=True)
        source = str(tiny_dir)
    pipe = neuron.NeuronStableDiffusionPipeline.from_pretrained(source, **neuron_export_kwargs(cfg))
    pipe.save_pretrained(out_dir)


def export_torch(cfg: CompileConfig, out_dir: Path) -> None:
    """Save the pipeline as safetensors at the serving dtype (plus an Inductor cache if asked)."""
    pipe = _torch_pipeline(cfg, cfg.dtype)
    pipe.save_pretrained(out_dir, safe_serialization=True)
    if cfg.inductor_cache:
        warm_inductor_cache(pipe, cfg, out_dir / contract.INDUCTOR_CACHE_DIRNAME)


def warm_inductor_cache(pipe: Any, cfg: CompileConfig, cache_dir: Path) -> None:
    """Run the compiled UNet once at the configured shapes so the cache holds its kernels.

    Pods set TORCHINDUCTOR_CACHE_DIR to this directory; on the same GPU type and library
    versions (both in the manifest) their first `torch.compile` reuses it instead of
    compiling for minutes.
    """
    import torch

    cache_dir.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache_dir)
    os.environ["TORCHINDUCTOR_FX_GRAPH_CACHE"] = "1"
    pipe = pipe.to("cuda")
    pipe.unet = torch.compile(pipe.unet)
    s = cfg.shapes
    pipe(["warm-up"] * s.batch_size, height=s.height, width=s.width, num_inference_steps=WARMUP_STEPS)
    torch.cuda.synchronize()


# --- run -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """What a run did, for the one-line summary."""

    destination: str
    spec: BuildSpec
    manifest: Manifest
    published: PublishResult | None  # None: skipped, a matching artifact was already there

    def summary(self) -> str:
        m = self.manifest
        if self.published is None:
            return (
                f"skipped: {self.destination} already holds {self.spec.describe()} "
                f"({len(m.files)} files, {m.total_size} bytes, manifest {contract.MANIFEST_NAME})"
            )
        p = self.published
        return (
            f"published {self.spec.describe()} to {self.destination}: {len(m.files)} files, {m.total_size} bytes "
            f"(sent {len(p.sent)}, already there {len(p.reused)}, removed {len(p.removed)})"
        )


def run(cfg: CompileConfig, s3: S3Client | None = None) -> Outcome:
    """Skip if published, else build into a temp dir, write the manifest, publish (manifest last)."""
    if is_s3(cfg.out) and s3 is None:
        import boto3

        s3 = boto3.client("s3")
    destination = artifact_uri(cfg.out, cfg.model_id, cfg.revision, cfg.chip)
    spec = build_spec(cfg)
    existing = find_published(destination, spec, s3)
    if existing is not None:
        return Outcome(destination, spec, existing, None)
    if cfg.work_dir is not None:
        cfg.work_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="edge-diffusion-compile-", dir=cfg.work_dir) as tmp:
        staging = Path(tmp)
        out_dir = staging / "artifact"
        log.info("building %s into %s", spec.describe(), out_dir)
        if cfg.chip == "neuron":
            export_neuron(cfg, out_dir, staging)
        else:
            export_torch(cfg, out_dir)
        manifest = write_manifest(out_dir, spec)
        log.info("publishing %d files (%d bytes) to %s", len(manifest.files), manifest.total_size, destination)
        result = publish(out_dir, destination, s3)
    return Outcome(destination, spec, manifest, result)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit code (in-process callers such as tests use this)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        cfg = parse_config(argv)
    except UsageError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except SystemExit as exc:  # argparse: unknown flag or --help
        return int(exc.code or 0)
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        outcome = run(cfg)
    except (ArtifactError, CompileError, BotoCoreError, ClientError, OSError) as exc:
        print(f"{PROG}: error: {type(exc).__name__}: {exc}".replace("\n", " "), file=sys.stderr)
        return 1
    print(outcome.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
