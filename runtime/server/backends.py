"""Inference backends behind one interface: cuda, neuron, cpu.

The batcher hands a backend one batch of images that share their generation parameters
(steps, guidance, size, and the strength of an image prompt) and gets back one float HxWx3
array per image. Every image has its own CPU `torch.Generator` seeded from its request, so an
image does not depend on which batch it ran in, nor on the device's RNG.

A batch with a strength is image-to-image: every image of it has an image prompt (each its own),
run by an img2img pipeline over the text-to-image pipeline's own modules (no second copy of the
weights). It denoises `BatchParams.denoising_steps` of the steps, after one VAE encode of the
batch's image prompts (`prompt_latents`).

optimum-neuron pins older diffusers/transformers than the CUDA image, so it is imported
only inside `NeuronBackend.load`, and the code passes `torch_dtype` (understood by both).
"""

from __future__ import annotations

import glob
import logging
import math
import os
import re
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np

from plan import contract
from plan.model_artifacts import DYNAMIC_BATCH_OPTION, TINY_VAE_DIRNAME, VAE_ENCODER, runs_guidance
from runtime.artifacts.inductor_cache import CacheDecision, adopt_cache, current_key
from runtime.server.admission import StepClock, Timing
from runtime.server.model_source import ModelLocation, resolve_model
from runtime.server.models import SD_DEFAULTS, TINY_DEFAULT_STEPS, build_tiny_vae, built_in, model_defaults
from runtime.server.settings import Settings

log = logging.getLogger(__name__)

NEURON_DEVICE_GLOB: Final = "/dev/neuron*"
CGROUP_CPU_MAX: Final = Path("/sys/fs/cgroup/cpu.max")
# Steps a request without `steps` gets, per scheduler setting: DPM-Solver++ reaches high-quality
# guided samples in 15-20 steps (Lu et al. 2022; diffusers' DPMSolverMultistepScheduler docs: 20),
# the checkpoint's own PNDM/DDIM runs at diffusers' pipeline default of 50. Fewer steps is the
# largest latency lever an AR request has: each step is one UNet call on the whole batch.
DEFAULT_STEPS_BY_SCHEDULER: Final = {"dpmsolver++": 20, "model": 50}
DEFAULT_STEPS_SD: Final = DEFAULT_STEPS_BY_SCHEDULER["dpmsolver++"]
DEFAULT_STEPS_TINY: Final = TINY_DEFAULT_STEPS
DEFAULT_SCHEDULER: Final = "dpmsolver++"
WARMUP_STEPS: Final = 2
# Below this many pixels an answer encodes in well under a millisecond (docs/benchmarks.md, "Response
# formats"): handing it to another thread would cost about as much as it saves.
ENCODE_IN_THREADS_PIXELS: Final = 256 * 256
# The noise levels Stable Diffusion is trained on (its schedulers' num_train_timesteps): no schedule is longer.
MAX_SCHEDULE_STEPS: Final = 1000
WARMUP_GUIDANCE: Final = 7.5  # guided: the warm-up measures the costlier step (the UNet on twice the batch)
# optimum-neuron's artifact layout (optimum/neuron/utils/constant.py): each compiled component in a
# directory of its name, its graph in model.neuron. Image prompts need the VAE encoder's.
NEURON_VAE_ENCODER_DIR: Final = VAE_ENCODER
NEURON_FILE_NAME: Final = "model.neuron"


def denoising_steps(steps: int, strength: float) -> int:
    """The steps an img2img call runs: the last steps * strength of the schedule (diffusers' get_timesteps)."""
    return min(int(steps * strength), steps)


@dataclass(frozen=True)
class BatchParams:
    """Parameters that must be equal for requests to share a batch (one pipeline call).

    `strength` is set for image prompts (img2img) and None for text alone: the two never share a
    call, and image prompts share one only at the same strength.
    """

    steps: int
    guidance_scale: float
    width: int
    height: int
    strength: float | None = None

    @property
    def denoising_steps(self) -> int:
        """UNet steps the call runs: all of them, or steps * strength of them from an image prompt."""
        return self.steps if self.strength is None else denoising_steps(self.steps, self.strength)


@dataclass(frozen=True)
class ImageSpec:
    """One image of a batch: its prompt, negative prompt, generator seed and, for img2img, its image prompt.

    `image` is float32 HxWx3 in [0, 1] at the batch's width and height (runtime.server.codec.fit).
    """

    prompt: str
    negative_prompt: str
    seed: int
    image: np.ndarray | None = field(default=None, compare=False, repr=False)


StopCheck = Callable[[], bool]
StepReport = Callable[[int, int], None]  # (denoising steps done, steps in this call)
Encoder = Callable[[np.ndarray], bytes]  # an image's file bytes in its request's format


class BatchAbandonedError(Exception):
    """Raised from the step callback when nobody waits for the batch any more.

    diffusers' own ``pipe._interrupt`` only skips the remaining steps: the pipeline still decodes
    the half-denoised latents with the VAE (pipeline_stable_diffusion.py, diffusers 0.42.1), work
    nobody reads. Raising leaves the call at the end of the current step instead.
    """


