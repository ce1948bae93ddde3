"""Device detection, the Neuron backend's static shapes, and CPU threads from the cgroup quota."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from plan import contract
from runtime.server import backends
from runtime.server.backends import BatchParams, CompiledShape, ImageSpec, NeuronBackend, detect_device
from runtime.server.settings import Settings


def test_detect_device(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    assert detect_device("neuron") == "neuron"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(backends.glob, "glob", lambda pattern: [])
    assert detect_device(None) == "cpu"
    monkeypatch.setattr(backends.glob, "glob", lambda pattern: ["/dev/neuron0"] if "neuron" in pattern else [])
    assert detect_device(None) == "neuron"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert detect_device(None) == "cuda"
    with pytest.raises(backends.BackendError):
        detect_device("tpu")


# --- neuron backend: static shapes -------------------------------------------------------


class FakeNeuronPipeline:
    """Records calls; returns PIL-like uint8 images whose first pixel encodes the prompt index.

    It has a VAE encoder (as optimum-neuron's pipeline over an artifact that has one) and serves as
    its own img2img pipeline (`image_pipeline=same`)."""

    def __init__(self, batch_size: int, size: int) -> None:
        from diffusers import PNDMScheduler

        from runtime.server.models import SD21_BASE_SCHEDULER

        self.batch_size, self.size = batch_size, size
        self.calls: list[dict[str, Any]] = []
        self.scheduler = PNDMScheduler.from_config(dict(SD21_BASE_SCHEDULER))  # what an SD 2.1 export carries
        self.vae_encoder = object()

    def __call__(self, **kwargs: Any) -> Any:
        self.calls.append(kwargs)
        prompts = kwargs["prompt"]
        assert len(prompts) == self.batch_size, "compiled batch size must be respected"
        assert "width" not in kwargs and "height" not in kwargs
        images = []
        for p in prompts:
            img = np.zeros((self.size, self.size, 3), dtype=np.uint8)
            img[0, 0, 0] = int(p.removeprefix("p"))
            images.append(img)
        return type("Out", (), {"images": images})()


def same(pipe: Any) -> Any:
    return pipe


def neuron_backend(batch_size: int = 4, size: int = 512) -> tuple[NeuronBackend, FakeNeuronPipeline]:
    fake = FakeNeuronPipeline(batch_size, size)
    shape = CompiledShape(size, size, batch_size)
    backend = NeuronBackend(Settings(model_id="org/m"), loader=lambda: (fake, shape), image_pipeline=same)
    backend.load()
    return backend, fake


def test_neuron_rejects_other_sizes() -> None:
    backend, fake = neuron_backend()
    assert backend.check_size(512, 512) is None
    assert "512x512" in (backend.check_size(768, 512) or "")
    with pytest.raises(backends.BackendError):
        backend.generate(BatchParams(20, 7.5, 768, 768), [ImageSpec("p1", "", 1)], lambda: False)
    assert fake.calls == []
    assert (backend.default_width, backend.default_height, backend.max_device_batch) == (512, 512, 4)


def test_neuron_pads_short_batches_and_chunks_long_ones() -> None:
    backend, fake = neuron_backend(batch_size=4)
    specs = [ImageSpec(f"p{i}", "", 10 + i) for i in range(6)]
    images = backend.generate(BatchParams(20, 7.5, 512, 512), specs, lambda: False)
    assert len(images) == 6
    assert [round(float(img[0, 0, 0]) * 255) for img in images] == [0, 1, 2, 3, 4, 5]  # padding outputs dropped
    assert [c["prompt"] for c in fake.calls] == [["p0", "p1", "p2", "p3"], ["p4", "p5", "p5", "p5"]]
    assert all(len(c["generator"]) == 4 for c in fake.calls)
    assert fake.calls[0]["num_inference_steps"] == 20


def test_neuron_without_an_artifact_fails_with_a_reason() -> None:
    backend = NeuronBackend(Settings(model_id="tiny"))
    with pytest.raises(backends.BackendError, match=contract.ENV_MODEL_SOURCE):
        backend.load()


def test_cpu_threads_follow_the_cgroup_quota(tmp_path: Path) -> None:
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("150000 100000\n")
    assert backends.cpu_quota(cpu_max) == 2
    cpu_max.write_text("max 100000\n")
    assert backends.cpu_quota(cpu_max) is None
    assert backends.cpu_quota(tmp_path / "absent") is None
    assert backends.intra_op_threads(3) == 3
    assert backends.intra_op_threads(0) >= 1


@pytest.mark.parametrize(("cpus", "threads"), [(1, 1), (2, 1), (4, 3), (16, 15)])
def test_the_automatic_thread_count_leaves_a_cpu_to_the_event_loop(cpus: int, threads: int) -> None:
    assert backends.intra_op_threads(0, cpus) == threads
    assert backends.intra_op_threads(2, cpus) == 2  # asked for: taken as given


def test_torch_compile_starts_no_more_compile_workers_than_the_pod_may_use(monkeypatch: pytest.MonkeyPatch) -> None:
    """A pod without a CPU limit sees the node's CPUs: Inductor would start one compile worker per CPU."""
    import torch._inductor.config as inductor_config

    monkeypatch.setattr(inductor_config, "compile_threads", 32)  # what a 32-vCPU node gives by default
    monkeypatch.setattr(backends, "cpu_quota", lambda: None)
    assert backends.limit_compile_workers({contract.ENV_CPU_REQUEST: "1"}) == 1
    assert inductor_config.compile_threads == 1
    monkeypatch.setattr(inductor_config, "compile_threads", 32)
    assert backends.limit_compile_workers({contract.ENV_CPU_REQUEST: "1", "TORCHINDUCTOR_COMPILE_THREADS": "32"}) == 32


def test_neuron_refuses_an_artifact_compiled_for_another_batch_or_size() -> None:
    """The pod's MAX_BATCH, width and height must be what the artifact was compiled for."""
    fake = FakeNeuronPipeline(4, 512)

    def loader() -> tuple[Any, CompiledShape]:
        return fake, CompiledShape(512, 512, 4)

    backend = NeuronBackend(Settings(model_id="org/m", max_batch=8), loader=loader, image_pipeline=same)
    with pytest.raises(backends.BackendError) as batch_error:
        backend.load()
    assert str(batch_error.value) == (
        f"Neuron model shape mismatch: {contract.ENV_MAX_BATCH}=8 but the artifact is compiled for batch 4 "
        "(recompile, or serve what was compiled)"
    )
    backend = NeuronBackend(Settings(model_id="org/m", height=768, width=768), loader=loader, image_pipeline=same)
    with pytest.raises(backends.BackendError, match=f"{contract.ENV_WIDTH}x{contract.ENV_HEIGHT}=768x768 .* 512x512"):
        backend.load()
    assert backend.pipe is None  # nothing is served from a refused artifact
    matching = NeuronBackend(
        Settings(model_id="org/m", max_batch=4, height=512, width=512), loader=loader, image_pipeline=same
    )
    matching.load()
    assert matching.max_device_batch == 4 and matching.default_steps == backends.DEFAULT_STEPS_SD
    assert type(matching.pipe.scheduler).__name__ == "DPMSolverMultistepScheduler"  # the scheduler setting


# --- fast paths and correctness on the tiny model ----------------------------------------------

TINY = Settings(model_id="tiny", torch_threads=1, metrics_sink="none")
TINY_PARAMS = BatchParams(4, 7.5, 64, 64)
# fp32: the same image whether it ran alone or in a batch of 2, to well under one 8-bit PNG level
# (1/255 = 0.0039). Batched matmuls block differently, so bit equality is not expected; the
# differences measured are ~2e-6 (tiny) and ~1e-5 (sd21-random).
FP32_BATCH_TOLERANCE = 1e-4


def tiny_backend(**changes: Any) -> backends.DiffusersBackend:
    backend = backends.DiffusersBackend(TINY.replace(**changes), "cpu")
    backend.load()
    return backend


def test_same_seed_same_image_alone_or_in_a_batch_tiny() -> None:
    backend = tiny_backend()
    (alone,) = backend.generate(TINY_PARAMS, [ImageSpec("a cat", "", 7)], lambda: False)
    first, other = backend.generate(TINY_PARAMS, [ImageSpec("a cat", "", 7), ImageSpec("a dog", "", 8)], lambda: False)
    assert np.abs(alone - first).max() < FP32_BATCH_TOLERANCE
    assert np.abs(alone - other).max() > 0.1  # another prompt and seed: the comparison can fail


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_reduced_precision_gives_finite_images(dtype: str) -> None:
    """fp16 is what CUDA serves at; torch runs fp16 convolutions on CPU too, so it is checked here as is."""
    import torch

    backend = tiny_backend(dtype=dtype)
    assert backend.pipe.unet.dtype == getattr(torch, dtype)
    images = backend.generate(TINY_PARAMS, [ImageSpec("a cat", "", 1), ImageSpec("", "", 2)], lambda: False)
    assert all(np.isfinite(img).all() and img.std() > 0.01 for img in images)


def test_scheduler_setting_is_honoured() -> None:
    from diffusers import DPMSolverMultistepScheduler, EulerDiscreteScheduler

    fast = tiny_backend()  # default: dpmsolver++
    own = tiny_backend(scheduler="model")
    fast_scheduler: Any = fast.pipe.scheduler
    own_scheduler: Any = own.pipe.scheduler
    assert fast_scheduler.config.algorithm_type == "dpmsolver++"
    assert fast_scheduler.config.timestep_spacing == own_scheduler.config.timestep_spacing
    assert type(fast_scheduler) is DPMSolverMultistepScheduler
    assert type(own_scheduler) is EulerDiscreteScheduler  # the tiny model's own
    spec = [ImageSpec("a cat", "", 7)]
    (a,) = fast.generate(TINY_PARAMS, spec, lambda: False)
    (b,) = own.generate(TINY_PARAMS, spec, lambda: False)
    assert np.abs(a - b).max() > 0.01  # another solver, another trajectory
    assert "dpmsolver++ scheduler" in fast.description and "model scheduler" in own.description


def test_default_steps_follow_the_scheduler() -> None:
    assert backends.default_steps(Settings(model_id="tiny")) == backends.DEFAULT_STEPS_TINY
    assert backends.default_steps(Settings(model_id="sd21-random")) == 20
    assert backends.default_steps(Settings(model_id="org/m", scheduler="model")) == 50


def test_dpmsolver_keeps_the_768_models_v_prediction() -> None:
    """Swapping the solver must not turn a v-prediction model into an epsilon one (noise out)."""
    from types import SimpleNamespace

    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    from runtime.server.models import SD21_768_SCHEDULER

    pipe = SimpleNamespace(scheduler=DDIMScheduler.from_config(dict(SD21_768_SCHEDULER)))
    backends.apply_scheduler(pipe, "dpmsolver++")
    config: Any = pipe.scheduler.config
    assert (config.prediction_type, config.beta_schedule, config.beta_end) == ("v_prediction", "scaled_linear", 0.012)
    assert type(pipe.scheduler) is DPMSolverMultistepScheduler
    assert backends.apply_scheduler(pipe, "model") is pipe and type(pipe.scheduler) is DPMSolverMultistepScheduler


def test_sdpa_is_diffusers_default_and_eager_computes_the_same() -> None:
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    from runtime.server.tiny import build_tiny_pipeline

    fresh = build_tiny_pipeline()
    assert {type(p) for p in fresh.unet.attn_processors.values()} == {AttnProcessor2_0}  # torch 2 default
    sdpa, eager = tiny_backend(), tiny_backend(attention="eager")
    assert {type(p) for p in eager.pipe.unet.attn_processors.values()} == {AttnProcessor}
    assert {type(p) for p in eager.pipe.vae.attn_processors.values()} == {AttnProcessor}
    assert {type(p) for p in sdpa.pipe.unet.attn_processors.values()} == {AttnProcessor2_0}
    spec = [ImageSpec("a cat", "", 3)]
    (a,) = sdpa.generate(TINY_PARAMS, spec, lambda: False)
    (b,) = eager.generate(TINY_PARAMS, spec, lambda: False)
    assert np.abs(a - b).max() < FP32_BATCH_TOLERANCE


def stops_inside_a_call(backend: backends.DiffusersBackend, params: BatchParams) -> tuple[int, int]:
    """Completed UNet calls when should_stop turns true at its third question (inside the first step),
    and completed VAE decoder calls when it turns true as the last step is reported (both 0: the call
    left inside them; without the stop hooks it would leave only between steps, after 1 UNet call, and
    never inside the decode)."""
    done = {"unet": 0, "decoder": 0}

    def counter(name: str) -> Any:
        def count(module: Any, args: Any, output: Any) -> None:
            done[name] += 1

        return count

    pipe = backend.pipe
    handles = [
        pipe.unet.register_forward_hook(counter("unet")),
        pipe.vae.decoder.register_forward_hook(counter("decoder")),
    ]
    try:
        asked = itertools.count()
        assert backend.generate(params, [ImageSpec("a cat", "", 1)], lambda: next(asked) >= 2) == []
        unet_calls, done["unet"] = done["unet"], 0
        last_step = threading.Event()
        images = backend.generate(
            params,
            [ImageSpec("a cat", "", 1)],
            last_step.is_set,
            on_step=lambda step, total: last_step.set() if step == params.steps else None,
        )
        assert images == [] and done["unet"] == params.steps  # every step ran, then the decode stopped
        return unet_calls, done["decoder"]
    finally:
        for handle in handles:
            handle.remove()


def test_a_call_stops_inside_a_unet_step_and_inside_the_vae_decode_tiny() -> None:
    backend = tiny_backend()
    assert backend.stop_hooks > 0
    assert stops_inside_a_call(backend, BatchParams(3, 7.5, 64, 64)) == (0, 0)


def test_configured_size_is_the_default_and_the_warm_up_size() -> None:
    backend = tiny_backend(width=96, height=128)
    assert (backend.default_width, backend.default_height) == (96, 128)
    assert backends.warmup(backend, max_batch=2) > 0
    native = tiny_backend()
    assert (native.default_width, native.default_height) == (64, 64)  # unset: the native size


# --- the real SD 2.1 architecture with random weights ------------------------------------------

# Parameter counts of the published stabilityai/stable-diffusion-2-1(-base) components.
SD21_PARAMETERS = {"unet": 865_910_724, "text_encoder": 340_387_840, "vae": 83_653_863}


@pytest.fixture(scope="module")
def sd21() -> Iterator[backends.DiffusersBackend]:
    """sd21-random in fp32 on CPU at 64x64, built once (~1.3B parameters, 5 GB)."""
    backend = backends.DiffusersBackend(
        Settings(model_id="sd21-random", height=64, width=64, metrics_sink="none"), "cpu"
    )
    backend.load()
    yield backend
    backend.pipe = None


def test_sd21_random_has_the_published_architecture(sd21: backends.DiffusersBackend) -> None:
    pipe = sd21.pipe
    for name, published in SD21_PARAMETERS.items():
        count = sum(p.numel() for p in getattr(pipe, name).parameters())
        assert abs(count - published) / published < 0.01, (name, count)
    assert pipe.unet.config.attention_head_dim == [5, 10, 20, 20]
    assert pipe.unet.config.cross_attention_dim == 1024 and pipe.unet.config.use_linear_projection
    assert pipe.text_encoder.config.num_hidden_layers == 23 and pipe.text_encoder.config.hidden_size == 1024
    assert pipe.vae.config.latent_channels == 4 and pipe.vae.config.scaling_factor == 0.18215
    tokens = pipe.tokenizer("a lighthouse at dawn", padding="max_length", max_length=77).input_ids
    assert len(pipe.tokenizer) == 49408 and tokens[0] == 49406 and 49407 in tokens and tokens[-1] == 0
    assert (sd21.default_width, sd21.default_steps) == (64, 20)


def test_sd21_random_generates_the_same_image_alone_or_in_a_batch(sd21: backends.DiffusersBackend) -> None:
    """End to end through the server's backend: 64x64, 2 steps, guidance on (the UNet sees 2x the batch)."""
    params = BatchParams(2, 7.5, 64, 64)
    (alone,) = sd21.generate(params, [ImageSpec("a cat", "", 7)], lambda: False)
    assert alone.shape == (64, 64, 3) and np.isfinite(alone).all() and alone.std() > 0.01
    first, other = sd21.generate(params, [ImageSpec("a cat", "", 7), ImageSpec("a dog", "", 8)], lambda: False)
    assert np.abs(alone - first).max() < FP32_BATCH_TOLERANCE
    assert np.abs(alone - other).max() > 0.1


def test_sd21_random_stops_inside_a_unet_step_and_inside_the_vae_decode(sd21: backends.DiffusersBackend) -> None:
    """The hooks find the real architecture's blocks: every down, mid and up block, resnet and attention."""
    kinds = {type(m).__name__ for m in sd21.pipe.unet.modules()} | {type(m).__name__ for m in sd21.pipe.vae.modules()}
    assert {"ResnetBlock2D", "Transformer2DModel", "BasicTransformerBlock", "Attention"} <= kinds
    assert sd21.stop_hooks > 100  # 4 down, 1 mid and 4 up blocks of resnets and transformers, and the decoder
    assert stops_inside_a_call(sd21, BatchParams(2, 7.5, 64, 64)) == (0, 0)


def test_sd21_random_in_reduced_precision_gives_a_finite_image(sd21: backends.DiffusersBackend) -> None:
    """No activation of the random-weight network overflows at serving precision.

    fp16 on a GPU when there is one (what CUDA pods serve at); on CPU bfloat16, because torch's
    CPU fp16 kernels are emulated: one 64x64 two-step sd21-random image took 174 s in fp16 on
    the 2-core build machine, against about 1 s in bfloat16 (which still catches a NaN or an
    inf from the weights, though not an fp16-only overflow).
    """
    import torch

    device, dtype = ("cuda", torch.float16) if torch.cuda.is_available() else ("cpu", torch.bfloat16)
    sd21.pipe = sd21.pipe.to(device, dtype=dtype)  # the last sd21 test: the fixture stays converted
    (image,) = sd21.generate(BatchParams(2, 7.5, 64, 64), [ImageSpec("a cat", "", 7)], lambda: False)
    assert np.isfinite(image).all() and image.std() > 0.01


def test_sd21_same_seed_same_weights_and_the_768_variant() -> None:
    """Seeded init is deterministic; the 768-v model is the same network with its own config."""
    import torch
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel

    from runtime.server import models

    with init_empty_weights(include_buffers=False):
        unet: Any = UNet2DConditionModel(**models.SD21_768_UNET)
    assert sum(p.numel() for p in unet.parameters()) == SD21_PARAMETERS["unet"]
    assert unet.config.upcast_attention and unet.config.sample_size == 96
    assert models.built_in(models.SD21_768_MODEL_ID).native_size == 768  # type: ignore[union-attr]
    layer: Any = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.LayerNorm(32), torch.nn.Embedding(10, 4))
    weights = []
    for seed in (5, 5, 6):
        with init_empty_weights():
            meta: Any = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.LayerNorm(32), torch.nn.Embedding(10, 4))
        models.init_random_(meta, torch.Generator().manual_seed(seed), torch.float32)
        weights.append(meta[0].weight.clone())
        assert meta[1].weight.eq(1).all() and meta[0].bias.eq(0).all()
        assert abs(float(meta[0].weight.std()) - float(layer[0].weight.detach().std())) < 0.02  # torch's default scale
        assert abs(float(meta[2].weight.std()) - 0.02) < 0.01
    assert torch.equal(weights[0], weights[1]) and not torch.equal(weights[0], weights[2])


