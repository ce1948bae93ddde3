"""Image prompts (img2img): the pipeline on tiny and on sd21-random, the batch key and the device-time
estimate, the API's JSON and multipart bodies, every bad image refused in one line while other work
goes on, and a Neuron artifact without a compiled VAE encoder refused at load."""

from __future__ import annotations

import base64
import io
import itertools
import json
import struct
import threading
import time
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from plan import contract
from runtime.server import backends
from runtime.server.admission import CostModel, Timing, deadline_refusal
from runtime.server.backends import (
    Backend,
    BatchParams,
    CompiledShape,
    DiffusersBackend,
    ImageSpec,
    NeuronBackend,
    NoVaeEncoderError,
    StepReport,
    StopCheck,
)
from runtime.server.batcher import Batcher, ImagePromptCosts
from runtime.server.codec import InputLimits
from runtime.server.service import image_prompt_schedule
from runtime.server.settings import Settings
from tests.runtime.server.conftest import RunningServer, start_in_process, tiny_settings, wait_until

FP32_BATCH_TOLERANCE = 1e-4  # as tests/runtime/server/test_backends.py: batched matmuls round differently
LIMITS = InputLimits()


def picture(seed: int = 0, size: tuple[int, int] = (64, 64), fmt: str = "PNG", mode: str = "RGB") -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buf, format=fmt)
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def prompt_array(seed: int, size: int = 64) -> np.ndarray:
    return np.random.default_rng(seed).random((size, size, 3), dtype=np.float32)


def pixels_of(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)


def one_line_refusal(r: httpx.Response, status: int, field: str) -> str:
    assert r.status_code == status, r.text
    doc = r.json()
    assert doc["field"] == field, doc
    assert doc["error"].startswith(f"{field}: ") and "\n" not in doc["error"] and "Traceback" not in r.text
    return str(doc["error"])


# --- the pipeline: tiny ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny() -> DiffusersBackend:
    backend = DiffusersBackend(Settings(model_id="tiny", torch_threads=1, metrics_sink="none"), "cpu")
    backend.load()
    return backend


def test_the_img2img_pipeline_shares_the_text_pipelines_modules(tiny: DiffusersBackend) -> None:
    """No second copy of the weights: the same module objects; only the scheduler (step state) is its own."""
    from diffusers import StableDiffusionImg2ImgPipeline

    image_pipe: Any = tiny.image_pipe
    for name in ("unet", "vae", "text_encoder", "tokenizer"):
        assert getattr(image_pipe, name) is getattr(tiny.pipe, name), name
    assert image_pipe.scheduler is not tiny.pipe.scheduler
    assert type(image_pipe.scheduler) is type(tiny.pipe.scheduler)
    assert image_pipe.unet.dtype == tiny.pipe.unet.dtype
    assert type(image_pipe) is StableDiffusionImg2ImgPipeline


def test_an_image_prompt_runs_steps_x_strength_and_gives_the_same_image_alone_or_batched(
    tiny: DiffusersBackend,
) -> None:
    params = BatchParams(4, 7.5, 64, 64, strength=0.5)
    reports: list[tuple[int, int]] = []
    (alone,) = tiny.generate(
        params, [ImageSpec("a cat", "", 7, prompt_array(1))], lambda: False, on_step=lambda *r: reports.append(r)
    )
    assert reports == [(0, 2), (1, 2), (2, 2)]  # 4 steps at strength 0.5: the last 2 of them, after the encode
    batch = [ImageSpec("a cat", "", 7, prompt_array(1)), ImageSpec("a dog", "", 8, prompt_array(2))]
    first, other = tiny.generate(params, batch, lambda: False)
    assert alone.shape == (64, 64, 3) and np.isfinite(alone).all()
    assert np.abs(alone - first).max() < FP32_BATCH_TOLERANCE
    assert np.abs(alone - other).max() > 0.1
    (stronger,) = tiny.generate(BatchParams(4, 7.5, 64, 64, strength=1.0), batch[:1], lambda: False)
    assert np.abs(alone - stronger).max() > 0.01
    (other_image,) = tiny.generate(params, [ImageSpec("a cat", "", 7, prompt_array(3))], lambda: False)
    assert np.abs(alone - other_image).max() > 0.01  # the image prompt matters