class _StoppedInsideStepError(BatchAbandonedError):
    """Raised by a forward pre-hook inside a denoising step or the VAE decode (see install_stop_hooks)."""


class BackendError(RuntimeError):
    """The backend could not load or run (message is one line, for the pod log)."""


class DeviceLostError(BackendError):
    """The device will not run another call (its worker process died): the batcher retires it."""


class NonFiniteImageError(BackendError):
    """The warm-up produced NaN or inf pixels (a dtype the weights overflow in, or broken weights)."""


class NoVaeEncoderError(BackendError):
    """A Neuron artifact without a compiled VAE encoder: image prompts could not run on it."""


# Modules whose forward pre-hook checks should_stop: every block, resnet, attention and resampler of
# the UNet and the VAE encoder and decoder, so a call leaves within one of them, a fraction of a step.
STOP_HOOK_CLASSES: Final = frozenset(
    {"ResnetBlock2D", "Transformer2DModel", "BasicTransformerBlock", "Attention", "FeedForward"}
    | {"Downsample2D", "Upsample2D"}
    | {"AutoencoderTinyBlock"}  # the tiny VAE's (--vae tiny) residual blocks
)
_STOP_HOOK_BLOCKS: Final = re.compile(r"(down_blocks|up_blocks)\.\d+|mid_block")
_stop_check = threading.local()  # .should_stop of the call running on this (device) thread


def _stop_hook(module: Any, args: Any) -> None:
    check = getattr(_stop_check, "should_stop", None)
    if check is not None and check():
        raise _StoppedInsideStepError


def install_stop_hooks(pipe: Any) -> int:
    """Register, once, forward pre-hooks that leave the pipeline call mid-step once nobody waits.

    diffusers' step callback runs only between steps, and one step of a large image can take
    minutes on a CPU (2048x2048: about a minute on two cores). The hooks sit on the UNet's and the
    VAE encoder's (image prompts) and decoder's blocks, resnets, attention layers and resamplers and
    raise while the running call's should_stop() says every request is gone, so the device frees
    within one of those modules. The img2img pipeline shares these modules, so they stop it too.
    Returns the number of hooks.
    """
    count = 0
    for root in (pipe.unet, pipe.vae.encoder, pipe.vae.decoder):
        for name, module in root.named_modules():
            if type(module).__name__ in STOP_HOOK_CLASSES or _STOP_HOOK_BLOCKS.fullmatch(name):
                module.register_forward_pre_hook(_stop_hook)
                count += 1
    return count


class Backend(ABC):
    """What the server needs from a device: load, size rules, and batched generation."""

    device: str = "cpu"
    # Threads that encode one call's answers side by side (zlib, libjpeg and libwebp run without the GIL):
    # the device waits while its answers are encoded. create_backends sets it for a device in the
    # server's process; a worker process encodes on its one thread, its CPUs being the other workers' too.
    encode_threads: int = 1
    _encode_pool: ThreadPoolExecutor | None = None  # started by the first call that encodes in threads

    def __init__(self) -> None:
        self.description = "not loaded"
        self.default_steps = DEFAULT_STEPS_SD
        self.default_guidance = SD_DEFAULTS.guidance
        self.default_width = contract.DEFAULT_IMAGE_SIZE
        self.default_height = contract.DEFAULT_IMAGE_SIZE

    @property
    def max_device_batch(self) -> int | None:
        """Images per pipeline call the device accepts; None when any number fits."""
        return None

    def check_size(self, width: int, height: int) -> str | None:
        """Why this device cannot produce width x height, or None (generic bounds are the schema's)."""
        return None

    def check_guidance(self, guidance_scale: float) -> str | None:
        """Why this device cannot run at this guidance, or None (generic bounds are the schema's)."""
        return None

    @abstractmethod
    def load(self) -> None:
        """Load (and place) the model; slow, runs off the event loop."""

    def generate_encoded(
        self,
        params: BatchParams,
        images: Sequence[ImageSpec],
        should_stop: StopCheck,
        on_step: StepReport | None,
        encoders: Sequence[Encoder | None],
        live_steps: bool = True,
    ) -> tuple[list[np.ndarray], list[bytes | None]]:
        """generate(), then each finite image encoded by its encoder (None: not encoded, or not finite).

        Where the device runs in a process of its own, the encoding happens there too, and with
        `live_steps` False its step reports may arrive together at the end of the call (each with
        the time the step ended, when `on_step` is a StepClock): relaying each one costs the device
        time when nobody watches the progress."""
        out = self.generate(params, images, should_stop, on_step=on_step)
        if len(out) != len(images):
            return out, []
        return out, self._encode(out, encoders, params.width * params.height)

    def _encode(self, out: list[np.ndarray], encoders: Sequence[Encoder | None], pixels: int) -> list[bytes | None]:
        """Each finite image encoded by its encoder, side by side on `encode_threads` threads where it pays."""

        def one(pair: tuple[np.ndarray, Encoder | None]) -> bytes | None:
            image, encode = pair
            return encode(image) if encode is not None and np.isfinite(image).all() else None

        pairs = list(zip(out, encoders, strict=True))
        wanted = sum(encode is not None for encode in encoders)
        if self.encode_threads < 2 or wanted < 2 or pixels < ENCODE_IN_THREADS_PIXELS:
            return [one(pair) for pair in pairs]
        if self._encode_pool is None:
            self._encode_pool = ThreadPoolExecutor(self.encode_threads, thread_name_prefix="encode")
        return list(self._encode_pool.map(one, pairs))

    def close(self) -> None:
        """Release what load() started (a worker process, the encoding threads); the server calls it once it
        has stopped."""
        pool, self._encode_pool = self._encode_pool, None
        if pool is not None:
            pool.shutdown(wait=False)

    @abstractmethod
    def generate(
        self,
        params: BatchParams,
        images: Sequence[ImageSpec],
        should_stop: StopCheck,
        on_step: StepReport | None = None,
    ) -> list[np.ndarray]:
        """One float32 HxWx3 array in [0, 1] per ImageSpec, in order; fewer (any) once should_stop() is True.

        With `params.strength` set every ImageSpec has an image prompt: image-to-image at that strength.
        `on_step(done, total)` after each denoising step, from the calling (device) thread.
        """