# --- the tiny VAE (--vae tiny) and the Inductor cache ------------------------------------------


def test_tiny_vae_decodes_and_encodes_with_autoencoder_tiny() -> None:
    full, tiny = tiny_backend(), tiny_backend(vae="tiny")
    assert type(tiny.pipe.vae).__name__ == "AutoencoderTiny" and tiny.image_pipe.vae is tiny.pipe.vae
    assert type(full.pipe.vae).__name__ == "AutoencoderKL"
    assert "tiny VAE" in tiny.description
    specs = [ImageSpec("a cat", "", 7), ImageSpec("a dog", "", 8)]
    (alone,) = tiny.generate(TINY_PARAMS, specs[:1], lambda: False)
    first, _ = tiny.generate(TINY_PARAMS, specs, lambda: False)
    assert np.abs(alone - first).max() < FP32_BATCH_TOLERANCE
    (kl,) = full.generate(TINY_PARAMS, specs[:1], lambda: False)
    assert alone.shape == kl.shape == (64, 64, 3) and np.abs(alone - kl).max() > 0.1  # another decoder
    grey = np.full((64, 64, 3), 0.5, dtype=np.float32)
    params = BatchParams(4, 7.5, 64, 64, strength=0.5)
    (prompted,) = tiny.generate(params, [ImageSpec("a cat", "", 7, grey)], lambda: False)
    assert np.isfinite(prompted).all() and prompted.shape == (64, 64, 3)


