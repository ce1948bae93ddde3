"""What the image pipeline builds: per (accelerator, architecture) a runtime image (no model) and
a serving image (compiled model baked in), generated from the accelerator table; the inventory
publisher's image per architecture; and the Docker build arguments each image gets.

Tags (one repository, immutable tags), per architecture and joined into multi-arch manifest lists:

    <version>-<accelerator>-<arch>-runtime  ->  <version>-<accelerator>-runtime  (compile jobs)
    <version>-<accelerator>-<arch>          ->  <version>-<accelerator>          (serving charts)
    <version>-publisher-<arch>              ->  <version>-publisher              (inventory chart)

The Dockerfile (ci_build/Dockerfile), the build scripts, the stacks, the charts and the tests read
the names below, so a tag or a build argument is spelled once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from plan import naming, versions
from plan.accelerators import ACCELERATORS, Accelerator
from plan.config import AppConfig

ARCHES: Final = ("amd64", "arm64")  # build order inside a variant, and the CodeBuild fleets we have
# Dockerfile targets: the server without a model, the server with the compiled model, the publisher.
RUNTIME_TARGET: Final = "runtime"
SERVE_TARGET: Final = "serve"
PUBLISHER_TARGET: Final = "publisher"
RUNTIME_TAG_SUFFIX: Final = f"-{RUNTIME_TARGET}"  # the image without a model (Dockerfile target `runtime`)
# The inventory publisher (python -m runtime.inventory): Python, boto3 and httpx on the CPU base,
# for both architectures (it runs on the Graviton controller nodes; amd64 for x86 clusters and
# laptops). Built with the CPU accelerator's build args (its base is the CPU base image).
PUBLISHER_IMAGE: Final = PUBLISHER_TARGET
PUBLISHER_ARCHES: Final = ARCHES
PUBLISHER_BASE_ACCELERATOR: Final = "cpu"
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

# The Dockerfile's build arguments (ARG names), passed by ci_build/build-image.sh from the
# CodeBuild environment variable of the same name in upper case.
BUILD_ARGS: Final = (
    "accelerator",
    "dlc_account",
    "dlc_region",
    "cuda_base_tag",
    "neuron_base_tag",
    "cpu_base_image",
    "model_s3_prefix",
    "model_manifest_sha256",  # computed by ci_build/build-image.sh from the manifest it finds in S3
    "model_id",
    "model_revision",
    "aws_region",
)
# Set by ci_build/build-image.sh at build time, not by the CodeBuild project.
BUILDSPEC_COMPUTED_ARGS: Final = frozenset({"model_s3_prefix", "model_manifest_sha256"})
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
        """The serving image of this architecture: ``<version>-<accelerator>-<arch>``."""
        return f"{version}-{self.accelerator.name}-{self.arch}"

    def runtime_arch_tag(self, version: str) -> str:
        """The runtime image of this architecture: ``<version>-<accelerator>-<arch>-runtime``."""
        return f"{self.arch_tag(version)}{RUNTIME_TAG_SUFFIX}"

    def image_tag(self, version: str) -> str:
        return image_tag(self.accelerator.name, version)

    def runtime_tag(self, version: str) -> str:
        return runtime_tag(self.accelerator.name, version)

    @property
    def dlc_repository(self) -> str | None:
        return DLC_REPOSITORIES.get(self.accelerator.name)


def image_tag(accelerator: str, version: str) -> str:
    """The manifest-list tag the charts deploy: ``<version>-<accelerator>``."""
    return f"{version}-{accelerator}"


def runtime_tag(accelerator: str, version: str) -> str:
    """The manifest-list tag the compile jobs run: ``<version>-<accelerator>-runtime``."""
    return f"{image_tag(accelerator, version)}{RUNTIME_TAG_SUFFIX}"


def publisher_arch_tag(version: str, arch: str) -> str:
    """One architecture of the publisher image: ``<version>-publisher-<arch>``."""
    return f"{publisher_tag(version)}-{arch}"


def publisher_tag(version: str) -> str:
    """The publisher's manifest list: ``<version>-publisher``."""
    return f"{version}-{PUBLISHER_IMAGE}"


def publisher_image_uri(config: AppConfig) -> str:
    """The image the inventory chart runs (a multi-arch manifest list from the image pipeline)."""
    return f"{naming.image_repository_uri(config)}:{publisher_tag(config.serving.image_version)}"


def image_arches(accelerator: Accelerator) -> tuple[str, ...]:
    """Architectures of an accelerator's manifest list, in ARCHES order."""
    wanted = {accelerator.arch, *EXTRA_ARCHES.get(accelerator.name, ())}
    return tuple(arch for arch in ARCHES if arch in wanted)


def image_targets(accelerator_names: Iterable[str]) -> tuple[ImageTarget, ...]:
    """Every image to build for the enabled accelerators, grouped by accelerator."""
    accelerators = [ACCELERATORS[name] for name in accelerator_names]
    return tuple(ImageTarget(accelerator, arch) for accelerator in accelerators for arch in image_arches(accelerator))


def publisher_targets() -> tuple[ImageTarget, ...]:
    """The publisher's architectures, each built with the CPU accelerator's build args."""
    return tuple(ImageTarget(ACCELERATORS[PUBLISHER_BASE_ACCELERATOR], arch) for arch in PUBLISHER_ARCHES)


def build_arg_values(config: AppConfig, target: ImageTarget) -> dict[str, str]:
    """Build-argument values the CodeBuild project of ``target`` sets (all but the computed ones)."""
    return {
        "accelerator": target.accelerator.name,
        "dlc_account": versions.DLC_REGISTRY_ACCOUNT,
        "dlc_region": config.region,
        "cuda_base_tag": versions.DLC_PYTORCH_INFERENCE_GPU_TAG,
        "neuron_base_tag": versions.DLC_PYTORCH_INFERENCE_NEURONX_TAG,
        "cpu_base_image": versions.CPU_BASE_IMAGE,
        "model_id": config.model_id,
        "model_revision": config.model_revision,
        "aws_region": config.region,
    }