def detect_device(forced: str | None = None) -> str:
    """The forced device, else CUDA when torch sees a GPU, else Neuron when its devices exist, else CPU."""
    if forced:
        if forced not in contract.DEVICES:
            raise BackendError(
                f"{contract.ENV_DEVICE}: {forced!r} is not allowed; allowed: {', '.join(contract.DEVICES)}"
            )
        return forced
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if glob.glob(NEURON_DEVICE_GLOB):
        return "neuron"
    return "cpu"


def cpu_quota(cpu_max: Path = CGROUP_CPU_MAX) -> int | None:
    """CPUs this container may use per the cgroup v2 quota (`cpu.max`), or None when unlimited."""
    try:
        quota, period = cpu_max.read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    return max(1, math.ceil(int(quota) / int(period)))


def cpu_request(environ: Mapping[str, str] = os.environ) -> int | None:
    """The pod's CPU request in whole CPUs (contract.ENV_CPU_REQUEST), or None when unset.

    Settings refuses a value that is not a whole number at the start."""
    raw = environ.get(contract.ENV_CPU_REQUEST, "").strip()
    return int(raw) if raw.isdigit() and int(raw) > 0 else None


def available_cpus(environ: Mapping[str, str] = os.environ) -> int:
    """CPUs this process may use: min(affinity CPUs, cgroup quota, the pod's CPU request).

    The request counts because a pod without a CPU limit has the node's quota: two such pods on a
    32-vCPU node would each size their threads for 32."""
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(n for n in (available, cpu_quota(), cpu_request(environ)) if n))


def intra_op_threads(requested: int, cpus: int | None = None) -> int:
    """Threads for torch's CPU kernels: the request, else one fewer than the CPUs (at least 1).

    The CPU left over runs the event loop, HTTP parsing, image encoding and the answers while a batch
    computes: with a thread per CPU the kernels and the loop take turns on every core, and a served
    image costs more than a direct call (docs/benchmarks.md, server efficiency)."""
    if requested > 0:
        return requested
    return max(1, (available_cpus() if cpus is None else cpus) - 1)


def limit_compile_workers(environ: Mapping[str, str] = os.environ) -> int:
    """Cap TorchInductor's compile worker processes at the CPUs this process may use; returns the cap.

    Inductor starts one per CPU it sees (up to 32), and a pod without a CPU limit sees the whole node:
    on a large GPU node that is dozens of processes, whose memory counts against the pod's limit.
    TORCHINDUCTOR_COMPILE_THREADS, when set, wins as in torch."""
    import torch._inductor.config as inductor_config

    cpus = available_cpus(environ)
    if "TORCHINDUCTOR_COMPILE_THREADS" not in environ:
        inductor_config.compile_threads = min(inductor_config.compile_threads or cpus, cpus)
    return inductor_config.compile_threads or cpus