def test_the_batched_encode_gives_diffusers_own_img2img_images(tiny: DiffusersBackend) -> None:
    """One VAE encode for the batch (backends.prompt_latents), each latent sampled with its image's generator,
    matches diffusers encoding the image prompts itself one by one."""
    import torch

    pixels = np.stack([prompt_array(6), prompt_array(7)])
    specs = [ImageSpec("a cat", "", 7, pixels[0]), ImageSpec("a dog", "", 8, pixels[1])]
    ours = tiny.generate(BatchParams(4, 7.5, 64, 64, strength=0.5), specs, lambda: False)
    generators = [torch.Generator().manual_seed(s.seed) for s in specs]
    with torch.inference_mode():
        theirs = tiny.image_pipe(
            prompt=["a cat", "a dog"],
            image=pixels,
            strength=0.5,
            num_inference_steps=4,
            guidance_scale=7.5,
            generator=generators,
            output_type="np",
        ).images
    assert max(float(np.abs(a - b).max()) for a, b in zip(ours, theirs, strict=True)) < FP32_BATCH_TOLERANCE


def test_text_and_image_calls_keep_their_own_scheduler_state(tiny: DiffusersBackend) -> None:
    text = BatchParams(4, 7.5, 64, 64)
    (before,) = tiny.generate(text, [ImageSpec("a boat", "", 5)], lambda: False)
    tiny.generate(BatchParams(6, 7.5, 64, 64, strength=0.5), [ImageSpec("a", "", 1, prompt_array(4))], lambda: False)
    (after,) = tiny.generate(text, [ImageSpec("a boat", "", 5)], lambda: False)
    assert np.array_equal(before, after)


def test_a_call_stops_inside_the_vae_encode(tiny: DiffusersBackend) -> None:
    """Nobody waits any more when the encode starts: the call leaves inside the encoder, before any UNet step."""
    calls = {"unet": 0, "encoder": 0}

    def count(name: str) -> Any:
        return lambda module, args, output: calls.__setitem__(name, calls[name] + 1)

    handles = [
        tiny.pipe.unet.register_forward_hook(count("unet")),
        tiny.pipe.vae.encoder.register_forward_hook(count("encoder")),
    ]
    try:
        asked = itertools.count()
        spec = [ImageSpec("a", "", 1, prompt_array(5))]
        assert tiny.generate(BatchParams(4, 7.5, 64, 64, strength=1.0), spec, lambda: next(asked) >= 1) == []
    finally:
        for handle in handles:
            handle.remove()
    assert calls == {"unet": 0, "encoder": 0}


def test_a_batch_without_its_image_prompts_is_a_backend_error(tiny: DiffusersBackend) -> None:
    with pytest.raises(backends.BackendError, match="needs an image prompt of 64x64 per image"):
        tiny.generate(BatchParams(2, 7.5, 64, 64, strength=0.5), [ImageSpec("a", "", 1)], lambda: False)


class Recording(Backend):
    """The tiny model at 64x64 with ``default_guidance``, keeping each call's parameters and image prompts."""

    def __init__(self, tiny: DiffusersBackend, default_guidance: float = backends.WARMUP_GUIDANCE) -> None:
        super().__init__()
        self.tiny = tiny
        self.default_width = self.default_height = 64
        self.default_guidance = default_guidance
        self.seen: list[tuple[BatchParams, list[tuple[int, ...] | None]]] = []

    def load(self) -> None:
        pass

    def generate(
        self,
        params: BatchParams,
        images: Sequence[ImageSpec],
        should_stop: StopCheck,
        on_step: StepReport | None = None,
    ) -> list[np.ndarray]:
        self.seen.append((params, [None if s.image is None else s.image.shape for s in images]))
        return self.tiny.generate(params, images, should_stop, on_step)

    def calls(self) -> list[tuple[int, float, float | None]]:
        """(images, guidance, strength) of each call."""
        return [(len(shapes), p.guidance_scale, p.strength) for p, shapes in self.seen]


def test_the_warm_up_runs_an_image_prompt_too(tiny: DiffusersBackend) -> None:
    recording = Recording(tiny)
    backends.warmup(recording, max_batch=2)
    seen = [(p.strength, shapes) for p, shapes in recording.seen]
    assert seen == [(None, [None]), (None, [None, None]), (1.0, [(64, 64, 3)])]