def test_tiny_vae_decode_stops_inside_the_decoder() -> None:
    backend = tiny_backend(vae="tiny")
    assert stops_inside_a_call(backend, BatchParams(3, 7.5, 64, 64)) == (0, 0)


def test_neuron_refuses_the_tiny_vae_in_one_line() -> None:
    backend = NeuronBackend(Settings(model_id="org/m", vae="tiny"), loader=lambda: (None, CompiledShape(512, 512, 1)))
    with pytest.raises(
        backends.BackendError, match=f"{contract.ENV_VAE}='tiny' is not allowed on neuron; allowed: full"
    ):
        backend.load()


def test_the_inductor_cache_is_offered_only_to_a_compiling_cuda_pod(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from runtime.artifacts.inductor_cache import write_key
    from runtime.server.model_source import ModelLocation

    key = {"torch": "2.13.0", "cuda": "12.8", "triton": "3.6.0", "gpu": "NVIDIA L4", "capability": "8.9"}
    cache = tmp_path / "artifact" / contract.INDUCTOR_CACHE_DIRNAME
    cache.mkdir(parents=True)
    write_key(cache, key)
    location = ModelLocation(kind="dir", model_id="org/m", path=tmp_path / "artifact")
    compiling = Settings(model_id="org/m", torch_compile=True, model_cache_dir=str(tmp_path / "models"))
    assert backends.inductor_cache(compiling, "cpu", location, key) is None
    assert backends.inductor_cache(compiling.replace(torch_compile=False), "cuda", location, key) is None
    assert backends.inductor_cache(compiling, "cuda", ModelLocation(kind="hub", model_id="org/m"), key) is None
    other = backends.inductor_cache(compiling, "cuda", location, {**key, "gpu": "NVIDIA A10G"})
    assert other is not None and not other.used
    assert other.message == "inductor cache ignored: gpu 'NVIDIA L4' in the cache, 'NVIDIA A10G' here"
    for name in ("TORCHINDUCTOR_CACHE_DIR", "TORCHINDUCTOR_FX_GRAPH_CACHE"):  # restored after the test
        monkeypatch.setenv(name, "unset")
    same = backends.inductor_cache(compiling, "cuda", location, key)
    assert same is not None and same.used
    import os

    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "models" / "torchinductor")


