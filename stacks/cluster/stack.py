"""ClusterStack: the EKS cluster, its add-ons, the controllers' node group and the controllers.

The control plane, the kubectl handler and the controllers' managed node group live in
the regional private subnets only; Local Zone subnets never belong to the cluster's VPC
config (Karpenter launches serving nodes there from the charts' EC2NodeClasses). Compute
is a managed node group plus Karpenter, not EKS Auto Mode: Auto Mode cannot launch into
Local Zones and cannot run next to a self-managed Karpenter.

Every in-cluster AWS caller gets its own EKS Pod Identity role (:meth:`add_pod_identity_role`);
the node roles carry only what nodes need. The controllers are add-ons, one module each
(:mod:`stacks.cluster.addon`): their Helm releases are installed one after the other in the
order they are listed (:func:`default_controllers`; their declared dependencies only check the
list), and every cdk8s chart applied with :meth:`apply_charts` waits for all of them, so CRDs
and admission webhooks exist before anything uses them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, cast

import aws_cdk as cdk
import cdk8s
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_eks_v2 as eks
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk.lambda_layer_kubectl_v35 import KubectlV35Layer
from constructs import Construct

from plan import naming, versions
from plan.config import AppConfig
from stacks import nag
from stacks.cluster.addon import ClusterInfo, ControllerAddOn, check_install_order
from stacks.cluster.aws_load_balancer_controller import AwsLoadBalancerController
from stacks.cluster.karpenter import Karpenter
from stacks.cluster.karpenter_crd import KarpenterCrd
from stacks.cluster.keda import Keda
from stacks.cluster.pod_identity import PodIdentityRole
from stacks.cluster.volcano import Volcano
from stacks.network import NetworkStack

CLUSTER_ADMIN_POLICY: Final = "AmazonEKSClusterAdminPolicy"
SECRETS_KEY_PENDING_WINDOW_DAYS: Final = 7  # KMS's shortest waiting period before a deleted key is gone
CLOUDWATCH_NAMESPACE: Final = "amazon-cloudwatch"
CLOUDWATCH_SERVICE_ACCOUNT: Final = "cloudwatch-agent"

# Add-ons the nodes need to join and run pods: installed before the node group.
ADDONS_BEFORE_NODES: Final = ("vpc-cni", "kube-proxy")
# Add-ons whose pods need nodes to become ACTIVE: installed after the node group.
ADDONS_AFTER_NODES: Final = ("coredns", "amazon-cloudwatch-observability")
# Add-ons a controller needs until its last finalizer is done (pod networking, Services, DNS
# for AWS endpoints): every Helm release depends on them, so a stack delete removes them only after
# the Helm releases, and the Helm releases only after the objects they clean up (apply_charts).
ADDONS_CONTROLLERS_NEED: Final = ("vpc-cni", "kube-proxy", "coredns")
# configurationValues per add-on (each add-on's own JSON schema: `aws eks
# describe-addon-configuration`). vpc-cni: run the network policy agent, which enforces the
# charts' NetworkPolicies (charts/network_policies.py). The key is a string "true" in the
# add-on's schema (EKS user guide, "Restrict Pod network traffic with Kubernetes network
# policies"); VPC CNI 1.14+ has it, and EKS's default vpc-cni for Kubernetes 1.35 is newer.
ADDON_CONFIGURATION: Final[dict[str, dict[str, str]]] = {"vpc-cni": {"enableNetworkPolicy": "true"}}


def default_controllers() -> list[ControllerAddOn]:
    """The controllers of this app, with its default values, in install order: Karpenter's CRDs,
    Karpenter (the nodes everything else may need), the ALB controller (its webhooks mutate the
    Services and Pods created after it), then KEDA and Volcano. Each add-on declares what it must
    follow; :func:`~stacks.cluster.addon.check_install_order` holds the list to that."""
    return [KarpenterCrd(), Karpenter(), AwsLoadBalancerController(), Keda(), Volcano()]


@dataclass(frozen=True)
class InstalledController:
    """One add-on as installed on the cluster."""

    addon: ControllerAddOn
    helm_release: eks.HelmChart
    identity: PodIdentityRole | None  # its service account's role, with the association
    resources: Construct | None  # its own AWS resources, if any (Karpenter's node role, queue, ...)


@dataclass(frozen=True)
class ControllerNodeGroupProps:
    """The managed node group that runs the controllers (not the serving workloads)."""

    instance_type: str = "m7g.large"  # Graviton: the controllers are multi-arch
    min_size: int = 2  # two replicas of each controller, on two nodes
    desired_size: int = 2
    max_size: int = 3
    root_volume_gib: int = 30


ALL_CONTROL_PLANE_LOGS: Final = (
    eks.ClusterLoggingTypes.API,
    eks.ClusterLoggingTypes.AUDIT,
    eks.ClusterLoggingTypes.AUTHENTICATOR,
    eks.ClusterLoggingTypes.CONTROLLER_MANAGER,
    eks.ClusterLoggingTypes.SCHEDULER,
)


class ClusterStack(cdk.Stack):
    """EKS cluster (``versions.KUBERNETES_VERSION``) on the regional private subnets, with the controllers.

    ``controllers`` replaces :func:`default_controllers` (to pass user ``values`` to an
    add-on, or to add one); their Helm releases are installed in the order listed, which must
    respect every add-on's declared ``after`` and ``before``.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: AppConfig,
        network: NetworkStack,
        node_group: ControllerNodeGroupProps | None = None,
        controllers: Sequence[ControllerAddOn] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(scope, construct_id, **kwargs)
        self.config = config
        self.network = network
        node_group = node_group or ControllerNodeGroupProps()
        private_subnets = list(network.regional_private_subnets)

        secrets_key = kms.Key(
            self,
            "SecretsKey",
            description=f"Envelope encryption of Kubernetes Secrets of {config.cluster_name}",
            enable_key_rotation=True,
            # It encrypts only this cluster's Secrets, which go with the cluster: CloudFormation
            # deletes the cluster first (it depends on the key), then schedules the key's deletion.
            removal_policy=cdk.RemovalPolicy.DESTROY,
            pending_window=cdk.Duration.days(SECRETS_KEY_PENDING_WINDOW_DAYS),
        )
        self.cluster = eks.Cluster(
            self,
            "Cluster",
            cluster_name=config.cluster_name,
            version=eks.KubernetesVersion.of(versions.KUBERNETES_VERSION),
            vpc=network.vpc,
            vpc_subnets=[ec2.SubnetSelection(subnets=private_subnets)],
            endpoint_access=self._endpoint_access(config),
            cluster_logging=list(ALL_CONTROL_PLANE_LOGS),
            secrets_encryption_key=secrets_key,
            default_capacity_type=eks.DefaultCapacityType.NODEGROUP,
            default_capacity=0,
            # The add-ons below are EKS-managed; the self-managed copies would conflict.
            bootstrap_self_managed_addons=False,
            kubectl_provider_options=eks.KubectlProviderOptions(
                kubectl_layer=KubectlV35Layer(self, "KubectlLayer"),
                private_subnets=private_subnets,
            ),
        )
        for index, arn in enumerate(config.admin_principal_arns):
            self.cluster.grant_access(
                f"Admin{index}",
                arn,
                [
                    eks.AccessPolicy.from_access_policy_name(
                        CLUSTER_ADMIN_POLICY, access_scope_type=eks.AccessScopeType.CLUSTER
                    )
                ],
            )

        pod_identity_agent = self.cluster.eks_pod_identity_agent
        assert pod_identity_agent is not None
        self.addons = {name: self._addon(name) for name in ADDONS_BEFORE_NODES}
        self.controller_nodegroup = self._add_controller_nodegroup(node_group, private_subnets)
        for addon in (*self.addons.values(), pod_identity_agent):
            self.controller_nodegroup.node.add_dependency(addon)
        self.controller_node_selector = dict(naming.CONTROLLER_NODE_LABELS)

        # Container Insights: the agent's credentials via Pod Identity, so only the agent's
        # service account gets CloudWatchAgentServerPolicy, not every pod on every node. The
        # add-on runs its agent with hostNetwork (amazon-cloudwatch-observability chart values,
        # agent.hostNetwork: true), so the nodes' IMDS hop limit of 1 does not hide the instance
        # metadata its node metrics are labelled with.
        cloudwatch_identity = self.add_pod_identity_role(
            "CloudWatchAgent",
            namespace=CLOUDWATCH_NAMESPACE,
            service_account=CLOUDWATCH_SERVICE_ACCOUNT,
            managed_policies=[iam.ManagedPolicy.from_aws_managed_policy_name("CloudWatchAgentServerPolicy")],
        )
        self.cloudwatch_agent_role = cloudwatch_identity.role
        for name in ADDONS_AFTER_NODES:
            self.addons[name] = self._addon(name)
            self.addons[name].node.add_dependency(self.controller_nodegroup, cloudwatch_identity)

        info = ClusterInfo(
            scope=self,
            cluster=self.cluster,
            config=config,
            vpc=network.vpc,
            node_selector=self.controller_node_selector,
        )
        self.controllers = self._install_controllers(
            default_controllers() if controllers is None else controllers, info, pod_identity_agent
        )
        self.helm_releases = [installed.helm_release for installed in self.controllers.values()]
        self._acknowledge_findings()

    # --- API for the other stacks and the charts -------------------------------------------

    def add_pod_identity_role(
        self,
        construct_id: str,
        *,
        namespace: str,
        service_account: str,
        statements: Sequence[iam.PolicyStatement] = (),
        managed_policies: Sequence[iam.IManagedPolicy] = (),
    ) -> PodIdentityRole:
        """A role only ``namespace/service_account`` can assume, through EKS Pod Identity.

        Returns the construct holding the role *and* its association: whatever starts the pods
        must depend on all of it, since Pod Identity injects credentials only at pod admission.
        """
        return PodIdentityRole(
            self,
            f"PodIdentity{construct_id}",
            cluster_name=self.cluster.cluster_name,
            namespace=namespace,
            service_account=service_account,
            statements=statements,
            managed_policies=managed_policies,
        )

    def apply_charts(self, charts: Sequence[cdk8s.Chart]) -> list[eks.KubernetesManifest]:
        """Apply cdk8s charts to the cluster after every controller's Helm release is installed.

        Every manifest depends on every Helm release, so on stack delete CloudFormation deletes the
        manifests first, while the controllers still run. That is what lets the Karpenter chart's
        NodePools and EC2NodeClasses take their nodes with them: the Karpenter Helm release depends on
        its node role's access entry and its interruption queue and rules (the add-on's
        resources, see :meth:`_install_controllers`), so those go only after the Helm release,
        and the Helm release only after these manifests. Each edge is a ``DependsOn`` in the template.

        What the kubectl handler does on delete (the aws-cdk-lib requirements.txt pins,
        custom-resource-handlers aws-eks-v2/kubectl-handler/apply/__init__.py) bounds what that
        order guarantees: it runs ``kubectl delete -f <manifest>`` with kubectl's defaults
        (``--wait=true``, no timeout), inside the handler Lambda's 15 minutes, and it *catches and
        only logs any error* of that command, reporting the delete as a success.

        * Guaranteed: the manifests' objects are deleted before the Karpenter Helm release is
          uninstalled and before the node access entry and the queue are deleted, and, while the
          handler waits, the EC2NodeClass finalizer (karpenter.k8s.aws/termination, held until no
          NodeClaim uses the class; aws/karpenter-provider-aws at ``versions.KARPENTER``'s tag:
          pkg/controllers/nodeclass/controller.go) keeps the delete from finishing until
          Karpenter has drained and terminated the class's nodes.
        * Not guaranteed: if ``kubectl delete`` fails (API unreachable, a CRD already gone) the
          error is swallowed and CloudFormation goes on, so the next resources are deleted with
          the nodes still running; if draining outlasts the Lambda (a PodDisruptionBudget that
          never allows an eviction, say), the delete of the manifest fails and the stack stops in
          DELETE_FAILED with Karpenter and the access entry still in place, to be retried. After
          either, look for EC2 instances tagged ``karpenter.sh/nodepool`` that are still running.
        """
        manifests = []
        for chart in charts:
            # What add_cdk8s_chart does, with overwrite: a create applies over objects that are
            # already there (left by a delete whose error the handler swallowed, or moved here
            # from another chart's manifest) instead of failing on AlreadyExists.
            manifest = eks.KubernetesManifest(
                self,
                f"Chart{chart.node.id}",
                cluster=cast(eks.ICluster, self.cluster),  # jsii's ICluster Protocol misses kubectl_provider_options
                manifest=chart.to_json(),
                overwrite=True,
            )
            manifests.append(self._after_controllers(manifest))
        return manifests

    def apply_objects(self, chart: cdk8s.Chart) -> list[eks.KubernetesManifest]:
        """Apply each object of ``chart`` as a manifest of its own, named by its kind and name, after
        every controller's Helm release.

        For objects that are replaced rather than updated (a compile Job's name hashes its spec): a
        new name is a new CloudFormation resource, created, and the old one is deleted with
        ``kubectl delete`` in the update's cleanup. Within one chart's manifest the handler's
        ``kubectl apply --prune`` would keep it, since kubectl prunes only built-in kinds.
        """
        return [
            self._after_controllers(
                self.cluster.add_manifest(f"Chart{chart.node.id}{obj['kind']}{obj['metadata']['name']}", obj)
            )
            for obj in chart.to_json()
        ]

    def _after_controllers(self, manifest: eks.KubernetesManifest) -> eks.KubernetesManifest:
        for helm_release in self.helm_releases:
            manifest.node.add_dependency(helm_release)
        return manifest

    # --- cdk-nag ----------------------------------------------------------------------------------

    def _acknowledge_findings(self) -> None:
        """Acknowledge the findings of the stack's own resources, each with its reason (the
        controller add-ons acknowledge theirs)."""
        nag.acknowledge(
            self.cluster.role,
            nag.aws_managed_policy_finding("AmazonEKSClusterPolicy"),
            "The EKS service role policy EKS documents for every cluster role; AWS maintains it with EKS.",
        )
        self._acknowledge_kubectl_provider()
        for policy in ("AmazonEKSWorkerNodePolicy", "AmazonEKS_CNI_Policy", "AmazonEC2ContainerRegistryReadOnly"):
            nag.acknowledge(
                self.controller_nodegroup.role,
                nag.aws_managed_policy_finding(policy),
                f"{policy}: EKS's documented managed node group role policy (join the cluster, VPC CNI, pull "
                "images); pods on these nodes cannot use it (IMDS hop limit 1), they use Pod Identity.",
            )
        nag.acknowledge(
            self.cloudwatch_agent_role,
            nag.aws_managed_policy_finding("CloudWatchAgentServerPolicy"),
            "The policy the CloudWatch Observability add-on documents for its agent, kept in step with the "
            "agent by AWS; granted through Pod Identity to the agent's service account only.",
        )

    def _acknowledge_kubectl_provider(self) -> None:
        """The kubectl/helm handler and its custom resource provider are aws-cdk-lib's own."""
        provider = self.cluster.kubectl_provider
        assert provider is not None
        handler = provider.node.find_child("Handler")
        handler_resource = handler.node.default_child
        assert isinstance(handler_resource, cdk.CfnResource)
        for policy in (
            "service-role/AWSLambdaBasicExecutionRole",
            "service-role/AWSLambdaVPCAccessExecutionRole",
            "AmazonEC2ContainerRegistryReadOnly",
        ):
            nag.acknowledge(
                provider,
                nag.aws_managed_policy_finding(policy),
                f"{policy} on aws-cdk-lib's kubectl provider Lambda functions (logs, VPC network interfaces in "
                "the private subnets, pulling the kubectl layer's images); defined by aws-cdk-lib, not here.",
            )
        ecr_public_condition = handler.node.find_child("HasEcrPublic")
        assert isinstance(ecr_public_condition, cdk.CfnCondition)
        ecr_public_policy = {
            "Fn::If": [
                self.get_logical_id(ecr_public_condition),
                {
                    "Fn::Join": [
                        "",
                        [
                            "arn:",
                            {"Ref": "AWS::Partition"},
                            ":iam::aws:policy/AmazonElasticContainerRegistryPublicReadOnly",
                        ],
                    ]
                },
                {"Ref": "AWS::NoValue"},
            ]
        }
        nag.acknowledge(
            provider,
            f"AwsSolutions-IAM4[Policy::{json.dumps(ecr_public_policy, separators=(',', ':'))}]",
            "aws-cdk-lib's kubectl handler may pull public ECR images (Helm OCI charts such as Karpenter's); "
            "read-only, added by aws-cdk-lib in the aws partition only.",
        )
        nag.acknowledge(
            provider,
            nag.wildcard_resource_finding(f"<{self.get_logical_id(handler_resource)}.Arn>:*"),
            "The custom resource framework may invoke any version of the kubectl handler function, and only it.",
        )
        nag.acknowledge(
            provider,
            "AwsSolutions-L1",
            "The kubectl handler's runtime is chosen by aws-cdk-lib together with its handler code and the "
            "kubectl layer; it moves with aws-cdk-lib upgrades (versions catalog), not here.",
        )

    # --- pieces ------------------------------------------------------------------------------

    @staticmethod
    def _endpoint_access(config: AppConfig) -> eks.EndpointAccess:
        if config.endpoint_access == "public_and_private":
            return eks.EndpointAccess.PUBLIC_AND_PRIVATE.only_from(*config.public_access_cidrs)
        return eks.EndpointAccess.PRIVATE

    def _addon(self, name: str) -> eks.Addon:
        cluster = cast(eks.ICluster, self.cluster)  # jsii's ICluster Protocol misses kubectl_provider_options
        return eks.Addon(
            self,
            f"Addon-{name}",
            cluster=cluster,
            addon_name=name,
            configuration_values=ADDON_CONFIGURATION.get(name),
        )

    def _add_controller_nodegroup(
        self, props: ControllerNodeGroupProps, subnets: Sequence[ec2.ISubnet]
    ) -> eks.Nodegroup:
        """Graviton AL2023 nodes with IMDSv2 only (hop limit 1: pods use Pod Identity, not
        the node role) and an encrypted gp3 root volume."""
        launch_template = ec2.LaunchTemplate(
            self,
            "ControllerLaunchTemplate",
            require_imdsv2=True,
            http_put_response_hop_limit=1,
            block_devices=[
                ec2.BlockDevice(
                    device_name="/dev/xvda",
                    volume=ec2.BlockDeviceVolume.ebs(
                        props.root_volume_gib,
                        encrypted=True,
                        volume_type=ec2.EbsDeviceVolumeType.GP3,
                        delete_on_termination=True,
                    ),
                )
            ],
        )
        assert launch_template.launch_template_id is not None
        return self.cluster.add_nodegroup_capacity(
            "Controllers",
            nodegroup_name=f"{self.config.cluster_name}-controllers",
            ami_type=eks.NodegroupAmiType[versions.CONTROLLER_NODE_AMI_TYPE],
            instance_types=[ec2.InstanceType(props.instance_type)],
            min_size=props.min_size,
            desired_size=props.desired_size,
            max_size=props.max_size,
            subnets=ec2.SubnetSelection(subnets=list(subnets)),
            launch_template_spec=eks.LaunchTemplateSpec(
                id=launch_template.launch_template_id, version=launch_template.latest_version_number
            ),
            labels=dict(naming.CONTROLLER_NODE_LABELS),
        )

    def _install_controllers(
        self, addons: Sequence[ControllerAddOn], info: ClusterInfo, pod_identity_agent: eks.IAddon
    ) -> dict[str, InstalledController]:
        """Every add-on's AWS side and role first, then one Helm release per add-on in the listed
        order, each waiting for the previous one (wait=True: its webhooks serve, its CRDs exist)."""
        check_install_order(addons)
        prepared = []
        for addon in addons:
            setup = addon.setup(info)
            identity = None
            if (grant := setup.identity) is not None:
                identity = self.add_pod_identity_role(
                    grant.construct_id,
                    namespace=addon.chart.namespace,
                    service_account=grant.service_account,
                    statements=grant.statements,
                    managed_policies=grant.managed_policies,
                )
                for finding, reason in grant.acknowledgements.items():
                    nag.acknowledge(identity.role, finding, reason)
            prepared.append((addon, setup, identity))

        installed: dict[str, InstalledController] = {}
        previous: eks.HelmChart | None = None
        for addon, setup, identity in prepared:
            chart = addon.chart
            helm_release = self.cluster.add_helm_chart(
                chart.release_name,
                chart=chart.chart,
                repository=chart.repository,
                version=chart.version,
                release=chart.release_name,
                namespace=chart.namespace,
                create_namespace=True,
                values=addon.helm_values(setup),
                wait=True,
                timeout=cdk.Duration.minutes(10),
                skip_crds=addon.skip_crds,
            )
            helm_release.node.add_dependency(
                self.controller_nodegroup, pod_identity_agent, *(self.addons[n] for n in ADDONS_CONTROLLERS_NEED)
            )
            if identity is not None:  # credentials exist before the first pod asks for them
                helm_release.node.add_dependency(identity)
            if setup.resources is not None:
                # Explicit, not only through the values' Refs: on stack delete the Helm release (and
                # with it what apply_charts applied) goes before the add-on's own resources;
                # Karpenter's nodes need its node access entry and queue until they are gone.
                helm_release.node.add_dependency(setup.resources)
            if previous is not None:  # the chain implies every declared dependency
                helm_release.node.add_dependency(previous)
            previous = helm_release
            installed[addon.name] = InstalledController(addon, helm_release, identity, setup.resources)
        return installed