class GuidedOnly(Recording):
    """A device that refuses unguided calls (a Neuron model compiled for guided calls only: a 422)."""

    def check_guidance(self, guidance_scale: float) -> str | None:
        return None if guidance_scale > 1 else "guided calls only"


def test_a_model_unguided_by_default_is_warmed_unguided_too_and_measured_guided(tiny: DiffusersBackend) -> None:
    """SD-Turbo's requests run the UNet on the undoubled batch: the warm-up calls those shapes too (else
    torch.compile compiles them on a client's request), and admission learns from the guided calls. A
    device that refuses them serves guided requests: its warm-up leaves them out rather than fail."""
    recorded: list[int] = []
    recording = Recording(tiny, default_guidance=0.0)
    backends.warmup(recording, max_batch=4, record=lambda timing: recorded.append(timing.images))
    guided = backends.WARMUP_GUIDANCE
    assert recording.calls() == [(1, guided, None), (4, guided, None), (1, 0.0, None), (4, 0.0, None), (1, guided, 1.0)]
    assert recorded == [1, 4, 1]
    guided_only = GuidedOnly(tiny, default_guidance=0.0)
    backends.warmup(guided_only, max_batch=4)
    assert guided_only.calls() == [(1, guided, None), (4, guided, None), (1, guided, 1.0)]


# --- the pipeline: sd21-random (the real SD 2.1 architecture) --------------------------------------


@pytest.fixture(scope="module")
def sd21() -> Iterator[DiffusersBackend]:
    backend = DiffusersBackend(Settings(model_id="sd21-random", height=64, width=64, metrics_sink="none"), "cpu")
    backend.load()
    yield backend
    backend.pipe = backend.image_pipe = None


def test_sd21_random_image_prompt_is_the_same_alone_or_batched(sd21: DiffusersBackend) -> None:
    params = BatchParams(2, 7.5, 64, 64, strength=1.0)
    (alone,) = sd21.generate(params, [ImageSpec("a cat", "", 7, prompt_array(1))], lambda: False)
    assert np.isfinite(alone).all() and alone.std() > 0.01
    batch = [ImageSpec("a cat", "", 7, prompt_array(1)), ImageSpec("a dog", "", 8, prompt_array(2))]
    first, other = sd21.generate(params, batch, lambda: False)
    assert np.abs(alone - first).max() < FP32_BATCH_TOLERANCE
    assert np.abs(alone - other).max() > 0.1
    assert sd21.image_pipe.vae is sd21.pipe.vae


# --- the batch key and the device-time estimate ------------------------------------------------------


