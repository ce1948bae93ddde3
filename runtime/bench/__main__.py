"""Benchmark the real server over HTTP: images/s and latency percentiles per concurrency.

Default (`make bench`): measure a direct pipeline call of the tiny model, then start the
server twice on loopback, with MAX_BATCH=1 (one request at a time, as a plain server does) and
with the default batching settings, and drive each with closed-loop clients at concurrency
1, 4, 8, 16. With `--url` it drives an already running server (any model, any device), e.g.
a GPU or Inferentia pod behind its NodePort:

    python -m runtime.bench --url http://10.0.0.12:32697 --steps 20 --width 512 --height 512

With `--phases` (runtime.bench.phases) it times each phase of a generation in process (text
encoder, each UNet step, VAE decode, end to end) at batch 1, 2, 4, 8, then starts the server
as `make serve` does with the same model and settings and measures the images/s it serves at
the same batch sizes:

    python -m runtime.bench --phases --model sd21-random --device cpu --dtype float32 \
        --height 128 --width 128 --steps 4

and, on the same loaded networks, the generation modes of `--modes` at `--mode-batches`: few
steps without guidance (1, 2, 4 steps at guidance 0, as SD-Turbo samples), the guided reference
(20 steps at 7.5) and image-to-image at strength 0.5, each row with its time against the
reference's. The GPU kit (runtime.bench.kit) runs the same modes on a CUDA host offline.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, ClassVar

from pydantic import Field

from plan import contract
from runtime.bench.load import (
    LevelResult,
    direct_pipeline_ms,
    format_table,
    run_level,
    speedups,
    start_server,
    wait_ready,
)
from runtime.bench.modes import Mode, check_mode_texts, parse_mode
from runtime.server.settings import ATTENTION, DTYPES, SCHEDULERS, ImageSize, Settings
from runtime.server.tiny import TINY_IMAGE_SIZE, TINY_MODEL_ID
from runtime.settings import ProgramSettings, SettingsError, error_exit, setting

Count = Annotated[int, Field(ge=1)]
# Few steps without guidance (SD-Turbo's 1-4), the guided reference, and image-to-image at strength 0.5
# guided and few-step (the sd-turbo model card's image-to-image: 2 steps, strength 0.5, guidance 0).
DEFAULT_MODES = ("1/0", "2/0", "4/0", "20/7.5", "20/7.5/0.5", "2/0/0.5")
DEFAULT_REFERENCE = "20/7.5"


def mode_texts(value: tuple[str, ...]) -> bool:
    """Every mode spelt as parse_mode reads it ("none" alone: no modes)."""
    return value == ("none",) or check_mode_texts(value)


def one_mode(value: str) -> bool:
    return mode_texts((value,)) and value != "none"


class BenchSettings(ProgramSettings):
    """What to drive, how hard, and with which request."""

    PROG: ClassVar[str] = "python -m runtime.bench"
    DESCRIPTION: ClassVar[str] = "Benchmark the real server over HTTP: images/s and latency percentiles."

    url: str | None = setting(
        flag="--url", default=None, help="drive this running server instead of starting tiny-model servers"
    )
    model: str = setting(flag="--model", default=TINY_MODEL_ID, help="model for the servers this script starts")
    concurrency: tuple[Count, ...] = setting(flag="--concurrency", default=(1, 4, 8, 16), min_length=1)
    requests: int = setting(flag="--requests", default=96, ge=1, help="requests per concurrency level")
    steps: int = setting(flag="--steps", default=4, ge=1)
    width: ImageSize = setting(flag="--width", default=TINY_IMAGE_SIZE)
    height: ImageSize = setting(flag="--height", default=TINY_IMAGE_SIZE)
    guidance_scale: float = setting(flag="--guidance-scale", default=7.5, ge=0)
    torch_threads: int | None = setting(
        flag="--torch-threads",
        default=None,
        ge=0,
        help="CPU threads for the servers started here and the direct call (0: the server's auto choice); "
        "default 1 (64x64 tensors gain nothing from a second), 0 with --phases",
    )
    direct_calls: int = setting(
        flag="--direct-calls", default=30, ge=1, help="direct pipeline calls for the baseline (tiny)"
    )
    log: Path = setting(flag="--log", default=Path(tempfile.gettempdir()) / "edge-diffusion-bench-server.log")
    phases: bool = setting(flag="--phases", default=False, help="time each phase in process, then served")
    device: str = setting(flag="--device", default="cpu", choices=contract.DEVICES, help="--phases: torch device")
    dtype: str = setting(flag="--dtype", default="auto", choices=DTYPES, help="--phases: the server's dtype")
    scheduler: str | None = setting(
        flag="--scheduler",
        default=None,
        choices=SCHEDULERS,
        help="--phases; unset: the server's default for the model (SD-Turbo's own Euler, else dpmsolver++)",
    )
    attention: str = setting(flag="--attention", default="sdpa", choices=ATTENTION, help="--phases")
    torch_compile: bool = setting(flag="--torch-compile", default=False, help="--phases: cuda only")
    vae: str = setting(
        flag="--vae", default="full", choices=contract.VAE_KINDS, help="--phases: tiny decodes with TAESD"
    )
    batches: tuple[Count, ...] = setting(
        flag="--batches", default=(1, 2, 4, 8), min_length=1, help="--phases: images per pipeline call"
    )
    calls: int = setting(flag="--calls", default=2, ge=1, help="--phases: timed calls per batch size")
    rounds: int = setting(
        flag="--rounds", default=2, ge=1, help="--phases: batches per served level (requests = batch x rounds)"
    )
    modes: tuple[str, ...] = setting(
        flag="--modes",
        default=DEFAULT_MODES,
        check=mode_texts,
        allowed="a comma-separated list of STEPS/GUIDANCE (text to image) or STEPS/GUIDANCE/STRENGTH "
        "(image to image), or none",
        help="--phases: generation modes timed in process after the batch table",
    )
    mode_batches: tuple[Count, ...] = setting(
        flag="--mode-batches", default=(1,), min_length=1, help="--phases: images per call for --modes"
    )
    reference: str = setting(
        flag="--reference",
        default=DEFAULT_REFERENCE,
        check=one_mode,
        allowed="STEPS/GUIDANCE or STEPS/GUIDANCE/STRENGTH",
        help="--phases: the mode every mode's time is compared with (timed too when --modes leaves it out)",
    )

    def check(self) -> None:
        if self.phases and self.url is not None:
            raise SettingsError("--phases starts its own server: it is not allowed with --url")
        for flag, batches in (("--batches", self.batches), ("--mode-batches", self.mode_batches)):
            if self.phases and max(batches) > contract.MAX_BATCH_LIMIT:
                raise SettingsError(
                    f"{flag}: {max(batches)} is not allowed; allowed: at most {contract.MAX_BATCH_LIMIT}"
                )

    def mode_list(self) -> list[Mode]:
        """The modes to time: --modes, then the reference when they leave it out; none for --modes none."""
        if self.modes == ("none",):
            return []
        modes = [parse_mode(text) for text in dict.fromkeys(self.modes)]
        reference = parse_mode(self.reference)
        return modes if reference in modes else [*modes, reference]

    @property
    def threads(self) -> int:
        """The intra-op threads to use: as given, else 1 for the batching benchmark and auto for phases."""
        if self.torch_threads is not None:
            return self.torch_threads
        return 0 if self.phases else 1

    def server_settings(self) -> Settings:
        """What the in-process backend and the served server both run with (--phases)."""
        # No --scheduler: the server's own default for the model, in process and served alike.
        chosen: dict[str, Any] = {"scheduler": self.scheduler} if self.scheduler else {}
        return Settings(
            model_id=self.model,
            device=self.device,
            dtype=self.dtype,
            **chosen,
            attention=self.attention,
            torch_compile=self.torch_compile,
            vae=self.vae,
            torch_threads=self.threads,
            height=self.height,
            width=self.width,
            max_batch=max(self.batches),
            auth="none",
        )

    def server_env(self) -> dict[str, str]:
        """The same settings as the environment of a `python -m runtime.server` process."""
        s = self.server_settings()
        env = {
            contract.ENV_DEVICE: s.device or "cpu",
            contract.ENV_DTYPE: s.dtype,
            contract.ENV_ATTENTION: s.attention,
            contract.ENV_TORCH_COMPILE: "1" if s.torch_compile else "0",
            contract.ENV_VAE: s.vae,
            contract.ENV_TORCH_THREADS: str(s.torch_threads),
            contract.ENV_WORKERS: "1",  # the phases time one pipeline: served, the same one pipeline
            contract.ENV_HEIGHT: str(s.height),
            contract.ENV_WIDTH: str(s.width),
            contract.ENV_MAX_BATCH: str(s.max_batch),
            contract.ENV_AUTH: s.auth,
        }
        if s.scheduler:  # unset: the server picks the model's default, as it did in process
            env[contract.ENV_SCHEDULER] = s.scheduler
        return env


def run_phases(args: BenchSettings, body: dict[str, Any]) -> int:
    """In-process phase times per batch size, then the served images/s at the same batch sizes."""
    from runtime.bench import phases
    from runtime.server.backends import BatchParams

    settings = args.server_settings()
    load_at_start = os.getloadavg()[0]  # a shared machine's other work shows in every figure: say how much
    print(f"loading {args.model} in process ({args.device}, {args.dtype})", flush=True)
    backend = phases.load_backend(settings)
    print(f"loaded: {backend.description}", flush=True)
    backend_scheduler = type(backend.pipe.scheduler).__name__
    params = BatchParams(args.steps, args.guidance_scale, args.width, args.height)
    print(phases.PHASE_HEAD, flush=True)
    results = phases.measure(backend, params, args.batches, args.calls, lambda line: print(line, flush=True))
    modes = args.mode_list()
    reference = parse_mode(args.reference)
    mode_results: list[phases.ModeResult] = []
    if modes:
        print(phases.MODE_HEAD, flush=True)
        mode_results = phases.measure_modes(
            backend,
            modes,
            args.mode_batches,
            args.calls,
            (args.width, args.height),
            lambda r: print(phases.format_mode_row(r), flush=True),
        )
    phases.drop_pipeline(backend)
    del backend

    served: dict[int, tuple[float, float | None]] = {}
    proc, url = start_server(args.model, args.server_env(), str(args.log))
    try:
        for batch in args.batches:
            run_level(url, batch, batch, body, "warm-up")  # the first batch of each size pays kernel selection
            level = run_level(url, batch, batch * args.rounds, body, f"served batch {batch}")
            if level.errors:
                print(f"served batch {batch}: {level.errors} of {level.requests} requests failed", flush=True)
            served[batch] = (level.images_per_s, level.mean_batch)
            mean = f"{level.mean_batch:.2f}" if level.mean_batch is not None else "n/a"
            print(f"served batch {batch}: {level.images_per_s:.3f} images/s, mean batch {mean}", flush=True)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    print()
    print(
        f"{args.model} {args.width}x{args.height}, {args.steps} steps, guidance {args.guidance_scale}, "
        f"{args.device} {args.dtype}, {backend_scheduler}, {args.attention} attention, "
        f"{settings.torch_threads or 'auto'} CPU threads; in process: median of {args.calls} calls; "
        f"served: {args.rounds} batches per size; load average {load_at_start:.1f} at the start, "
        f"{os.getloadavg()[0]:.1f} at the end"
    )
    print(phases.format_phase_table(results, served))
    if mode_results:
        print()
        print(
            f"generation modes (STEPS/GUIDANCE[/STRENGTH]) at {args.width}x{args.height}, in process, median of "
            f"{args.calls} calls; x reference: end-to-end time over {reference}'s at the same batch"
        )
        print(phases.format_mode_table(mode_results, reference))
        for line in phases.speedup_lines(mode_results, reference):
            print(line)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = BenchSettings.from_args(argv)
    except SettingsError as exc:
        return error_exit(BenchSettings.PROG, exc)
    levels = list(args.concurrency)
    body = {
        "prompt": "a lighthouse on a cliff at dawn",
        "steps": args.steps,
        "guidance_scale": args.guidance_scale,
        "width": args.width,
        "height": args.height,
        "response_format": "png",
    }
    if args.phases:
        return run_phases(args, body)
    results: list[LevelResult] = []

    def warm(url: str, config: str) -> None:
        run_level(url, max(levels), max(levels) * 2, body, config)  # kernels for every batch size

    def level(url: str, config: str, c: int) -> None:
        r = run_level(url, c, args.requests, body, config)
        print(format_table([r]).splitlines()[-1], flush=True)
        results.append(r)

    if args.url is not None:
        wait_ready(args.url, 60)
        warm(args.url, "server")
        for c in levels:
            level(args.url, "server", c)
        print(format_table(results))
        return 0

    # Both servers run side by side and the levels alternate between them, so a change in
    # background load on a shared machine hits both configurations alike.
    # One pipeline per server (no worker processes): this compares batching, at the same threads as the direct call.
    threads = {contract.ENV_TORCH_THREADS: str(args.threads), contract.ENV_WORKERS: "1", contract.ENV_AUTH: "none"}
    configs = [("MAX_BATCH=1", {contract.ENV_MAX_BATCH: "1", **threads}), ("default batching", threads)]
    servers: list[tuple[str, subprocess.Popen[bytes], str]] = []
    direct: float | None = None
    try:
        for name, env in configs:
            proc, url = start_server(args.model, env, str(args.log))
            servers.append((name, proc, url))
            warm(url, name)
        # The direct call is measured right before and right after the concurrency-1 runs, so
        # the served and direct latencies are compared under the same background load.
        direct_times: list[float] = []
        for c in levels:
            if c == 1 and args.model == TINY_MODEL_ID:
                direct_times += direct_pipeline_ms(body, args.direct_calls, args.threads)
            for name, _, url in servers:
                level(url, name, c)
            if c == 1 and args.model == TINY_MODEL_ID:
                direct_times += direct_pipeline_ms(body, args.direct_calls, args.threads)
        if direct_times:
            direct = statistics.median(direct_times)
            print(f"direct pipeline call: p50 {direct:.1f} ms over {len(direct_times)} calls", flush=True)
    finally:
        for _, proc, _ in servers:
            proc.send_signal(signal.SIGTERM)
        for _, proc, _ in servers:
            proc.wait(timeout=60)
    results.sort(key=lambda r: (r.config != "MAX_BATCH=1", r.concurrency))
    print()
    print(format_table(results))
    print()
    print("batching vs MAX_BATCH=1 (images/s): " + speedups(results, "MAX_BATCH=1", "default batching"))
    if direct is not None:
        for r in results:
            if r.concurrency == 1:
                print(
                    f"{r.config}: concurrency-1 p50 {r.pct(50):.1f} ms = {r.pct(50) / direct:.2f}x the direct call "
                    f"({direct:.1f} ms); the server's own pipeline time p50 {r.pct(50, r.inference_ms):.1f} ms"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
