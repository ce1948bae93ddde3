"""Stacks synthesized with a non-default config, for properties the default config cannot show
(public endpoint, admin principals, IPv6 clients, many AZs and Local Zones in a small VPC).

Only the stacks under test are built, without cdk-nag and the other stacks of the app; each
variant is synthesized once per session.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Any

from plan.config import AppConfig, load_config
from tests.conftest import cdk_json_context

# Edge of what config allows: six AZs, eight Local Zones, the smallest VPC (/20), an IPv6 client.
EDGE_NETWORK = {
    "region": "us-east-1",
    "availabilityZones": "us-east-1a,us-east-1b,us-east-1c,us-east-1d,us-east-1e,us-east-1f",
    "vpcCidr": "10.20.0.0/20",
    "localZones": ",".join(f"us-east-1-{city}-1a" for city in ("bos", "mia", "atl", "chi", "dfw", "iah", "mci", "msp")),
    "clientCidrs": "198.51.100.0/24,2001:db8::/32",
}
PUBLIC_ENDPOINT = {
    "endpointAccess": "public_and_private",
    "publicAccessCidrs": "203.0.113.0/24,198.51.100.7/32",
    "adminPrincipalArns": "arn:aws:iam::111111111111:role/Admin,arn:aws:iam::111111111111:user/ops",
}


@dataclass(frozen=True)
class Variant:
    config: AppConfig
    stacks: dict[str, Any]
    templates: dict[str, Any]  # stack name -> aws_cdk.assertions.Template


def _cdk_flags() -> dict[str, Any]:
    return {key: value for key, value in cdk_json_context().items() if key.startswith("@")}


@functools.cache
def synth_variant(overrides_json: str, *, with_cluster: bool) -> Variant:
    import aws_cdk as cdk
    from aws_cdk.assertions import Template

    from stacks.cluster import ClusterStack
    from stacks.network import NetworkStack
    from stacks.registry import RegistryStack

    config = load_config({**cdk_json_context(), **json.loads(overrides_json)})
    app = cdk.App(context=_cdk_flags())
    env = cdk.Environment(account=config.account, region=config.region)
    stacks: dict[str, Any] = {"network": NetworkStack(app, "Network", config=config, env=env)}
    if with_cluster:
        stacks["registry"] = RegistryStack(app, "Registry", config=config, env=env)
        stacks["cluster"] = ClusterStack(app, "Cluster", config=config, network=stacks["network"], env=env)
        _add_probes(stacks["cluster"])
    assembly = app.synth()
    templates = {
        name: Template.from_json(assembly.get_stack_by_name(stack.stack_name).template)
        for name, stack in stacks.items()
    }
    return Variant(config=config, stacks=stacks, templates=templates)


def _add_probes(cluster: Any) -> None:
    """Use the cluster stack's API the way composition/app_charts.py does: a role and a chart."""
    import cdk8s
    from aws_cdk import aws_iam as iam

    cluster.add_pod_identity_role(
        "Probe",
        namespace="probe",
        service_account="probe-sa",
        statements=[iam.PolicyStatement(actions=["s3:GetObject"], resources=["arn:aws:s3:::probe-bucket/*"])],
    )
    chart = cdk8s.Chart(cdk8s.App(), "probe")
    cdk8s.ApiObject(chart, "config", api_version="v1", kind="ConfigMap", metadata={"name": "probe-config"})
    cluster.apply_charts([chart])


def variant(overrides: dict[str, str], *, with_cluster: bool = False) -> Variant:
    return synth_variant(json.dumps(overrides, sort_keys=True), with_cluster=with_cluster)
