"""Volcano: a queue for the compile jobs and, per enabled accelerator, a job that compiles the
model on a node of that accelerator and publishes the artifact to the model bucket.

Each job runs ``python -m runtime.compile`` from the accelerator's runtime image (no model) on the
accelerator's regional NodePool and writes ``s3://<model bucket>/models/<cluster>/<model>/<revision>/<device>/``,
the one prefix its role may write; the image pipeline bakes an artifact into the serving images only
once it is promoted by its manifest digest (docs/adr/0016-serving-images-bake-only-promoted-models.md).
The queue is a chart of its own and a job's name carries a hash of its spec, so that a live cluster
admits, replaces and lets finish every job: docs/adr/0001-compile-jobs-on-a-live-cluster.md.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Final

import cdk8s
from cdk8s_plus_35 import k8s
from constructs import Construct

from charts import pods
from charts.imports.sh.volcano import batch, scheduling
from plan import contract, naming, topology
from plan.accelerators import Accelerator
from plan.config import AppConfig
from plan.topology import Placement

# The queue and the charts keep their published names: a rename replaces live objects (queue deleted under its jobs).
QUEUE_NAME: Final = "model-builds"
QUEUE_CHART_ID: Final = "model-build-queue"  # cdk8s chart id, kept (see above)
JOBS_CHART_ID: Final = "model-builds"  # cdk8s chart id, kept (see above)
QUEUE_RESOURCE: Final = "queues.scheduling.volcano.sh"  # kubectl's name for Volcano queues
QUEUE_STATE_PATH: Final = ".status.state"  # what a Job's admission reads of its queue
SERVICE_ACCOUNT: Final = "model-compiler"
SCHEDULER_NAME: Final = "volcano"
TASK_NAME: Final = "compile"
DO_NOT_DISRUPT: Final = "karpenter.sh/do-not-disrupt"
ON_DEMAND_CAPACITY: Final = "on-demand"  # karpenter.sh/capacity-type of On-Demand nodes


@dataclass(frozen=True)
class CompileJobSettings:
    """Defaults of every compile job, in one place."""

    resources: pods.PodResources = field(default_factory=lambda: pods.PodResources(scratch_size="100Gi"))
    max_retry: int = 2
    deadline_s: int = 4 * 3600  # a Neuron compile of SD 2.1 takes tens of minutes; a hung one is stopped
    concurrent_jobs_per_accelerator: int = 1


def spec_digest(labels: dict[str, str], spec: dict[str, object]) -> str:
    """Eight hex digits of everything a Job is made of: two Jobs with one name are the same Job.

    A Volcano Job's spec is immutable, so a changed Job is a new one; the cluster stack applies each
    Job as a manifest of its own so that the old one is deleted (``ClusterStack.apply_objects``)."""
    return hashlib.sha256(json.dumps({"labels": labels, "spec": spec}, sort_keys=True).encode()).hexdigest()[:8]


def compile_placements(config: AppConfig) -> list[Placement]:
    """Compile jobs run on each accelerator's regional pool (Local Zone capacity is for serving)."""
    return [p for p in topology.placements(config) if not p.location.is_local_zone]


def _labels(accelerator: Accelerator | None = None) -> dict[str, str]:
    labels = {"app.kubernetes.io/name": "model-compiler", "app.kubernetes.io/part-of": topology.PART_OF}
    if accelerator:
        labels[contract.LABEL_ACCELERATOR] = accelerator.name
    return labels


class CompileQueueChart(cdk8s.Chart):
    """The Volcano queue the compile jobs are submitted to: at most
    ``concurrent_jobs_per_accelerator`` compile jobs' worth of devices at a time."""

    def __init__(
        self, scope: Construct, construct_id: str, *, config: AppConfig, settings: CompileJobSettings | None = None
    ) -> None:
        super().__init__(scope, construct_id, disable_resource_name_hashes=True)
        per = (settings or CompileJobSettings()).concurrent_jobs_per_accelerator
        capability: dict[str, int] = {}
        for placement in compile_placements(config):
            accelerator = placement.accelerator
            if accelerator.device_resource:
                capability[accelerator.device_resource] = per * accelerator.devices_per_pod
        self.queue = scheduling.Queue(
            self,
            "Queue",
            metadata=cdk8s.ApiObjectMetadata(name=QUEUE_NAME, labels=_labels()),
            spec=scheduling.QueueSpec(
                weight=1,
                reclaimable=False,  # a half-done compile is wasted work
                capability={k: scheduling.QueueSpecCapability.from_number(v) for k, v in capability.items()} or None,
            ),
        )