def torch_dtype_for(name: str, device: str) -> Any:
    """`auto` is fp16 on CUDA (SD's usual serving precision) and fp32 elsewhere (CPU bf16 is slow)."""
    import torch

    if name == "auto":
        name = "float16" if device == "cuda" else "float32"
    return {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[name]


def scheduler_name(settings: Settings) -> str:
    """The scheduler setting, else the model table's (SD-Turbo: its own sampler, which it was distilled for),
    else dpmsolver++."""
    return settings.scheduler or model_defaults(settings.model_id).scheduler or DEFAULT_SCHEDULER


def default_steps(settings: Settings) -> int:
    """Steps for a request that names none: the setting, else the model's own (the model table's, with the
    sampler they are for; the tiny model's), else the scheduler's budget."""
    if settings.default_steps is not None:
        return settings.default_steps
    model = model_defaults(settings.model_id)
    scheduler = scheduler_name(settings)
    if model.steps is not None and model.scheduler in (None, scheduler):
        return model.steps
    return DEFAULT_STEPS_BY_SCHEDULER[scheduler]


def default_guidance(settings: Settings) -> float:
    """Guidance for a request that names none: the setting, else the model's (SD-Turbo 0: no classifier-free
    guidance), else 7.5."""
    if settings.default_guidance is not None:
        return settings.default_guidance
    return model_defaults(settings.model_id).guidance


def apply_scheduler(pipe: Any, name: str) -> Any:
    """Swap in the configured scheduler, keeping the checkpoint's betas and prediction type (v for 768-v)."""
    if name == "model":
        return pipe
    from diffusers import DPMSolverMultistepScheduler

    if name != "dpmsolver++":
        raise BackendError(f"scheduler {name!r} is not allowed; allowed: dpmsolver++, model")
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config, algorithm_type="dpmsolver++")
    return pipe


def optimise(pipe: Any, settings: Settings, device: str) -> Any:
    """The fast paths the settings ask for (each one's reason is on its setting); returns the pipeline."""
    import torch
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    apply_scheduler(pipe, scheduler_name(settings))
    processor = AttnProcessor2_0 if settings.attention == "sdpa" else AttnProcessor
    pipe.unet.set_attn_processor(processor())
    if hasattr(pipe.vae, "set_attn_processor"):  # AutoencoderTiny (--vae tiny) has no attention
        pipe.vae.set_attn_processor(processor())
    if device == "cuda":
        pipe = pipe.to("cuda")
        if settings.channels_last:
            pipe.unet.to(memory_format=torch.channels_last)
            pipe.vae.to(memory_format=torch.channels_last)
        if settings.torch_compile:
            limit_compile_workers()
            # reduce-overhead replays CUDA graphs: a step is a few launches instead of hundreds.
            pipe.unet = torch.compile(pipe.unet, mode="reduce-overhead", fullgraph=True)
            pipe.vae.decoder = torch.compile(pipe.vae.decoder, mode="reduce-overhead", fullgraph=True)
    return pipe


def use_tiny_vae(pipe: Any, settings: Settings, location: ModelLocation | None = None) -> Any:
    """Replace the pipeline's VAE by AutoencoderTiny (TAESD; --vae tiny) in the same dtype; returns the pipeline.

    TAESD decodes the same latents with about 1/40 of the decoder's parameters, for less fine detail
    (its README: "it tends to fudge fine details"); the img2img pipeline shares it, encoder included.
    The one a model artifact carries (compiled with --tiny-vae) wins over --tiny-vae: a pod is offline.
    """
    full = pipe.vae
    shipped = Path(location.path) / TINY_VAE_DIRNAME if location is not None and location.path else None
    source = str(shipped) if shipped is not None and shipped.is_dir() else settings.tiny_vae
    try:
        pipe.vae = build_tiny_vae(settings.model_id, source, int(full.config.latent_channels), full.dtype)
    except Exception as exc:  # offline (a pod) with a model that carries none: say what to change
        carried = f"the model at {shipped.parent} carries no {TINY_VAE_DIRNAME}/, and " if shipped is not None else ""
        raise BackendError(
            f"--vae tiny: {carried}{source} did not load ({type(exc).__name__}); a pod's model carries the tiny VAE "
            "when compiled with serving.vae tiny, which takes a new serving.imageVersion"
        ) from None
    log.info("tiny VAE from %s", source if built_in(settings.model_id) is None else "code (random weights)")
    return pipe


def inductor_cache(
    settings: Settings, device: str, location: ModelLocation | None, key: dict[str, str] | None = None
) -> CacheDecision | None:
    """Use the artifact's TorchInductor cache when this pod compiles (cuda, --torch-compile) and its key matches.

    None when nothing compiles or the model is not an artifact directory. `key` is this pod's
    (runtime.artifacts.inductor_cache.current_key when not given). The cache is copied under the
    model cache directory, which is writable.
    """
    if device != "cuda" or not settings.torch_compile or location is None or location.path is None:
        return None
    here = key if key is not None else current_key()
    return adopt_cache(Path(location.path), Path(settings.model_cache_dir) / "torchinductor", here)


def to_float_images(images: Any) -> list[np.ndarray]:
    """Pipeline output (ndarray batch or PIL list) -> list of float32 HxWx3 arrays in [0, 1]."""
    if isinstance(images, np.ndarray):
        return [np.asarray(img, dtype=np.float32) for img in images]
    out = []
    for img in images:
        arr = np.asarray(img)
        out.append(arr.astype(np.float32) / 255.0 if arr.dtype == np.uint8 else arr.astype(np.float32))
    return out


