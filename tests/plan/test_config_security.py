"""The config keys of device-facing security, node images, alarms and prices, and reporting every
bad value of a config in one run."""

from __future__ import annotations

import pytest

from plan import contract
from plan.config import (
    DEFAULT_ALB_SECURITY_POLICY,
    AlarmsConfig,
    AppConfig,
    AuthConfig,
    ConfigError,
    ConfigErrors,
    NodeImageConfig,
    TlsConfig,
    config_warnings,
    load_config,
)
from tests.conftest import cdk_json_context

CERT = "arn:aws:acm:us-west-2:111111111111:certificate/12345678-1234-1234-1234-123456789012"
NAMED = {"tls.localZoneServerName": "lz.example.com"}


def load(**overrides: object) -> AppConfig:
    return load_config({**cdk_json_context(), **overrides})


def bad_keys(**overrides: object) -> list[tuple[str, object]]:
    with pytest.raises(ConfigError) as err:
        load(**overrides)
    for error in err.value.errors:
        assert "\n" not in str(error) and str(error).startswith(f"invalid config {error.key}=")
    return [(error.key, error.value) for error in err.value.errors]


def test_defaults_are_plain_http_with_tokens_on_al2023() -> None:
    config = load()
    assert config.tls == TlsConfig(
        certificate_arn="",
        local_zone_secret="",
        local_zone_server_name="",
        alb_security_policy=DEFAULT_ALB_SECURITY_POLICY,
    )
    assert "TLS13" in config.tls.alb_security_policy
    assert config.auth == AuthConfig("token", contract.DEFAULT_TOKEN_TTL_S)
    assert config.node_image == NodeImageConfig("al2023", "", False)
    assert config.alarms == AlarmsConfig()
    assert not config.serving.ui
    assert config.on_demand_prices == {}


def test_objects_take_json_or_one_dotted_key_at_a_time() -> None:
    config = load(
        tls=f'{{"certificateArn": "{CERT}"}}',
        **{
            "tls.localZoneSecret": "edge/lz-tls",
            "tls.localZoneServerName": "lz.example.com",
            "auth.tokenTtlSeconds": "600",
            "serving.ui": "true",
            "nodeImage": '{"family": "bottlerocket", "dataVolumeSnapshotId": "snap-0123456789abcdef0"}',
            "nodeImage.buildSnapshot": "true",
            "alarms.emails": "ops@example.com, oncall@example.org",
            "alarms.serverErrorPercent": "0.5",
            "onDemandPrices.g5.xlarge": "1.1",
        },
    )
    assert config.tls == TlsConfig(CERT, "edge/lz-tls", "lz.example.com", DEFAULT_ALB_SECURITY_POLICY)
    assert config.auth.token_ttl_s == 600
    assert config.serving.ui
    assert config.node_image == NodeImageConfig("bottlerocket", "snap-0123456789abcdef0", True)
    assert config.alarms.emails == ("ops@example.com", "oncall@example.org")
    assert config.alarms.server_error_percent == 0.5
    assert config.on_demand_prices == {"g5.xlarge": 1.1}


def test_a_dotted_key_overrides_that_field_of_the_committed_object() -> None:
    config = load(serving={"maxReplicas": 8, "ui": False}, **{"serving.ui": "true"})
    assert (config.serving.max_replicas, config.serving.ui) == (8, True)


