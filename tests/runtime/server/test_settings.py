"""The server's settings: environment, flags over environment, and one-line refusals."""

from __future__ import annotations

from typing import Any

import pytest

from plan import contract
from runtime.server.settings import Settings
from runtime.settings import SettingsError


def test_settings_from_env_and_flags_override() -> None:
    env = {
        contract.ENV_MODEL_ID: "org/model",
        contract.ENV_MAX_BATCH: "4",
        contract.ENV_MAX_WAIT_MS: "12.5",
        contract.ENV_QUEUE_SIZE: "9",
        contract.ENV_REQUEST_TIMEOUT_S: "30",
        contract.ENV_METRICS_SINK: "cloudwatch",
        contract.ENV_PLACEMENT: "sd-neuron",
        contract.ENV_AWS_REGION: "us-west-2",
        contract.ENV_DEVICE: "neuron",
        contract.ENV_UI: "false",
        contract.ENV_PORT: "8000",
    }
    s = Settings.from_env(env)
    assert (s.model_id, s.max_batch, s.max_wait_ms, s.queue_size, s.request_timeout_s) == ("org/model", 4, 12.5, 9, 30)
    assert (s.metrics_sink, s.device, s.ui, s.port) == ("cloudwatch", "neuron", False, 8000)
    assert s.metric_location == "us-west-2"  # no explicit location: the Region
    flags = Settings.from_args(["--model", "tiny", "--max-batch", "2", "--host", "127.0.0.1"], env)
    assert (flags.model_id, flags.max_batch, flags.host, flags.queue_size) == ("tiny", 2, "127.0.0.1", 9)
    assert Settings.from_env({}).port == contract.PORT


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({contract.ENV_MAX_BATCH: "zero"}, contract.ENV_MAX_BATCH),
        ({contract.ENV_MAX_BATCH: "0"}, contract.ENV_MAX_BATCH),
        ({contract.ENV_METRICS_SINK: "statsd"}, contract.ENV_METRICS_SINK),
        ({contract.ENV_DEVICE: "tpu"}, contract.ENV_DEVICE),
        ({contract.ENV_UI: "maybe"}, contract.ENV_UI),
    ],
)
def test_bad_settings_name_the_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError, match=named):
        Settings.from_env(env)


def test_server_cli_rejects_bad_env_without_traceback(capsys: pytest.CaptureFixture[str], monkeypatch: Any) -> None:
    from runtime.server.__main__ import main

    monkeypatch.setenv(contract.ENV_QUEUE_SIZE, "-3")
    assert main(["--model", "tiny"]) == 2
    err = capsys.readouterr().err
    assert contract.ENV_QUEUE_SIZE in err and "Traceback" not in err


def test_defaults_and_bounds_come_from_the_contract() -> None:
    s = Settings.from_env({})
    assert (s.model_id, s.model_revision, s.max_batch, s.max_wait_ms) == (
        contract.DEFAULT_MODEL_ID,
        contract.DEFAULT_MODEL_REVISION,
        contract.DEFAULT_MAX_BATCH,
        contract.DEFAULT_MAX_WAIT_MS,
    )
    assert (s.limits.min_size, s.limits.max_size) == contract.IMAGE_SIZE_BOUNDS
    assert s.limits.size_multiple == contract.IMAGE_SIZE_MULTIPLE
    limit = contract.MAX_BATCH_LIMIT
    assert Settings.from_env({contract.ENV_MAX_BATCH: str(limit)}).max_batch == limit
    too_many = str(contract.MAX_BATCH_LIMIT + 1)
    with pytest.raises(SettingsError) as err:
        Settings.from_env({contract.ENV_MAX_BATCH: too_many})
    assert str(err.value) == (
        f"environment {contract.ENV_MAX_BATCH}: '{too_many}' is not allowed; "
        f"allowed: an integer from 1 to {contract.MAX_BATCH_LIMIT}"
    )
    with pytest.raises(SettingsError, match=contract.ENV_MAX_WAIT_MS):
        Settings.from_env({contract.ENV_MAX_WAIT_MS: str(contract.MAX_WAIT_MS_LIMIT + 1)})
    with pytest.raises(SettingsError, match=contract.ENV_MAX_BATCH):
        Settings(max_batch=0)  # values set in code meet the same bounds