def image_prompts(params: BatchParams, images: Sequence[ImageSpec]) -> np.ndarray:
    """The batch's image prompts as one float32 NHWC array in [0, 1] (what diffusers' image processor takes)."""
    prompts = [spec.image for spec in images]
    if any(p is None or p.shape != (params.height, params.width, 3) for p in prompts):
        raise BackendError(f"an img2img batch needs an image prompt of {params.width}x{params.height} per image")
    return np.stack([np.asarray(p, dtype=np.float32) for p in prompts if p is not None])


def prompt_latents(vae: Any, pixels: np.ndarray, generators: list[Any], device: Any, dtype: Any) -> Any:
    """The image prompts' scaled VAE latents, each sampled with its image's generator, for an img2img call.

    What diffusers' img2img does with a list of generators (pipeline_stable_diffusion_img2img.py,
    prepare_latents: the latent distribution sampled per image, then times the VAE's scaling factor),
    except that the encode is one call on the whole batch rather than one per image: one device call
    instead of n, and the only shape a Neuron encoder compiled for the batch accepts. Each generator
    draws the same numbers as there, so an image does not depend on its batch. The pipeline takes
    the result as `image` (4 channels: latents, not encoded again) and draws its noise next.
    """
    import torch

    images = torch.from_numpy(np.ascontiguousarray(pixels)).permute(0, 3, 1, 2) * 2.0 - 1.0  # [0, 1] -> [-1, 1]
    encoded = vae.encode(images.to(device=device, dtype=dtype))
    if not hasattr(encoded, "latent_dist"):  # AutoencoderTiny: deterministic latents (diffusers' retrieve_latents)
        return encoded.latents * vae.config.scaling_factor
    return encoded.latent_dist.sample(generators) * vae.config.scaling_factor


def fresh_scheduler(pipe: Any) -> Any:
    """A scheduler of the same class and config: pipelines sharing modules keep their step state apart."""
    return type(pipe.scheduler).from_config(pipe.scheduler.config)


def _generators(images: Sequence[ImageSpec]) -> list[Any]:
    import torch

    return [torch.Generator(device="cpu").manual_seed(spec.seed) for spec in images]


def _negative_prompts(images: Sequence[ImageSpec]) -> list[str] | None:
    """None when no image has one: diffusers then uses "" for all, without a list to tokenize."""
    return [s.negative_prompt for s in images] if any(s.negative_prompt for s in images) else None