class KindDevice(Backend):
    """Records each call's strength and prompts; answers at once."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[float | None, list[str]]] = []

    def load(self) -> None:
        pass

    def generate(
        self,
        params: BatchParams,
        images: Sequence[ImageSpec],
        should_stop: StopCheck,
        on_step: StepReport | None = None,
    ) -> list[np.ndarray]:
        assert all((s.image is not None) == (params.strength is not None) for s in images)
        self.calls.append((params.strength, sorted(s.prompt for s in images)))
        time.sleep(0.02)
        return [np.zeros((params.height, params.width, 3), dtype=np.float32) for _ in images]


def test_image_prompts_batch_with_each_other_at_one_strength_never_with_text() -> None:
    import asyncio

    device = KindDevice()
    text = BatchParams(2, 7.5, 8, 8)
    half, full = BatchParams(2, 7.5, 8, 8, strength=0.5), BatchParams(2, 7.5, 8, 8, strength=1.0)
    image = np.zeros((8, 8, 3), dtype=np.float32)

    async def main() -> None:
        b = Batcher(device, max_batch=8, max_wait_s=0.2, queue_size=16)
        jobs = [  # all queued before the dispatcher starts
            b.submit(text, [ImageSpec("text a", "", 1)], 10),
            b.submit(half, [ImageSpec("half a", "", 2, image)], 10),
            b.submit(full, [ImageSpec("full a", "", 3, image)], 10),
            b.submit(half, [ImageSpec("half b", "", 4, image + 0.5)], 10),  # another image: the same batch
            b.submit(text, [ImageSpec("text b", "", 5)], 10),
        ]
        b.start()
        for job in jobs:
            await b.wait(job)
        await b.stop()

    asyncio.run(main())
    assert device.calls == [(None, ["text a", "text b"]), (0.5, ["half a", "half b"]), (1.0, ["full a"])]


def test_an_image_prompt_is_estimated_at_steps_x_strength_plus_a_vae_encode() -> None:
    costs = CostModel(margin=1.0)
    costs.record(Timing(images=1, pixels=64 * 64, steps=10, step_s=0.1, other_s=0.5))
    assert costs.estimate_s(1, 64, 64, 20) == pytest.approx(2.5)
    view = ImagePromptCosts(costs, 0.5)
    # 20 steps at strength 0.5: 10 denoising steps, the time outside the steps, and that time again (the encode).
    assert view.estimate_s(1, 64, 64, 20) == pytest.approx(10 * 0.1 + 0.5 + 0.5)
    assert view.measured and view.sizes() == {(1, 64 * 64)}
    for budget in (1.15, 1.55, 2.05, 3.35):  # the most request steps whose estimate fits
        steps = view.steps_within(1, 64, 64, budget)
        assert steps is not None and steps >= 1
        assert (view.estimate_s(1, 64, 64, steps) or 0) <= budget < (view.estimate_s(1, 64, 64, steps + 1) or 0)
    assert view.steps_within(1, 64, 64, 1.0) == 0  # the encode and the rest alone fill it
    refusal = deadline_refusal(view, 1, 64, 64, 100, 2.0)
    assert refusal is not None
    assert refusal.message == (
        "steps: 100 steps at 64x64 need about 6.0 s on this device, over the 2 s request deadline; "
        "at most 21 steps fit at this size"
    )
    assert deadline_refusal(view, 1, 64, 64, 21, 2.0) is None


@pytest.mark.parametrize(
    ("steps", "strength", "schedule"),
    [(20, 0.8, (20, 0.8)), (1, 0.8, (2, 0.8)), (1, 0.5, (2, 0.5)), (3, 0.3, (4, 0.3)), (4, 1e-6, (1000, 0.001))],
)
def test_an_image_prompt_always_runs_a_denoising_step(steps: int, strength: float, schedule: tuple[int, float]) -> None:
    assert image_prompt_schedule(steps, strength) == schedule
    assert backends.denoising_steps(*schedule) == max(1, int(steps * strength))


# --- the API: JSON, data URLs and multipart ---------------------------------------------------------


def post_json(server: RunningServer, body: dict[str, Any], timeout: float = 60) -> httpx.Response:
    return httpx.post(server.url + contract.IMAGES_PATH, json=body, timeout=timeout)


def post_form(server: RunningServer, fields: dict[str, str], files: Any = None, timeout: float = 60) -> httpx.Response:
    """multipart/form-data, whether or not there is a file (httpx would send fields alone urlencoded)."""
    parts: list[tuple[str, Any]] = [(name, (None, value)) for name, value in fields.items()]
    parts += list(files.items()) if isinstance(files, dict) else list(files or [])
    return httpx.post(server.url + contract.IMAGES_PATH, files=parts, timeout=timeout)


def test_base64_a_data_url_and_a_multipart_file_give_the_same_image(server: RunningServer) -> None:
    source = picture(1, (96, 80))  # cropped to the request's aspect and scaled
    body = {"prompt": "a red fox", "steps": 4, "seed": 3, "strength": 0.6}
    plain = post_json(server, {**body, "image": b64(source)})
    assert plain.status_code == 200, plain.text
    assert plain.headers["content-type"] == "image/png" and plain.headers["x-seed"] == "3"
    url = post_json(server, {**body, "image": f"data:image/png;base64,{b64(source)}"})
    form = post_form(server, {k: str(v) for k, v in body.items()}, files={"image": ("fox.png", source, "image/png")})
    assert form.status_code == 200, form.text
    assert np.array_equal(pixels_of(plain.content), pixels_of(url.content))
    assert np.array_equal(pixels_of(plain.content), pixels_of(form.content))
    text_only = post_json(server, {"prompt": "a red fox", "steps": 4, "seed": 3})
    assert np.abs(pixels_of(text_only.content) - pixels_of(plain.content)).mean() > 1


def test_multipart_takes_numbers_as_text_and_answers_every_format(server: RunningServer) -> None:
    fields = {"prompt": "a cat", "steps": "2", "seed": "9", "num_images": "2", "response_format": "json"}
    fields |= {"output_format": "webp", "quality": "70", "strength": "0.5", "guidance_scale": "7"}
    r = post_form(server, fields, files={"image": ("cat.jpg", picture(2, fmt="JPEG"), "image/jpeg")})
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["seed"] == 9 and doc["output_format"] == "webp" and len(doc["images"]) == 2
    assert {Image.open(io.BytesIO(base64.b64decode(i))).format for i in doc["images"]} == {"WEBP"}
    text_form = post_form(server, {"prompt": "no image at all", "steps": "2"})  # no file part
    assert text_form.status_code == 200 and text_form.headers["content-type"] == "image/png"
    as_text = post_form(server, {"prompt": "a", "steps": "2", "image": b64(picture(3)), "strength": "1"})
    assert as_text.status_code == 200, as_text.text  # a base64 text field works as in JSON


@pytest.mark.parametrize(
    ("fields", "files", "field", "message"),
    [
        ({"prompt": "a", "steps": "two"}, None, "steps", "steps: Input should be a valid integer"),
        ({"prompt": "a", "strength": "nan", "image": b64(picture())}, None, "strength", "strength: Input should be"),
        (
            {"prompt": "a"},
            {"photo": ("p.png", picture(), "image/png")},
            "photo",
            "photo: a file part is allowed only as",
        ),
        (
            {"prompt": "a"},
            [("image", ("a.png", picture(), "image/png")), ("image", ("b.png", picture(), "image/png"))],
            "body",
            "body: malformed multipart/form-data (Too many files",
        ),
    ],
    ids=["steps not a number", "NaN strength", "file under another name", "two files"],
)
def test_bad_multipart_bodies_are_one_line_422s(
    server: RunningServer, fields: dict[str, str], files: Any, field: str, message: str
) -> None:
    assert one_line_refusal(post_form(server, fields, files=files), 422, field).startswith(message)


def test_a_field_twice_and_a_malformed_multipart_body_are_422s(server: RunningServer) -> None:
    twice = httpx.post(
        server.url + contract.IMAGES_PATH,
        content=b'--b\r\nContent-Disposition: form-data; name="prompt"\r\n\r\na\r\n'
        b'--b\r\nContent-Disposition: form-data; name="prompt"\r\n\r\nb\r\n--b--\r\n',
        headers={"content-type": "multipart/form-data; boundary=b"},
        timeout=30,
    )
    assert one_line_refusal(twice, 422, "prompt") == "prompt: given more than once"
    no_boundary = httpx.post(
        server.url + contract.IMAGES_PATH, content=b"x", headers={"content-type": "multipart/form-data"}, timeout=30
    )
    assert one_line_refusal(no_boundary, 422, "body").startswith("body: malformed multipart/form-data")


def test_image_prompts_batch_together_and_match_their_solo_images(server: RunningServer) -> None:
    n = 8  # more than the server's device workers can take one by one as they arrive
    body = {"prompt": "a lighthouse", "steps": 4, "strength": 0.75}
    results: dict[int, httpx.Response] = {}
    barrier = threading.Barrier(n)

    def send(i: int) -> None:
        barrier.wait()
        results[i] = post_json(server, {**body, "seed": 50 + i, "image": b64(picture(10 + i))})

    threads = [threading.Thread(target=send, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r.status_code == 200 for r in results.values()), [r.text for r in results.values()]
    sizes = [int(r.headers["x-batch-size"]) for r in results.values()]
    assert max(sizes) > 1, sizes  # different images share a call
    for i, r in results.items():
        solo = post_json(server, {**body, "seed": 50 + i, "image": b64(picture(10 + i))})
        assert solo.headers["x-batch-size"] == "1"
        assert np.abs(pixels_of(solo.content) - pixels_of(r.content)).max() <= 2


def test_strength_bounds(server: RunningServer) -> None:
    image = b64(picture(4))
    for bad in (0, -0.5, 1.01, "0.5", True):
        message = one_line_refusal(post_json(server, {"prompt": "a", "image": image, "strength": bad}), 422, "strength")
        assert message.endswith("allowed: a number above 0 and at most 1, with an image (default 0.8)"), message
    assert one_line_refusal(post_json(server, {"prompt": "a", "strength": 0.5}), 422, "strength") == (
        "strength: only with an image prompt (image)"
    )
    full = post_json(server, {"prompt": "a", "image": image, "strength": 1.0, "steps": 2, "response_format": "json"})
    assert full.status_code == 200 and full.json()["steps"] == 2
    # Fewer than one denoising step asked for: the schedule lengthens so one runs (the answer says how long).
    short = post_json(server, {"prompt": "a", "image": image, "strength": 0.5, "steps": 1, "response_format": "json"})
    assert short.status_code == 200 and short.json()["steps"] == 2
    least = post_json(server, {"prompt": "a", "image": image, "strength": 1e-9, "response_format": "json"})
    assert least.status_code == 200 and least.json()["steps"] == 1000
    default = post_json(server, {"prompt": "a", "image": image, "response_format": "json"})
    assert default.status_code == 200 and default.json()["steps"] == backends.DEFAULT_STEPS_TINY  # 4 x 0.8: 3 run


def png_declaring(width: int, height: int) -> bytes:
    """A small PNG whose header declares width x height (a decompression bomb's shape)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


OVER_BYTES = b"\x89PNG\r\n\x1a\n" + b"\x00" * (LIMITS.max_bytes - 7)  # one byte over the limit
BAD_IMAGES: list[tuple[str, Any, int, str]] = [
    ("not an image", b"hello, I am text", 422, "image: not a PNG, JPEG, WEBP image"),
    ("gif", picture(fmt="GIF"), 422, "image: not a PNG, JPEG, WEBP image"),
    ("truncated", picture(size=(256, 256))[:2000], 422, "image: truncated or corrupt PNG data"),
    ("unsupported mode", picture(mode="I;16"), 422, "image: colour mode I;16 is not supported"),
    ("too small", picture(size=(32, 200)), 422, "image: 32x200 is smaller than 64 pixels on a side"),
    ("over the pixel limit", png_declaring(5000, 4000), 422, "image: 5000x4000 is 20000000 pixels, over the limit"),
    ("decompression bomb", png_declaring(30000, 30000), 422, "image: declares more pixels than the limit"),
    ("over the byte limit", OVER_BYTES, 413, f"image: {len(OVER_BYTES)} bytes, over the limit of {LIMITS.max_bytes}"),
    ("empty", b"", 422, "image: empty (send a PNG, JPEG, WEBP image)"),
    ("not base64", "***", 422, "image: not valid base64"),
]


@pytest.mark.parametrize("encoding", ["json", "multipart"])
def test_every_bad_image_is_one_line_and_work_in_flight_is_unaffected(server: RunningServer, encoding: str) -> None:
    slow: list[httpx.Response] = []
    long_body = {"prompt": "a slow one", "steps": 100, "width": 128, "height": 128, "seed": 1}
    worker = threading.Thread(target=lambda: slow.append(post_json(server, long_body, timeout=120)))
    worker.start()
    wait_until(lambda: server.service.batcher.device_busy, timeout_s=30, interval_s=0.005)
    for case, data, status, expected in BAD_IMAGES:
        if encoding == "json":
            text = data if isinstance(data, str) else b64(data)
            r = post_json(server, {"prompt": "a", "image": text, "strength": 0.5})
        elif isinstance(data, str):
            continue  # base64 is JSON's (and a text field's) spelling
        else:
            r = post_form(server, {"prompt": "a", "strength": "0.5"}, files={"image": ("x.png", data, "image/png")})
        message = one_line_refusal(r, status, "image")
        assert message.startswith(expected), (case, message)
    worker.join(timeout=120)
    assert slow and slow[0].status_code == 200, slow
    assert server.service.batcher.pending == 0


def test_bodies_over_their_limits_and_sizes_the_server_does_not_serve(server: RunningServer) -> None:
    huge = "A" * (LIMITS.max_base64_chars + 200)
    too_long = post_json(server, {"prompt": "a", "image": huge})
    longest = LIMITS.max_base64_chars + 64  # the base64 of max_bytes and a data URL's header
    assert one_line_refusal(too_long, 422, "image").startswith(
        f"image: {len(huge)} characters is longer than {longest}"
    )
    body = json.dumps({"prompt": "a", "image": huge + "A" * 100_000}).encode()
    over = httpx.post(
        server.url + contract.IMAGES_PATH, content=body, headers={"content-type": "application/json"}, timeout=60
    )
    assert one_line_refusal(over, 413, "body").startswith("body: larger than")
    besides = post_json(server, {"prompt": "a", "image": b64(picture()), "padding": "x" * 70_000})
    assert one_line_refusal(besides, 413, "body") == "body: larger than 65536 bytes besides an image prompt"
    wide = post_json(server, {"prompt": "a", "image": b64(picture()), "width": 2048})
    assert one_line_refusal(wide, 422, "width").startswith("width: 2048 is not allowed")


def test_image_prompts_in_flight_share_a_memory_budget(server: RunningServer) -> None:
    """Bodies past 64 KiB (image prompts) hold memory until their request ends; past the budget a body is a 429."""
    budget = server.app.state.body_budget
    assert budget.held == 0
    large = b64(picture(5, (256, 256)))  # ~260 KB of base64
    limit = budget.limit
    budget.limit = 100_000
    try:
        refused = post_json(server, {"prompt": "a", "image": large, "steps": 2})
        message = one_line_refusal(refused, 429, "body")
        assert message == (
            "body: image prompts in flight would take more than the 100000 bytes this server holds for them; "
            "retry after 1 s"
        )
        assert refused.headers["retry-after"] == "1"
        small = post_json(server, {"prompt": "a", "image": b64(picture(5)), "steps": 2})  # under 64 KiB
        assert small.status_code == 200, small.text
    finally:
        budget.limit = limit
    assert post_json(server, {"prompt": "a", "image": large, "steps": 2}).status_code == 200
    assert budget.held == 0  # every request gave back what it held
    assert 'reason="body_budget"' in server.metrics()


# --- Neuron: the compiled VAE encoder --------------------------------------------------------------


def neuron_artifact(root: Path, with_encoder: bool) -> Path:
    """optimum-neuron's layout (one directory per compiled component), with a manifest for device neuron."""
    from runtime.artifacts.local import write_manifest
    from runtime.artifacts.manifest import ArtifactSpec, Shapes

    components = ["text_encoder", "unet", "vae_decoder"] + (["vae_encoder"] if with_encoder else [])
    for name in components:
        (root / name).mkdir(parents=True)
        (root / name / "model.neuron").write_bytes(b"compiled graph stand-in")
        (root / name / "config.json").write_text("{}")
    (root / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    spec = ArtifactSpec("org/m", "main", "neuron", Shapes(512, 512, 4), "bfloat16", {"optimum-neuron": "0.4.5"})
    write_manifest(root, spec)
    return root


def test_a_neuron_artifact_without_a_compiled_vae_encoder_is_refused_at_load(tmp_path: Path) -> None:
    settings = Settings(model_id="org/m", model_source=str(neuron_artifact(tmp_path / "a", False)), max_batch=4)
    with pytest.raises(NoVaeEncoderError) as refused:
        NeuronBackend(settings).load()
    assert str(refused.value) == (
        "the Neuron artifact has no compiled VAE encoder (vae_encoder/model.neuron), which image prompts need: "
        "recompile it (optimum-neuron compiles the encoder by default)"
    )
    assert backends.neuron_artifact_problem(neuron_artifact(tmp_path / "b", True)) is None


def test_the_pod_is_not_ready_with_the_reason(tmp_path: Path) -> None:
    settings = tiny_settings(model_id="org/m", model_source=str(neuron_artifact(tmp_path, False)), max_batch=4)
    running = start_in_process(settings, NeuronBackend(settings), wait_ready=False)
    try:
        url = running.url + contract.READY_PATH
        wait_until(lambda: httpx.get(url).json()["state"] == "failed", timeout_s=60)
        r = httpx.get(url)
        assert r.status_code == 503
        assert r.json()["reason"] == (
            "model load failed during loading the model: the Neuron artifact has no compiled VAE encoder "
            "(vae_encoder), which image prompts need: recompile it (see the pod log)"
        )
    finally:
        running.stop()


class FakeNeuronVae:
    """optimum-neuron's NeuronModelVae as the pipeline sees it: encode() gives a latent distribution."""

    config = SimpleNamespace(scaling_factor=0.5)

    def __init__(self) -> None:
        self.inputs: list[Any] = []

    def encode(self, sample: Any) -> Any:
        import torch

        self.inputs.append(sample)
        n, _, h, w = sample.shape
        return SimpleNamespace(latent_dist=SimpleNamespace(sample=lambda generators: torch.ones(n, 4, h // 8, w // 8)))


class FakeNeuron:
    """Stands in for optimum-neuron's pipelines: records calls, answers grey images of the compiled batch."""

    def __init__(self, batch_size: int, encoder: bool = True) -> None:
        from diffusers import PNDMScheduler

        self.batch_size = batch_size
        self.vae_encoder = object() if encoder else None
        self.vae = FakeNeuronVae()
        self.calls: list[dict[str, Any]] = []
        self.scheduler = PNDMScheduler()

    def __call__(self, **kwargs: Any) -> Any:
        assert len(kwargs["prompt"]) == self.batch_size
        # optimum-neuron 0.4.5's NeuronDiffusionPipelineBase.__call__ first tests `if kwargs.get("image", None):`
        assert kwargs.get("image") or "image" not in kwargs
        self.calls.append(kwargs)
        return type("Out", (), {"images": np.full((self.batch_size, 64, 64, 3), 0.5, dtype=np.float32)})()


def test_neuron_runs_image_prompts_on_its_img2img_pipeline_padded_to_the_compiled_batch() -> None:
    import torch

    text, image = FakeNeuron(4), FakeNeuron(4)
    built: list[Any] = []

    def image_pipeline(pipe: Any) -> Any:
        built.append(pipe)
        return image

    settings = Settings(model_id="org/m", max_batch=4, width=64, height=64)
    backend = NeuronBackend(settings, loader=lambda: (text, CompiledShape(64, 64, 4)), image_pipeline=image_pipeline)
    backend.load()
    assert built == [text]
    specs = [ImageSpec(f"p{i}", "", i, prompt_array(i)) for i in range(2)]
    out = backend.generate(BatchParams(4, 7.5, 64, 64, strength=0.5), specs, lambda: False)
    assert len(out) == 2 and text.calls == []
    (call,) = image.calls
    # One encode of the whole compiled batch (the only shape the compiled encoder takes), in [-1, 1];
    # the padding repeats the last image prompt. The pipeline gets scaled latents.
    (encoded,) = image.vae.inputs
    assert tuple(encoded.shape) == (4, 3, 64, 64)
    expected = np.transpose(prompt_array(1), (2, 0, 1)) * 2 - 1
    assert np.allclose(encoded[3].numpy(), expected) and np.allclose(encoded[1].numpy(), expected)
    latents = torch.stack(call["image"])  # one latent per image, as diffusers stacks them back
    assert call["strength"] == 0.5 and tuple(latents.shape) == (4, 4, 8, 8) and float(latents.max()) == 0.5
    no_encoder = NeuronBackend(settings, loader=lambda: (FakeNeuron(4, encoder=False), CompiledShape(64, 64, 4)))
    with pytest.raises(NoVaeEncoderError, match="no VAE encoder"):
        no_encoder.load()
    assert no_encoder.pipe is None


@pytest.mark.parametrize(("dynamic", "refused"), [(False, True), (True, False)])
def test_a_neuron_model_compiled_for_guided_calls_refuses_no_guidance_in_one_line(dynamic: bool, refused: bool) -> None:
    """Without dynamic batching the compiled UNet takes only the doubled (guided) batch: a call at
    guidance <= 1 would fail on the device, so it is a 422 up front, not a 500."""
    from runtime.server.protocol import ApiError
    from runtime.server.service import ImageService

    settings = Settings(model_id="org/m", max_batch=4, width=64, height=64, auth="none", metrics_sink="none")
    shape = CompiledShape(64, 64, 4, dynamic_batch=dynamic)
    backend = NeuronBackend(settings, loader=lambda: (FakeNeuron(4), shape), image_pipeline=lambda pipe: FakeNeuron(4))
    backend.load()
    service = ImageService(settings, backend)
    assert service.plan(service.validate({"prompt": "a fox", "guidance_scale": 7.5}))[0].guidance_scale == 7.5
    if not refused:
        assert service.plan(service.validate({"prompt": "a fox", "guidance_scale": 0}))[0].guidance_scale == 0
        return
    with pytest.raises(ApiError) as caught:
        service.plan(service.validate({"prompt": "a fox", "guidance_scale": 1}))
    assert (caught.value.status, caught.value.field) == (422, "guidance_scale")
    assert caught.value.message == (
        "guidance_scale: 1 is not allowed; allowed: more than 1 (this Neuron model is compiled for guided calls only: "
        "recompile it with dynamic batching to run without guidance)"
    )
