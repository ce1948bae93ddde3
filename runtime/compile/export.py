"""Producing an artifact's files: optimum-neuron export for neuron, safetensors for cuda and cpu.

Every artifact holds ``plan.model_artifacts.COMPONENTS`` (the VAE encoder included, which image
prompts need) and its manifest lists them; an export that lacks one fails the job instead of
publishing an artifact a pod would refuse.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any, Final

from plan import contract
from plan.model_artifacts import (
    COMPONENTS,
    COMPONENTS_OPTION,
    DYNAMIC_BATCH_OPTION,
    IMAGE_VERSION_OPTION,
    TEXT_ENCODER,
    TINY_VAE_DIRNAME,
    TINY_VAE_OPTION,
    UNET,
    VAE_DECODER,
    VAE_ENCODER,
    components_option,
    model_profile,
)
from runtime.artifacts.inductor_cache import current_key, save_mega_cache, write_key
from runtime.artifacts.manifest import ArtifactSpec, library_versions
from runtime.compile.settings import CompileConfig
from runtime.server.backends import WARMUP_STEPS, optimise, warmup_calls
from runtime.server.models import build_pipeline, build_tiny_vae, built_in, model_defaults
from runtime.server.settings import Settings

# optimum-neuron's file name of each compiled network (<component>/model.neuron: utils/constant.py at 0.4.5).
NEURON_FILE_NAME: Final = "model.neuron"
_SAFETENSORS_HEADER_LIMIT: Final = 100 * 1024 * 1024  # the safetensors format caps its JSON header at 100 MB


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
    if cfg.tiny_vae:
        options[TINY_VAE_OPTION] = cfg.tiny_vae
    if cfg.image_version:
        options[IMAGE_VERSION_OPTION] = cfg.image_version
    if cfg.device == "neuron":
        options[DYNAMIC_BATCH_OPTION] = str(neuron_dynamic_batch(cfg.model_id)).lower()
    options[COMPONENTS_OPTION] = components_option(COMPONENTS)
    return ArtifactSpec(
        model_id=cfg.model_id,
        revision=cfg.revision,
        device=cfg.device,
        shapes=cfg.shapes,
        dtype=cfg.serving_dtype,
        versions=versions,
        options=options,
    )


def neuron_dynamic_batch(model_id: str) -> bool:
    """Whether a model's Neuron export is compiled with dynamic batching: for a model served without
    classifier-free guidance (SD-Turbo), per ``plan.model_artifacts.MODEL_PROFILES``.

    optimum-neuron 0.4.5 compiles the UNet at ``batch_size`` either way (guidance never doubles a
    compiled shape) and doubles the batch at load time instead: a pipeline loads its UNet on two
    NeuronCores (``set_parallel_mode`` returns "unet" for every UNet not named LCM, whatever mode the
    caller asks for), and torch-neuronx's DataParallel without dynamic batching takes only twice the
    compiled batch, which a call with guidance supplies (unconditional and conditional halves) and one
    without guidance does not. With ``dynamic_batch_size`` the UNet takes the undoubled batch, and a
    request that does ask for guidance still runs (``do_classifier_free_guidance`` allows it then).
    """
    profile = model_profile(model_id)
    return profile is not None and not profile.uses_guidance


def neuron_export_kwargs(cfg: CompileConfig) -> dict[str, Any]:
    """Keyword arguments for `NeuronStableDiffusionPipeline.from_pretrained(model, **kwargs)`.

    The shapes are compiled in: the server rejects other sizes and pads short batches. Every
    network is exported, the VAE encoder included (optimum-neuron's ``main_export`` always
    compiles it, at the batch and image size). Reduced precision is applied by the Neuron
    compiler's auto-cast of matmuls (the optimum-neuron recipe for SD); float32 disables it.
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
    if neuron_dynamic_batch(cfg.model_id):
        kwargs["dynamic_batch_size"] = True
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
    if pipe is None:  # optimum-neuron 0.4.5 compiles, then returns None where it finds no device to load on
        raise CompileError(
            "optimum-neuron compiled the model but found no Neuron device to load it on, so nothing was saved; "
            "run the compile job on an inf2 or trn1 node"
        )
    pipe.save_pretrained(out_dir)
    check_components(out_dir, cfg.device)