def _step_callback(should_stop: StopCheck, on_step: StepReport | None) -> Callable[..., dict[str, Any]]:
    """diffusers' callback_on_step_end: report the step, and leave the call (BatchAbandonedError) once nobody waits."""

    def callback(pipe: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        if should_stop():
            raise BatchAbandonedError
        if on_step is not None:
            on_step(step + 1, int(getattr(pipe, "num_timesteps", 0) or 0))
        return {}

    return callback


def _accepts_step_callback(pipe: Any) -> bool:
    """Whether this pipeline's __call__ takes diffusers' callback_on_step_end (optimum-neuron's may not)."""
    import inspect

    try:
        return "callback_on_step_end" in inspect.signature(pipe.__call__).parameters
    except (TypeError, ValueError):
        return False


class DiffusersBackend(Backend):
    """diffusers StableDiffusionPipeline on cuda (fp16/bf16, SDPA, channels_last) or cpu (fp32).

    Image prompts run a StableDiffusionImg2ImgPipeline constructed from the loaded pipeline's
    components: the same UNet, VAE and text encoder objects (and so the same fast paths and stop
    hooks), with a scheduler of its own.
    """

    def __init__(self, settings: Settings, device: str, loader: Callable[[], Any] | None = None) -> None:
        super().__init__()
        self.settings = settings
        self.device = device
        self._loader = loader
        self.pipe: Any = None
        self.image_pipe: Any = None  # img2img over self.pipe's modules
        self.location: ModelLocation | None = None
        self.stop_hooks = 0  # forward pre-hooks that stop a call mid-step (install_stop_hooks)
        self.cache: CacheDecision | None = None  # the artifact's TorchInductor cache, used or why not

    def load(self) -> None:
        import torch

        dtype = torch_dtype_for(self.settings.dtype, self.device)
        torch.set_num_threads(intra_op_threads(self.settings.torch_threads))
        started = time.monotonic()
        if self._loader is not None:
            pipe = self._loader()
        else:
            self.location = resolve_model(self.settings, self.device)
            pipe = self.location.load_diffusers(dtype)
        pipe.set_progress_bar_config(disable=True)
        if self.settings.vae == "tiny":
            pipe = use_tiny_vae(pipe, self.settings, self.location)
        self.cache = cache = inductor_cache(self.settings, self.device, self.location)
        if cache is not None:  # before optimise: torch.compile reads the cache directory when it first compiles
            (log.info if cache.used else log.warning)("%s", cache.message)
        pipe = optimise(pipe, self.settings, self.device)
        # A compiled graph (fullgraph torch.compile, CUDA graphs) cannot stop halfway: it stops between steps.
        compiled = self.settings.torch_compile and self.device == "cuda"
        self.stop_hooks = 0 if compiled else install_stop_hooks(pipe)
        from diffusers import StableDiffusionImg2ImgPipeline

        # The constructor takes the modules as they are; from_pipe would also cast them to its dtype argument.
        parts = {**pipe.components, "scheduler": fresh_scheduler(pipe), "requires_safety_checker": False}
        image_pipe: Any = StableDiffusionImg2ImgPipeline(**parts)
        image_pipe.set_progress_bar_config(disable=True)
        self.pipe, self.image_pipe = pipe, image_pipe
        self.default_steps = default_steps(self.settings)
        self.default_guidance = default_guidance(self.settings)
        sample = int(getattr(pipe.unet.config, "sample_size", 64))
        native = sample * int(getattr(pipe, "vae_scale_factor", 8))
        self.default_width = self.settings.width or native
        self.default_height = self.settings.height or native
        s = self.settings
        self.description = (
            f"{s.model_id} on {self.device} ({str(dtype).removeprefix('torch.')}, {s.attention} attention, "
            f"{scheduler_name(s)} scheduler{', torch.compile' if s.torch_compile and self.device == 'cuda' else ''}"
            f"{' with the inductor cache' if cache is not None and cache.used else ''}"
            f"{', tiny VAE' if s.vae == 'tiny' else ''}, "
            f"{torch.get_num_threads()} CPU threads) "
            f"loaded in {time.monotonic() - started:.1f}s"
        )
        log.info("model loaded: %s", self.description)

    def generate(
        self,
        params: BatchParams,
        images: Sequence[ImageSpec],
        should_stop: StopCheck,
        on_step: StepReport | None = None,
    ) -> list[np.ndarray]:
        import torch

        if self.pipe is None:
            raise BackendError("model is not loaded")
        generators = _generators(images)
        common: dict[str, Any] = {
            "prompt": [s.prompt for s in images],
            "negative_prompt": _negative_prompts(images),
            "num_inference_steps": params.steps,
            "guidance_scale": params.guidance_scale,
            "generator": generators,
            "output_type": "np",
            "callback_on_step_end": _step_callback(should_stop, on_step),
        }
        pixels = image_prompts(params, images) if params.strength is not None else None
        _stop_check.should_stop = should_stop
        with torch.inference_mode():
            try:
                if pixels is None:
                    out = self.pipe(**common, width=params.width, height=params.height)
                else:  # the size is the image prompts'
                    vae = self.image_pipe.vae
                    latents = prompt_latents(vae, pixels, generators, vae.device, vae.dtype)
                    if on_step is not None:  # step 0 of n: the steps are timed from here, the encode is not one
                        on_step(0, params.denoising_steps)
                    out = self.image_pipe(**common, image=latents, strength=params.strength)
            except BatchAbandonedError:  # between steps (the callback) or inside one (the hooks)
                return []
            finally:
                _stop_check.should_stop = None
        return to_float_images(out.images)


@dataclass(frozen=True)
class CompiledShape:
    """What a Neuron model was traced for: one image size and one batch size."""

    width: int
    height: int
    batch_size: int
    # Without dynamic batching torch-neuronx's DataParallel takes only twice the compiled batch: the
    # doubled batch of classifier-free guidance. A call without guidance (scale <= 1) would fail.
    dynamic_batch: bool = True


def compiled_shape_problem(shape: CompiledShape, settings: Settings) -> str | None:
    """Why a Neuron artifact cannot serve what the pod is configured for (one line), or None.

    Neuron graphs are compiled for one batch and one size: a max batch above the compiled one
    would split every batch into several device calls, a smaller one pads every call, and
    another size cannot run at all. The charts set all three from the same config as the compile.
    """
    problems = []
    if settings.max_batch != shape.batch_size:
        problems.append(
            f"{contract.ENV_MAX_BATCH}={settings.max_batch} but the artifact is compiled for batch {shape.batch_size}"
        )
    width, height = settings.width or shape.width, settings.height or shape.height
    if (width, height) != (shape.width, shape.height):
        problems.append(
            f"{contract.ENV_WIDTH}x{contract.ENV_HEIGHT}={width}x{height} but the artifact is compiled for "
            f"{shape.width}x{shape.height}"
        )
    if not problems:
        return None
    return "Neuron model shape mismatch: " + "; ".join(problems) + " (recompile, or serve what was compiled)"


def neuron_image_pipeline(pipe: Any) -> Any:
    """optimum-neuron's img2img pipeline over a loaded text-to-image pipeline's compiled modules.

    Its constructor takes already-loaded Neuron models as they are (NeuronDiffusionPipelineBase,
    optimum-neuron 0.4.5), so the graphs on the NeuronCores are shared, not loaded twice.
    """
    from optimum.neuron import NeuronStableDiffusionImg2ImgPipeline  # lazy: only in the Neuron image

    return NeuronStableDiffusionImg2ImgPipeline(**{**pipe.components, "scheduler": fresh_scheduler(pipe)})


def neuron_artifact_problem(path: Path) -> str | None:
    """Why a compiled Neuron artifact cannot serve every request (one line), or None."""
    encoder = path / NEURON_VAE_ENCODER_DIR / NEURON_FILE_NAME
    if not encoder.is_file():
        return (
            f"the Neuron artifact has no compiled VAE encoder ({NEURON_VAE_ENCODER_DIR}/{NEURON_FILE_NAME}), "
            "which image prompts need: recompile it (optimum-neuron compiles the encoder by default)"
        )
    return None


class NeuronBackend(Backend):
    """optimum-neuron NeuronStableDiffusionPipeline over compiled artifacts.

    Shapes are static: other sizes are rejected up front (check_size -> 422), and a short
    batch is padded with copies of its last image up to the compiled batch size, the padding
    outputs being dropped. Image prompts run the compiled VAE encoder (`neuron_image_pipeline`):
    an artifact without one is refused at load.

    A call stops between steps (where the pipeline takes diffusers' step callback), never inside
    one: the UNet is one compiled graph on the NeuronCores, with no Python module boundary inside
    where a hook could run, so there is nothing to interrupt mid-step.
    """

    device = "neuron"

    def __init__(
        self,
        settings: Settings,
        loader: Callable[[], tuple[Any, CompiledShape]] | None = None,
        image_pipeline: Callable[[Any], Any] = neuron_image_pipeline,
    ) -> None:
        super().__init__()
        self.settings = settings
        self._loader = loader
        self._image_pipeline = image_pipeline
        self.pipe: Any = None
        self.image_pipe: Any = None
        self.shape: CompiledShape | None = None

    @property
    def max_device_batch(self) -> int | None:
        return self.shape.batch_size if self.shape else None

    def check_size(self, width: int, height: int) -> str | None:
        if self.shape and (width, height) != (self.shape.width, self.shape.height):
            return f"this Neuron model is compiled for {self.shape.width}x{self.shape.height} only"
        return None

    def check_guidance(self, guidance_scale: float) -> str | None:
        if self.shape and not self.shape.dynamic_batch and not runs_guidance(guidance_scale):
            return (
                f"{guidance_scale:g} is not allowed; allowed: more than 1 (this Neuron model is compiled for guided "
                "calls only: recompile it with dynamic batching to run without guidance)"
            )
        return None

    def load(self) -> None:
        if self.settings.vae != "full":
            raise BackendError(
                f"{contract.ENV_VAE}={self.settings.vae!r} is not allowed on neuron; allowed: full "
                "(the artifact's compiled VAE)"
            )
        started = time.monotonic()
        pipe, shape = self._loader() if self._loader else self._load_compiled()
        problem = compiled_shape_problem(shape, self.settings)
        if problem:
            raise BackendError(problem)
        if getattr(pipe, "vae_encoder", None) is None:  # optimum-neuron loads it when the artifact has it
            raise NoVaeEncoderError(
                f"the Neuron pipeline has no VAE encoder ({NEURON_VAE_ENCODER_DIR}), which image prompts need"
            )
        pipe = apply_scheduler(pipe, scheduler_name(self.settings))
        self.image_pipe = self._image_pipeline(pipe)
        self.pipe, self.shape = pipe, shape
        self.default_width, self.default_height = self.shape.width, self.shape.height
        self.default_steps = default_steps(self.settings)
        self.default_guidance = default_guidance(self.settings)
        self.description = (
            f"{self.settings.model_id} on neuron ({self.shape.width}x{self.shape.height}, "
            f"batch {self.shape.batch_size}) loaded in {time.monotonic() - started:.1f}s"
        )
        log.info("model loaded: %s", self.description)

    def _load_compiled(self) -> tuple[Any, CompiledShape]:
        location = resolve_model(self.settings, "neuron")
        if location.manifest is None:
            raise BackendError(
                "neuron needs a compiled artifact with a manifest: set "
                f"{contract.ENV_MODEL_SOURCE} to the compile job's output"
            )
        problem = neuron_artifact_problem(Path(str(location.path)))
        if problem:
            raise NoVaeEncoderError(problem)
        from optimum.neuron import NeuronStableDiffusionPipeline  # lazy: only in the Neuron image

        spec = location.manifest.spec
        shapes = spec.shapes
        pipe = NeuronStableDiffusionPipeline.from_pretrained(str(location.path))
        dynamic = spec.options.get(DYNAMIC_BATCH_OPTION, "false") == "true"  # artifacts before the option: off
        return pipe, CompiledShape(shapes.width, shapes.height, shapes.batch_size, dynamic_batch=dynamic)

    def generate(
        self,
        params: BatchParams,
        images: Sequence[ImageSpec],
        should_stop: StopCheck,
        on_step: StepReport | None = None,
    ) -> list[np.ndarray]:
        if self.pipe is None or self.shape is None:
            raise BackendError("model is not loaded")
        # Per-step stop and progress where the pipeline takes diffusers' callback; else between chunks.
        extra: dict[str, Any] = {}
        if _accepts_step_callback(self.pipe):
            extra["callback_on_step_end"] = _step_callback(should_stop, on_step)
        problem = self.check_size(params.width, params.height)
        if problem:
            raise BackendError(problem)
        out: list[np.ndarray] = []
        size = self.shape.batch_size
        for start in range(0, len(images), size):
            chunk = list(images[start : start + size])
            real = len(chunk)
            chunk += [chunk[-1]] * (size - real)  # static batch: pad, then drop the padding outputs
            generators = _generators(chunk)
            pipe, prompt_images = self.pipe, {}
            try:
                if params.strength is not None:  # the encoder is compiled for the whole batch: one call
                    latents = prompt_latents(self.image_pipe.vae, image_prompts(params, chunk), generators, "cpu", None)
                    # A list of per-image latents: optimum-neuron's __call__ tests `if kwargs.get("image")`,
                    # which a batched tensor cannot answer; diffusers stacks the list back.
                    pipe, prompt_images = self.image_pipe, {"image": list(latents), "strength": params.strength}
                result = pipe(
                    prompt=[s.prompt for s in chunk],
                    negative_prompt=[s.negative_prompt for s in chunk],
                    num_inference_steps=params.steps,
                    guidance_scale=params.guidance_scale,
                    generator=generators,
                    output_type="np",
                    **prompt_images,
                    **extra,
                )
            except BatchAbandonedError:
                break
            out.extend(to_float_images(result.images)[:real])
            if should_stop():
                break
        return out


def create_backend(settings: Settings) -> Backend:
    """The backend for the detected (or forced) device; nothing heavy happens until load()."""
    device = detect_device(settings.device)
    if device == "neuron":
        return NeuronBackend(settings)
    return DiffusersBackend(settings, device)


def warmup_calls(max_batch: int, default_guidance: float) -> list[tuple[int, float]]:
    """(images, guidance) of the warm-up's calls at the default size, in order; the compile job's
    TorchInductor warm-up makes the same calls, so a pod finds their kernels in its cache.

    Alone and as a full batch, guided (the costlier step, which admission measures); then, for a model
    whose requests run without guidance by default (SD-Turbo), the same unguided: the UNet then sees
    the undoubled batch, other shapes that torch.compile would otherwise compile on a client's request."""
    sizes = sorted({1, max(1, max_batch)})
    calls = [(size, WARMUP_GUIDANCE) for size in sizes]
    if not runs_guidance(default_guidance):
        calls += [(size, default_guidance) for size in sizes]
    return calls


def warmup(
    backend: Backend,
    max_batch: int = 1,
    record: Callable[[Timing], None] | None = None,
    largest: tuple[int, int] | None = None,
) -> float:
    """Generate at the default size alone and as a full batch (:func:`warmup_calls`); raise unless
    every pixel is finite.

    The full batch makes the first real batch pay no one-off kernel selection (or, with
    torch.compile, compilation); a model unguided by default is warmed unguided too. With `largest`
    (the largest width and height requests may ask for, when above the default) one image is
    generated at that size too, so the device's time there is measured rather than extrapolated
    (and a size the device cannot hold fails here, not on a client's request). Last, one image from
    an image prompt (img2img at strength 1: every step, after a VAE encode), so the first image
    prompt pays no one-off cost and a broken encoder fails here. Each guided call (the costlier
    step) is timed step by step and handed to `record` (the admission cost model's first
    measurements). Returns the seconds of the guided single-image call.
    """
    default = (backend.default_width, backend.default_height)
    calls: list[tuple[tuple[int, int], int, float, float | None]] = [
        (default, size, guidance, None)
        for size, guidance in warmup_calls(max_batch, backend.default_guidance)
        if backend.check_guidance(guidance) is None  # a guided-only Neuron model refuses unguided requests (422)
    ]
    if largest is not None and largest != default and backend.check_size(*largest) is None:
        calls.append((largest, 1, WARMUP_GUIDANCE, None))
    calls.append((default, 1, WARMUP_GUIDANCE, 1.0))
    single = 0.0
    for (width, height), size, guidance, strength in calls:
        params = BatchParams(WARMUP_STEPS, guidance, width, height, strength)
        clock = StepClock(size, width, height, params.denoising_steps)
        grey = np.full((height, width, 3), 0.5, dtype=np.float32) if strength is not None else None
        specs = [ImageSpec("warmup", "", i, grey) for i in range(size)]
        images = backend.generate(params, specs, lambda: False, on_step=clock)
        timing = clock.timing()
        guided = runs_guidance(guidance)
        if (width, height) == default and size == 1 and strength is None and guided:
            single = time.perf_counter() - clock.started
        if len(images) != size or not all(np.isfinite(img).all() for img in images):
            raise NonFiniteImageError("warm-up produced a non-finite image (NaN/inf): check dtype and weights")
        if record is not None and guided:
            record(timing)
    return single
