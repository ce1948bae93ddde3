"""Models built in code from their published configuration, with seeded random weights: no download.

- ``tiny``: a few channels of the SD architecture (``runtime.server.tiny``), for tests and ``make serve``;
- ``sd21-random``: Stable Diffusion 2.1 base (512x512, epsilon prediction, PNDM), and
- ``sd21-768-random``: Stable Diffusion 2.1 (768x768, v-prediction, DDIM), and
- ``sd-turbo-random``: SD-Turbo (SD 2.1 base distilled to 1-4 steps without guidance: the same
  networks, Euler with trailing timesteps; served at 1 step and guidance 0 by default),

the real 865M-parameter UNet, the OpenCLIP ViT-H text encoder (23 layers) and the SD VAE, so
latency and memory measured on them are the real model's; only the images are noise. The
server, the compile job and the benchmark take these names like any model id.

Each model carries the defaults a request that names no steps or guidance gets (`ModelDefaults`):
the row of the app's model table (``plan.model_artifacts.MODEL_PROFILES``, which also holds the
Hub models, e.g. ``stabilityai/sd-turbo``: 1 step, guidance 0, its own sampler), the tiny model's
few steps, or Stable Diffusion's defaults for a model in neither.

The configurations below are data copied from the Hub files they name. Modules are built with
their parameters on the meta device and then filled from a seeded generator (normal, the
scale of torch's default init): building the SD 2.1 pipeline this way takes seconds, where the
default per-layer init takes about 30 s on 2 cores. Importing this module does not import torch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from plan.model_artifacts import model_profile
from runtime.server.tiny import TINY_IMAGE_SIZE, TINY_MAX_TOKENS, TINY_MODEL_ID

if TYPE_CHECKING:
    import torch

SD21_MODEL_ID: Final = "sd21-random"
SD21_768_MODEL_ID: Final = "sd21-768-random"
SD_TURBO_MODEL_ID: Final = "sd-turbo-random"

# stabilityai/stable-diffusion-2-1-base unet/config.json (diffusers names; absent keys keep
# diffusers' defaults, as when the file is loaded).
SD21_BASE_UNET: Final[Mapping[str, Any]] = {
    "act_fn": "silu",
    "attention_head_dim": [5, 10, 20, 20],
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 1024,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1,
    "dual_cross_attention": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "num_class_embeds": None,
    "only_cross_attention": False,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "use_linear_projection": True,
}
# stabilityai/stable-diffusion-2-1 unet/config.json: the same network at 96x96 latents, with
# attention computed in float32 (the 768-v model overflows fp16 in attention otherwise).
SD21_768_UNET: Final[Mapping[str, Any]] = {**SD21_BASE_UNET, "sample_size": 96, "upcast_attention": True}

# stabilityai/stable-diffusion-2-1(-base) text_encoder/config.json: OpenCLIP ViT-H/14's text tower
# as a transformers CLIPTextModel (SD 2 conditions on its penultimate layer, so 23 of 24 layers
# are shipped). eos_token_id 2 is the converted file's value: CLIPTextModel then pools at the
# highest token id, i.e. <|endoftext|>. projection_dim is unused by CLIPTextModel (no projection).
SD21_TEXT_ENCODER: Final[Mapping[str, Any]] = {
    "attention_dropout": 0.0,
    "bos_token_id": 0,
    "dropout": 0.0,
    "eos_token_id": 2,
    "hidden_act": "gelu",
    "hidden_size": 1024,
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    "intermediate_size": 4096,
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": 77,
    "num_attention_heads": 16,
    "num_hidden_layers": 23,
    "pad_token_id": 1,
    "projection_dim": 512,
    "vocab_size": 49408,
}
# tokenizer/special_tokens_map.json: SD 2 pads with "!" (id 0), not <|endoftext|>.
SD21_PADDING: Final = "!"

# stabilityai/stable-diffusion-2-1-base vae/config.json (the SD VAE; scaling_factor is
# diffusers' default 0.18215, which the file leaves out).
SD21_BASE_VAE: Final[Mapping[str, Any]] = {
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 512,
    "scaling_factor": 0.18215,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}
SD21_768_VAE: Final[Mapping[str, Any]] = {**SD21_BASE_VAE, "sample_size": 768}  # stable-diffusion-2-1 vae/config.json

_SD_BETAS: Final[Mapping[str, Any]] = {
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "trained_betas": None,
}
# stabilityai/stable-diffusion-2-1-base scheduler/scheduler_config.json
SD21_BASE_SCHEDULER: Final[Mapping[str, Any]] = {
    "_class_name": "PNDMScheduler",
    **_SD_BETAS,
    "prediction_type": "epsilon",
    "skip_prk_steps": True,
}
# stabilityai/stable-diffusion-2-1 scheduler/scheduler_config.json: the 768 model predicts v.
SD21_768_SCHEDULER: Final[Mapping[str, Any]] = {
    "_class_name": "DDIMScheduler",
    **_SD_BETAS,
    "prediction_type": "v_prediction",
    "skip_prk_steps": True,
}
# stabilityai/sd-turbo scheduler/scheduler_config.json: Euler with timesteps from the end of the
# schedule ("trailing"), so one step starts from pure noise at t=999 as the distillation trained it.
SD_TURBO_SCHEDULER: Final[Mapping[str, Any]] = {
    "_class_name": "EulerDiscreteScheduler",
    **_SD_BETAS,
    "interpolation_type": "linear",
    "prediction_type": "epsilon",
    "timestep_spacing": "trailing",
    "use_karras_sigmas": False,
}
_SD21_VARIANTS: Final = (SD21_MODEL_ID, SD21_768_MODEL_ID, SD_TURBO_MODEL_ID)


@dataclass(frozen=True)
class ModelDefaults:
    """What a request that names no steps or guidance gets, and the sampler the model was made for."""

    steps: int | None = None  # None: the scheduler's budget (runtime.server.backends.DEFAULT_STEPS_BY_SCHEDULER)
    guidance: float = 7.5  # diffusers' StableDiffusionPipeline default
    scheduler: str | None = None  # None: the scheduler setting's default; "model": the checkpoint's own


SD_DEFAULTS: Final = ModelDefaults()  # a model in no table: the scheduler's steps, guidance 7.5
TINY_DEFAULT_STEPS: Final = 4  # random weights: more steps show nothing more, they only take longer
TINY_DEFAULTS: Final = ModelDefaults(steps=TINY_DEFAULT_STEPS)


@dataclass(frozen=True)
class BuiltInModel:
    """A model that exists only in code: its native image size, its defaults and how to build its pipeline."""

    name: str
    native_size: int  # pixels; the UNet's sample_size times the VAE's factor of 8
    build: Callable[[int, Any], Any]  # (seed, torch dtype or None) -> StableDiffusionPipeline

    @property
    def defaults(self) -> ModelDefaults:
        """Its request defaults: the model table's row (as the model it stands in for), or the tiny model's."""
        return model_defaults(self.name)


def _build_tiny(seed: int, dtype: Any) -> Any:
    from runtime.server.tiny import build_tiny_pipeline

    return build_tiny_pipeline(seed=seed, dtype=dtype)


def init_random_(module: torch.nn.Module, generator: torch.Generator, dtype: torch.dtype) -> torch.nn.Module:
    """Give every meta parameter of ``module`` a seeded random value on the CPU, in ``dtype``.

    Conv and linear weights are normal with std 1/sqrt(3 * fan_in), the standard deviation of
    torch's default kaiming_uniform(a=sqrt(5)) init, so activations keep the scale they have in a
    freshly constructed model; embeddings use CLIP's initializer_range (0.02); norm scales are 1 and
    biases 0. Parameters are visited in ``named_parameters`` order, so one seed gives one model.
    """
    import torch

    for owner in module.modules():
        for name, param in list(owner._parameters.items()):
            if param is None or not param.is_meta:
                continue
            data = torch.empty(param.shape, dtype=dtype)
            if isinstance(owner, torch.nn.Embedding):
                data.normal_(0.0, 0.02, generator=generator)
            elif param.ndim >= 2:
                fan_in = param[0].numel()
                data.normal_(0.0, (3.0 * fan_in) ** -0.5, generator=generator)
            elif name == "weight":
                data.fill_(1.0)
            else:
                data.zero_()
            owner._parameters[name] = torch.nn.Parameter(data, requires_grad=False)
    leftover = [name for name, p in module.named_parameters() if p.is_meta]
    if leftover:  # a parameter shared between modules under another name would land here
        raise RuntimeError(f"parameters left uninitialised: {leftover[:3]}")
    return module


def build_sd21_pipeline(seed: int = 0, dtype: Any = None, variant: str = SD21_MODEL_ID) -> Any:
    """The SD 2.1 (base or 768-v) pipeline with random weights; the same seed gives the same weights.

    Safety checker off as in the server's production configuration (see ``build_tiny_pipeline``).
    """
    import torch
    from accelerate import init_empty_weights
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        EulerDiscreteScheduler,
        PNDMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    from runtime.server.tiny import build_clip_tokenizer

    if variant not in _SD21_VARIANTS:
        raise ValueError(f"SD 2.1 variant {variant!r} is not allowed; allowed: {', '.join(_SD21_VARIANTS)}")
    base = variant != SD21_768_MODEL_ID  # SD-Turbo is the base model's architecture
    dtype = dtype or torch.float32
    unet_cfg, vae_cfg = (SD21_BASE_UNET, SD21_BASE_VAE) if base else (SD21_768_UNET, SD21_768_VAE)
    scheduler_cfg = dict(
        {SD21_MODEL_ID: SD21_BASE_SCHEDULER, SD21_768_MODEL_ID: SD21_768_SCHEDULER}.get(variant, SD_TURBO_SCHEDULER)
    )
    scheduler_cls = {
        "PNDMScheduler": PNDMScheduler,
        "DDIMScheduler": DDIMScheduler,
        "EulerDiscreteScheduler": EulerDiscreteScheduler,
    }[scheduler_cfg.pop("_class_name")]
    with init_empty_weights(include_buffers=False):  # parameters on meta; buffers (position ids) real
        unet = UNet2DConditionModel(**unet_cfg)
        vae = AutoencoderKL(**vae_cfg)
        text_encoder = CLIPTextModel(CLIPTextConfig(**SD21_TEXT_ENCODER))
    components: tuple[Any, ...] = (unet, vae, text_encoder)
    for offset, module in enumerate(components):  # one stream per component, as the tiny model
        init_random_(module, torch.Generator().manual_seed(seed + offset), dtype)
        module.eval()
    tokenizer = build_clip_tokenizer(int(SD21_TEXT_ENCODER["vocab_size"]), pad_token=SD21_PADDING)
    if tokenizer.model_max_length != TINY_MAX_TOKENS:
        raise RuntimeError("the CLIP tokenizer must produce 77 tokens")
    pipe: Any = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler_cls.from_config(scheduler_cfg),  # as from the file: unknown keys are ignored
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


BUILT_IN_MODELS: Final[Mapping[str, BuiltInModel]] = {
    TINY_MODEL_ID: BuiltInModel(TINY_MODEL_ID, TINY_IMAGE_SIZE, _build_tiny),
    SD21_MODEL_ID: BuiltInModel(
        SD21_MODEL_ID, int(SD21_BASE_UNET["sample_size"]) * 8, lambda s, d: build_sd21_pipeline(s, d, SD21_MODEL_ID)
    ),
    SD21_768_MODEL_ID: BuiltInModel(
        SD21_768_MODEL_ID,
        int(SD21_768_UNET["sample_size"]) * 8,
        lambda s, d: build_sd21_pipeline(s, d, SD21_768_MODEL_ID),
    ),
    SD_TURBO_MODEL_ID: BuiltInModel(
        SD_TURBO_MODEL_ID,
        int(SD21_BASE_UNET["sample_size"]) * 8,
        lambda s, d: build_sd21_pipeline(s, d, SD_TURBO_MODEL_ID),
    ),
}


def built_in(model_id: str) -> BuiltInModel | None:
    """The built-in model of that name, or None for a Hub id or a directory."""
    return BUILT_IN_MODELS.get(model_id)


def model_defaults(model_id: str) -> ModelDefaults:
    """A model's request defaults: its row of the model table, the tiny model's, else Stable Diffusion's."""
    profile = model_profile(model_id)
    if profile is not None:
        return ModelDefaults(profile.default_steps, profile.guidance_scale, profile.scheduler)
    return TINY_DEFAULTS if model_id == TINY_MODEL_ID else SD_DEFAULTS


