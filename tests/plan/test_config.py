"""Config parsing and validation, unit level (the CLI path is in test_config_cli.py)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from plan.config import AppConfig, ConfigError, LocalZoneConfig, config_warnings, context_keys, load_config
from tests.conftest import cdk_json_context


def load(**overrides: object) -> AppConfig:
    return load_config({**cdk_json_context(), **overrides})


def test_cdk_json_gives_the_runnable_example() -> None:
    config = load()
    assert config.account == "111111111111"
    assert config.region == "us-west-2"
    assert config.local_zones == (LocalZoneConfig("us-west-2-lax-1a", ("g5",)),)
    assert config.accelerators == ("nvidia", "neuron", "cpu")
    assert not config.allow_public_node_ports


def test_cdk_feature_flags_are_not_config_keys() -> None:
    config = load(**{"@aws-cdk/core:newStyleStackSynthesis": True, "aws:cdk:enable-path-metadata": True})
    assert config.region == "us-west-2"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("us-west-2-lax-1a", (LocalZoneConfig("us-west-2-lax-1a", ("g5",)),)),
        (
            "us-west-2-lax-1a:g5+g6,us-west-2-phx-2a",
            (
                LocalZoneConfig("us-west-2-lax-1a", ("g5", "g6")),
                LocalZoneConfig("us-west-2-phx-2a", ("g5",)),
            ),
        ),
        (
            '[{"name": "us-west-2-den-1a", "instanceFamilies": ["g6", "c7g"]}]',
            (LocalZoneConfig("us-west-2-den-1a", ("g6", "c7g")),),
        ),
        ("", ()),
    ],
)
def test_local_zones_accept_command_line_and_json_forms(raw: str, expected: tuple[LocalZoneConfig, ...]) -> None:
    assert load(localZones=raw).local_zones == expected


def test_command_line_strings_become_typed_values() -> None:
    config = load(
        clientCidrs="198.51.100.0/24, 2001:db8::/32",
        allowPublicNodePorts="false",
        accelerators="nvidia",
        serving='{"maxReplicas": "8", "imageVersion": "2.0.0"}',
        ingressWeights='{"nvidia": 3}',
    )
    assert config.client_cidrs == ("198.51.100.0/24", "2001:db8::/32")
    assert config.accelerators == ("nvidia",)
    assert config.serving.max_replicas == 8
    assert config.serving.image_version == "2.0.0"
    assert config.ingress_weights == {"nvidia": 3}


def test_public_node_ports_need_the_explicit_opt_in() -> None:
    with pytest.raises(ConfigError, match="allowPublicNodePorts=true"):
        load(clientCidrs="0.0.0.0/0")
    assert load(clientCidrs="0.0.0.0/0", allowPublicNodePorts="true").client_cidrs == ("0.0.0.0/0",)


@pytest.mark.parametrize(
    ("overrides", "key", "value"),
    [
        ({"localZones": "us-east-1-bos-1a"}, "localZones", "us-east-1-bos-1a"),
        ({"localZones": "us-west-2a"}, "localZones", "us-west-2a"),
        ({"localZones": "us-west-2-lax-1a:G5"}, "localZones[us-west-2-lax-1a].instanceFamilies", "G5"),
        ({"localZones": "us-west-2-lax-1a,us-west-2-lax-1a"}, "localZones", "us-west-2-lax-1a,us-west-2-lax-1a"),
        ({"clientCidrs": "10.0.0.1/8"}, "clientCidrs", "10.0.0.1/8"),
        ({"clientCidrs": "not-a-cidr"}, "clientCidrs", "not-a-cidr"),
        ({"clientCidrs": "::/0"}, "clientCidrs", "::/0"),
        ({"accelerators": "nvidia,tpu"}, "accelerators", "tpu"),
        ({"accelerators": ""}, "accelerators", ""),
        ({"availabilityZones": ""}, "availabilityZones", ""),
        ({"availabilityZones": "us-east-1a"}, "availabilityZones", "us-east-1a"),
        ({"availabilityZones": "us-west-2-lax-1a"}, "availabilityZones", "us-west-2-lax-1a"),
        ({"region": "uswest2"}, "region", "uswest2"),
        ({"account": "12345"}, "account", "12345"),
        ({"vpcCidr": "10.0.0.0/8"}, "vpcCidr", "10.0.0.0/8"),
        ({"endpointAccess": "public"}, "endpointAccess", "public"),
        ({"endpointAccess": "public_and_private"}, "publicAccessCidrs", ""),
        ({"adminPrincipalArns": "admin"}, "adminPrincipalArns", "admin"),
        ({"allowPublicNodePorts": "yes"}, "allowPublicNodePorts", "yes"),
        ({"serving": '{"maxBatch": 0}'}, "serving.maxBatch", 0),
        ({"serving": '{"minReplicas": -1}'}, "serving.minReplicas", -1),
        ({"serving": '{"signals": ["cpu"]}'}, "serving.signals", "cpu"),
        ({"serving": '{"signals": []}'}, "serving.signals", ""),
        ({"serving": '{"spot": "yes"}'}, "serving.spot", "yes"),
        ({"serving": '{"scaleToZeroAfterSeconds": 10}'}, "serving.scaleToZeroAfterSeconds", 10),
        ({"serving": '{"placements": {"tpu": {"minReplicas": 0}}}'}, "serving.placements", "tpu"),
        ({"serving": '{"placements": {"nvidia": {"minReplicas": 9}}}'}, "serving.placements.nvidia.minReplicas", 9),
        ({"natGateways": "two"}, "natGateways", "two"),
        (
            {"serving": '{"placements": {"nvidia-us-west-2-lax-1a": {"spot": true}}}'},
            "serving.placements.nvidia-us-west-2-lax-1a.spot",
            True,
        ),
        ({"spotPrices": '{"g6.xlarge": 0}'}, "spotPrices.g6.xlarge", 0),
        (
            {"localZones": '[{"name": "us-west-2-lax-1a", "deviceCidrs": ["10.1.2.3/8"]}]'},
            "localZones[us-west-2-lax-1a].deviceCidrs",
            "10.1.2.3/8",
        ),
        ({"serving": '{"height": 500}'}, "serving.height", 500),
        ({"serving": '{"minReplicas": 5, "maxReplicas": 2}'}, "serving.minReplicas", 5),
        ({"serving": '{"replicas": 2}'}, "serving.replicas", 2),
        ({"serving": '{"scaleDownWindowSeconds": 3601}'}, "serving.scaleDownWindowSeconds", 3601),
        ({"serving": '{"kedaCooldownPeriodSeconds": 3601}'}, "serving.kedaCooldownPeriodSeconds", 3601),
        ({"ingressWeights": '{"tpu": 1}'}, "ingressWeights", "tpu"),
        ({"localZone": "us-west-2-lax-1a"}, "localZone", "us-west-2-lax-1a"),
        ({"clusterName": "1cluster"}, "clusterName", "1cluster"),
    ],
)
def test_bad_values_name_the_key_the_value_and_what_is_allowed(
    overrides: dict[str, object], key: str, value: object
) -> None:
    with pytest.raises(ConfigError) as err:
        load(**overrides)
    assert (err.value.key, err.value.value) == (key, value)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"invalid config {key}=")
    assert "allowed" in message and err.value.allowed


def test_every_context_key_in_cdk_json_is_known() -> None:
    ours = {k for k in cdk_json_context() if not k.startswith("@")}
    assert ours <= set(context_keys())


def test_what_charts_and_stacks_would_refuse_is_refused_with_every_other_error() -> None:
    """An ALB with no target group, an ALB with no IPv4 client network and a snapshot builder in a
    Region without Bottlerocket registries: refused by the config, beside the other bad values."""
    context = {
        **cdk_json_context(),
        "region": "mx-central-1",
        "availabilityZones": ["mx-central-1a", "mx-central-1b"],
        "localZones": [],
        "ingressWeights": {name: 0 for name in cdk_json_context()["accelerators"]},
        "clientCidrs": ["2001:db8::/32"],
        "nodeImage": {"family": "bottlerocket", "buildSnapshot": True},
        "serving": {"maxBatch": 0},
    }
    with pytest.raises(ConfigError) as caught:
        load_config(context)
    lines = caught.value.lines()
    assert any(line.startswith("error: invalid config ingressWeights=") and "weight above 0" in line for line in lines)
    assert "error: invalid config clientCidrs='2001:db8::/32': allowed at least one IPv4 CIDR for the ALB" in lines
    assert any("nodeImage.buildSnapshot=True: allowed a Region with Bottlerocket" in line for line in lines)
    assert any(line.startswith("error: invalid config serving.maxBatch=0") for line in lines)


def test_one_availability_zone_is_refused_in_one_line() -> None:
    """EKS wants subnets in two AZs, and so does the ALB: a one-AZ VPC would fail at deploy."""
    with pytest.raises(ConfigError) as err:
        load(availabilityZones="us-west-2a")
    assert err.value.lines() == [
        "error: invalid config availabilityZones='us-west-2a': allowed two or more distinct AZs of us-west-2 "
        "such as us-west-2a,us-west-2b (EKS and the ALB need two)"
    ]
    assert load(availabilityZones="us-west-2a,us-west-2b").availability_zones == ("us-west-2a", "us-west-2b")


def test_the_scale_down_window_keeps_its_old_key_with_one_warning() -> None:
    old = load(**{"serving.kedaCooldownPeriodSeconds": "600"})
    assert old.serving.scale_down_window_s == 600
    deprecated = [line for line in config_warnings(old) if "deprecated" in line]
    assert deprecated == [
        "warning: serving.kedaCooldownPeriodSeconds is deprecated: use serving.scaleDownWindowSeconds "
        "(the HPA's scale-down window)"
    ]
    new = load(**{"serving.scaleDownWindowSeconds": "600"})
    assert new.serving.scale_down_window_s == 600
    assert not [line for line in config_warnings(new) if "deprecated" in line]
    assert replace(old.serving, image_version="2.0.0").scale_down_window_s == 600  # variants keep it


def test_setting_the_scale_down_window_under_both_names_is_an_error() -> None:
    with pytest.raises(ConfigError) as err:
        load(serving='{"kedaCooldownPeriodSeconds": 600, "scaleDownWindowSeconds": 120}')
    (error,) = err.value.errors
    assert (error.key, error.value) == ("serving.kedaCooldownPeriodSeconds", 600)
    assert "serving.scaleDownWindowSeconds alone" in error.allowed


@pytest.mark.parametrize(
    ("overrides", "key", "allowed"),
    [
        ({"serving.max_batch": "8"}, "serving.max_batch", "one of imageVersion, minReplicas"),  # keys, not fields
        ({"serving.ui": "yes"}, "serving.ui", "true or false"),
        ({"serving.maxBatch": True}, "serving.maxBatch", "an integer from 1 to 64"),
        ({"serving.height": "100"}, "serving.height", "a multiple of 8 from 64 to 2048"),
        ({"alarms.serverErrorPercent": "nan"}, "alarms.serverErrorPercent", "a number above 0 up to 100"),
        ({"accelerators": "[nvidia"}, "accelerators", "a JSON list or comma-separated values"),
        ({"ingressWeights": '{"nvidia": "x"}'}, "ingressWeights.nvidia", "an integer from 0 to 999"),
        ({"serving": "5"}, "serving", "a JSON object"),
    ],
)
def test_the_allowed_text_comes_from_the_field(overrides: dict[str, object], key: str, allowed: str) -> None:
    with pytest.raises(ConfigError) as err:
        load(**overrides)
    (error,) = err.value.errors
    assert error.key == key and error.allowed.startswith(allowed), error


def test_eight_bad_values_are_eight_lines_in_the_order_of_the_keys() -> None:
    with pytest.raises(ConfigError) as err:
        load(
            availabilityZones="us-west-2a",
            clientCidrs="not-a-cidr",
            accelerators="nvidia,tpu",
            endpointAccess="open",
            **{"serving.maxBatch": "0", "serving.height": "100", "serving.minReplicas": "9", "alarms.emails": "bad"},
        )
    assert [error.key for error in err.value.errors] == [
        "availabilityZones",
        "clientCidrs",
        "endpointAccess",
        "accelerators",
        "serving.minReplicas",
        "serving.maxBatch",
        "serving.height",
        "alarms.emails",
    ]


def test_a_rule_that_read_a_bad_value_is_not_reported() -> None:
    """Rules over several values run on the defaults of bad ones: what they find then is not news."""
    with pytest.raises(ConfigError) as err:
        load(region="Oregon", availabilityZones="eu-west-1a")
    assert [error.key for error in err.value.errors] == ["region"]
    with pytest.raises(ConfigError) as err:
        load(serving='{"minReplicas": 5, "maxReplicas": "x"}')
    assert [error.key for error in err.value.errors] == ["serving.maxReplicas"]


@pytest.mark.parametrize("version", ["1.3.0", "1.2.0", "1.0.0", "0.9", "latest"])
def test_an_image_version_older_than_the_charts_need_is_refused(version: str) -> None:
    """Tags are immutable: a deployment upgraded to these charts but still on an older image version
    would run a server that ignores the model's default steps the charts set (SD-Turbo at 20 guided steps)."""
    with pytest.raises(ConfigError) as caught:
        load_config({**cdk_json_context(), "serving": {"imageVersion": version}})
    (line,) = caught.value.lines()
    assert line.startswith(f"error: invalid config serving.imageVersion={version!r}: allowed a version like 1.4.0")


