"""Where compiled model artifacts live: ``<base>/<model id>/<revision>/<device>/``.

Each cluster's compile jobs publish under a base of their own, ``s3://<bucket>/models/<cluster>``,
and only there (its compile role may write nothing else); serving images are built only from an
artifact whose manifest digest is promoted in ``PROMOTIONS_FILE`` (docs/adr/0016). The compile
job, the image build, the IAM policies and the charts all build the paths with these functions.
``base`` is an ``s3://bucket/prefix`` URI or a local directory. Standard library only (the serving
image carries this file).
"""

from __future__ import annotations

import re
from typing import Final

MODELS_PREFIX: Final = "models"  # key prefix of every cluster's artifacts in the model bucket
MANIFEST_NAME: Final = "manifest.json"  # the last object of a publish: its presence means complete
# The manifest option naming the runtime image version (serving.imageVersion) that compiled an
# artifact: a serving image of version V is built only from an artifact its own runtime compiled.
IMAGE_VERSION_OPTION: Final = "image_version"
# The artifacts the serving images are built from, by manifest sha256 (ci_build/build-image.sh reads
# it from the pipeline's source; `python -m runtime.artifacts promote` records an artifact in it).
PROMOTIONS_FILE: Final = "ci_build/promoted-models.json"
# An EKS cluster name (plan.config's clusterName): one key segment, never '.', '..' or a '/'.
CLUSTER_RE: Final = re.compile(r"^[a-zA-Z][a-zA-Z0-9-]{0,62}$")
CLUSTER_ALLOWED: Final = "an EKS cluster name: 1-63 letters, digits or '-', starting with a letter"


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