def export_torch(cfg: CompileConfig, out_dir: Path) -> None:
    """Save the pipeline as safetensors at the serving dtype, plus the tiny VAE and an Inductor cache if asked.

    With a tiny VAE the Inductor warm-up decodes with it, as the pods that use it do."""
    pipe = _torch_pipeline(cfg, cfg.serving_dtype)
    pipe.save_pretrained(out_dir, safe_serialization=True)
    check_components(out_dir, cfg.device)
    if cfg.tiny_vae:
        tiny = build_tiny_vae(cfg.model_id, cfg.tiny_vae, int(pipe.vae.config.latent_channels), pipe.vae.dtype)
        tiny.save_pretrained(out_dir / TINY_VAE_DIRNAME, safe_serialization=True)
        pipe.vae = tiny
    if cfg.inductor_cache:
        warm_inductor_cache(pipe, cfg, out_dir / contract.INDUCTOR_CACHE_DIRNAME)


def _tensor_names(path: Path) -> set[str]:
    """The tensor names of a safetensors file, from its JSON header (no tensor is read)."""
    with path.open("rb") as fh:
        prefix = fh.read(8)
        (length,) = struct.unpack("<Q", prefix) if len(prefix) == 8 else (0,)
        if not 0 < length <= _SAFETENSORS_HEADER_LIMIT:
            raise CompileError(f"{path}: not a safetensors file (header length {length})")
        try:
            header = json.loads(fh.read(length))
        except ValueError:
            raise CompileError(f"{path}: not a safetensors file (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise CompileError(f"{path}: not a safetensors file (its header is not a JSON object)")
    return {name for name in header if name != "__metadata__"}


def exported_components(out_dir: Path, device: str) -> frozenset[str]:
    """The components the files under ``out_dir`` hold.

    Neuron: ``<component>/model.neuron`` per compiled network. cuda/cpu: ``text_encoder/`` and
    ``unet/`` with weights, and the halves of the diffusers VAE (``vae/``) its tensor names show
    (``encoder.*``, ``decoder.*``).
    """
    if device == "neuron":
        return frozenset(name for name in COMPONENTS if (out_dir / name / NEURON_FILE_NAME).is_file())

    def tensors(directory: str) -> set[str]:
        return {name for path in sorted((out_dir / directory).glob("*.safetensors")) for name in _tensor_names(path)}

    found = {name for name in (TEXT_ENCODER, UNET) if tensors(name)}
    vae = tensors("vae")
    found |= {
        part
        for part, prefix in ((VAE_ENCODER, "encoder."), (VAE_DECODER, "decoder."))
        if any(name.startswith(prefix) for name in vae)
    }
    return frozenset(found)


def check_components(out_dir: Path, device: str) -> None:
    """Fail the job when the export lacks a component the manifest will list (``COMPONENTS``)."""
    found = exported_components(out_dir, device)
    missing = [name for name in COMPONENTS if name not in found]
    if missing:
        raise CompileError(
            f"the {device} export lacks {', '.join(missing)} (it holds {components_option(found) or 'none'}); "
            f"every artifact needs {components_option(COMPONENTS)}"
        )


def warm_inductor_cache(pipe: Any, cfg: CompileConfig, cache_dir: Path) -> None:
    """Run the compiled UNet and VAE decoder at the shapes a pod's warm-up runs (alone and a full batch,
    guided, and unguided too for a model unguided by default: backends.warmup_calls) so the cache holds
    their kernels.

    Beside the cache files go this machine's key (torch, CUDA, Triton, GPU) and torch's
    mega-cache: a pod whose key matches copies the cache, sets TORCHINDUCTOR_CACHE_DIR to the copy
    and hot-loads the mega-cache, so its first `torch.compile` reuses these kernels instead of
    compiling for minutes; any other pod says what differs and compiles
    (runtime.artifacts.inductor_cache). The modules are prepared by the server's own `optimise` with
    its default fast paths, so the graphs compiled here are the ones a pod compiles.
    """
    import torch

    cache_dir.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache_dir)
    os.environ["TORCHINDUCTOR_FX_GRAPH_CACHE"] = "1"
    pipe = optimise(pipe, Settings(model_id=cfg.model_id, torch_compile=True), "cuda")
    s = cfg.shapes
    for size, guidance in warmup_calls(s.batch_size, model_defaults(cfg.model_id).guidance):
        prompts = ["warm-up"] * size
        pipe(prompts, height=s.height, width=s.width, num_inference_steps=WARMUP_STEPS, guidance_scale=guidance)
    torch.cuda.synchronize()
    save_mega_cache(cache_dir)
    write_key(cache_dir, current_key())


def export(cfg: CompileConfig, out_dir: Path, staging: Path) -> None:
    """Write the artifact's files for ``cfg.device`` into ``out_dir``."""
    if cfg.device == "neuron":
        export_neuron(cfg, out_dir, staging)
    else:
        export_torch(cfg, out_dir)
