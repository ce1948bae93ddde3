"""plan.deployments: named deployments in committed files, one deploy path each, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from plan import deployments
from plan.config import ConfigError
from plan.deployments import DEPLOYMENTS_DIR, PIPELINE, WORKSTATION, load_plan
from tests.conftest import FIXTURE_DEPLOYMENTS, cdk_json_context, plan_context

PIPELINE_PROD = {"account": "123456789012", "pipeline": {"deployments": ["prod"]}}


def write(directory: Path, name: str, keys: object) -> None:
    """A deployment file; a development one unless it says (plain HTTP: these tests are about other keys)."""
    directory.mkdir(parents=True, exist_ok=True)
    if isinstance(keys, dict):
        keys = {"development": True, **keys}
    (directory / f"{name}.json").write_text(json.dumps(keys))


def test_the_committed_default_is_the_dev_deployment_from_a_workstation() -> None:
    plan = load_plan(cdk_json_context())
    assert plan.workstation is not None and plan.workstation.name == "dev"
    assert plan.workstation.deployed_by == WORKSTATION and plan.pipeline == ()
    assert plan.selected is plan.workstation


def test_the_committed_deployment_files_all_load() -> None:
    for path in sorted(DEPLOYMENTS_DIR.glob("*.json")):
        assert load_plan({**cdk_json_context(), "deployment": path.stem}).selected.name == path.stem


def test_pipeline_deployments_come_from_their_files_in_order() -> None:
    plan = load_plan(plan_context(), FIXTURE_DEPLOYMENTS)
    assert [d.name for d in plan.pipeline] == ["staging", "production"]
    assert all(d.deployed_by == PIPELINE for d in plan.pipeline)
    assert plan.named("staging").config.local_zones == ()
    assert plan.named("production").config.cluster_name == "edge-diffusion-production"


def test_a_workstation_override_applies_to_the_workstation_deployment_only() -> None:
    plan = load_plan({**plan_context(), "clientCidrs": "10.1.0.0/16"}, FIXTURE_DEPLOYMENTS)
    assert plan.workstation is not None and plan.workstation.config.client_cidrs == ("10.1.0.0/16",)
    assert plan.named("staging").config.client_cidrs == ("198.18.0.0/15",)


def test_cdk_internal_context_is_not_an_override() -> None:
    context = {**plan_context(), "deployment": "staging", "aws:cdk:enable-path-metadata": True}
    assert load_plan(context, FIXTURE_DEPLOYMENTS).selected.name == "staging"


@pytest.mark.parametrize(
    ("context", "files", "key", "message"),
    [
        ({"deployment": "nope"}, {}, "deployment", "there are: dev"),
        ({"deployment": "Bad_Name"}, {}, "deployment", "lowercase letters or digits"),
        ({"pipeline": {"deployments": ["prod"]}}, {"prod": {"clientCidrs": ["198.18.0.0/15"]}}, "account", "example"),
        (
            {"account": "123456789012", "pipeline": {"deployments": ["prod"]}},
            {"prod": {"clusterName": "p"}},
            "deployments/prod.json:clientCidrs",
            "documentation range",
        ),
        ({}, {"dev": {"account": "123456789012"}}, "deployments/dev.json:account", "shared build infrastructure"),
        ({}, {"dev": {"modelId": "org/other"}}, "deployments/dev.json:modelId", "shared build infrastructure"),
        ({}, {"dev": ["not", "an", "object"]}, "deployments/dev.json", "a JSON object"),
        (
            {"account": "123456789012", "pipeline": {"deployments": ["prod"]}},
            {"prod": {"clientCidrs": ["198.18.0.0/15"]}},
            "deployments/prod.json:clusterName",
            "no other deployment uses",
        ),
        (
            {"account": "123456789012", "accelerators": "cpu", "pipeline": {"deployments": ["prod"]}},
            {"prod": {"clusterName": "p", "clientCidrs": ["198.18.0.0/15"], "accelerators": ["nvidia"]}},
            "deployments/prod.json:accelerators",
            "the image pipeline builds",
        ),
        (
            {
                "account": "123456789012",
                "pipeline": {"deployments": ["prod"]},
                "deployment": "prod",
                "vpcCidr": "10.9.0.0/16",
            },
            {"prod": {"clusterName": "p", "clientCidrs": ["198.18.0.0/15"]}},
            "-c vpcCidr",
            "no -c overrides for prod",
        ),
    ],
)
def test_bad_releases_name_the_key_one_line_each(
    tmp_path: Path, context: dict[str, object], files: dict[str, object], key: str, message: str
) -> None:
    write(tmp_path, "dev", {})
    for name, keys in files.items():
        write(tmp_path, name, keys)
    with pytest.raises(ConfigError) as err:
        load_plan({**cdk_json_context(), **context}, tmp_path)
    (named,) = [error for error in err.value.errors if error.key == key]
    assert message in str(named)
    assert all("\n" not in str(error) for error in err.value.errors)


def test_every_bad_value_of_every_deployment_is_reported_at_once(tmp_path: Path) -> None:
    """A bad shared value, a bad value in a pipeline deployment's file and a bad -c value: three lines."""
    write(tmp_path, "dev", {})
    write(tmp_path, "prod", {"clusterName": "p", "clientCidrs": ["198.18.0.0/15"], "vpcCidr": "10.0.0.0/8"})
    context = {**cdk_json_context(), **PIPELINE_PROD, "region": "us-west-2", "serving": '{"maxBatch": 0}'}
    with pytest.raises(ConfigError) as err:
        load_plan({**context, "endpointAccess": "public"}, tmp_path)
    assert sorted(error.key for error in err.value.errors) == [
        "deployments/prod.json:vpcCidr",
        "endpointAccess",
        "serving.maxBatch",
    ]