@pytest.mark.parametrize(
    ("overrides", "key", "value"),
    [
        # Another Region's, another account's, or not an ACM ARN at all.
        ({"tls.certificateArn": CERT.replace("us-west-2", "us-east-1")}, "tls.certificateArn", None),
        ({"tls.certificateArn": CERT.replace("111111111111", "222222222222")}, "tls.certificateArn", None),
        ({"tls.certificateArn": "arn:aws:iam::111111111111:server-certificate/x"}, "tls.certificateArn", None),
        (
            {"tls.localZoneSecret": "arn:aws:secretsmanager:us-west-2:111111111111:secret:x", **NAMED},
            "tls.localZoneSecret",
            None,
        ),
        ({"tls.localZoneSecret": "has space", **NAMED}, "tls.localZoneSecret", "has space"),
        ({"tls.albSecurityPolicy": "ELBSecurityPolicy-2016-08"}, "tls.albSecurityPolicy", None),
        ({"tls.certificate": "x"}, "tls.certificate", "x"),
        ({"auth.mode": "open"}, "auth.mode", "open"),
        ({"auth.tokenTtlSeconds": "5"}, "auth.tokenTtlSeconds", "5"),
        ({"nodeImage.family": "ubuntu"}, "nodeImage.family", "ubuntu"),
        ({"nodeImage.dataVolumeSnapshotId": "snap-0123456789abcdef0"}, "nodeImage.dataVolumeSnapshotId", None),
        (
            {"nodeImage": '{"family": "bottlerocket", "dataVolumeSnapshotId": "vol-1"}'},
            "nodeImage.dataVolumeSnapshotId",
            "vol-1",
        ),
        ({"nodeImage.buildSnapshot": "yes"}, "nodeImage.buildSnapshot", "yes"),
        ({"alarms.emails": "ops@example.com,not-an-email"}, "alarms.emails", "not-an-email"),
        ({"alarms.serverErrorPercent": "0"}, "alarms.serverErrorPercent", "0"),
        ({"alarms.latencyP99SloMs": "fast"}, "alarms.latencyP99SloMs", "fast"),
        ({"onDemandPrices": '{"g5.xlarge": -2}'}, "onDemandPrices.g5.xlarge", -2),
        ({"onDemandPrices": '{"g5.xlarge": "free"}'}, "onDemandPrices.g5.xlarge", "free"),
        ({"onDemandPrices": '{"g5": 1.0}'}, "onDemandPrices", "g5"),
        ({"serving.ui": "maybe"}, "serving.ui", "maybe"),
        ({"region.name": "x"}, "region.name", "x"),
    ],
)
def test_bad_values_of_the_new_keys_are_one_line_each(overrides: dict[str, object], key: str, value: object) -> None:
    found = bad_keys(**overrides)
    assert [k for k, _ in found] == [key]
    assert value is None or found[0][1] == value


def test_a_snapshot_goes_with_bottlerocket_only() -> None:
    config = load(nodeImage='{"family": "bottlerocket", "dataVolumeSnapshotId": "snap-0123456789abcdef0"}')
    assert config.node_image.data_volume_snapshot_id == "snap-0123456789abcdef0"
    found = bad_keys(**{"nodeImage.dataVolumeSnapshotId": "snap-0123456789abcdef0"})
    assert found == [("nodeImage.dataVolumeSnapshotId", "snap-0123456789abcdef0")]


def test_unknown_local_zone_families_are_an_error_naming_the_table() -> None:
    with pytest.raises(ConfigError) as err:
        load(localZones="us-west-2-lax-1a:h100")
    assert err.value.key == "localZones[us-west-2-lax-1a].instanceFamilies" and err.value.value == "h100"
    for family in ("g5", "g6e", "inf2", "trn1", "c7g"):
        assert family in err.value.allowed
    assert bad_keys(localZones="us-west-2-lax-1a:p5") == [("localZones[us-west-2-lax-1a].instanceFamilies", "p5")]
    assert load(localZones="us-west-2-lax-1a:p5", enableLargeNvidiaInstances="true").local_zones[
        0
    ].instance_families == ("p5",)


def test_three_bad_values_give_three_lines_in_one_run() -> None:
    with pytest.raises(ConfigErrors) as err:
        load(vpcCidr="10.0.0.0/33", clientCidrs="10.0.0.1/8", **{"auth.mode": "open"})
    assert [error.key for error in err.value.errors] == ["vpcCidr", "clientCidrs", "auth.mode"]
    lines = err.value.lines()
    assert len(lines) == 3 and all(line.startswith("error: invalid config ") for line in lines)
    assert "an IPv4 CIDR from /16 to /20" in lines[0] and "IPv6" not in lines[0]


def test_parse_errors_and_cross_checks_are_reported_together() -> None:
    found = bad_keys(serving='{"maxBatch": 0, "height": 500, "replicas": 2}', account="12345", endpointAccess="x")
    assert {k for k, _ in found} == {
        "serving.maxBatch",
        "serving.height",
        "serving.replicas",
        "account",
        "endpointAccess",
    }


def test_a_bad_region_is_reported_alone_not_with_every_zone_of_it() -> None:
    assert bad_keys(region="Oregon") == [("region", "Oregon")]