class CompileJobsChart(cdk8s.Chart):
    """The compile jobs' ServiceAccount and one Volcano Job per accelerator (queue: CompileQueueChart)."""

    def __init__(
        self, scope: Construct, construct_id: str, *, config: AppConfig, settings: CompileJobSettings | None = None
    ) -> None:
        super().__init__(scope, construct_id, disable_resource_name_hashes=True)
        self.config = config
        self.settings = settings or CompileJobSettings()
        placements = compile_placements(config)
        k8s.KubeServiceAccount(
            self,
            "ServiceAccount",
            metadata=k8s.ObjectMeta(name=SERVICE_ACCOUNT, namespace=topology.NAMESPACE, labels=_labels()),
            automount_service_account_token=False,
        )
        self.jobs = {placement.accelerator.name: self._job(placement) for placement in placements}

    def compile_args(self, accelerator: Accelerator) -> list[str]:
        config, serving = self.config, self.config.serving
        return [
            "--model", config.model_id,
            "--revision", config.model_revision,
            "--device", accelerator.device,
            "--height", str(serving.height),
            "--width", str(serving.width),
            # Neuron graphs have a static batch size: the server's largest batch (it pads short ones).
            "--batch-size", str(serving.max_batch),
            # Recorded in the manifest: the serving image of this version is built only from it.
            "--image-version", serving.image_version,
            # This cluster's own prefix: the compile role may write nothing else (stacks.workload_roles).
            "--out", naming.cluster_models_base_uri(config),
            # Kernels for the serving pods' torch.compile, built on the GPU they prefer (pods.compiled_kernel_family).
            *(["--inductor-cache"] if pods.compiled_kernel_family(config, accelerator) else []),
            # The tiny VAE's weights travel with the model: the pods that decode with it are offline.
            *(["--tiny-vae", contract.TAESD_ID] if pods.decodes_with_tiny_vae(config, accelerator) else []),
        ]  # fmt: skip

    def _job(self, placement: Placement) -> cdk8s.ApiObject:
        accelerator, config = placement.accelerator, self.config
        args = self.compile_args(accelerator)
        image = topology.runtime_image_uri(config, accelerator)
        labels = _labels(accelerator)
        volumes, mounts = pods.scratch_volumes(self.settings.resources)
        pod_spec = k8s.PodSpec(
            service_account_name=SERVICE_ACCOUNT,
            automount_service_account_token=False,
            restart_policy="Never",  # Volcano restarts the job (maxRetry), not the kubelet
            active_deadline_seconds=self.settings.deadline_s,
            # On-Demand only, even where the pool may launch Spot (serving.spot): a Spot interruption
            # would end a compile that may take hours, and Volcano would start it over.
            node_selector={**placement.node_selector, topology.CAPACITY_TYPE_LABEL: ON_DEMAND_CAPACITY},
            # The compile's own node sizes (plan.accelerators.CompileResources): a Neuron compile
            # needs an inf2.8xlarge's host memory, which the pool's smallest (serving) size lacks.
            affinity=pods.instance_size_affinity(
                accelerator.compile.instance_sizes, pods.compiled_kernel_family(config, accelerator)
            ),
            tolerations=pods.tolerations(accelerator) or None,
            security_context=pods.pod_security_context(),
            containers=[
                k8s.Container(
                    name=TASK_NAME,
                    image=image,
                    image_pull_policy="IfNotPresent",
                    command=["python", "-m", contract.COMPILE_MODULE],
                    args=args,
                    # The serving image is built for offline serving; a compile job downloads from the Hub.
                    # The CPU request caps TorchInductor's compile workers (a node's CPUs are not the job's).
                    env=[
                        *pods.env_vars({**pods.model_env(config, accelerator), "HF_HUB_OFFLINE": "0"}),
                        pods.cpu_request_env(),
                    ],
                    resources=pods.resources(
                        accelerator,
                        self.settings.resources,
                        cpu=accelerator.compile.cpu_request,
                        memory=accelerator.compile.memory_request,
                    ),
                    security_context=pods.container_security_context(),
                    volume_mounts=mounts,
                )
            ],
            volumes=volumes,
        )
        # Volcano's task template is a core PodTemplateSpec: inline the same typed k8s.PodSpec the
        # serving chart builds, rendered by KubePod.manifest, instead of re-typing it in Volcano's
        # generated classes. The generated Job class would re-filter that JSON through its own
        # types on synth (dropping quantities), so the rendered manifest goes into a plain ApiObject.
        # A compile of hours must not be cut short to consolidate or replace its node; the regional
        # NodePools' terminationGracePeriod outlasts the job's deadline (charts/karpenter.py).
        template = k8s.KubePod.manifest(
            metadata=k8s.ObjectMeta(labels=labels, annotations={DO_NOT_DISRUPT: "true"}), spec=pod_spec
        )
        manifest = batch.Job.manifest(
            spec=batch.JobSpec(
                scheduler_name=SCHEDULER_NAME,
                queue=QUEUE_NAME,
                min_available=1,
                max_retry=self.settings.max_retry,
                policies=[
                    batch.JobSpecPolicies(event=batch.JobSpecPoliciesEvent.POD_EVICTED, action="RestartJob"),
                    batch.JobSpecPolicies(event=batch.JobSpecPoliciesEvent.POD_FAILED, action="RestartJob"),
                ],
                # Explicit, not left to Volcano's mutating webhook (create only): a re-apply of
                # the same Job would otherwise drop the defaults and be refused as an update.
                tasks=[
                    batch.JobSpecTasks(name=TASK_NAME, replicas=1, min_available=1, max_retry=self.settings.max_retry)
                ],
            ),
        )
        spec = manifest["spec"]
        spec["tasks"][0]["template"] = {"metadata": template["metadata"], "spec": template["spec"]}
        name = f"compile-{accelerator.name}-{spec_digest(labels, spec)}"
        job = cdk8s.ApiObject(
            self,
            f"Job-{accelerator.name}",
            api_version=manifest["apiVersion"],
            kind=manifest["kind"],
            metadata=cdk8s.ApiObjectMetadata(name=name, namespace=topology.NAMESPACE, labels=labels),
        )
        job.add_json_patch(cdk8s.JsonPatch.add("/spec", spec))
        return job
