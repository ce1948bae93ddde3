"""What one compile run produces: flags over the Volcano Job's environment over plan.contract's defaults."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Final

from plan import contract
from plan.model_artifacts import model_profile
from runtime.artifacts.manifest import (
    DTYPES,
    MODEL_ID_ALLOWED,
    REVISION_ALLOWED,
    Shapes,
    is_model_id,
    is_revision,
)
from runtime.artifacts.s3 import is_s3, s3_uri_problem
from runtime.server.models import BUILT_IN_MODELS, built_in
from runtime.server.settings import ImageSize
from runtime.settings import InvalidValueError, ProgramSettings, SettingsError, setting

# What a device serves at unless told otherwise: neuron casts matmuls to bf16, cpu has no fast fp16.
DEVICE_DTYPES: Final = {"cuda": "float16", "cpu": "float32", "neuron": "bfloat16"}
DTYPE_ALIASES: Final = {"fp16": "float16", "half": "float16", "bf16": "bfloat16", "fp32": "float32", "float": "float32"}
OUT_ALLOWED: Final = "s3://bucket[/prefix] or a local directory"


def _is_out(value: str) -> bool:
    """An S3 base or a local directory; an S3 URI that is not one says why (InvalidValueError)."""
    if is_s3(value):
        problem = s3_uri_problem(value)
        if problem is not None:
            raise InvalidValueError(problem)
        return True
    return "://" not in value


class CompileConfig(ProgramSettings):
    """Everything one compile run needs, validated."""

    PROG: ClassVar[str] = f"python -m {contract.COMPILE_MODULE}"
    DESCRIPTION: ClassVar[str] = "Compile a model artifact for one device and publish it with its manifest."

    model_id: str = setting(
        env=contract.ENV_MODEL_ID,
        flag="--model",
        check=is_model_id,
        allowed=MODEL_ID_ALLOWED,
        help=f"a Hub id or built in: {', '.join(BUILT_IN_MODELS)}",
    )
    device: str = setting(
        env=contract.ENV_DEVICE,
        flag="--device",
        aliases=("--accelerator",),  # the former spelling, still passed by the compile jobs (charts)
        choices=contract.DEVICES,
        help="the torch device the artifact is for",
    )
    out: str = setting(env=contract.ENV_COMPILE_OUT, flag="--out", check=_is_out, allowed=OUT_ALLOWED)
    revision: str = setting(
        env=contract.ENV_MODEL_REVISION,
        flag="--revision",
        default=contract.DEFAULT_MODEL_REVISION,
        check=is_revision,
        allowed=REVISION_ALLOWED,
    )
    height: ImageSize | None = setting(
        env=contract.ENV_COMPILE_HEIGHT, flag="--height", default=None, help="default: the model's"
    )
    width: ImageSize | None = setting(
        env=contract.ENV_COMPILE_WIDTH, flag="--width", default=None, help="default: the model's"
    )
    batch_size: int = setting(
        env=contract.ENV_COMPILE_BATCH_SIZE,
        flag="--batch-size",
        default=contract.DEFAULT_MAX_BATCH,
        ge=1,
        le=contract.MAX_BATCH_LIMIT,
        help="prompts per device call; static for neuron",
    )
    dtype: str | None = setting(
        env=contract.ENV_COMPILE_DTYPE,
        flag="--dtype",
        default=None,
        choices=DTYPES,
        synonyms=DTYPE_ALIASES,
        help=f"serving dtype; default per device {DEVICE_DTYPES}",
    )
    inductor_cache: bool = setting(
        flag="--inductor-cache", default=False, help="cuda only: warm and ship a TorchInductor cache (GPU)"
    )
    tiny_vae: str | None = setting(
        flag="--tiny-vae",
        default=None,
        help=f"cuda/cpu: also ship this AutoencoderTiny (Hub id, e.g. {contract.TAESD_ID}) for pods that decode "
        "with --vae tiny",
    )
    image_version: str | None = setting(
        env=contract.ENV_COMPILE_IMAGE_VERSION,
        flag="--image-version",
        default=None,
        check=is_revision,
        allowed="an image version: " + REVISION_ALLOWED,
        help="serving.imageVersion of this runtime image, recorded in the manifest for the serving image build",
    )
    work_dir: Path | None = setting(
        flag="--work-dir", default=None, help="where to stage the artifact (default: the temp dir)"
    )

    def check(self) -> None:
        if self.device == "cpu" and self.serving_dtype == "float16":
            raise SettingsError("--dtype float16 is not allowed for cpu; allowed: float32, bfloat16")
        if self.inductor_cache and self.device != "cuda":
            raise SettingsError(f"--inductor-cache is not allowed for {self.device}; allowed only with --device cuda")
        if self.tiny_vae and self.device == "neuron":
            raise SettingsError(
                "--tiny-vae is not allowed for neuron (its artifact holds the compiled VAE); allowed with cuda and cpu"
            )

    @property
    def shapes(self) -> Shapes:
        """The configured size, else the model's native one: a built-in model's (64 for tiny), a known
        model's (``plan.model_artifacts.MODEL_PROFILES``: 768 for stabilityai/stable-diffusion-2-1),
        else ``contract.DEFAULT_IMAGE_SIZE``."""
        model, profile = built_in(self.model_id), model_profile(self.model_id)
        native = model.native_size if model else profile.native_size if profile else contract.DEFAULT_IMAGE_SIZE
        return Shapes(height=self.height or native, width=self.width or native, batch_size=self.batch_size)

    @property
    def serving_dtype(self) -> str:
        """The dtype the artifact is saved or compiled at: the configured one, else the device's."""
        return self.dtype or DEVICE_DTYPES[self.device]
