"""Where a generation's time goes: text encoder, each UNet step, VAE encode and decode, per batch size.

The pipeline is loaded and optimised by the server's own backend (``DiffusersBackend``: dtype,
attention, channels-last, torch.compile, scheduler) and driven through ``backend.generate``,
the call the server's batcher makes, so in-process and served figures differ only by what the
server adds (HTTP, queueing, batching, PNG encoding). Phases are timed by hooks on the
pipeline's modules; on CUDA each hook synchronises first, so a phase is its kernels' time.

Generation modes (``Mode``) compare ways of making an image on the same loaded networks: few
steps without guidance (SD-Turbo's recipe), the guided 20-step reference, and image-to-image,
run by diffusers' ``StableDiffusionImg2ImgPipeline`` over the same modules (its UNet calls are
``steps * strength``, after one VAE encode per image).
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from runtime.bench.modes import Mode
from runtime.server.backends import BatchParams, DiffusersBackend, ImageSpec
from runtime.server.settings import Settings

PROMPT = "a lighthouse on a cliff at dawn"


@dataclass
class PhaseTimes:
    """Seconds spent in each phase during one ``generate`` call."""

    text_encoder: float = 0.0
    unet_steps: list[float] = field(default_factory=list)
    vae_decode: float = 0.0
    end_to_end: float = 0.0
    vae_encode: float = 0.0  # image-to-image only: the image prompts into latents


@dataclass(frozen=True)
class PhaseResult:
    """Medians over the timed calls at one batch size."""

    batch: int
    calls: int
    text_encoder_ms: float
    unet_step_ms: float
    unet_steps: int
    vae_decode_ms: float
    end_to_end_ms: float
    other_ms: float  # per call, end to end minus the phases: scheduler, latents, guidance, output
    vae_encode_ms: float = 0.0

    @property
    def images_per_s(self) -> float:
        return self.batch / (self.end_to_end_ms / 1000) if self.end_to_end_ms else 0.0


class PhaseTimer:
    """Hooks on a pipeline's text encoder, UNet and VAE encode and decode that add their time to ``current``.

    The hooks sit on the modules, so a second pipeline over the same modules (image-to-image) is timed too.
    """

    def __init__(self, pipe: Any, sync: Callable[[], None]) -> None:
        self.pipe = pipe
        self.sync = sync
        self.current = PhaseTimes()
        self._handles: list[Any] = []

    def _module_hooks(self, module: Any, record: Callable[[float], None]) -> None:
        started: list[float] = []

        def pre(*_: Any, **__: Any) -> None:
            self.sync()
            started.append(time.perf_counter())

        def post(*_: Any, **__: Any) -> None:
            self.sync()
            record(time.perf_counter() - started.pop())

        self._handles.append(module.register_forward_pre_hook(pre))
        self._handles.append(module.register_forward_hook(post))

    def __enter__(self) -> PhaseTimer:
        def add_text(seconds: float) -> None:
            self.current.text_encoder += seconds

        def add_encode(seconds: float) -> None:
            self.current.vae_encode += seconds

        def add_decode(seconds: float) -> None:
            self.current.vae_decode += seconds

        self._module_hooks(self.pipe.text_encoder, add_text)
        self._module_hooks(self.pipe.unet, lambda seconds: self.current.unet_steps.append(seconds))
        self._wrap_vae("encode", add_encode)
        self._wrap_vae("decode", add_decode)
        return self

    def _wrap_vae(self, name: str, record: Callable[[float], None]) -> None:
        """Time the VAE's ``encode`` or ``decode`` (methods, not modules: no hook reaches them)."""
        vae = self.pipe.vae
        original = getattr(vae, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            self.sync()
            started = time.perf_counter()
            out = original(*args, **kwargs)
            self.sync()
            record(time.perf_counter() - started)
            return out

        setattr(vae, name, timed)  # an instance attribute: the class's method is untouched

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for name in ("encode", "decode"):
            if name in vars(self.pipe.vae):
                delattr(self.pipe.vae, name)

    @contextmanager
    def call(self) -> Iterator[PhaseTimes]:
        """Time one generate call end to end; the phases land in the yielded record."""
        self.current = PhaseTimes()
        self.sync()
        started = time.perf_counter()
        yield self.current
        self.sync()
        self.current.end_to_end = time.perf_counter() - started


def _sync_for(device: str) -> Callable[[], None]:
    if device == "cuda":
        import torch

        return torch.cuda.synchronize
    return lambda: None


def load_backend(settings: Settings) -> DiffusersBackend:
    """The server's backend for these settings, loaded (cuda or cpu: Neuron graphs are not split in phases)."""
    device = settings.device or "cpu"
    if device == "neuron":
        raise ValueError("--phases times the diffusers pipeline: use --device cuda or cpu (neuron: --url)")
    backend = DiffusersBackend(settings, device)
    backend.load()
    return backend


def measure(
    backend: DiffusersBackend, params: BatchParams, batches: Sequence[int], calls: int, progress: Callable[[str], None]
) -> list[PhaseResult]:
    """Per batch size: one untimed call (kernel selection, compilation), then ``calls`` timed calls."""
    sync = _sync_for(backend.device)
    results = []
    with PhaseTimer(backend.pipe, sync) as timer:
        for batch in batches:
            specs = [ImageSpec(PROMPT, "", seed) for seed in range(batch)]
            backend.generate(params, specs, lambda: False)
            samples: list[PhaseTimes] = []
            for _ in range(calls):
                with timer.call() as times:
                    backend.generate(params, specs, lambda: False)
                samples.append(times)
            result = summarise(batch, samples)
            progress(format_phase_row(result))
            results.append(result)
    return results


def summarise(batch: int, samples: Sequence[PhaseTimes]) -> PhaseResult:
    """Medians of the samples (per-step time: the median over every step of every call)."""
    steps = [s for sample in samples for s in sample.unet_steps]
    other = [s.end_to_end - s.text_encoder - sum(s.unet_steps) - s.vae_decode - s.vae_encode for s in samples]
    return PhaseResult(
        batch=batch,
        calls=len(samples),
        text_encoder_ms=statistics.median(s.text_encoder for s in samples) * 1000,
        unet_step_ms=statistics.median(steps) * 1000 if steps else 0.0,
        unet_steps=round(statistics.median(len(s.unet_steps) for s in samples)),
        vae_decode_ms=statistics.median(s.vae_decode for s in samples) * 1000,
        end_to_end_ms=statistics.median(s.end_to_end for s in samples) * 1000,
        other_ms=statistics.median(other) * 1000,
        vae_encode_ms=statistics.median(s.vae_encode for s in samples) * 1000,
    )


def drop_pipeline(backend: DiffusersBackend) -> None:
    """Drop the pipeline before the server starts, so the two never hold the model at once."""
    backend.pipe = None
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


PHASE_HEAD = (
    "| batch | text encoder ms | UNet step ms | UNet steps | VAE decode ms | other ms | end-to-end ms "
    "| in-process images/s | served images/s | served mean batch | served / in-process |"
)


def format_phase_row(r: PhaseResult, served: float | None = None, mean_batch: float | None = None) -> str:
    ratio = f"{served / r.images_per_s:.2f}" if served is not None and r.images_per_s else "n/a"
    served_text = f"{served:.3f}" if served is not None else "n/a"
    batch_text = f"{mean_batch:.2f}" if mean_batch is not None else "n/a"
    return (
        f"| {r.batch} | {r.text_encoder_ms:.0f} | {r.unet_step_ms:.0f} | {r.unet_steps} | {r.vae_decode_ms:.0f} | "
        f"{r.other_ms:.0f} | {r.end_to_end_ms:.0f} | {r.images_per_s:.3f} | {served_text} | {batch_text} | {ratio} |"
    )


def format_phase_table(
    results: Sequence[PhaseResult], served: dict[int, tuple[float, float | None]] | None = None
) -> str:
    served = served or {}
    lines = [PHASE_HEAD, "|" + "---:|" * PHASE_HEAD.count(" | ") + "---:|"]
    for r in results:
        images, mean_batch = served.get(r.batch, (None, None))
        lines.append(format_phase_row(r, images, mean_batch))
    return "\n".join(lines)


# --- generation modes: few-step, the guided reference, image-to-image ------------------------


@dataclass(frozen=True)
class ModeResult:
    """One mode at one batch size: its phase medians."""

    mode: Mode
    phases: PhaseResult


def prompt_picture(width: int, height: int) -> Any:
    """The image prompt of image-to-image rows: a smooth colour ramp, float32 HxWx3 in [0, 1] (deterministic)."""
    import numpy as np

    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    ramp = np.stack([xs / max(width - 1, 1), ys / max(height - 1, 1), np.full_like(xs, 0.5)], axis=-1)
    return ramp.astype(np.float32)


def image_pipeline(pipe: Any) -> Any:
    """diffusers' img2img pipeline over ``pipe``'s modules (no second copy of the weights), with its own scheduler."""
    from diffusers import StableDiffusionImg2ImgPipeline

    scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)  # step state of its own
    image_pipe: Any = StableDiffusionImg2ImgPipeline(
        **{**pipe.components, "scheduler": scheduler, "requires_safety_checker": False}
    )
    image_pipe.set_progress_bar_config(disable=True)
    return image_pipe