def test_a_deployment_file_cannot_set_what_the_images_are_built_for(tmp_path: Path) -> None:
    """One image version and one model shape are built: a deployment's own would pull tags never
    built, or overwrite another deployment's compiled model."""
    write(
        tmp_path, "dev", {"serving": {"imageVersion": "9.9.9", "height": 768, "minReplicas": 2}, "serving.maxBatch": 8}
    )
    with pytest.raises(ConfigError) as caught:
        load_plan(cdk_json_context(), tmp_path)
    lines = caught.value.lines()
    assert len(lines) == 3, lines
    for key, value in (("imageVersion", "'9.9.9'"), ("height", "768"), ("maxBatch", "8")):
        (line,) = [line for line in lines if f"deployments/dev.json:serving.{key}" in line]
        assert value in line and "shared build infrastructure (cdk.json)" in line, line


def test_every_deployment_gets_the_shared_serving_values_beside_its_own(tmp_path: Path) -> None:
    """A deployment's serving object replaces cdk.json's; the shared keys are kept all the same
    (here ``serving`` is given as ``-c``, so the workstation's dev takes it whole)."""
    write(tmp_path, "dev", {"serving": {"minReplicas": 2}})
    write(tmp_path, "prod", {"serving": {"maxReplicas": 6}, "clusterName": "prod", "clientCidrs": ["198.18.0.0/24"]})
    context = {**cdk_json_context(), **PIPELINE_PROD, "serving": {"imageVersion": "2.0.0", "height": 768, "width": 768}}
    plan = load_plan(context, tmp_path)
    for deployment in plan.deployments:
        serving = deployment.config.serving
        assert (serving.image_version, serving.height, serving.width) == ("2.0.0", 768, 768), deployment.name
    assert plan.named("prod").config.serving.max_replicas == 6


# --- an image version carries one model: its promotions pin it ------------------------------------------


def promote(path: Path, *entries: tuple[str, str, str]) -> Path:
    """A promotions file with (model, revision, imageVersion) entries, as `runtime.artifacts promote` writes them."""
    promoted = [
        {"model": m, "revision": r, "device": "cuda", "imageVersion": v, "cluster": "edge", "manifestSha256": "0" * 64}
        for m, r, v in entries
    ]
    path.write_text(json.dumps({"promoted": promoted}))
    return path


def test_another_model_under_an_image_version_whose_images_carry_one_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tags are immutable: the image pipeline would keep the version's images, and their pods would
    refuse the model they carry for the one the charts name, and restart."""
    shared = load_plan(cdk_json_context()).shared
    version, model = shared.serving.image_version, shared.model_id
    monkeypatch.setattr(deployments, "PROMOTIONS_PATH", promote(tmp_path / "p.json", (model, "main", version)))
    with pytest.raises(ConfigError) as caught:
        load_plan({**cdk_json_context(), "modelId": "stabilityai/sd-turbo"})
    assert caught.value.lines() == [
        f"error: invalid config modelId='stabilityai/sd-turbo': allowed what serving.imageVersion {version}'s "
        f"images carry ({model}@main: ci_build/promoted-models.json); another model needs a new "
        "serving.imageVersion (image tags are immutable)"
    ]
    with pytest.raises(ConfigError) as caught:
        load_plan({**cdk_json_context(), "modelRevision": "0123abc"})
    assert [error.key for error in caught.value.errors] == ["modelRevision"]
    assert load_plan({**cdk_json_context(), "modelId": "stabilityai/sd-turbo", "teardown": "true"})  # make destroy
    # The same model, or another one under a new version, is what the promotion allows.
    assert load_plan(cdk_json_context()).shared.model_id == model
    newer = {"modelId": "stabilityai/sd-turbo", "serving": {"imageVersion": "99.0.0"}}
    assert load_plan({**cdk_json_context(), **newer}).shared.model_id == "stabilityai/sd-turbo"


def test_an_unreadable_promotions_file_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    broken = tmp_path / "p.json"
    broken.write_text('{"promoted": [{"model": 1}]}')
    monkeypatch.setattr(deployments, "PROMOTIONS_PATH", broken)
    with pytest.raises(ConfigError) as caught:
        load_plan(cdk_json_context())
    assert caught.value.lines() == [
        "error: invalid config ci_build/promoted-models.json='not a list of entries with model, revision, device, "
        'imageVersion, cluster, manifestSha256 under the key promoted\': allowed {"promoted": [...]}, as python -m '
        "runtime.artifacts promote writes it"
    ]
