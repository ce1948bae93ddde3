"""Where a generation's time goes: text encoder, each UNet step, VAE decode, per batch size.

The pipeline is loaded and optimised by the server's own backend (``DiffusersBackend``: dtype,
attention, channels-last, torch.compile, scheduler) and driven through ``backend.generate``,
the call the server's batcher makes, so in-process and served figures differ only by what the
server adds (HTTP, queueing, batching, PNG encoding). Phases are timed by hooks on the
pipeline's modules; on CUDA each hook synchronises first, so a phase is its kernels' time.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

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
    other_ms: float  # per call, end to end minus the three phases: scheduler, latents, guidance, output

    @property
    def images_per_s(self) -> float:
        return self.batch / (self.end_to_end_ms / 1000) if self.end_to_end_ms else 0.0


class PhaseTimer:
    """Hooks on a pipeline's text encoder, UNet and VAE decode that add their time to ``current``."""

    def __init__(self, pipe: Any, sync: Callable[[], None]) -> None:
        self.pipe = pipe
        self.sync = sync
        self.current = PhaseTimes()
        self._handles: list[Any] = []
        self._decode: Any = None

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

        self._module_hooks(self.pipe.text_encoder, add_text)
        self._module_hooks(self.pipe.unet, lambda seconds: self.current.unet_steps.append(seconds))
        vae = self.pipe.vae
        self._decode = vae.decode

        def decode(*args: Any, **kwargs: Any) -> Any:
            self.sync()
            started = time.perf_counter()
            out = self._decode(*args, **kwargs)
            self.sync()
            self.current.vae_decode += time.perf_counter() - started
            return out

        vae.decode = decode  # an instance attribute: the class's method is untouched
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        if "decode" in vars(self.pipe.vae):
            del self.pipe.vae.decode

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
    other = [s.end_to_end - s.text_encoder - sum(s.unet_steps) - s.vae_decode for s in samples]
    return PhaseResult(
        batch=batch,
        calls=len(samples),
        text_encoder_ms=statistics.median(s.text_encoder for s in samples) * 1000,
        unet_step_ms=statistics.median(steps) * 1000 if steps else 0.0,
        unet_steps=round(statistics.median(len(s.unet_steps) for s in samples)),
        vae_decode_ms=statistics.median(s.vae_decode for s in samples) * 1000,
        end_to_end_ms=statistics.median(s.end_to_end for s in samples) * 1000,
        other_ms=statistics.median(other) * 1000,
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
