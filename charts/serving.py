"""Serving: per placement a Kubernetes Deployment of the runtime server, its ServiceAccount, a NodePort
Service and a PodDisruptionBudget; in the Region one ALB Ingress weighted across accelerators.

Deployments are low-level ``KubeDeployment`` objects: cdk8s-plus cannot request extended
resources (``nvidia.com/gpu``, ``aws.amazon.com/neuron``), and its defaults (a 512 MiB memory
limit, probes and a read-only root without scratch space) would break a 20+ GB model image.
HTTPS: the ALB terminates TLS in the Region, the pods themselves in a Local Zone
(docs/adr/0003-local-zone-pods-terminate-tls.md).
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass, field
from typing import Final

import cdk8s
from cdk8s_plus_35 import k8s
from constructs import Construct

from charts import pods
from plan import contract, naming, topology
from plan.config import AppConfig
from plan.model_artifacts import model_profile
from plan.topology import Placement

PORT_NAME: Final = "http"  # the pods' serving port (HTTP, or HTTPS in a Local Zone with tls.localZoneSecret)
# /metrics on a port of its own (plain HTTP): a named container port that no Service lists, so neither
# the ALB nor a NodePort reaches it; charts.network_policies admits it from pods of the cluster only.
METRICS_PORT_NAME: Final = "metrics"
# Prometheus's kubernetes_sd pod discovery reads these (the conventional scrape configuration keeps
# pods annotated scrape "true" and scrapes the annotated port and path).
PROMETHEUS_ANNOTATIONS: Final = {
    "prometheus.io/scrape": "true",
    "prometheus.io/port": str(contract.METRICS_PORT),
    "prometheus.io/path": contract.METRICS_PATH,
}
INGRESS_NAME: Final = "stable-diffusion"
# The ALB controller reads the forward action of a backend named "use-annotation" from
# the annotation alb.ingress.kubernetes.io/actions.<this name>.
WEIGHTED_ACTION: Final = contract.WEIGHTED_ACTION
ALB_ANNOTATION_PREFIX: Final = "alb.ingress.kubernetes.io"
# On the namespace: the ALB controller's pod webhook adds a readiness gate to every pod behind one of
# its target groups (target type ip), so a pod is Ready only once its target is healthy in the ALB.
# Without it a rollout of a 1-replica Kubernetes Deployment (maxUnavailable 0) stops the old pod as soon as the
# new one answers /readyz, while its target is still "initial": the ALB is left with no healthy
# target (docs/deploy/pod_readiness_gate.md of the controller, read at the version of the chart pinned as
# `versions.AWS_LOAD_BALANCER_CONTROLLER`, whose mpod.elbv2.k8s.aws webhook selects namespaces on this
# label). Only pods created after their target group exists get it.
READINESS_GATE_INJECT_LABEL: Final = "elbv2.k8s.aws/pod-readiness-gate-inject"
HTTPS_PORT: Final = 443
HTTP_PORT: Final = 80


@dataclass(frozen=True)
class ProbeSettings:
    """Probe timing. Loading a model (S3 download, weights onto the device, warm-up) takes
    minutes, so the startup probe waits on readiness for up to ``startup_budget_s`` before
    the kubelet restarts the container; liveness only checks that the process answers."""

    period_s: int = 10
    startup_budget_s: int = 1800
    readiness_period_s: int = 5
    readiness_failures: int = 2
    liveness_period_s: int = 15
    liveness_failures: int = 4
    timeout_s: int = 5

    @property
    def startup_failures(self) -> int:
        return self.startup_budget_s // self.period_s


@dataclass(frozen=True)
class ServingSettings:
    """Defaults of every serving Kubernetes Deployment, in one place."""

    probes: ProbeSettings = field(default_factory=ProbeSettings)
    resources: pods.PodResources = field(default_factory=pods.PodResources)
    # SIGTERM: readiness turns 503 and the server finishes queued work for up to drain_s.
    drain_s: int = 120
    # Before SIGTERM: time for the ALB and kube-proxy to stop sending new requests.
    pre_stop_sleep_s: int = 15
    metrics_sink: str = "cloudwatch"  # PutMetricData per interval: KEDA reads it directly
    alb_idle_timeout_s: int = 180  # a batch of large images can take minutes
    # Behind the ALB a pod keeps an idle connection open longer than the ALB does (the ALB's advice for
    # targets): the ALB, not the pod, closes it, and never sends a request on a connection the pod just
    # closed (a 502). Devices in a Local Zone get the server's short default.
    alb_keep_alive_margin_s: int = 5

    @property
    def regional_keep_alive_s(self) -> int:
        return self.alb_idle_timeout_s + self.alb_keep_alive_margin_s

    @property
    def termination_grace_s(self) -> int:
        return self.pre_stop_sleep_s + self.drain_s + 15


def pods_terminate_tls(config: AppConfig, placement: Placement) -> bool:
    """Local Zone pods serve HTTPS themselves when a certificate secret is configured."""
    return placement.location.is_local_zone and bool(config.tls.local_zone_secret)


def url_scheme(tls: bool) -> str:
    """The value of ``contract.ANNOTATION_SCHEME``: what a device must use to reach the endpoint."""
    return "https" if tls else "http"


def model_defaults_env(model_id: str) -> dict[str, str]:
    """What a request that names no steps or guidance gets, and the sampler, from the model's row of
    ``plan.model_artifacts.MODEL_PROFILES`` (SD-Turbo: 1 step, no guidance, its own Euler sampler);
    nothing for a model not in the table, which keeps the server's own defaults."""
    profile = model_profile(model_id)
    if profile is None:
        return {}
    return {
        contract.ENV_DEFAULT_STEPS: str(profile.default_steps),
        contract.ENV_DEFAULT_GUIDANCE: f"{profile.guidance_scale:g}",
        contract.ENV_SCHEDULER: profile.scheduler,
    }