def test_device_flag_and_its_former_spelling() -> None:
    assert Settings.from_args(["--device", "cuda"], {}).device == "cuda"
    assert Settings.from_args(["--accelerator", "neuron"], {}).device == "neuron"
    with pytest.raises(SettingsError, match=r"^argument --accelerator: 'nvidia' is not allowed; allowed: cuda"):
        Settings.from_args(["--accelerator", "nvidia"], {})  # a device, not the config's accelerator name


def test_admission_settings_from_env_with_their_bounds() -> None:
    s = Settings.from_env({})
    assert (s.max_image_size, s.client_max_in_flight, s.client_rate_per_min) == (None, 4, 60.0)
    env = {
        contract.ENV_MAX_IMAGE_SIZE: "1024",
        contract.ENV_CLIENT_MAX_IN_FLIGHT: "2",
        contract.ENV_CLIENT_RATE_PER_MIN: "30",
    }
    s = Settings.from_env(env)
    assert (s.max_image_size, s.client_max_in_flight, s.client_rate_per_min) == (1024, 2, 30.0)
    assert Settings.from_args(["--max-image-size", "768"], env).max_image_size == 768
    low, high = contract.IMAGE_SIZE_BOUNDS
    for bad in (str(high + contract.IMAGE_SIZE_MULTIPLE), str(low - contract.IMAGE_SIZE_MULTIPLE), "1004"):
        with pytest.raises(SettingsError, match=f"^environment {contract.ENV_MAX_IMAGE_SIZE}: '{bad}' is not allowed"):
            Settings.from_env({contract.ENV_MAX_IMAGE_SIZE: bad})
    for name, bad in ((contract.ENV_CLIENT_MAX_IN_FLIGHT, "0"), (contract.ENV_CLIENT_MAX_IN_FLIGHT, "65")):
        with pytest.raises(SettingsError, match=f"^environment {name}: '{bad}' is not allowed"):
            Settings.from_env({name: bad})
    with pytest.raises(SettingsError, match=contract.ENV_CLIENT_RATE_PER_MIN):
        Settings.from_env({contract.ENV_CLIENT_RATE_PER_MIN: "0"})


def test_a_max_image_size_below_the_served_size_is_refused_in_one_line() -> None:
    with pytest.raises(SettingsError) as err:
        Settings.from_env({contract.ENV_WIDTH: "768", contract.ENV_MAX_IMAGE_SIZE: "512"})
    assert str(err.value) == (
        f"{contract.ENV_MAX_IMAGE_SIZE}: 512 is not allowed; allowed: at least {contract.ENV_WIDTH}=768, "
        "the size this server serves"
    )
    assert Settings.from_env({contract.ENV_HEIGHT: "512", contract.ENV_MAX_IMAGE_SIZE: "512"}).max_image_size == 512


def test_vae_setting_from_env_and_flag_and_its_refusal() -> None:
    assert (Settings.from_env({}).vae, Settings.from_env({}).tiny_vae) == ("full", "madebyollin/taesd")
    env = {contract.ENV_VAE: "tiny", contract.ENV_TINY_VAE: "/models/taesd"}
    assert (Settings.from_env(env).vae, Settings.from_env(env).tiny_vae) == ("tiny", "/models/taesd")
    assert Settings.from_args(["--vae", "full"], env).vae == "full"
    with pytest.raises(SettingsError, match=contract.ENV_VAE) as refused:
        Settings.from_env({contract.ENV_VAE: "taesd"})
    assert "full" in str(refused.value) and "tiny" in str(refused.value) and "\n" not in str(refused.value)
