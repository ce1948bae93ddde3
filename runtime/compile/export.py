"""Producing an artifact's files: optimum-neuron export for neuron, safetensors for cuda and cpu."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from plan import contract
from plan.model_artifacts import IMAGE_VERSION_OPTION
from runtime.artifacts.manifest import ArtifactSpec, library_versions
from runtime.compile.settings import CompileConfig
from runtime.server.backends import WARMUP_STEPS, optimise
from runtime.server.models import build_pipeline, built_in
from runtime.server.settings import Settings


class CompileError(Exception):
    """The compile could not run here, e.g. no GPU for --inductor-cache (exit 1)."""


def _import_neuron() -> Any:
    """optimum.neuron, imported only for neuron compiles (it exists only in the Neuron image)."""
    try:
        import optimum.neuron as neuron
    except ImportError as exc:
        raise CompileError(
            f"--device neuron needs optimum-neuron ({exc}); run the compile job in the Neuron image"
        ) from None
    return neuron


def artifact_spec(cfg: CompileConfig) -> ArtifactSpec:
    """The identity of the artifact this config would produce (decides skip vs compile)."""
    versions = library_versions(cfg.device)
    options: dict[str, str] = {}
    if cfg.device == "neuron":
        neuron = _import_neuron()
        versions.setdefault("optimum-neuron", str(getattr(neuron, "__version__", "unknown")))
    if cfg.inductor_cache:
        import torch

        if not torch.cuda.is_available():
            raise CompileError("--inductor-cache needs a CUDA device (the cache is specific to the GPU it ran on)")
        major, minor = torch.cuda.get_device_capability()
        options |= {"inductor_cache": contract.INDUCTOR_CACHE_DIRNAME, "cuda_capability": f"{major}.{minor}"}
    if cfg.image_version:
        options[IMAGE_VERSION_OPTION] = cfg.image_version
    return ArtifactSpec(
        model_id=cfg.model_id,
        revision=cfg.revision,
        device=cfg.device,
        shapes=cfg.shapes,
        dtype=cfg.serving_dtype,
        versions=versions,
        options=options,
    )


def neuron_export_kwargs(cfg: CompileConfig) -> dict[str, Any]:
    """Keyword arguments for `NeuronStableDiffusionPipeline.from_pretrained(model, **kwargs)`.

    The shapes are compiled in: the server rejects other sizes and pads short batches.
    Reduced precision is applied by the Neuron compiler's auto-cast of matmuls (the
    optimum-neuron recipe for SD); float32 disables it.
    """
    shapes = cfg.shapes
    kwargs: dict[str, Any] = {
        "export": True,
        "batch_size": shapes.batch_size,
        "height": shapes.height,
        "width": shapes.width,
        "num_images_per_prompt": 1,
    }
    dtype = cfg.serving_dtype
    if dtype == "float32":
        kwargs["auto_cast"] = "none"
    else:
        kwargs["auto_cast"] = "matmul"
        kwargs["auto_cast_type"] = {"bfloat16": "bf16", "float16": "fp16"}[dtype]
    if built_in(cfg.model_id) is None:  # a built-in model is read from the directory it was saved to
        kwargs["revision"] = cfg.revision
    return kwargs


def _torch_pipeline(cfg: CompileConfig, dtype_name: str) -> Any:
    import torch

    dtype = getattr(torch, dtype_name)
    if built_in(cfg.model_id) is not None:
        return build_pipeline(cfg.model_id, seed=0, dtype=dtype)
    from diffusers import DiffusionPipeline

    return DiffusionPipeline.from_pretrained(cfg.model_id, revision=cfg.revision, torch_dtype=dtype)


def export_neuron(cfg: CompileConfig, out_dir: Path, staging: Path) -> None:
    """Compile with optimum-neuron at the static shapes and save the compiled pipeline."""
    neuron = _import_neuron()
    source = cfg.model_id
    if built_in(cfg.model_id) is not None:  # it exists only in code: save it so the exporter can read it
        source_dir = staging / "built-in-source"
        _torch_pipeline(cfg, "float32").save_pretrained(source_dir, safe_serialization=True)
        source = str(source_dir)
    pipe = neuron.NeuronStableDiffusionPipeline.from_pretrained(source, **neuron_export_kwargs(cfg))
    pipe.save_pretrained(out_dir)


def export_torch(cfg: CompileConfig, out_dir: Path) -> None:
    """Save the pipeline as safetensors at the serving dtype (plus an Inductor cache if asked)."""
    pipe = _torch_pipeline(cfg, cfg.serving_dtype)
    pipe.save_pretrained(out_dir, safe_serialization=True)
    if cfg.inductor_cache:
        warm_inductor_cache(pipe, cfg, out_dir / contract.INDUCTOR_CACHE_DIRNAME)


def warm_inductor_cache(pipe: Any, cfg: CompileConfig, cache_dir: Path) -> None:
    """Run the compiled UNet and VAE decoder once at the configured shapes so the cache holds their kernels.

    Pods set TORCHINDUCTOR_CACHE_DIR to this directory; on the same GPU type and library
    versions (both in the manifest) their first `torch.compile` reuses it instead of
    compiling for minutes. The modules are prepared by the server's own `optimise` with its
    default fast paths, so the graphs compiled here are the ones a pod compiles.
    """
    import torch

    cache_dir.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache_dir)
    os.environ["TORCHINDUCTOR_FX_GRAPH_CACHE"] = "1"
    pipe = optimise(pipe, Settings(model_id=cfg.model_id, torch_compile=True), "cuda")
    s = cfg.shapes
    pipe(["warm-up"] * s.batch_size, height=s.height, width=s.width, num_inference_steps=WARMUP_STEPS)
    torch.cuda.synchronize()


def export(cfg: CompileConfig, out_dir: Path, staging: Path) -> None:
    """Write the artifact's files for ``cfg.device`` into ``out_dir``."""
    if cfg.device == "neuron":
        export_neuron(cfg, out_dir, staging)
    else:
        export_torch(cfg, out_dir)
