"""A tiny, randomly initialised Stable Diffusion pipeline built from config in code.

Tests, the local demo (`make serve`) and the compile job's tests need a real
`StableDiffusionPipeline` that loads in well under a second and never touches the network.
Every component has the real SD architecture (UNet2DConditionModel with cross attention,
AutoencoderKL with a VAE scale factor of 8 like SD, CLIP text encoder and BPE tokenizer),
only with a handful of channels, so code paths exercised here are the production ones.
torch is imported only to build it: the compile job reads the constants without loading torch.
"""

from __future__ import annotations

import json
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    import torch
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import StableDiffusionPipeline
    from transformers import CLIPTokenizer

TINY_MODEL_ID: Final = "tiny"
TINY_IMAGE_SIZE: Final = 64  # pixels; latents are 8x8 because the VAE downsamples by 8
TINY_VOCAB_SIZE: Final = 514  # 256 byte symbols, 256 end-of-word symbols, 2 specials
TINY_MAX_TOKENS: Final = 77  # same context length as SD's CLIP text encoder


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP's reversible byte -> printable unicode map (the alphabet of its BPE)."""
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in codes), strict=True))


def clip_vocab(size: int = TINY_VOCAB_SIZE) -> dict[str, int]:
    """A byte-level CLIP vocabulary with no merges, ``size`` entries: every UTF-8 text tokenizes, offline.

    The layout is CLIP's: 256 byte symbols, the same 256 ending a word (``</w>``), then the
    merged tokens, and ``<|startoftext|>``, ``<|endoftext|>`` as the last two ids. With no
    merges the ids between are placeholders no text maps to; a model with random weights has
    no use for learned merges, and its embedding table keeps the real size.
    """
    symbols = list(_bytes_to_unicode().values())
    vocab = {s: i for i, s in enumerate(symbols)}
    vocab.update({s + "</w>": len(symbols) + i for i, s in enumerate(symbols)})
    if size < len(vocab) + 2:
        raise ValueError(f"a CLIP vocabulary needs at least {len(vocab) + 2} entries, not {size}")
    vocab.update({f"<|unused-{i}|>": i for i in range(len(vocab), size - 2)})
    vocab["<|startoftext|>"] = size - 2
    vocab["<|endoftext|>"] = size - 1
    return vocab


def tiny_vocab() -> dict[str, int]:
    """The tiny model's vocabulary: the 512 byte symbols and the two specials."""
    return clip_vocab(TINY_VOCAB_SIZE)


@lru_cache(maxsize=4)
def write_clip_tokenizer_files(size: int = TINY_VOCAB_SIZE) -> Path:
    """Write vocab.json and merges.txt once per process and size into a temp dir and return it."""
    directory = Path(tempfile.mkdtemp(prefix=f"edge-diffusion-tokenizer-{size}-"))
    (directory / "vocab.json").write_text(json.dumps(clip_vocab(size)), encoding="utf-8")
    (directory / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    return directory


def write_tiny_tokenizer_files() -> Path:
    """The tiny vocabulary's files (see ``write_clip_tokenizer_files``)."""
    return write_clip_tokenizer_files(TINY_VOCAB_SIZE)


def build_clip_tokenizer(size: int = TINY_VOCAB_SIZE, pad_token: str | None = None) -> CLIPTokenizer:
    """CLIPTokenizer over a byte vocabulary of ``size`` entries, 77 tokens long (files in a temp dir)."""
    from transformers import CLIPTokenizer

    directory = write_clip_tokenizer_files(size)
    extra = {"pad_token": pad_token} if pad_token else {}
    return CLIPTokenizer(
        vocab=str(directory / "vocab.json"),
        merges=str(directory / "merges.txt"),
        model_max_length=TINY_MAX_TOKENS,
        **extra,
    )


def build_tiny_tokenizer() -> CLIPTokenizer:
    """CLIPTokenizer over the tiny byte vocabulary."""
    return build_clip_tokenizer(TINY_VOCAB_SIZE)


def build_tiny_pipeline(seed: int = 0, dtype: torch.dtype | None = None) -> StableDiffusionPipeline:
    """Build a tiny random SD pipeline (float32 unless ``dtype``); the same seed gives the same weights.

    The safety checker is None (as in the server's production configuration, where the
    model card's checker is not shipped) and `requires_safety_checker` is off so diffusers
    does not warn.
    """
    import torch
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=TINY_IMAGE_SIZE // 8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=4,
        norm_num_groups=8,
    )
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=TINY_IMAGE_SIZE,
    )
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=TINY_VOCAB_SIZE,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=TINY_MAX_TOKENS,
            bos_token_id=TINY_VOCAB_SIZE - 2,
            eos_token_id=TINY_VOCAB_SIZE - 1,
            pad_token_id=TINY_VOCAB_SIZE - 1,
            projection_dim=32,
        )
    )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        timestep_spacing="trailing",
        steps_offset=1,
    )
    pipe: Any = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=build_tiny_tokenizer(),
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    if dtype is not None and dtype != torch.float32:  # modules are built in fp32; a no-op cast only warns
        pipe = pipe.to(dtype=dtype)
    return pipe
