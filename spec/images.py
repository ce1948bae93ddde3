"""What the image pipeline builds: one image per (accelerator, architecture), generated from
the accelerator table, and the Docker build arguments each image gets.

Tags: every architecture image is ``<version>-<accelerator>-<arch>`` and every accelerator's manifest list,
the tag the charts deploy, is ``<version>-<accelerator>``. The Dockerfile (ci_build/Dockerfile),
the buildspecs and the tests read the names below, so a build argument is spelled once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from spec import model_artifacts, naming, versions
from spec.accelerators import ACCELERATORS, Accelerator
from spec.config import AppConfig

ARCHES: Final = ("amd64", "arm64")  # build order inside a variant, and the CodeBuild fleets we have
RUNTIME_TAG_SUFFIX: Final = "-runtime"  # the image without a model (Dockerfile target `runtime`)
# Architectures an accelerator's image is built for beyond its accelerator's node architecture. The CPU image
# is also built for amd64: Local Zones rarely offer Graviton (an x86 CPU pool there needs no new
# image), and `docker run <repo>:<version>-cpu` then works on x86 laptops and CI. NVIDIA (g5/g6)
# and Neuron (inf2/trn1) instances are x86 only, so those images stay amd64 only.
EXTRA_ARCHES: Final[Mapping[str, tuple[str, ...]]] = {"cpu": ("amd64",)}

# The Deep Learning Container repository each accelerator's base comes from (CPU: none, public image).
DLC_REPOSITORIES: Final[Mapping[str, str]] = {
    "nvidia": versions.DLC_PYTORCH_INFERENCE_GPU_REPOSITORY,
    "neuron": versions.DLC_PYTORCH_INFERENCE_NEURONX_REPOSITORY,
}

# The Dockerfile's build arguments (ARG names), passed by ci_build/buildspec-build.yml from the
# CodeBuild environment variable of the same name in upper case.
BUILD_ARGS: Final = (
    "accelerator",
    "dlc_account",
    "dlc_region",
    "cuda_base_tag",
    "neuron_base_tag",
    "cpu_base_image",
    "model_s3_prefix",
    "model_manifest_sha256",  # computed by the buildspec from the manifest it finds in S3
    "model_id",
    "model_revision",
    "aws_region",
)
# Set by the buildspec itself at build time, not by the CodeBuild project.
BUILDSPEC_COMPUTED_ARGS: Final = frozenset({"model_manifest_sha256"})
# The BuildKit secret that carries the CodeBuild role's short-lived credentials into the one
# RUN that downloads the model (never a build arg, never in a layer).
AWS_CREDENTIALS_SECRET_ID: Final = "aws_credentials"  # noqa: S105 - the secret's id, not a secret


@dataclass(frozen=True)
class ImageTarget:
    """One architecture image of one accelerator."""

    accelerator: Accelerator
    arch: str

    @property
    def id(self) -> str:
        """Construct-id friendly name, e.g. ``NvidiaAmd64``."""
        return f"{self.accelerator.name.capitalize()}{self.arch.capitalize()}"

    def arch_tag(self, version: str) -> str:
        return f"{version}-{self.accelerator.name}-{self.arch}"

    def image_tag(self, version: str) -> str:
        return image_tag(self.accelerator.name, version)

    @property
    def dlc_repository(self) -> str | None:
        return DLC_REPOSITORIES.get(self.accelerator.name)


def image_tag(accelerator: str, version: str) -> str:
    """The manifest-list tag the charts deploy: ``<version>-<accelerator>``."""
    return f"{version}-{accelerator}"


def image_arches(accelerator: Accelerator) -> tuple[str, ...]:
    """Architectures of an accelerator's manifest list, in ARCHES order."""
    wanted = {accelerator.arch, *EXTRA_ARCHES.get(accelerator.name, ())}
    return tuple(arch for arch in ARCHES if arch in wanted)


def image_targets(accelerator_names: Iterable[str]) -> tuple[ImageTarget, ...]:
    """Every image to build for the enabled accelerators, grouped by accelerator."""
    accelerators = [ACCELERATORS[name] for name in accelerator_names]
    return tuple(ImageTarget(accelerator, arch) for accelerator in accelerators for arch in image_arches(accelerator))


def model_s3_prefix(config: AppConfig) -> str:
    """``s3://<bucket>/models/<model>/<revision>``: the Dockerfile appends ``/<device>/``."""
    return model_artifacts.model_prefix(naming.models_base_uri(config), config.model_id, config.model_revision)


def build_arg_values(config: AppConfig, target: ImageTarget) -> dict[str, str]:
    """Build-argument values the CodeBuild project of ``target`` sets (all but the computed ones)."""
    return {
        "accelerator": target.accelerator.name,
        "dlc_account": versions.DLC_REGISTRY_ACCOUNT,
        "dlc_region": config.region,
        "cuda_base_tag": versions.DLC_PYTORCH_INFERENCE_GPU_TAG,
        "neuron_base_tag": versions.DLC_PYTORCH_INFERENCE_NEURONX_TAG,
        "cpu_base_image": versions.CPU_BASE_IMAGE,
        "model_s3_prefix": model_s3_prefix(config),
        "model_id": config.model_id,
        "model_revision": config.model_revision,
        "aws_region": config.region,
    }