class _Encoding(backends.Backend):
    """A device whose images are given: only its encoding is under test."""

    def load(self) -> None:
        pass

    def generate(self, params: BatchParams, images: Any, should_stop: Any, on_step: Any = None) -> list[np.ndarray]:
        return [np.full((params.height, params.width, 3), i / 10, np.float32) for i in range(len(images))]


def test_a_calls_answers_encode_side_by_side_in_order_where_it_pays() -> None:
    """Large images with encode_threads > 1 encode on that many threads at once (a barrier only they can pass
    together), in order, non-finite ones not at all; small ones, or one thread, on the calling thread."""
    device = _Encoding()
    device.encode_threads = 2
    together = threading.Barrier(2, timeout=10)
    threads: set[int] = set()

    def encode(image: np.ndarray) -> bytes:
        threads.add(threading.get_ident())
        if image.shape[0] >= 256:
            together.wait()
        return bytes([round(float(image[0, 0, 0]) * 10)])

    specs = [ImageSpec("a", "", i) for i in range(5)]
    big = BatchParams(1, 0.0, 256, 256)
    out, encoded = device.generate_encoded(big, specs, lambda: False, None, [encode, encode, None, encode, encode])
    assert encoded == [b"\x00", b"\x01", None, b"\x03", b"\x04"] and len(out) == 5
    assert threading.get_ident() not in threads and len(threads) == 2
    threads.clear()
    images = [np.zeros((256, 256, 3), np.float32), np.full((256, 256, 3), np.nan, np.float32)]
    assert device._encode(images, [lambda _: b"x", lambda _: b"y"], 256 * 256) == [b"x", None]
    _, small = device.generate_encoded(BatchParams(1, 0.0, 64, 64), specs[:4], lambda: False, None, [encode] * 4)
    assert small == [b"\x00", b"\x01", b"\x02", b"\x03"] and threads == {threading.get_ident()}
    device.encode_threads = 1
    threads.clear()
    device.generate_encoded(big, specs[:2], lambda: False, None, [lambda image: encode(image[:8])] * 2)
    assert threads == {threading.get_ident()}
    device.close()
