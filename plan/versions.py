"""The versions catalog: every pinned version of the app in one place.

Kubernetes, the kubectl layer, Helm charts, container images, the node AMI alias and the
Deep Learning Container base images are upgraded here and nowhere else; stacks, charts,
the Dockerfile build args and the tests read them from this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

# --- Kubernetes ----------------------------------------------------------------------------
KUBERNETES_VERSION: Final = "1.35"
# The kubectl/helm Lambda layer must match the control plane's minor version.
KUBECTL_LAYER_PACKAGE: Final = "aws-cdk.lambda-layer-kubectl-v35==2.2.2"


@dataclass(frozen=True)
class HelmChart:
    """A Helm chart pinned to one version, installed as one Helm release in one namespace."""

    chart: str
    repository: str
    version: str
    release_name: str  # the Helm release's name
    namespace: str


# Karpenter publishes its chart to an OCI registry only (public ECR).
KARPENTER: Final = HelmChart(
    chart="karpenter",
    repository="oci://public.ecr.aws/karpenter/karpenter",
    version="1.14.1",
    release_name="karpenter",
    namespace="kube-system",
)
# Karpenter's CRDs, from its own chart, at the controller's version: Helm installs the crds/ of
# the karpenter chart once and never upgrades them; Karpenter's upgrade guide ("CRD Upgrades")
# recommends this chart to manage their lifecycle. Always moves together with KARPENTER.
KARPENTER_CRD: Final = HelmChart(
    chart="karpenter-crd",
    repository="oci://public.ecr.aws/karpenter/karpenter-crd",
    version=KARPENTER.version,
    release_name="karpenter-crd",
    namespace=KARPENTER.namespace,
)
KEDA: Final = HelmChart(
    chart="keda",
    repository="https://kedacore.github.io/charts",
    version="2.20.2",
    release_name="keda",
    namespace="keda",
)
VOLCANO: Final = HelmChart(
    chart="volcano",
    repository="https://volcano-sh.github.io/helm-charts",
    version="1.15.1",
    release_name="volcano",
    namespace="volcano-system",
)
# Chart 1.17.1 ships controller v2.17.1 (eks-charts); IngressClass "alb" comes with it.
AWS_LOAD_BALANCER_CONTROLLER: Final = HelmChart(
    chart="aws-load-balancer-controller",
    repository="https://aws.github.io/eks-charts",
    version="1.17.1",
    release_name="aws-load-balancer-controller",
    namespace="kube-system",
)

# --- Device plugins (static DaemonSets rendered by charts/device_plugins.py) ------------------
NVIDIA_DEVICE_PLUGIN_IMAGE: Final = "nvcr.io/nvidia/k8s-device-plugin:v0.20.0"
NEURON_DEVICE_PLUGIN_IMAGE: Final = "public.ecr.aws/neuron/neuron-device-plugin:2.22.4.0"

# --- Nodes -------------------------------------------------------------------------------
# Karpenter resolves the AL2023 standard, NVIDIA and Neuron variants of this release per
# instance type. Pinned (not @latest) as Karpenter recommends: AMI rollouts are a change
# reviewed in a pull request, not a surprise.
AL2023_AMI_ALIAS: Final = "al2023@v20260903"
# nodeImage.family=bottlerocket: Karpenter resolves the aws-k8s-<version> variant (standard and
# Neuron on x86_64, Graviton) or aws-k8s-<version>-nvidia per instance type. Kubernetes 1.35
# variants exist since Bottlerocket v1.53.0; v1.66.0 is the release pinned here
# (github.com/bottlerocket-os/bottlerocket/releases/tag/v1.66.0), reviewed like an AL2023 bump.
BOTTLEROCKET_AMI_ALIAS: Final = "bottlerocket@v1.66.0"

# --- Container base images (ci_build/Dockerfile build args) ----------------------------------
# AWS Deep Learning Containers; the registry account is per Region (763104351884 in most), so
# the account and Region are build args of the Dockerfile, not part of these pins.
DLC_REGISTRY_ACCOUNT: Final = "763104351884"
DLC_PYTORCH_INFERENCE_GPU_REPOSITORY: Final = "pytorch-inference"
DLC_PYTORCH_INFERENCE_NEURONX_REPOSITORY: Final = "pytorch-inference-neuronx"
# The newest EC2 PyTorch inference GPU DLC published (PyTorch 2.6, CUDA 12.4, Python 3.12).
DLC_PYTORCH_INFERENCE_GPU_TAG: Final = "2.6.0-gpu-py312-cu124-ubuntu22.04-ec2"
# Neuron SDK 2.26.1 with torch-neuronx 2.8 (Python 3.11): the SDK that optimum-neuron 0.4.5
# (runtime/requirements-neuron.txt) is built against (it pins torch-neuronx 2.8.0.2.10), and
# one that still supports inf2/trn1 (Neuron 2.33 DLCs target Trn2/Trn3 only). The previous pin,
# 2.7.0-...-sdk2.24.1, was never published for pytorch-inference-neuronx (2.7.0 shipped with 2.25.0).
DLC_PYTORCH_INFERENCE_NEURONX_TAG: Final = "2.8.0-neuronx-py311-sdk2.26.1-ubuntu22.04"
# Graviton/CPU variant: the official Python image is multi-arch (amd64 + arm64). Pinned to a
# patch release on Debian 13 so a rebuild does not silently move the interpreter.
CPU_BASE_IMAGE: Final = "public.ecr.aws/docker/library/python:3.11.15-slim-trixie"

# --- Image and deploy pipelines (stacks/image_pipeline.py, stacks/deploy_pipeline.py) ---------
# CodeBuild curated images: Amazon Linux 2023 with Docker and buildx, x86_64 and Graviton.
CODEBUILD_X86_IMAGE: Final = "aws/codebuild/amazonlinux-x86_64-standard:6.0"
CODEBUILD_ARM_IMAGE: Final = "aws/codebuild/amazonlinux-aarch64-standard:4.0"
# BuildKit daemon for `docker buildx` (docker-container driver: registry cache export needs it).
# From the ECR Public Gallery's mirror of Docker Hub's moby/buildkit (gallery.ecr.aws/vend/moby/buildkit),
# same release: Docker Hub limits anonymous pulls per address per hour, and CodeBuild hosts share
# addresses; ECR Public serves anonymous pulls within its own quotas (500 GB of data a month).
BUILDKIT_IMAGE: Final = "public.ecr.aws/vend/moby/buildkit:v0.29.0"


def dlc_image(region: str, repository: str, tag: str) -> str:
    """Full image URI of a Deep Learning Container in ``region``."""
    return f"{DLC_REGISTRY_ACCOUNT}.dkr.ecr.{region}.amazonaws.com/{repository}:{tag}"


# --- Cluster stack (stacks/cluster/) -------------------------------------------------------
# Controller version the AWS Load Balancer Controller chart above ships; its IAM policy is
# vendored as third_party/aws-load-balancer-controller/iam_policy-<this>.json (upstream
# docs/install/iam_policy.json at that tag, as aws-cdk-lib also ships it).
AWS_LOAD_BALANCER_CONTROLLER_APP_VERSION: Final = "v2.17.1"
# Managed node group of the controllers (Karpenter, KEDA, Volcano, ALB controller, CoreDNS):
# Graviton, EKS-optimized AL2023; EKS picks the latest AMI release of the cluster version.
CONTROLLER_NODE_AMI_TYPE: Final = "AL2023_ARM_64_STANDARD"
# EKS add-ons are not pinned: EKS installs each add-on's default version for the cluster's
# Kubernetes version (KUBERNETES_VERSION above), which moves only with a cluster upgrade.
