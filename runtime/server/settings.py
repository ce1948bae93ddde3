"""The server's settings: one environment variable each (the charts set them), flags override.

Defaults and bounds that the config also knows (model, batching, image sizes) come from
``spec.contract``; ``python -m runtime.server --help`` lists the flags (that is how
``make serve`` picks the tiny model).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from typing import ClassVar, Final

from runtime.settings import BOOLEAN, TEXT, ProgramSettings, integer, number, one_of, setting
from spec import contract

DTYPES: Final = ("auto", "float16", "bfloat16", "float32")
METRICS_SINKS: Final = ("emf", "cloudwatch", "none")
LOG_LEVELS: Final = ("critical", "error", "warning", "info", "debug")
_SECONDS: Final = "seconds"


@dataclass(frozen=True)
class Limits:
    """What a client may ask for; the 422 messages quote these bounds."""

    max_prompt_chars: int = 1000
    min_steps: int = 1
    max_steps: int = 100
    min_guidance: float = 0.0
    max_guidance: float = 30.0
    min_size: int = contract.IMAGE_SIZE_BOUNDS[0]
    max_size: int = contract.IMAGE_SIZE_BOUNDS[1]
    size_multiple: int = contract.IMAGE_SIZE_MULTIPLE
    max_images: int = 4
    max_seed: int = 2**32 - 1


@dataclass(frozen=True)
class Settings(ProgramSettings):
    """Every server knob."""

    PROG: ClassVar[str] = "python -m runtime.server"
    DESCRIPTION: ClassVar[str] = "Edge Diffusion inference server (REST API, Gradio UI, Prometheus metrics)."

    model_id: str = setting(
        TEXT, env=contract.ENV_MODEL_ID, flag="--model", default=contract.DEFAULT_MODEL_ID, help="model id, or 'tiny'"
    )
    model_revision: str = setting(
        TEXT, env=contract.ENV_MODEL_REVISION, flag="--model-revision", default=contract.DEFAULT_MODEL_REVISION
    )
    # A directory baked into the image or s3://bucket/prefix from the compile job; unset with
    # model "tiny" builds the tiny model, unset otherwise loads the id from the HF cache/Hub.
    model_source: str | None = setting(
        TEXT, env=contract.ENV_MODEL_SOURCE, flag="--model-source", default=None, help="dir or s3:// prefix"
    )
    model_cache_dir: str = setting(
        TEXT,
        env=contract.ENV_MODEL_CACHE_DIR,
        flag="--model-cache-dir",
        default=os.path.join(tempfile.gettempdir(), "edge-diffusion-models"),
    )
    device: str | None = setting(
        one_of(contract.DEVICES),
        env=contract.ENV_DEVICE,
        flag="--device",
        aliases=("--accelerator",),  # the former spelling: existing command lines keep working
        default=None,
        help="torch device; unset: detect",
    )
    dtype: str = setting(one_of(DTYPES), env=contract.ENV_DTYPE, flag="--dtype", default="auto")
    torch_compile: bool = setting(BOOLEAN, env=contract.ENV_TORCH_COMPILE, flag="--torch-compile", default=False)
    # More intra-op threads than the CPUs the pod may use makes OpenMP spin against CFS throttling
    # (a 40 ms step becomes seconds); 0 sizes the pool from the cgroup quota.
    torch_threads: int = setting(integer(0), env=contract.ENV_TORCH_THREADS, flag="--torch-threads", default=0)
    host: str = setting(TEXT, env=contract.ENV_HOST, flag="--host", default="0.0.0.0")  # noqa: S104 - pods
    port: int = setting(integer(1, 65535), env=contract.ENV_PORT, flag="--port", default=contract.PORT)
    max_batch: int = setting(
        integer(1, contract.MAX_BATCH_LIMIT),
        env=contract.ENV_MAX_BATCH,
        flag="--max-batch",
        default=contract.DEFAULT_MAX_BATCH,
    )
    # Upper bound on how long the oldest request waits for the requests the batcher expects
    # (as many as in its last batch); a lone client never waits. See runtime.server.batcher.
    max_wait_ms: float = setting(
        number(0, contract.MAX_WAIT_MS_LIMIT),
        env=contract.ENV_MAX_WAIT_MS,
        flag="--max-wait-ms",
        default=float(contract.DEFAULT_MAX_WAIT_MS),
    )
    queue_size: int = setting(integer(1), env=contract.ENV_QUEUE_SIZE, flag="--queue-size", default=64)
    request_timeout_s: float = setting(
        number(0, exclusive=True, unit=_SECONDS),
        env=contract.ENV_REQUEST_TIMEOUT_S,
        flag="--request-timeout-s",
        default=120.0,
    )
    drain_timeout_s: float = setting(
        number(0, unit=_SECONDS), env=contract.ENV_DRAIN_TIMEOUT_S, flag="--drain-timeout-s", default=300.0
    )
    metrics_sink: str = setting(
        one_of(METRICS_SINKS), env=contract.ENV_METRICS_SINK, flag="--metrics-sink", default="emf"
    )
    metrics_interval_s: float = setting(
        number(0, exclusive=True, unit=_SECONDS),
        env=contract.ENV_METRICS_INTERVAL_S,
        flag="--metrics-interval-s",
        default=float(contract.METRIC_PUBLISH_INTERVAL_S),
    )
    deployment: str = setting(TEXT, env=contract.ENV_DEPLOYMENT, flag="--deployment", default="edge-diffusion-local")
    location: str | None = setting(
        TEXT, env=contract.ENV_LOCATION, flag="--location", default=None, help="metric location; unset: the Region"
    )
    aws_region: str | None = setting(TEXT, env=contract.ENV_AWS_REGION, default=None)
    log_level: str = setting(one_of(LOG_LEVELS), env=contract.ENV_LOG_LEVEL, flag="--log-level", default="info")
    ui: bool = setting(BOOLEAN, env=contract.ENV_UI, flag="--ui", default=True, help="mount the Gradio UI")
    limits: Limits = field(default_factory=Limits)

    @property
    def metric_location(self) -> str:
        """The Location dimension: explicit, else the Region, else ``local``."""
        return self.location or self.aws_region or "local"
