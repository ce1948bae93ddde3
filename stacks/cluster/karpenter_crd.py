"""Karpenter's CRDs (NodePool, NodeClaim, EC2NodeClass, NodeOverlay, CapacityBuffer) as their own Helm release.

Helm installs the CRDs in a chart's ``crds/`` directory on the first install only and never
upgrades them (https://helm.sh/docs/chart_best_practices/custom_resource_definitions/), so with
the ``karpenter`` chart alone a Karpenter upgrade would run the new controller against the old
CRDs. Karpenter's upgrade guide, "CRD Upgrades"
(aws/karpenter-provider-aws@v1.14.1:website/content/en/docs/upgrading/upgrade-guide.md,
https://karpenter.sh/docs/upgrading/upgrade-guide/#crd-upgrades), recommends the independent
``karpenter-crd`` chart (oci://public.ecr.aws/karpenter/karpenter-crd), at the controller's
version, in the controller's namespace: its CRDs are templates, so ``helm upgrade`` updates them.
This add-on installs it before the ``karpenter`` Helm release, which skips its own copy.

A cluster deployed before this add-on existed holds CRDs created by the ``karpenter`` chart's
``crds/``, without Helm's ownership metadata: the first install of this Helm release fails with
``invalid ownership metadata`` until they are labelled and annotated as Karpenter's
troubleshooting guide says ("Helm Error when installing the karpenter-crd chart"):
``kubectl label crd <crds> app.kubernetes.io/managed-by=Helm --overwrite`` and
``kubectl annotate crd <crds> meta.helm.sh/release-name=karpenter-crd
meta.helm.sh/release-namespace=kube-system --overwrite``.
"""

from __future__ import annotations

from typing import ClassVar, Final

from plan import versions
from stacks.cluster.addon import ClusterInfo, ControllerAddOn, ControllerSetup
from stacks.cluster.karpenter import Karpenter

# Helm's "do not delete on uninstall" policy (https://helm.sh/docs/howto/charts_tips_and_tricks/,
# "Tell Helm Not To Uninstall a Resource"). Deleting the NodePool CRD deletes every NodePool and
# NodeClaim, and with them every node Karpenter launched: a replaced or renamed Helm release must never
# do that. It keeps what Helm did with the karpenter chart's crds/, which it never deletes either.
KEEP_ON_UNINSTALL: Final = {"helm.sh/resource-policy": "keep"}


class KarpenterCrd(ControllerAddOn):
    """The ``karpenter-crd`` chart: CRDs only, no pods, no AWS calls."""

    name: ClassVar[str] = "karpenter-crd"
    chart: ClassVar[versions.HelmChart] = versions.KARPENTER_CRD
    before: ClassVar[tuple[str, ...]] = (Karpenter.name,)

    def setup(self, info: ClusterInfo) -> ControllerSetup:
        # The chart's only value (charts/karpenter-crd/values.yaml at v1.14.1).
        return ControllerSetup(values={"additionalAnnotations": dict(KEEP_ON_UNINSTALL)})
