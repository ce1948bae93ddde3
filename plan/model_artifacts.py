"""Where compiled model artifacts live: ``<base>/<model id>/<revision>/<device>/``.

The compile job publishes there, the serving image's model layer is fetched from there, the
serving and compile roles are scoped to the prefix, and the charts pass the base to the jobs:
every one of them builds the path with these functions. ``base`` is an ``s3://bucket/prefix``
URI or a local directory. Standard library only (the serving image carries this file).
"""

from __future__ import annotations

from typing import Final

MODELS_PREFIX: Final = "models"  # key prefix of every artifact in the model bucket
MANIFEST_NAME: Final = "manifest.json"  # the last object of a publish: its presence means complete
# The manifest option naming the runtime image version (serving.imageVersion) that compiled an
# artifact: a serving image of version V is built only from an artifact its own runtime compiled.
IMAGE_VERSION_OPTION: Final = "image_version"


def models_base_uri(bucket: str) -> str:
    """``s3://<bucket>/models``: the base the compile jobs publish under."""
    return f"s3://{bucket}/{MODELS_PREFIX}"


def model_prefix(base: str, model_id: str, revision: str) -> str:
    """``<base>/<model id>/<revision>``: one model revision, all devices."""
    return f"{base.rstrip('/')}/{model_id}/{revision}"


def artifact_prefix(base: str, model_id: str, revision: str, device: str) -> str:
    """``<base>/<model id>/<revision>/<device>/``: one compiled artifact (trailing slash)."""
    return f"{model_prefix(base, model_id, revision)}/{device}/"


def models_key_pattern() -> str:
    """IAM resource pattern of every artifact key in the bucket (``models/*``)."""
    return f"{MODELS_PREFIX}/*"
