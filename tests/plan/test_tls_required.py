"""HTTPS unless a deployment says it is for development: without ``tls.*`` synth refuses the Region's
ALB and the Local Zone NodePorts, one line each and together with every other bad value, naming
``development``; the committed staging and production deployments synthesize with HTTPS."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from plan import contract, deployments
from plan.config import AppConfig, ConfigError, config_warnings, load_config
from plan.deployments import load_plan
from tests.conftest import ROOT, cdk_json_context
from tests.iam.templates import kubernetes_objects

CERT = "arn:aws:acm:us-west-2:111111111111:certificate/12345678-1234-1234-1234-123456789012"
ZONE_TLS = {"tls.localZoneSecret": "edge/lz-tls", "tls.localZoneServerName": "lz.example.com"}
NOT_DEVELOPMENT = {"development": "false"}  # cdk.json's dev deployment sets true
REGION_LINE = (
    "error: invalid config tls.certificateArn='': allowed an ACM certificate of us-west-2 and account 111111111111 "
    "(arn:aws:acm:<region>:<account>:certificate/<uuid>): without one the Region's ALB serves tokens, prompts and "
    "images over plain HTTP; plain HTTP only with development=true"
)
ZONE_LINE = (
    "error: invalid config tls.localZoneSecret='': allowed a Secrets Manager secret name holding the Local Zone "
    "pods' certificate (docs/configuration.md#tls), with tls.localZoneServerName: without one the NodePorts of "
    "us-west-2-lax-1a serve tokens, prompts and images over plain HTTP; plain HTTP only with development=true"
)


def load(**overrides: object) -> AppConfig:
    return load_config({**cdk_json_context(), **overrides})


def refused(**overrides: object) -> list[ConfigError]:
    with pytest.raises(ConfigError) as err:
        load(**overrides)
    for line in err.value.lines():
        assert "\n" not in line and line.startswith("error: invalid config "), line
    return list(err.value.errors)


def test_a_deployment_without_tls_is_refused_on_the_alb_and_the_local_zone_at_once() -> None:
    found = refused(**NOT_DEVELOPMENT)
    assert [(error.key, error.value) for error in found] == [("tls.certificateArn", ""), ("tls.localZoneSecret", "")]
    assert [f"error: {error}" for error in found] == [REGION_LINE, ZONE_LINE]


@pytest.mark.parametrize(
    ("overrides", "keys"),
    [
        ({"localZones": "[]"}, ["tls.certificateArn"]),  # the Region's ALB only
        ({"tls.certificateArn": CERT}, ["tls.localZoneSecret"]),  # the Local Zone NodePorts only
        (ZONE_TLS, ["tls.certificateArn"]),
        ({"auth.mode": "none"}, ["tls.certificateArn", "tls.localZoneSecret"]),  # prompts and images are still sent
    ],
)
def test_each_plain_http_path_is_refused_on_its_own(overrides: dict[str, object], keys: list[str]) -> None:
    assert [error.key for error in refused(**NOT_DEVELOPMENT, **overrides)] == keys


def test_the_tls_refusals_come_with_every_other_bad_value_in_key_order() -> None:
    found = refused(**NOT_DEVELOPMENT, clientCidrs="10.0.0.1/8", **{"serving.maxBatch": "0"})
    assert [error.key for error in found] == [
        "clientCidrs",
        "serving.maxBatch",
        "tls.certificateArn",
        "tls.localZoneSecret",
    ]


def test_a_bad_development_value_is_reported_alone_not_as_missing_tls() -> None:
    (error,) = refused(development="yes")
    assert (error.key, error.value, error.allowed) == ("development", "yes", "true or false")


def test_a_malformed_certificate_is_reported_once_as_malformed() -> None:
    found = refused(**NOT_DEVELOPMENT, localZones="[]", **{"tls.certificateArn": "not-an-arn"})
    assert [(error.key, error.value) for error in found] == [("tls.certificateArn", "not-an-arn")]
    assert "an ACM certificate ARN" in found[0].allowed


def test_with_tls_everywhere_it_loads_without_warnings() -> None:
    config = load(**NOT_DEVELOPMENT, **{"tls.certificateArn": CERT}, **ZONE_TLS)
    assert not config.development and config.tls.certificate_arn == CERT
    assert config_warnings(config) == []


def test_a_local_zone_that_gets_no_serving_pods_needs_no_secret() -> None:
    """accelerators=cpu: the zone's g5 gets no NodePool, so no NodePort serves there."""
    config = load(**NOT_DEVELOPMENT, accelerators="cpu", **{"tls.certificateArn": CERT})
    (line,) = config_warnings(config)
    assert "no NodePool" in line


def test_the_development_deployment_may_serve_plain_http_and_says_so() -> None:
    config = load()
    assert config.development  # cdk.json: the dev deployment
    lines = config_warnings(config)
    assert [line.split(":", 2)[1].strip() for line in lines] == ["no tls.certificateArn", "no tls.localZoneSecret"]


def test_the_cli_prints_one_error_line_per_plain_http_path(capsys: pytest.CaptureFixture[str]) -> None:
    """``python -m plan.deployments --stacks -c development=false``: what make prints before it stops."""
    assert deployments.main(["--stacks", "-c", "development=false"]) == 2
    out = capsys.readouterr()
    assert out.out == ""
    assert out.err.splitlines() == [REGION_LINE, ZONE_LINE]