def auth_env(config: AppConfig) -> dict[str, str]:
    """How the server authorizes inference requests: tokens signed by the deployment's KMS key.

    The issuer is the one the inventory API's token route signs (``plan.naming.token_issuer``);
    the server fetches the public key once at startup by the key's alias (kms:GetPublicKey).
    """
    env = {contract.ENV_AUTH: config.auth.mode}
    if config.auth.mode == "token":
        env[contract.ENV_TOKEN_ISSUER] = naming.token_issuer(config)
        env[contract.ENV_TOKEN_AUDIENCE] = contract.TOKEN_AUDIENCE
        env[contract.ENV_TOKEN_KMS_KEY_ID] = naming.token_signing_key_alias(config)
    return env


class ServingChart(cdk8s.Chart):
    """The app namespace and, for each placement, the objects that serve the model there."""

    def __init__(
        self, scope: Construct, construct_id: str, *, config: AppConfig, settings: ServingSettings | None = None
    ) -> None:
        super().__init__(scope, construct_id, disable_resource_name_hashes=True)
        self.config = config
        self.settings = settings or ServingSettings()
        self.namespace_object = k8s.KubeNamespace(
            self,
            "Namespace",
            metadata=k8s.ObjectMeta(
                name=topology.NAMESPACE,
                # Pod Security admission enforces what the pod specs below already do.
                labels={
                    "pod-security.kubernetes.io/enforce": "restricted",
                    "pod-security.kubernetes.io/enforce-version": "latest",
                    READINESS_GATE_INJECT_LABEL: "enabled",
                },
            ),
        )
        self.workloads: dict[str, k8s.KubeDeployment] = {}
        self.services: dict[str, k8s.KubeService] = {}
        for placement in topology.placements(config):
            self._serve(placement)
        self.ingress = self._ingress()

    def _serve(self, placement: Placement) -> None:
        name, labels = placement.name, placement.labels
        k8s.KubeServiceAccount(
            self,
            f"{name}-sa",
            metadata=k8s.ObjectMeta(name=name, namespace=topology.NAMESPACE, labels=labels),
            # The server never calls the Kubernetes API; Pod Identity does not need this token.
            automount_service_account_token=False,
        )
        self.workloads[name] = k8s.KubeDeployment(
            self,
            name,
            metadata=k8s.ObjectMeta(name=name, namespace=topology.NAMESPACE, labels=labels),
            spec=k8s.DeploymentSpec(
                # No replicas: KEDA's ScaledObject owns the count, and one here would reset it on every apply.
                selector=k8s.LabelSelector(match_labels=placement.selector_labels),
                # Never fewer ready pods during a rollout: a new pod needs minutes to load.
                strategy=k8s.DeploymentStrategy(
                    type="RollingUpdate",
                    rolling_update=k8s.RollingUpdateDeployment(
                        max_surge=k8s.IntOrString.from_number(1), max_unavailable=k8s.IntOrString.from_number(0)
                    ),
                ),
                progress_deadline_seconds=self.settings.probes.startup_budget_s + 600,
                revision_history_limit=5,
                template=k8s.PodTemplateSpec(
                    metadata=k8s.ObjectMeta(labels=labels, annotations=dict(PROMETHEUS_ANNOTATIONS)),
                    spec=self._pod_spec(placement),
                ),
            ),
        )
        annotations = {contract.ANNOTATION_MODEL: self.config.model_id}
        service_labels = dict(labels)
        if placement.location.is_local_zone:  # devices reach Local Zone nodes' NodePorts directly
            service_labels[contract.LABEL_INVENTORY] = "true"
            annotations[contract.ANNOTATION_SCHEME] = url_scheme(pods_terminate_tls(self.config, placement))
            if pods_terminate_tls(self.config, placement) and placement.location.zone:
                # The certificate cannot name the nodes' changing IPs: devices verify this name instead.
                server_name = self.config.tls.server_name_in(placement.location.zone)
                annotations[contract.ANNOTATION_TLS_SERVER_NAME] = server_name
        self.services[name] = k8s.KubeService(
            self,
            f"{name}-svc",
            metadata=k8s.ObjectMeta(
                name=name, namespace=topology.NAMESPACE, labels=service_labels, annotations=annotations
            ),
            spec=k8s.ServiceSpec(
                type="NodePort",
                # Only nodes running a serving pod answer on the NodePort: no extra hop to another
                # node (or zone), and the pod sees the device's address.
                external_traffic_policy="Local",
                selector=placement.selector_labels,
                ports=[
                    k8s.ServicePort(
                        name=PORT_NAME,
                        port=contract.PORT,
                        target_port=k8s.IntOrString.from_string(PORT_NAME),
                        protocol="TCP",
                    )
                ],
            ),
        )
        k8s.KubePodDisruptionBudget(
            self,
            f"{name}-pdb",
            metadata=k8s.ObjectMeta(name=name, namespace=topology.NAMESPACE, labels=labels),
            # maxUnavailable, not minAvailable: with one replica, minAvailable 1 would block
            # every node drain and Karpenter consolidation forever.
            spec=k8s.PodDisruptionBudgetSpec(
                selector=k8s.LabelSelector(match_labels=placement.selector_labels),
                max_unavailable=k8s.IntOrString.from_number(1),
                unhealthy_pod_eviction_policy="AlwaysAllow",
            ),
        )

    def _pod_spec(self, placement: Placement) -> k8s.PodSpec:
        config, settings, probes = self.config, self.settings, self.settings.probes
        accelerator = placement.accelerator
        volumes, mounts = pods.scratch_volumes(settings.resources)
        serving = config.serving
        tls = pods_terminate_tls(config, placement)
        env = {
            # No ENV_MODEL_SOURCE: the serving image carries the compiled model in its own layer
            # (ci_build `serve` target), so a new node pulls cached layers instead of 20+ GB from S3.
            **pods.model_env(config, accelerator),
            contract.ENV_PLACEMENT: placement.name,
            contract.ENV_LOCATION: placement.location.metric_value(config),
            contract.ENV_MAX_BATCH: str(serving.max_batch),
            # the size the compile job compiled for (compile_jobs passes the same): a Neuron pod refuses another
            contract.ENV_HEIGHT: str(serving.height),
            contract.ENV_WIDTH: str(serving.width),
            contract.ENV_MAX_WAIT_MS: str(serving.max_wait_ms),
            **model_defaults_env(config.model_id),
            contract.ENV_METRICS_SINK: settings.metrics_sink,
            contract.ENV_DRAIN_TIMEOUT_S: str(settings.drain_s),
            contract.ENV_HOST: "0.0.0.0",  # noqa: S104 - the pod's own network namespace
            contract.ENV_PORT: str(contract.PORT),
            contract.ENV_METRICS_PORT: str(contract.METRICS_PORT),
            contract.ENV_UI: "1" if serving.ui else "0",
            # A model that cannot load restarts the container (back-off) rather than leaving it unready until
            # the startup probe's budget runs out: a rollout that cannot serve shows as CrashLoopBackOff.
            contract.ENV_EXIT_ON_FAILED_LOAD: "1",
            **auth_env(config),
        }
        if tls:
            env[contract.ENV_TLS_SECRET_ID] = config.tls.local_zone_secret
        if not placement.location.is_local_zone:
            env[contract.ENV_KEEP_ALIVE_S] = str(settings.regional_keep_alive_s)
        kernels = pods.compiled_kernel_family(config, accelerator)
        if kernels:
            env[contract.ENV_TORCH_COMPILE] = "1"
        if pods.decodes_with_tiny_vae(config, accelerator):
            env[contract.ENV_VAE] = "tiny"  # the model's artifact carries its weights (use_tiny_vae)

        def http_probe(path: str, period: int, failures: int) -> k8s.Probe:
            # The kubelet does not verify the certificate of an HTTPS probe: the pod's own name
            # is not in it, and the probe only asks whether the server answers.
            return k8s.Probe(
                http_get=k8s.HttpGetAction(
                    path=path, port=k8s.IntOrString.from_string(PORT_NAME), scheme="HTTPS" if tls else "HTTP"
                ),
                period_seconds=period,
                failure_threshold=failures,
                timeout_seconds=probes.timeout_s,
            )

        return k8s.PodSpec(
            service_account_name=placement.name,
            automount_service_account_token=False,
            node_selector=placement.node_selector,
            # The GPU the compile job built the kernels on, where Karpenter can launch one (else the pod
            # compiles its own at start: minutes, within the startup probe).
            affinity=pods.preferred_family_affinity(kernels) if kernels in placement.instance_families else None,
            tolerations=pods.tolerations(accelerator) or None,
            security_context=pods.pod_security_context(),
            termination_grace_period_seconds=settings.termination_grace_s,
            # Not scheduled (so no node launched for it) until the publisher sees the image in the
            # registry: the first release applies this before the image pipeline has built it.
            scheduling_gates=[k8s.PodSchedulingGate(name=contract.SCHEDULING_GATE_IMAGE)],
            containers=[
                k8s.Container(
                    name="server",
                    image=topology.image_uri(config, accelerator),
                    image_pull_policy="IfNotPresent",
                    ports=[
                        k8s.ContainerPort(name=PORT_NAME, container_port=contract.PORT, protocol="TCP"),
                        k8s.ContainerPort(name=METRICS_PORT_NAME, container_port=contract.METRICS_PORT, protocol="TCP"),
                    ],
                    env=[*pods.env_vars(env), pods.cpu_request_env()],
                    resources=pods.resources(accelerator, settings.resources),
                    security_context=pods.container_security_context(),
                    volume_mounts=mounts,
                    startup_probe=http_probe(contract.READY_PATH, probes.period_s, probes.startup_failures),
                    readiness_probe=http_probe(
                        contract.READY_PATH, probes.readiness_period_s, probes.readiness_failures
                    ),
                    liveness_probe=http_probe(contract.HEALTH_PATH, probes.liveness_period_s, probes.liveness_failures),
                    # A server that exits (its model cannot load) leaves its last log lines, the reason, in
                    # `kubectl describe pod` as the container's termination message.
                    termination_message_policy="FallbackToLogsOnError",
                    lifecycle=k8s.Lifecycle(
                        pre_stop=k8s.LifecycleHandler(sleep=k8s.SleepAction(seconds=settings.pre_stop_sleep_s))
                    ),
                )
            ],
            volumes=volumes,
        )

    def _listener_annotations(self) -> dict[str, str]:
        """HTTPS on 443 only with a certificate (the ALB controller then creates no port 80), plain
        HTTP on 80 without one. Annotations of the AWS Load Balancer Controller of the chart pinned as
        ``versions.AWS_LOAD_BALANCER_CONTROLLER`` (listen-ports, certificate-arn, ssl-policy:
        docs/guide/ingress/annotations.md, read at the pinned version)."""
        prefix, tls = ALB_ANNOTATION_PREFIX, self.config.tls
        if not tls.certificate_arn:
            return {f"{prefix}/listen-ports": json.dumps([{"HTTP": HTTP_PORT}])}
        return {
            f"{prefix}/listen-ports": json.dumps([{"HTTPS": HTTPS_PORT}]),
            f"{prefix}/certificate-arn": tls.certificate_arn,
            f"{prefix}/ssl-policy": tls.alb_security_policy,
            f"{prefix}/backend-protocol": "HTTP",  # TLS ends at the ALB; pods in the Region speak HTTP
        }

    def _ingress(self) -> k8s.KubeIngress:
        """One internet-facing ALB in the Region, admitting only the client CIDRs, that splits
        requests across the accelerators' regional Services by weight (cost mode)."""
        weights = topology.ingress_weights(self.config)
        target_groups = [
            {"serviceName": p.name, "servicePort": str(contract.PORT), "weight": weights[p.accelerator.name]}
            for p in topology.placements(self.config)
            if not p.location.is_local_zone and weights[p.accelerator.name] > 0
        ]
        action = {
            "type": "forward",
            "forwardConfig": {"targetGroups": target_groups, "targetGroupStickinessConfig": {"enabled": False}},
        }
        # The ALB is IPv4; without inbound-cidrs the controller would admit 0.0.0.0/0.
        inbound = [cidr for cidr in self.config.client_cidrs if ipaddress.ip_network(cidr).version == 4]
        prefix = ALB_ANNOTATION_PREFIX
        tls = self.config.tls
        annotations = {
            f"{prefix}/scheme": "internet-facing",
            f"{prefix}/target-type": "ip",
            f"{prefix}/inbound-cidrs": ",".join(inbound),
            **self._listener_annotations(),
            f"{prefix}/healthcheck-path": contract.READY_PATH,
            f"{prefix}/healthcheck-port": "traffic-port",
            f"{prefix}/success-codes": "200",
            f"{prefix}/target-group-attributes": f"deregistration_delay.timeout_seconds={self.settings.drain_s}",
            f"{prefix}/load-balancer-attributes": (
                f"idle_timeout.timeout_seconds={self.settings.alb_idle_timeout_s},"
                "routing.http.drop_invalid_header_fields.enabled=true"
            ),
            contract.ANNOTATION_WEIGHTED_ACTION: json.dumps(action, separators=(",", ":")),
            contract.ANNOTATION_SCHEME: url_scheme(bool(tls.certificate_arn)),
            contract.ANNOTATION_MODEL: self.config.model_id,
        }
        return k8s.KubeIngress(
            self,
            "Ingress",
            metadata=k8s.ObjectMeta(
                name=INGRESS_NAME,
                namespace=topology.NAMESPACE,
                # The publisher lists the Ingress by this label: the ALB is the Region's endpoint.
                labels={
                    "app.kubernetes.io/name": topology.APP_NAME,
                    "app.kubernetes.io/part-of": topology.PART_OF,
                    contract.LABEL_INVENTORY: "true",
                },
                annotations=annotations,
            ),
            spec=k8s.IngressSpec(
                ingress_class_name="alb",
                rules=[
                    k8s.IngressRule(
                        http=k8s.HttpIngressRuleValue(
                            paths=[
                                k8s.HttpIngressPath(
                                    path="/",
                                    path_type="Prefix",
                                    backend=k8s.IngressBackend(
                                        service=k8s.IngressServiceBackend(
                                            name=WEIGHTED_ACTION,
                                            port=k8s.ServiceBackendPort(name="use-annotation"),
                                        )
                                    ),
                                )
                            ]
                        )
                    )
                ],
            ),
        )