def run_mode(backend: DiffusersBackend, image_pipe: Any, mode: Mode, batch: int, width: int, height: int) -> int:
    """One generation of ``batch`` images in ``mode``; returns the number of images made.

    Text to image is the server's own call (``backend.generate``); image to image drives
    ``image_pipe`` as the server's image-prompt path does: one seeded CPU generator per image.
    """
    if mode.strength is None:
        specs = [ImageSpec(PROMPT, "", seed) for seed in range(batch)]
        return len(backend.generate(BatchParams(mode.steps, mode.guidance, width, height), specs, lambda: False))
    import numpy as np
    import torch

    picture = prompt_picture(width, height)
    with torch.inference_mode():
        out = image_pipe(
            prompt=[PROMPT] * batch,
            image=np.stack([picture] * batch),
            strength=mode.strength,
            num_inference_steps=mode.steps,
            guidance_scale=mode.guidance,
            generator=[torch.Generator(device="cpu").manual_seed(seed) for seed in range(batch)],
            output_type="np",
        )
    return len(out.images)


def measure_modes(
    backend: DiffusersBackend,
    modes: Sequence[Mode],
    batches: Sequence[int],
    calls: int,
    size: tuple[int, int],
    progress: Callable[[ModeResult], None],
) -> list[ModeResult]:
    """Every mode at every batch size: one untimed call each (kernel selection), then ``calls`` rounds.

    A round times each mode and batch once, so a change in background load reaches every row
    alike and the ratios between rows hold better than their absolute times.
    """
    width, height = size
    sync = _sync_for(backend.device)
    image_pipe = image_pipeline(backend.pipe) if any(m.strength is not None for m in modes) else None
    cells = [(mode, batch) for mode in modes for batch in batches]
    samples: dict[tuple[Mode, int], list[PhaseTimes]] = {cell: [] for cell in cells}
    with PhaseTimer(backend.pipe, sync) as timer:
        for mode, batch in cells:
            run_mode(backend, image_pipe, mode, batch, width, height)
        for _ in range(calls):
            for mode, batch in cells:
                with timer.call() as times:
                    made = run_mode(backend, image_pipe, mode, batch, width, height)
                if made != batch:
                    raise RuntimeError(f"mode {mode}: {made} images of {batch}")
                samples[mode, batch].append(times)
    results = [ModeResult(mode, summarise(batch, samples[mode, batch])) for mode, batch in cells]
    for result in results:
        progress(result)
    return results