def build_pipeline(model_id: str, seed: int = 0, dtype: Any = None) -> Any:
    """Build a built-in model's pipeline (float32 unless ``dtype``); raise ValueError for other names."""
    model = built_in(model_id)
    if model is None:
        raise ValueError(f"model {model_id!r} is not built in; built in: {', '.join(BUILT_IN_MODELS)}")
    return model.build(seed, dtype)


def build_tiny_vae(model_id: str, source: str, latent_channels: int = 4, dtype: Any = None, seed: int = 0) -> Any:
    """The AutoencoderTiny (TAESD) to decode ``model_id``'s latents with.

    A built-in model gets one built from diffusers' default configuration (TAESD's) with seeded random
    weights, as its other networks; any other model loads ``source`` (a Hub id such as
    ``madebyollin/taesd`` for SD 1.x/2.x, or a directory). Its scaling factor is 1: it takes the
    latents the UNet produces, as diffusers' pipelines hand them to it.
    """
    import torch
    from diffusers import AutoencoderTiny

    if built_in(model_id) is None:
        return AutoencoderTiny.from_pretrained(source, torch_dtype=dtype or torch.float32)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae: Any = AutoencoderTiny(latent_channels=latent_channels)
    return vae.to(dtype=dtype or torch.float32).eval()