def test_a_local_zone_of_another_region_suggests_real_zones_or_says_there_are_none() -> None:
    with pytest.raises(ConfigError) as err:
        load(localZones="us-east-1-bos-1a")
    assert "us-west-2-lax-1a" in err.value.allowed and "us-west-2-den-1a" in err.value.allowed
    with pytest.raises(ConfigError) as errs:
        load(region="eu-west-1", availabilityZones="eu-west-1a,eu-west-1b")
    (zone_error,) = errs.value.errors
    assert zone_error.key == "localZones"
    assert "eu-west-1 has no Local Zones" in zone_error.allowed
    assert "eu-west-1-lax-1a" not in str(errs.value)
    assert load(region="eu-west-1", availabilityZones="eu-west-1a,eu-west-1b", localZones="[]").region == "eu-west-1"


def test_warnings_say_what_is_plain_http_and_unauthenticated() -> None:
    lines = config_warnings(load())
    assert len(lines) == 2 and all(line.startswith("warning: ") and "\n" not in line for line in lines)
    assert "tls.certificateArn" in lines[0] and "plain HTTP" in lines[0]
    assert "tls.localZoneSecret" in lines[1] and "us-west-2-lax-1a" in lines[1]
    secure = load(
        tls=f'{{"certificateArn": "{CERT}", "localZoneSecret": "edge/lz-tls", "localZoneServerName": "lz.example.com"}}'
    )
    assert config_warnings(secure) == []
    assert config_warnings(load(localZones="[]", **{"tls.certificateArn": CERT})) == []
    (auth,) = config_warnings(load(localZones="[]", **{"tls.certificateArn": CERT, "auth.mode": "none"}))
    assert auth.startswith("warning: auth.mode=none")


def test_a_zone_family_no_enabled_accelerator_uses_is_a_warning() -> None:
    config = load(accelerators="cpu", tls=f'{{"certificateArn": "{CERT}", "localZoneSecret": "s"}}', **NAMED)
    (line,) = config_warnings(config)
    assert "g5" in line and "no NodePool" in line


# --- The DNS name Local Zone certificates name ------------------------------------------------------


@pytest.mark.parametrize("name", ["lz.example.com", "LZ.Example.COM", "*.lz.example.com", "a-1.b2.example"])
def test_the_local_zone_server_name_is_a_dns_name_wildcard_leftmost_only(name: str) -> None:
    config = load(**{"tls.localZoneSecret": "edge/lz-tls", "tls.localZoneServerName": name})
    assert config.tls.local_zone_server_name == name


@pytest.mark.parametrize(
    "name",
    [
        "198.51.100.20",  # an IP is what it replaces
        "localhost",  # one label: no CA issues it for devices on the Internet
        "lz.*.example.com",
        "lz*.example.com",  # a partial wildcard: TLS clients do not match it
        "*.com",  # a wildcard over a whole top-level domain
        "-lz.example.com",
        "lz_1.example.com",
        "lz.example.com.",
        "https://lz.example.com",
        f"{'a' * 64}.example.com",
    ],
)
def test_a_bad_local_zone_server_name_is_one_line(name: str) -> None:
    with pytest.raises(ConfigError) as err:
        load(**{"tls.localZoneSecret": "edge/lz-tls", "tls.localZoneServerName": name})
    (error,) = err.value.errors
    assert (error.key, error.value) == ("tls.localZoneServerName", name)
    assert "a DNS name such as lz.example.com, or *.lz.example.com ('*' only as the whole leftmost label)" in str(error)


def test_a_local_zone_secret_requires_the_server_name_it_names() -> None:
    assert bad_keys(**{"tls.localZoneSecret": "edge/lz-tls"}) == [("tls.localZoneServerName", "")]
    with pytest.raises(ConfigError) as err:
        load(**{"tls.localZoneSecret": "edge/lz-tls"})
    assert "the DNS name the certificate in tls.localZoneSecret names" in str(err.value)


def test_a_wildcard_gives_each_local_zone_its_own_name() -> None:
    tls = TlsConfig(local_zone_secret="s", local_zone_server_name="*.lz.example.com")
    assert tls.server_name_in("us-west-2-lax-1a") == "us-west-2-lax-1a.lz.example.com"
    assert TlsConfig(local_zone_server_name="lz.example.com").server_name_in("us-west-2-lax-1a") == "lz.example.com"


def test_a_server_name_without_the_secret_is_a_warning() -> None:
    config = load(localZones="[]", **{"tls.certificateArn": CERT, "tls.localZoneServerName": "lz.example.com"})
    (line,) = config_warnings(config)
    assert line == (
        "warning: tls.localZoneServerName=lz.example.com without tls.localZoneSecret: no Local Zone endpoint "
        "serves TLS, so no device verifies that name"
    )