def test_make_destroy_deletes_a_deployment_made_before_https_was_required(tmp_path: Path) -> None:
    """A deployment file without tls.* and without development: synth refuses it, but `make destroy`
    (which sets teardown) must still be able to delete what it deployed, pipeline deployments included."""
    (tmp_path / "old.json").write_text(json.dumps({"clusterName": "edge-diffusion-old"}))
    legacy = {"clusterName": "edge-diffusion-legacy", "localZones": [], "clientCidrs": ["198.18.0.0/15"]}
    (tmp_path / "legacy.json").write_text(json.dumps(legacy))
    pipeline = {**dict(cdk_json_context().get("pipeline", {})), "deployments": ["legacy"]}
    context = {**cdk_json_context(), "account": "123456789012", "pipeline": pipeline, "deployment": "old"}
    with pytest.raises(ConfigError) as err:
        load_plan(context, tmp_path)
    assert {error.key for error in err.value.errors} == {"tls.certificateArn", "tls.localZoneSecret"}
    plan = load_plan({**context, "teardown": "true"}, tmp_path)
    assert plan.selected.name == "old" and [d.name for d in plan.pipeline] == ["legacy"]
    assert (
        "-c teardown=true"
        in subprocess.run(
            ["make", "-n", "destroy"], cwd=ROOT, capture_output=True, text=True, check=True, env=_make_env()
        ).stdout
    )


def _make_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("DEPLOYMENT", "CONTEXT", "MAKEFLAGS")}


# --- The committed staging and production deployments ----------------------------------------------


@pytest.mark.parametrize("name", ["staging", "production"])
def test_staging_and_production_are_not_development_and_set_tls(name: str) -> None:
    config = load_plan({**cdk_json_context(), "deployment": name}).selected.config
    assert not config.development
    assert config.tls.certificate_arn.startswith("arn:aws:acm:us-west-2:111111111111:certificate/")
    assert bool(config.local_zones) == bool(config.tls.local_zone_secret)
    assert config_warnings(config) == []


def test_their_example_certificate_is_refused_once_the_account_is_yours() -> None:
    """The committed ARN is of the example account: with a real one synth names the line to change."""
    with pytest.raises(ConfigError) as err:
        load_plan({**cdk_json_context(), "account": "123456789012", "deployment": "production"})
    (error,) = err.value.errors
    assert error.key == "deployments/production.json:tls.certificateArn"
    assert "account 123456789012" in error.allowed


def test_a_new_deployment_file_does_not_inherit_development_from_cdk_json(tmp_path: Path) -> None:
    """cdk.json sets development for the shared build config; a deployment is plain HTTP only by its own file."""
    for committed in (ROOT / "deployments").glob("*.json"):
        (tmp_path / committed.name).write_text(committed.read_text())
    (tmp_path / "qa.json").write_text(json.dumps({"clusterName": "edge-diffusion-qa", "localZones": []}))
    with pytest.raises(ConfigError) as err:
        load_plan({**cdk_json_context(), "deployment": "qa"}, tmp_path)
    assert [(error.key, error.value) for error in err.value.errors] == [("tls.certificateArn", "")]
    (tmp_path / "qa.json").write_text(json.dumps({"clusterName": "edge-diffusion-qa", "development": True}))
    assert load_plan({**cdk_json_context(), "deployment": "qa"}, tmp_path).selected.config.development
    assert json.loads((ROOT / "deployments" / "dev.json").read_text())["development"] is True


def synthesize(name: str, outdir: Path) -> subprocess.CompletedProcess[str]:
    """What ``make synth DEPLOYMENT=<name>`` runs (``cdk synth`` runs app.py with CDK_OUTDIR)."""
    env = {**os.environ, "CDK_OUTDIR": str(outdir), "JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION": "20"}
    return subprocess.run(
        [sys.executable, "app.py", "-c", f"deployment={name}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.mark.parametrize("name", ["staging", "production"])
def test_staging_and_production_synthesize_https_only(name: str, tmp_path: Path) -> None:
    run = synthesize(name, tmp_path)
    assert run.returncode == 0, run.stderr
    assert "warning: no tls" not in run.stderr
    template = json.loads((tmp_path / f"EdgeDiffusion-{name}-Cluster.template.json").read_text())
    objects = kubernetes_objects(template)
    (ingress,) = [o for o in objects if o["kind"] == "Ingress"]
    annotations: dict[str, Any] = ingress["metadata"]["annotations"]
    assert json.loads(annotations["alb.ingress.kubernetes.io/listen-ports"]) == [{"HTTPS": 443}]
    assert annotations["alb.ingress.kubernetes.io/certificate-arn"].endswith(
        ":111111111111:certificate/00000000-0000-0000-0000-000000000000"
    )
    schemes = {o["metadata"].get("annotations", {}).get(contract.ANNOTATION_SCHEME) for o in objects}
    assert "http" not in schemes and "https" in schemes
    local_zone_pods = [
        c["env"]
        for o in objects
        if o["kind"] == "Deployment" and "lax" in o["metadata"]["name"]
        for c in o["spec"]["template"]["spec"]["containers"]
    ]
    if name == "production":
        assert local_zone_pods
    for env in local_zone_pods:
        secret = {e["name"]: e.get("value") for e in env}[contract.ENV_TLS_SECRET_ID]
        assert secret == "edge-diffusion-production/local-zone-tls"
