"""The server's settings: one environment variable each (the charts set them), flags override.

Defaults and bounds that the config also knows (model, batching, image sizes) come from
``plan.contract``; ``python -m runtime.server --help`` lists the flags (that is how
``make serve`` picks the tiny model).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from typing import Annotated, ClassVar, Final

from pydantic import Field

from plan import contract
from runtime.settings import ProgramSettings, refusal, setting

DTYPES: Final = ("auto", "float16", "bfloat16", "float32")
ATTENTION: Final = ("sdpa", "eager")
SCHEDULERS: Final = ("dpmsolver++", "model")
# An image height or width: what the server serves, the compile job compiles for and the benchmark asks for.
ImageSize = Annotated[
    int,
    Field(ge=contract.IMAGE_SIZE_BOUNDS[0], le=contract.IMAGE_SIZE_BOUNDS[1], multiple_of=contract.IMAGE_SIZE_MULTIPLE),
]
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
    # This server's caps (runtime.server.admission.size_caps: the served size, or --max-image-size).
    max_width: int = contract.IMAGE_SIZE_BOUNDS[1]
    max_height: int = contract.IMAGE_SIZE_BOUNDS[1]
    size_multiple: int = contract.IMAGE_SIZE_MULTIPLE
    max_images: int = 4
    max_seed: int = 2**32 - 1


class Settings(ProgramSettings):
    """Every server knob."""

    PROG: ClassVar[str] = "python -m runtime.server"
    DESCRIPTION: ClassVar[str] = "Edge Diffusion inference server (REST API, Gradio UI, Prometheus metrics)."

    model_id: str = setting(
        env=contract.ENV_MODEL_ID, flag="--model", default=contract.DEFAULT_MODEL_ID, help="model id, or 'tiny'"
    )
    model_revision: str = setting(
        env=contract.ENV_MODEL_REVISION, flag="--model-revision", default=contract.DEFAULT_MODEL_REVISION
    )
    # A directory baked into the image or s3://bucket/prefix from the compile job; unset with
    # model "tiny" builds the tiny model, unset otherwise loads the id from the HF cache/Hub.
    model_source: str | None = setting(
        env=contract.ENV_MODEL_SOURCE, flag="--model-source", default=None, help="dir or s3:// prefix"
    )
    model_cache_dir: str = setting(
        env=contract.ENV_MODEL_CACHE_DIR,
        flag="--model-cache-dir",
        default=os.path.join(tempfile.gettempdir(), "edge-diffusion-models"),
    )
    device: str | None = setting(
        env=contract.ENV_DEVICE,
        flag="--device",
        aliases=("--accelerator",),  # the former spelling: existing command lines keep working
        default=None,
        choices=contract.DEVICES,
        help="torch device; unset: detect",
    )
    dtype: str = setting(env=contract.ENV_DTYPE, flag="--dtype", default="auto", choices=DTYPES)
    # Fast paths (runtime.server.backends.optimise applies them; docs/benchmarks.md has the figures).
    # torch.compile of the UNet and the VAE decoder on cuda: SDXL on an A100 went from 3.31 to 2.54 s
    # (PyTorch blog "Accelerating Generative AI Part III"), paid for by minutes of compilation at
    # start-up, hence off unless the compile job shipped an Inductor cache.
    torch_compile: bool = setting(env=contract.ENV_TORCH_COMPILE, flag="--torch-compile", default=False)
    # A pod whose model cannot load ends, so that the kubelet restarts it with back-off (the charts set it);
    # without it the server stays up, not ready, and says why in /readyz, the API's 503s and the UI.
    exit_on_failed_load: bool = setting(
        env=contract.ENV_EXIT_ON_FAILED_LOAD,
        flag="--exit-on-failed-load",
        default=False,
        help="exit 1 when the model cannot load (pods: the container restarts)",
    )
    # sdpa: torch's fused scaled_dot_product_attention (diffusers' AttnProcessor2_0, its default on
    # torch 2); eager: the unfused matmul-softmax-matmul, kept to measure against (7.36 -> 3.31 s
    # with bf16 in the same blog post).
    attention: str = setting(env=contract.ENV_ATTENTION, flag="--attention", default="sdpa", choices=ATTENTION)
    # cuda only: NHWC convolutions feed tensor cores without layout transposes (the same post runs
    # the compiled UNet and VAE in channels-last); on CPU the default layout is kept (not measured).
    channels_last: bool = setting(env=contract.ENV_CHANNELS_LAST, flag="--channels-last", default=True)
    # dpmsolver++: DPMSolverMultistepScheduler(algorithm_type="dpmsolver++"), 20 steps by default
    # (DPM-Solver++, Lu et al. 2022: high-quality guided samples in 15-20 steps; diffusers' docs: 20
    # steps); model: the checkpoint's own scheduler (PNDM, DDIM) at diffusers' default 50 steps.
    # Unset: the model table's sampler for the model (plan.model_artifacts.MODEL_PROFILES: SD-Turbo's own
    # Euler, which it was distilled for), else dpmsolver++.
    scheduler: str | None = setting(
        env=contract.ENV_SCHEDULER,
        flag="--scheduler",
        default=None,
        choices=SCHEDULERS,
        help="unset: the model table's (SD-Turbo: model), else dpmsolver++",
    )
    # tiny: decode (and encode image prompts) with AutoencoderTiny, TAESD, a 1.2M-parameter distillation
    # of SD's 49M-parameter VAE decoder that "tends to fudge fine details" (madebyollin/taesd README);
    # decode times against the full VAE's in docs/models.md. cuda/cpu only: a Neuron artifact carries its
    # compiled VAE.
    vae: str = setting(
        env=contract.ENV_VAE,
        flag="--vae",
        default="full",
        choices=contract.VAE_KINDS,
        help="full: the model's VAE; tiny: AutoencoderTiny (TAESD), faster decode, less fine detail",
    )
    tiny_vae: str = setting(
        env=contract.ENV_TINY_VAE,
        flag="--tiny-vae",
        default=contract.TAESD_ID,
        help="Hub id or directory of the AutoencoderTiny weights (SDXL: madebyollin/taesdxl); "
        "built-in models build it with random weights",
    )
    # What a request that names no steps or guidance gets (the charts set the model table's row);
    # unset: the model table's, else the tiny model's 4 steps or the scheduler's budget, and 7.5.
    default_steps: int | None = setting(
        env=contract.ENV_DEFAULT_STEPS,
        flag="--default-steps",
        default=None,
        ge=Limits.min_steps,
        le=Limits.max_steps,
        help="steps of a request that names none; unset: the model's",
    )
    default_guidance: float | None = setting(
        env=contract.ENV_DEFAULT_GUIDANCE,
        flag="--default-guidance",
        default=None,
        ge=Limits.min_guidance,
        le=Limits.max_guidance,
        help="guidance_scale of a request that names none (1 or less: no classifier-free guidance); unset: the model's",
    )
    # The size a request without one gets, and what the warm-up runs at; the charts set the config's.
    # A Neuron pod refuses an artifact compiled for another size (or another batch than max_batch).
    height: ImageSize | None = setting(
        env=contract.ENV_HEIGHT, flag="--height", default=None, help="unset: the model's native size"
    )
    width: ImageSize | None = setting(
        env=contract.ENV_WIDTH, flag="--width", default=None, help="unset: the model's native size"
    )
    # More intra-op threads than the CPUs the pod may use makes OpenMP spin against CFS throttling
    # (a 40 ms step becomes seconds); 0 sizes the pool from the cgroup quota.
    torch_threads: int = setting(
        env=contract.ENV_TORCH_THREADS,
        flag="--torch-threads",
        default=0,
        ge=0,
        help="per device worker; 0: the CPUs less one, shared among the workers",
    )
    # Environment only: read where the CPUs are counted (backends.available_cpus, which has no Settings at
    # hand); declared here so that a bad value stops the start with one line.
    cpu_request: int = setting(
        env=contract.ENV_CPU_REQUEST,
        default=0,
        ge=0,
        help="the pod's CPU request in whole CPUs (pods: set from the downward API); 0: count the CPUs only",
    )
    # Pipelines in processes of their own (runtime.server.workers, ADR 0018): on a CPU two workers of
    # half the threads serve more than one with all of them, and none waits for the event loop's GIL.
    workers: int = setting(
        env=contract.ENV_WORKERS,
        flag="--workers",
        default=0,
        ge=0,
        le=16,
        help="device worker processes; 0: two on a CPU with 2 or more CPUs, else the server's own process",
    )
    host: str = setting(env=contract.ENV_HOST, flag="--host", default="0.0.0.0")  # noqa: S104 - pods
    port: int = setting(env=contract.ENV_PORT, flag="--port", default=contract.PORT, ge=1, le=65535)
    max_batch: int = setting(
        env=contract.ENV_MAX_BATCH,
        flag="--max-batch",
        default=contract.DEFAULT_MAX_BATCH,
        ge=1,
        le=contract.MAX_BATCH_LIMIT,
    )
    # Upper bound on how long the oldest request waits for the requests the batcher expects
    # (as many as in its last batch); a lone client never waits. See runtime.server.batcher.
    max_wait_ms: float = setting(
        env=contract.ENV_MAX_WAIT_MS,
        flag="--max-wait-ms",
        default=float(contract.DEFAULT_MAX_WAIT_MS),
        ge=0,
        le=contract.MAX_WAIT_MS_LIMIT,
    )
    queue_size: int = setting(env=contract.ENV_QUEUE_SIZE, flag="--queue-size", default=64, ge=1)
    request_timeout_s: float = setting(
        env=contract.ENV_REQUEST_TIMEOUT_S, flag="--request-timeout-s", default=120.0, gt=0, unit=_SECONDS
    )
    # Admission (runtime.server.admission). A request may ask for the served size (width/height
    # above, else the model's native size) or smaller: a 2048x2048 image costs 16x the pixels of a
    # 512x512 one per step and more in attention, so larger sizes are the operator's choice.
    max_image_size: ImageSize | None = setting(
        env=contract.ENV_MAX_IMAGE_SIZE,
        flag="--max-image-size",
        default=None,
        help="largest width or height a request may ask for; unset: the served size",
    )
    # Per client (the bearer token's sub; no limit with auth none, where there is no identity).
    client_max_in_flight: int = setting(
        env=contract.ENV_CLIENT_MAX_IN_FLIGHT, flag="--client-max-in-flight", default=4, ge=1, le=64
    )
    client_rate_per_min: float = setting(
        env=contract.ENV_CLIENT_RATE_PER_MIN,
        flag="--client-rate-per-min",
        default=60.0,
        ge=1,
        le=100_000,
        help="requests per minute per client (a token bucket holding one minute's worth)",
    )
    drain_timeout_s: float = setting(
        env=contract.ENV_DRAIN_TIMEOUT_S, flag="--drain-timeout-s", default=300.0, ge=0, unit=_SECONDS
    )
    # Connections (runtime.server.transport). Past max_connections a new connection closes the one that
    # has waited longest without a request in progress; the start-up raises the open-file limit and
    # refuses a max_connections it cannot hold. A head (TLS handshake included) gets header_timeout_s
    # from the connection's arrival or its first byte after a keep-alive pause, a body body_timeout_s
    # from its head (then 408); an idle keep-alive connection closes after keep_alive_s (behind an
    # ALB: longer than the ALB's idle timeout, or the ALB may reuse a connection the server closes).
    max_connections: int = setting(
        env=contract.ENV_MAX_CONNECTIONS, flag="--max-connections", default=1024, ge=1, le=65536
    )
    header_timeout_s: float = setting(
        env=contract.ENV_HEADER_TIMEOUT_S, flag="--header-timeout-s", default=10.0, gt=0, le=300, unit=_SECONDS
    )
    body_timeout_s: float = setting(
        env=contract.ENV_BODY_TIMEOUT_S, flag="--body-timeout-s", default=30.0, gt=0, le=600, unit=_SECONDS
    )
    keep_alive_s: int = setting(env=contract.ENV_KEEP_ALIVE_S, flag="--keep-alive-s", default=5, ge=1, le=4000)
    # Prometheus /metrics on a port of its own (plain HTTP, the pod's network only); 0: any free port.
    metrics_port: int = setting(
        env=contract.ENV_METRICS_PORT, flag="--metrics-port", default=contract.METRICS_PORT, ge=0, le=65535
    )
    # Off unless asked for: pods describe no API to whoever reaches them; `make serve` turns them on.
    docs: bool = setting(env=contract.ENV_DOCS, flag="--docs", default=False, help="serve /docs and /openapi.json")
    # none unless set: a workstation run prints no EMF blobs; the charts set the sink on every pod.
    metrics_sink: str = setting(
        env=contract.ENV_METRICS_SINK, flag="--metrics-sink", default="none", choices=METRICS_SINKS
    )
    metrics_interval_s: float = setting(
        env=contract.ENV_METRICS_INTERVAL_S,
        flag="--metrics-interval-s",
        default=float(contract.METRIC_PUBLISH_INTERVAL_S),
        gt=0,
        unit=_SECONDS,
    )
    placement: str = setting(env=contract.ENV_PLACEMENT, flag="--placement", default="edge-diffusion-local")
    location: str | None = setting(
        env=contract.ENV_LOCATION, flag="--location", default=None, help="metric location; unset: the Region"
    )
    aws_region: str | None = setting(env=contract.ENV_AWS_REGION, default=None)
    log_level: str = setting(env=contract.ENV_LOG_LEVEL, flag="--log-level", default="info", choices=LOG_LEVELS)
    # Off unless asked for: pods serve the API only; `make serve` turns the UI on.
    ui: bool = setting(env=contract.ENV_UI, flag="--ui", default=False, help="mount the Gradio UI")
    # Device-facing security (runtime.server.tls, runtime.server.auth): HTTPS from files or one
    # Secrets Manager secret; bearer tokens (RS256) on every inference route unless auth is none.
    tls_cert_file: str | None = setting(
        env=contract.ENV_TLS_CERT_FILE, flag="--tls-cert-file", default=None, help="PEM chain: serve HTTPS"
    )
    tls_key_file: str | None = setting(
        env=contract.ENV_TLS_KEY_FILE, flag="--tls-key-file", default=None, help="PEM private key"
    )
    tls_secret_id: str | None = setting(
        env=contract.ENV_TLS_SECRET_ID, flag="--tls-secret-id", default=None, help="Secrets Manager cert+key"
    )
    auth: str = setting(
        env=contract.ENV_AUTH,
        flag="--auth",
        default="token",
        choices=contract.AUTH_MODES,
        help="token (bearer JWTs) or none",
    )
    token_issuer: str | None = setting(
        env=contract.ENV_TOKEN_ISSUER, flag="--token-issuer", default=None, help="unset: from --placement"
    )
    token_audience: str = setting(
        env=contract.ENV_TOKEN_AUDIENCE, flag="--token-audience", default=contract.TOKEN_AUDIENCE
    )
    token_public_key_file: str | None = setting(
        env=contract.ENV_TOKEN_PUBLIC_KEY_FILE, flag="--token-public-key-file", default=None, help="PEM RSA key"
    )
    token_kms_key_id: str | None = setting(
        env=contract.ENV_TOKEN_KMS_KEY_ID, flag="--token-kms-key-id", default=None, help="KMS key id or alias"
    )
    limits: Limits = Field(default_factory=Limits)

    @property
    def tls(self) -> bool:
        """True when the server answers HTTPS (certificate from files or from the secret)."""
        return bool(self.tls_cert_file or self.tls_key_file or self.tls_secret_id)

    @property
    def issuer(self) -> str:
        """The ``iss`` tokens must carry: explicit (pods: the charts set it), else from ``placement``."""
        return self.token_issuer or contract.token_issuer(self.placement)

    def check(self) -> None:
        super().check()
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            given, missing = (
                (contract.ENV_TLS_CERT_FILE, contract.ENV_TLS_KEY_FILE)
                if self.tls_cert_file
                else (contract.ENV_TLS_KEY_FILE, contract.ENV_TLS_CERT_FILE)
            )
            raise refusal(given, self.tls_cert_file or self.tls_key_file, f"together with {missing}")
        if self.tls_secret_id and self.tls_cert_file:
            raise refusal(
                contract.ENV_TLS_SECRET_ID, self.tls_secret_id, f"either it or {contract.ENV_TLS_CERT_FILE}, not both"
            )
        too_small = [
            (env, size)
            for env, size in ((contract.ENV_WIDTH, self.width), (contract.ENV_HEIGHT, self.height))
            if size is not None and self.max_image_size is not None and size > self.max_image_size
        ]
        if too_small:
            env, size = too_small[0]
            raise refusal(
                contract.ENV_MAX_IMAGE_SIZE, self.max_image_size, f"at least {env}={size}, the size this server serves"
            )
        if self.token_public_key_file and self.token_kms_key_id:
            raise refusal(
                contract.ENV_TOKEN_KMS_KEY_ID,
                self.token_kms_key_id,
                f"either it or {contract.ENV_TOKEN_PUBLIC_KEY_FILE}, not both",
            )

    @property
    def metric_location(self) -> str:
        """The Location dimension: explicit, else the Region, else ``local``."""
        return self.location or self.aws_region or "local"