@pytest.mark.parametrize("version", ["1.4.0", "1.10", "2.0.0-rc1"])
def test_image_versions_the_charts_work_with_are_accepted(version: str) -> None:
    assert load_config({**cdk_json_context(), "serving": {"imageVersion": version}}).serving.image_version == version


def test_placements_take_their_own_scaling_values_over_servings() -> None:
    config = load(
        serving='{"minReplicas": 0, "signals": ["pending"], "placements": '
        '{"nvidia": {"minReplicas": 2}, "nvidia-us-west-2-lax-1a": {"signals": ["latency", "pending"]}}}'
    )
    assert config.placement_keys == ("nvidia", "nvidia-us-west-2-lax-1a", "neuron", "cpu")
    assert [config.serving.min_replicas_of(key) for key in config.placement_keys] == [2, 0, 0, 0]
    assert config.serving.signals_of("nvidia-us-west-2-lax-1a") == ("latency", "pending")
    assert config.serving.signals_of("neuron") == ("pending",)


def test_a_placement_key_names_the_placements_the_deployment_has() -> None:
    """A Local Zone hosts an accelerator only with one of its families: no ``neuron-<zone>`` for a g5 zone."""
    with pytest.raises(ConfigError) as err:
        load(serving='{"placements": {"neuron-us-west-2-lax-1a": {"minReplicas": 0}}}')
    assert "placements of this deployment: nvidia, nvidia-us-west-2-lax-1a, neuron, cpu" in str(err.value)


def test_device_cidrs_fit_the_inventory_functions_environment() -> None:
    """Lambda caps a function's environment at 4 KB: the zones' deviceCidrs are refused past 3,000
    characters of the JSON the inventory functions get, in one line that says how many were given."""
    cidrs = [f"10.{i}.{j}.0/24" for i in range(2) for j in range(100)]
    zone = {"name": "us-west-2-lax-1a", "deviceCidrs": cidrs[:150]}
    assert len(load(localZones=[zone]).device_cidrs_json()) <= 3000
    with pytest.raises(ConfigError) as err:
        load(localZones=[{**zone, "deviceCidrs": cidrs}])
    assert (err.value.key, err.value.value) == ("localZones", "200 deviceCidrs")
    assert "at most 3000 characters" in err.value.allowed and "3002 given" in err.value.allowed
