"""Generation modes: their spelling, and timing few-step, guided and image-to-image rows on the tiny model."""

from __future__ import annotations

from typing import Any

import pytest

from runtime.bench import phases
from runtime.bench.modes import Mode, parse_mode
from runtime.server.settings import Settings


def test_modes_are_spelt_steps_guidance_and_strength() -> None:
    assert parse_mode("1/0") == Mode(1, 0.0) and str(parse_mode("1/0")) == "1/0"
    turbo_image = parse_mode("2/0/0.5")
    assert (turbo_image.unet_calls, turbo_image.kind, turbo_image.guided) == (1, "image-to-image", False)
    guided = parse_mode("20/7.5/0.5")
    assert (guided.unet_calls, guided.guided, str(guided)) == (10, True, "20/7.5/0.5")
    assert parse_mode("20/7.5").unet_calls == 20 and parse_mode("4/1").guided is False  # guidance 1: no CFG
    assert parse_mode("3/0/0.5").unet_calls == 1  # diffusers' get_timesteps: int(3 * 0.5)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("x", "mode 'x' is not STEPS/GUIDANCE or STEPS/GUIDANCE/STRENGTH"),
        ("1/2/3/4", "is not STEPS/GUIDANCE"),
        ("0/0", "mode '0/0': steps must be from 1 to 100"),
        ("101/0", "steps must be from 1 to 100"),
        ("1/31", "mode '1/31': guidance must be from 0 to 30"),
        ("1/0/0", "strength must be above 0 and at most 1"),
        ("1/0/1.5", "strength must be above 0 and at most 1"),
        ("1/0/0.5", "steps x strength at least 1"),  # int(0.5) = 0 denoising steps
    ],
)
def test_a_mode_no_request_could_ask_for_is_refused(text: str, why: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_mode(text)
    assert why in str(caught.value) and "\n" not in str(caught.value)


@pytest.fixture(scope="module")
def backend() -> phases.DiffusersBackend:
    return phases.load_backend(Settings(model_id="tiny", torch_threads=1, metrics_sink="none"))


def test_guidance_0_runs_the_unet_on_the_batch_and_guided_on_twice_it(backend: phases.DiffusersBackend) -> None:
    """The few-step rows' point: no classifier-free guidance, so each UNet call sees the images alone."""
    seen: list[int] = []
    handle = backend.pipe.unet.register_forward_pre_hook(lambda _, args: seen.append(args[0].shape[0]))
    image_pipe = phases.image_pipeline(backend.pipe)
    try:
        for text in ("1/0", "2/7.5", "4/0/0.5", "4/7.5/0.5"):
            seen.clear()
            assert phases.run_mode(backend, image_pipe, parse_mode(text), 3, 64, 64) == 3
            mode = parse_mode(text)
            assert seen == [3 * (2 if mode.guided else 1)] * mode.unet_calls, text
    finally:
        handle.remove()
    assert image_pipe.unet is backend.pipe.unet and image_pipe.vae is backend.pipe.vae  # no second copy
    assert image_pipe.scheduler is not backend.pipe.scheduler  # step state of its own


def test_measure_modes_times_each_phase_of_each_row(backend: phases.DiffusersBackend) -> None:
    modes = [parse_mode(t) for t in ("1/0", "3/7.5", "4/7.5/0.5")]
    shown: list[phases.ModeResult] = []
    results = phases.measure_modes(backend, modes, (1, 2), 2, (64, 64), shown.append)
    assert shown == results
    assert [(r.mode, r.phases.batch) for r in results] == [(m, b) for m in modes for b in (1, 2)]
    for r in results:
        p = r.phases
        assert p.calls == 2 and p.unet_steps == r.mode.unet_calls
        assert p.text_encoder_ms > 0 and p.unet_step_ms > 0 and p.vae_decode_ms > 0
        assert (p.vae_encode_ms > 0) == (r.mode.strength is not None)  # a VAE encode only from an image prompt
        assert p.end_to_end_ms > p.text_encoder_ms + p.vae_encode_ms + p.vae_decode_ms
    vae = backend.pipe.vae
    assert "encode" not in vars(vae) and "decode" not in vars(vae)  # the class's methods again
    assert not backend.pipe.unet._forward_hooks and not backend.pipe.text_encoder._forward_pre_hooks


def result(text: str, batch: int, end_to_end_ms: float) -> phases.ModeResult:
    mode = parse_mode(text)
    return phases.ModeResult(mode, phases.PhaseResult(batch, 2, 1.0, 2.0, mode.unet_calls, 3.0, end_to_end_ms, 0.5))


def test_the_table_compares_every_row_with_the_reference_at_its_batch() -> None:
    rows = [result("1/0", 1, 50), result("20/7.5", 1, 1000), result("20/7.5/0.5", 1, 600), result("1/0", 4, 80)]
    table = phases.format_mode_table(rows, parse_mode("20/7.5")).splitlines()
    assert table[0] == phases.MODE_HEAD and table[1].count("---") == table[0].count(" | ") + 1
    ratios = [line.rsplit("|", 2)[1].strip() for line in table[2:]]
    assert ratios == ["0.050", "1.000", "0.600", "n/a"]  # no reference was timed at batch 4
    assert table[4].startswith("| 20/7.5/0.5 | image-to-image | 20 | 7.5 | 0.5 | 1 | 10 |")
    assert phases.speedup_lines(rows, parse_mode("20/7.5")) == [
        "1 step at guidance 0 vs 20 steps at guidance 7.5, batch 1: 50 ms vs 1000 ms = 0.050x the time (20.0x faster)"
    ]


def test_a_row_with_no_reference_says_so() -> None:
    rows: list[Any] = [result("1/0", 1, 50)]
    assert phases.format_mode_table(rows).splitlines()[2].endswith("| n/a |")
