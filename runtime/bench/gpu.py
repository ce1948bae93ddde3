"""The GPU kit's benchmark: SD 2.1 guided and the SD-Turbo class in few steps, per batch size, on one device.

    python -m runtime.bench.gpu            # on a CUDA host (python -m runtime.bench.kit run runs it)
    python -m runtime.bench.gpu --device cpu --size 64 --batches 1,2 --calls 1   # a check on a CPU

Each model is built in code with random weights (no download) and loaded by the server's own
backend (dtype, SDPA attention, channels-last, scheduler) as a pod would load it; its modes
(runtime.bench.modes) are timed by runtime.bench.phases: one untimed call per row, then rounds
that time every row once, the median per phase. The table is headed by the device's name
(torch.cuda.get_device_name); "x reference" is a row's end-to-end time over the first SD 2.1
mode's (20 steps guided) at the same batch size.
"""

from __future__ import annotations

import json
import platform
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Final

from pydantic import Field

from plan import contract
from runtime.bench.modes import Mode, check_mode_texts, parse_mode
from runtime.server.models import BUILT_IN_MODELS, SD21_MODEL_ID, SD_TURBO_MODEL_ID
from runtime.server.settings import ATTENTION, DTYPES, SCHEDULERS, ImageSize, Settings
from runtime.settings import ProgramSettings, SettingsError, error_exit, setting

PROG: Final = "python -m runtime.bench.gpu"
Count = Annotated[int, Field(ge=1)]
MODES_ALLOWED: Final = "a comma-separated list of STEPS/GUIDANCE (text to image) or STEPS/GUIDANCE/STRENGTH"


class GpuBenchSettings(ProgramSettings):
    """Which models, modes, sizes and batches; the defaults are the kit's run on a CUDA host."""

    PROG: ClassVar[str] = PROG
    DESCRIPTION: ClassVar[str] = "SD 2.1 guided and SD-Turbo few-step, per batch size, in process on one device."

    device: str = setting(flag="--device", default="cuda", choices=("cuda", "cpu"), help="torch device")
    dtype: str = setting(flag="--dtype", default="auto", choices=DTYPES, help="auto: float16 on cuda, float32 on cpu")
    size: ImageSize = setting(flag="--size", default=512, help="image width and height")
    batches: tuple[Count, ...] = setting(flag="--batches", default=(1, 4, 8), min_length=1, help="images per call")
    calls: int = setting(flag="--calls", default=3, ge=1, help="timed rounds (each row once per round)")
    sd_model: str = setting(flag="--sd-model", default=SD21_MODEL_ID, choices=tuple(BUILT_IN_MODELS))
    sd_modes: tuple[str, ...] = setting(
        flag="--sd-modes",
        default=("20/7.5", "20/7.5/0.5"),
        min_length=1,
        check=check_mode_texts,
        allowed=MODES_ALLOWED,
        help="the first is the reference of every row",
    )
    sd_scheduler: str = setting(flag="--sd-scheduler", default="dpmsolver++", choices=SCHEDULERS)
    turbo_model: str = setting(flag="--turbo-model", default=SD_TURBO_MODEL_ID, choices=tuple(BUILT_IN_MODELS))
    turbo_modes: tuple[str, ...] = setting(
        flag="--turbo-modes",
        default=("1/0", "2/0/0.5"),
        min_length=1,
        check=check_mode_texts,
        allowed=MODES_ALLOWED,
        help="SD-Turbo's recipes: 1 step text to image, 2 steps at strength 0.5 image to image, guidance 0",
    )
    turbo_scheduler: str = setting(
        flag="--turbo-scheduler", default="model", choices=SCHEDULERS, help="model: SD-Turbo's own (Euler, trailing)"
    )
    attention: str = setting(flag="--attention", default="sdpa", choices=ATTENTION)
    torch_compile: bool = setting(flag="--torch-compile", default=False, help="cuda only")
    vae: str = setting(
        flag="--vae", default="full", choices=contract.VAE_KINDS, help="tiny: TAESD (built in code, as the models)"
    )
    torch_threads: int = setting(flag="--torch-threads", default=0, ge=0, help="CPU threads (0: the server's choice)")
    json_out: Path | None = setting(flag="--json", default=None, help="also write the rows to this JSON file")

    def check(self) -> None:
        if max(self.batches) > contract.MAX_BATCH_LIMIT:
            raise SettingsError(
                f"--batches: {max(self.batches)} is not allowed; allowed: at most {contract.MAX_BATCH_LIMIT}"
            )

    def runs(self) -> list[tuple[str, str, list[Mode]]]:
        """(model, scheduler, modes) in the order they run: SD 2.1 first, its first mode the reference."""
        return [
            (self.sd_model, self.sd_scheduler, [parse_mode(t) for t in dict.fromkeys(self.sd_modes)]),
            (self.turbo_model, self.turbo_scheduler, [parse_mode(t) for t in dict.fromkeys(self.turbo_modes)]),
        ]

    def server_settings(self, model: str, scheduler: str) -> Settings:
        return Settings(
            model_id=model,
            device=self.device,
            dtype=self.dtype,
            scheduler=scheduler,
            attention=self.attention,
            torch_compile=self.torch_compile,
            vae=self.vae,
            torch_threads=self.torch_threads,
            height=self.size,
            width=self.size,
            max_batch=max(self.batches),
            auth="none",
            metrics_sink="none",
        )