MODE_HEAD = (
    "| mode | kind | steps | guidance | strength | batch | UNet calls | text encoder ms | VAE encode ms "
    "| UNet step ms | VAE decode ms | other ms | end-to-end ms | images/s | x reference |"
)


def reference_ms(results: Sequence[ModeResult], reference: Mode, batch: int) -> float | None:
    """End-to-end ms of the reference mode at that batch size, when it was measured."""
    return next((r.phases.end_to_end_ms for r in results if r.mode == reference and r.phases.batch == batch), None)


def format_mode_row(r: ModeResult, reference: float | None = None) -> str:
    p, m = r.phases, r.mode
    ratio = f"{p.end_to_end_ms / reference:.3f}" if reference else "n/a"
    strength = f"{m.strength:g}" if m.strength is not None else "-"
    return (
        f"| {m} | {m.kind} | {m.steps} | {m.guidance:g} | {strength} | {p.batch} | {p.unet_steps} | "
        f"{p.text_encoder_ms:.1f} | {p.vae_encode_ms:.1f} | {p.unet_step_ms:.1f} | {p.vae_decode_ms:.1f} | "
        f"{p.other_ms:.1f} | {p.end_to_end_ms:.1f} | {p.images_per_s:.3f} | {ratio} |"
    )


def format_mode_table(results: Sequence[ModeResult], reference: Mode | None = None) -> str:
    """The modes table; "x reference" is a row's end-to-end time over the reference mode's at the same batch."""
    lines = [MODE_HEAD, "|---|---|" + "---:|" * (MODE_HEAD.count(" | ") - 1)]
    for r in results:
        ref = reference_ms(results, reference, r.phases.batch) if reference is not None else None
        lines.append(format_mode_row(r, ref))
    return "\n".join(lines)


def speedup_lines(results: Sequence[ModeResult], reference: Mode) -> list[str]:
    """One line per other text-to-image mode and batch: its end-to-end time against the reference's."""
    lines = []
    for r in results:
        ref = reference_ms(results, reference, r.phases.batch)
        if r.mode == reference or r.mode.strength is not None or not ref:
            continue
        lines.append(
            f"{r.mode.steps} step{'s' if r.mode.steps > 1 else ''} at guidance {r.mode.guidance:g} vs "
            f"{reference.steps} steps at guidance {reference.guidance:g}, batch {r.phases.batch}: "
            f"{r.phases.end_to_end_ms:.0f} ms vs {ref:.0f} ms = {r.phases.end_to_end_ms / ref:.3f}x the time "
            f"({ref / r.phases.end_to_end_ms:.1f}x faster)"
        )
    return lines
