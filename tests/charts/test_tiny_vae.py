"""serving.vae tiny: the nvidia and cpu compile jobs ship TAESD with the model and their pods decode with it;
Neuron pods keep the VAE compiled into their model (synth says so)."""

from __future__ import annotations

import pytest

from charts.compile_jobs import JOBS_CHART_ID
from plan import contract
from tests.charts.conftest import Rendered, render
from tests.charts.test_torch_compile import containers, env
from tests.charts.test_validation import CHARTS, validation_errors
from tests.charts.validate import Tally
from tests.conftest import cdk_json_context


@pytest.fixture(scope="module")
def tiny() -> Rendered:
    return render({**cdk_json_context(), "serving": {"vae": "tiny"}})


def test_off_by_default(rendered: Rendered) -> None:
    assert rendered.config.serving.vae == "full"
    for name, (_, container) in containers(rendered, JOBS_CHART_ID, "Job").items():
        assert "--tiny-vae" not in container["args"], name
    for name, (_, container) in containers(rendered, "serving", "Deployment").items():
        assert contract.ENV_VAE not in env(container), name


def test_nvidia_and_cpu_ship_it_and_decode_with_it_neuron_keeps_its_compiled_vae(tiny: Rendered) -> None:
    jobs = containers(tiny, JOBS_CHART_ID, "Job")
    devices = {env(c)[contract.ENV_DEVICE] for _, c in jobs.values()}
    assert devices == {"cuda", "neuron", "cpu"}
    for name, (_, container) in jobs.items():
        args = container["args"]
        if env(container)[contract.ENV_DEVICE] == "neuron":
            assert "--tiny-vae" not in args, name
        else:
            assert args[args.index("--tiny-vae") + 1] == contract.TAESD_ID, name
    for name, (_, container) in containers(tiny, "serving", "Deployment").items():
        swaps = env(container)[contract.ENV_DEVICE] != "neuron"
        assert (env(container).get(contract.ENV_VAE) == "tiny") is swaps, name


@pytest.mark.parametrize("chart", CHARTS)
def test_the_charts_with_a_tiny_vae_validate(tiny: Rendered, chart: str) -> None:
    errors = validation_errors(tiny, Tally(), chart)
    assert not errors, "\n".join(errors)


def test_synth_says_neuron_pods_keep_the_full_vae() -> None:
    from plan.config.warnings import config_warnings
    from plan.deployments import load_plan

    config = load_plan({**cdk_json_context(), "serving": {"vae": "tiny"}}).selected.config
    assert [w for w in config_warnings(config) if "serving.vae" in w] == [
        "warning: serving.vae=tiny: neuron pods decode with the full VAE compiled into their model; "
        "nvidia and cpu pods with the tiny one"
    ]