@dataclass(frozen=True)
class Row:
    """One model, mode and batch size: the phase medians in milliseconds."""

    model: str
    mode: str
    kind: str
    batch: int
    unet_calls: int
    text_encoder_ms: float
    vae_encode_ms: float
    unet_step_ms: float
    vae_decode_ms: float
    other_ms: float
    end_to_end_ms: float
    images_per_s: float
    x_reference: float | None


HEAD: Final = (
    "| model | mode | kind | batch | UNet calls | text encoder ms | VAE encode ms | UNet step ms | VAE decode ms "
    "| other ms | end-to-end ms | images/s | x reference |"
)


def format_row(r: Row) -> str:
    ratio = f"{r.x_reference:.3f}" if r.x_reference is not None else "n/a"
    return (
        f"| {r.model} | {r.mode} | {r.kind} | {r.batch} | {r.unet_calls} | {r.text_encoder_ms:.1f} | "
        f"{r.vae_encode_ms:.1f} | {r.unet_step_ms:.1f} | {r.vae_decode_ms:.1f} | {r.other_ms:.1f} | "
        f"{r.end_to_end_ms:.1f} | {r.images_per_s:.2f} | {ratio} |"
    )


def format_table(rows: Sequence[Row]) -> str:
    return "\n".join([HEAD, "|---|---|---|" + "---:|" * (HEAD.count(" | ") - 2), *(format_row(r) for r in rows)])


def device_name(device: str) -> str:
    """The GPU's name as torch reports it, or the CPU's model name."""
    import torch

    if device == "cuda":
        return str(torch.cuda.get_device_name(0))
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def with_reference(rows: list[Row], reference: tuple[str, str]) -> list[Row]:
    """The rows with "x reference": end-to-end over the reference (model, mode)'s at the same batch."""
    base = {r.batch: r.end_to_end_ms for r in rows if (r.model, r.mode) == reference}
    out = []
    for r in rows:
        ref = base.get(r.batch)
        out.append(Row(**{**asdict(r), "x_reference": r.end_to_end_ms / ref if ref else None}))
    return out


def measure(args: GpuBenchSettings, say: Any = print) -> list[Row]:
    """Load each model in turn (one at a time on the device), time its modes at every batch size."""
    from runtime.bench import phases

    rows: list[Row] = []
    for model, scheduler, modes in args.runs():
        import torch

        say(f"loading {model} ({scheduler} scheduler)", flush=True)
        backend = phases.load_backend(args.server_settings(model, scheduler))
        say(f"loaded: {backend.description}", flush=True)
        if args.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        results = phases.measure_modes(backend, modes, args.batches, args.calls, (args.size, args.size), lambda r: None)
        for result in results:
            p = result.phases
            rows.append(
                Row(
                    model=model,
                    mode=str(result.mode),
                    kind=result.mode.kind,
                    batch=p.batch,
                    unet_calls=p.unet_steps,
                    text_encoder_ms=p.text_encoder_ms,
                    vae_encode_ms=p.vae_encode_ms,
                    unet_step_ms=p.unet_step_ms,
                    vae_decode_ms=p.vae_decode_ms,
                    other_ms=p.other_ms,
                    end_to_end_ms=p.end_to_end_ms,
                    images_per_s=p.images_per_s,
                    x_reference=None,
                )
            )
            say(format_row(rows[-1]), flush=True)
        if args.device == "cuda":
            say(f"{model}: peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB", flush=True)
        phases.drop_pipeline(backend)
        del backend
    first_model, _, first_modes = args.runs()[0]
    return with_reference(rows, (first_model, str(first_modes[0])))


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = GpuBenchSettings.from_args(argv)
    except SettingsError as exc:
        return error_exit(PROG, exc)
    import torch

    from runtime.server.backends import BackendError, torch_dtype_for

    if args.device == "cuda" and not torch.cuda.is_available():
        return error_exit(
            PROG,
            f"--device cuda: torch {torch.__version__} sees no CUDA device (built for CUDA {torch.version.cuda}); "
            "use --device cpu for a check on a CPU",
            1,
        )
    name = device_name(args.device)
    dtype = str(torch_dtype_for(args.dtype, args.device)).removeprefix("torch.")
    cuda = f", CUDA {torch.version.cuda}" if args.device == "cuda" else ""
    header = (
        f"device: {name} ({args.device}; torch {torch.__version__}{cuda}); {dtype}, {args.size}x{args.size}, "
        f"{args.attention} attention{', torch.compile' if args.torch_compile else ''}; median of {args.calls} "
        "rounds after one untimed call per row; x reference: end-to-end over "
        f"{args.sd_model} {args.runs()[0][2][0]}'s at the same batch"
    )
    print(header, flush=True)
    try:
        rows = measure(args)
    except BackendError as exc:
        return error_exit(PROG, exc, 1)
    print()
    print(header)
    print(format_table(rows))
    if args.json_out is not None:
        doc = {"device": name, "torch": torch.__version__, "dtype": dtype, "size": args.size, "header": header}
        doc["rows"] = [asdict(r) for r in rows]
        args.json_out.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"rows written to {args.json_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
