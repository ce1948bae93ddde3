"""The charts of a few-step model (stabilityai/sd-turbo): valid like every other model's, serving
pods told the model's defaults from the model table, compile jobs compiling it at its native size."""

from __future__ import annotations

import pytest

from charts.compile_jobs import JOBS_CHART_ID
from charts.serving import model_defaults_env
from plan import contract
from plan.model_artifacts import MODEL_PROFILES
from tests.charts.conftest import Rendered, render
from tests.charts.test_validation import CHARTS, validation_errors
from tests.charts.validate import Tally
from tests.conftest import cdk_json_context

SD_TURBO = "stabilityai/sd-turbo"
DEFAULTS_ENV = (contract.ENV_DEFAULT_STEPS, contract.ENV_DEFAULT_GUIDANCE, contract.ENV_SCHEDULER)


@pytest.fixture(scope="module")
def turbo() -> Rendered:
    return render({**cdk_json_context(), "modelId": SD_TURBO, "modelRevision": "b261bac"})


def serving_env(rendered: Rendered) -> dict[str, dict[str, str]]:
    """Per serving Deployment, its server container's environment."""
    deployments = [o for o in rendered.objects["serving"] if o["kind"] == "Deployment"]
    assert deployments
    return {
        d["metadata"]["name"]: {
            e["name"]: e["value"] for e in d["spec"]["template"]["spec"]["containers"][0]["env"] if "value" in e
        }
        for d in deployments
    }


def compile_args(rendered: Rendered) -> list[list[str]]:
    jobs = [o for o in rendered.objects[JOBS_CHART_ID] if o["kind"] == "Job"]
    assert jobs
    return [job["spec"]["tasks"][0]["template"]["spec"]["containers"][0]["args"] for job in jobs]


def flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


@pytest.mark.parametrize("chart", CHARTS)
def test_every_object_of_a_few_step_models_charts_validates(turbo: Rendered, chart: str) -> None:
    """The same validators as the committed config's charts (its own tally: the report stays that config's)."""
    errors = validation_errors(turbo, Tally(), chart)
    assert not errors, "\n".join(errors)


def test_sd_turbo_pods_serve_one_step_without_guidance_on_its_own_sampler(turbo: Rendered) -> None:
    for name, env in serving_env(turbo).items():
        assert env[contract.ENV_MODEL_ID] == SD_TURBO, name
        assert (env[contract.ENV_DEFAULT_STEPS], env[contract.ENV_DEFAULT_GUIDANCE]) == ("1", "0"), name
        assert env[contract.ENV_SCHEDULER] == "model", name  # Euler with trailing timesteps, as distilled
        assert (env[contract.ENV_HEIGHT], env[contract.ENV_WIDTH]) == ("512", "512"), name


def test_sd_turbo_compiles_on_every_accelerator_at_the_served_size(turbo: Rendered) -> None:
    every = compile_args(turbo)
    assert {flag(args, "--device") for args in every} == {"cuda", "neuron", "cpu"}
    for args in every:
        assert (flag(args, "--model"), flag(args, "--revision")) == (SD_TURBO, "b261bac")
        assert (flag(args, "--height"), flag(args, "--width")) == ("512", "512")


def test_the_default_models_pods_get_its_row_of_the_table(rendered: Rendered) -> None:
    """The committed config's model (SD 2.1 base): 20 DPM-Solver++ steps at guidance 7.5, the server's defaults."""
    assert rendered.config.model_id in MODEL_PROFILES
    for name, env in serving_env(rendered).items():
        assert {key: env[key] for key in DEFAULTS_ENV} == {
            contract.ENV_DEFAULT_STEPS: "20",
            contract.ENV_DEFAULT_GUIDANCE: "7.5",
            contract.ENV_SCHEDULER: "dpmsolver++",
        }, name


def test_a_model_not_in_the_table_keeps_the_servers_defaults() -> None:
    """No steps, guidance or scheduler in the environment: what the charts set before the table."""
    assert model_defaults_env("acme/custom-diffusion") == {}
    assert model_defaults_env("tiny") == {}
