"""Driving a server over HTTP and timing it: closed-loop clients per concurrency level, tables.

Clients are threads with keep-alive `http.client` connections: the lightest client Python
has, because on a small machine the client competes with the server for the same cores
(measured: about 0.2 ms of client CPU per request, against 0.3-0.5 ms in the server).

`compare_served` answers "what does serving cost": the images/s a server started as
`make serve` starts it delivers to 8 closed-loop clients against the same pipeline called in
this process with batches of 8, and its concurrency-1 latency against a direct call. On a
shared machine both figures are measured in alternating short rounds, so a change in
background load hits both alike; the ratio of each round is reported, with their median.

    python -m runtime.bench.load --rounds 6
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Final

from plan import contract
from runtime.server.tiny import TINY_IMAGE_SIZE, TINY_MODEL_ID
from runtime.settings import ProgramSettings, SettingsError, error_exit, setting


@dataclass
class LevelResult:
    config: str
    concurrency: int
    requests: int
    errors: int
    seconds: float
    latencies_ms: list[float] = field(default_factory=list)
    mean_batch: float | None = None
    inference_ms: list[float] = field(default_factory=list)  # server-side pipeline time (X-Inference-Ms)

    @property
    def images_per_s(self) -> float:
        return (self.requests - self.errors) / self.seconds if self.seconds else 0.0

    def pct(self, q: float, values: list[float] | None = None) -> float:
        ordered = sorted(self.latencies_ms if values is None else values)
        if not ordered:
            return float("nan")
        return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def _post(conn: http.client.HTTPConnection, path: str, body: bytes) -> tuple[int, float | None, int | None]:
    """(status, the server's pipeline ms, images in the device call that made this one)."""
    conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    resp.read()
    inference = resp.getheader("X-Inference-Ms")
    batch = resp.getheader("X-Batch-Size")
    return resp.status, float(inference) if inference else None, int(batch) if batch and batch.isdigit() else None


def run_level(url: str, concurrency: int, requests: int, body: dict[str, Any], config: str) -> LevelResult:
    """`requests` requests from `concurrency` closed-loop clients (each sends, waits, sends again).

    The clock starts once every client is connected: thread start-up and TCP handshakes are
    the load generator's cost, not the server's, and would otherwise split the first batch.
    The mean batch is images per device call, from each answer's X-Batch-Size: a request answered
    from a call of b images is 1/b of that call, so calls = sum(1/b) over the answers (exact when
    these clients are the server's only traffic, each asking one image).
    """
    parsed = urllib.parse.urlparse(url)
    host, port = parsed.hostname or "127.0.0.1", parsed.port or 80
    latencies: list[float] = []
    inference: list[float] = []
    errors = 0
    calls = 0.0  # device calls the answered requests came from (sum of 1 / X-Batch-Size)
    batched = 0  # answered requests that said their batch size
    lock = threading.Lock()
    counter = iter(range(requests))
    connected = threading.Barrier(concurrency + 1)

    def client() -> None:
        nonlocal errors, calls, batched
        conn = http.client.HTTPConnection(host, port, timeout=300)
        try:
            conn.connect()
        finally:
            connected.wait()
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                break
            payload = json.dumps({**body, "seed": i}).encode()
            started = time.perf_counter()
            try:
                status, server_ms, batch = _post(conn, contract.IMAGES_PATH, payload)
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection(host, port, timeout=300)
                status, server_ms, batch = 0, None, None
            elapsed = (time.perf_counter() - started) * 1000
            with lock:
                if status == 200:
                    latencies.append(elapsed)
                    if server_ms is not None:
                        inference.append(server_ms)
                    if batch:
                        calls += 1 / batch
                        batched += 1
                else:
                    errors += 1
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for t in threads:
        t.start()
    connected.wait()
    started = time.perf_counter()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - started
    mean_batch = batched / calls if calls else None
    return LevelResult(config, concurrency, requests, errors, seconds, latencies, mean_batch, inference)


def wait_ready(url: str, timeout_s: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    parsed = urllib.parse.urlparse(url)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            conn = http.client.HTTPConnection(parsed.hostname or "127.0.0.1", parsed.port or 80, timeout=2)
            conn.request("GET", contract.READY_PATH)
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.25)
    raise TimeoutError(f"{url} not ready after {timeout_s}s")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(
    model: str,
    env_overrides: dict[str, str],
    log_path: str,
    args: Sequence[str] = ("--metrics-sink", "none", "--no-ui", "--auth", "none"),
) -> tuple[subprocess.Popen[bytes], str]:
    """`python -m runtime.server --model <model>` on a free loopback port with `args`; returns once ready.

    Its metrics listener takes any free port: servers started side by side do not collide on it.
    """
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **env_overrides}
    cmd = [sys.executable, "-m", "runtime.server", "--model", model, "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--metrics-port", "0", *args]
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, 300, proc)
    return proc, url


def direct_pipeline_ms(body: dict[str, Any], calls: int, threads: int) -> list[float]:
    """Latency of calling the tiny pipeline directly (no server), same parameters and threads as the server."""
    import torch

    from runtime.server.backends import intra_op_threads
    from runtime.server.tiny import build_tiny_pipeline

    torch.set_num_threads(intra_op_threads(threads))
    pipe = build_tiny_pipeline()
    times = []
    for i in range(calls + 3):
        started = time.perf_counter()
        with torch.inference_mode():
            pipe(
                prompt=[body["prompt"]],
                num_inference_steps=body["steps"],
                guidance_scale=body["guidance_scale"],
                width=body["width"],
                height=body["height"],
                generator=[torch.Generator().manual_seed(i)],
                output_type="np",
            )
        if i >= 3:  # the first calls pay one-off kernel selection
            times.append((time.perf_counter() - started) * 1000)
    return times


def format_table(results: Sequence[LevelResult]) -> str:
    head = (
        "| config | concurrency | requests | errors | images/s | p50 ms | p90 ms | p99 ms | mean batch "
        "| server inference p50 ms |"
    )
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        mb = f"{r.mean_batch:.2f}" if r.mean_batch is not None else "n/a"
        lines.append(
            f"| {r.config} | {r.concurrency} | {r.requests} | {r.errors} | {r.images_per_s:.1f} | "
            f"{r.pct(50):.1f} | {r.pct(90):.1f} | {r.pct(99):.1f} | {mb} | {r.pct(50, r.inference_ms):.1f} |"
        )
    return "\n".join(lines)


def speedups(results: Sequence[LevelResult], baseline: str, other: str) -> str:
    base = {r.concurrency: r for r in results if r.config == baseline}
    out = []
    for r in results:
        if r.config == other and r.concurrency in base and base[r.concurrency].images_per_s:
            out.append(f"concurrency {r.concurrency}: {r.images_per_s / base[r.concurrency].images_per_s:.2f}x")
    return "; ".join(out)


# --- served vs in process -------------------------------------------------------------------
# `make serve`'s command line (the Makefile's serve target), less host and port.
SERVE_ENV: Final = {contract.ENV_AUTH: "none", contract.ENV_UI: "1"}
SERVE_MAX_BATCH: Final = 8
SERVE_ARGS: Final = ("--max-batch", str(SERVE_MAX_BATCH), "--docs")
DEFAULT_LEVELS: Final = (8, 16)


@dataclass
class Round:
    """One round of the comparison: each figure measured right before or after its counterpart.

    In process is the best of the thread counts tried (``threads``: count -> images/s, or ms for the
    direct call), so the server is held to the best the pipeline can do on this machine."""

    inprocess_images_per_s: dict[int, float]  # concurrency level -> best in-process images/s at its batch
    served_images_per_s: dict[int, float]  # concurrency level -> served images/s
    mean_batch: dict[int, float | None]
    direct_ms: float  # best median direct single-image call
    served_c1_ms: float  # median HTTP latency of one client
    served_c1_device_ms: float  # median of the server's own pipeline time for those (X-Inference-Ms)
    threads: dict[str, int] = field(default_factory=dict)  # figure -> the thread count that gave its best

    def throughput_ratio(self, level: int) -> float:
        return self.served_images_per_s[level] / self.inprocess_images_per_s[level]

    @property
    def latency_ratio(self) -> float:
        return self.served_c1_ms / self.direct_ms


def thread_counts(cpus: int) -> tuple[int, ...]:
    """The in-process thread counts to try: 1, every count up to 4, then halves and all CPUs."""
    return tuple(sorted({1, *range(1, min(cpus, 4) + 1), max(1, cpus // 2), max(1, cpus - 1), cpus}))


def inprocess_timer(model: str, threads: int) -> Callable[[dict[str, Any], int, int], list[float]]:
    """Seconds per call of the server's own backend (runtime.server.backends) in this process.

    Loaded once; the returned function times `calls` generate() calls of `batch` images with the
    thread count torch has when it is called (``torch.set_num_threads`` between calls changes it).
    """
    from runtime.server.backends import BatchParams, ImageSpec, create_backend
    from runtime.server.settings import Settings

    backend = create_backend(Settings(model_id=model, torch_threads=threads, auth="none", metrics_sink="none"))
    backend.load()

    def timed(body: dict[str, Any], batch: int, calls: int) -> list[float]:
        params = BatchParams(body["steps"], body["guidance_scale"], body["width"], body["height"])
        specs = [ImageSpec(body["prompt"], "", i) for i in range(batch)]
        backend.generate(params, specs, lambda: False)  # a new batch size pays kernel selection once
        seconds = []
        for _ in range(calls):
            started = time.perf_counter()
            backend.generate(params, specs, lambda: False)
            seconds.append(time.perf_counter() - started)
        return seconds

    return timed


def compare_served(
    body: dict[str, Any],
    *,
    model: str,
    rounds: int,
    levels: Sequence[int] = DEFAULT_LEVELS,
    seconds_per_figure: float = 2.0,
    threads: int = 0,
    log_path: str,
    report: Callable[[str], None] = print,
) -> list[Round]:
    """Alternate in-process and served measurements `rounds` times (see the module doc).

    Level ``c``: ``c`` closed-loop clients against the pipeline called here with batches of
    ``min(c, 8)`` (the server's batch at that level), at each of :func:`thread_counts`; then one
    client against the fastest direct single-image call."""
    import torch

    from runtime.server.backends import available_cpus

    timed = inprocess_timer(model, 1)
    counts = thread_counts(available_cpus())
    proc, url = start_server(model, {**SERVE_ENV, contract.ENV_TORCH_THREADS: str(threads)}, log_path, SERVE_ARGS)

    def best(batch: int, calls: int) -> tuple[float, int]:
        """The fastest median seconds per call over the thread counts, and that count."""
        found = []
        for count in counts:
            torch.set_num_threads(count)
            found.append((statistics.median(timed(body, batch, calls)), count))
        return min(found)

    results: list[Round] = []
    try:
        for level in levels:
            run_level(url, level, level * 4, body, "warm-up")
        run_level(url, 1, 4, body, "warm-up")
        for i in range(rounds):
            inproc: dict[int, float] = {}
            served: dict[int, float] = {}
            batches: dict[int, float | None] = {}
            used: dict[str, int] = {}
            for level in levels:
                batch = min(level, SERVE_MAX_BATCH)
                batch_s, _ = best(batch, 3)
                calls = max(3, round(seconds_per_figure / batch_s / 2))
                before, count_before = best(batch, calls)
                result = run_level(url, level, max(level * 4, round(seconds_per_figure / batch_s) * batch), body, "c")
                after, count_after = best(batch, calls)
                inproc[level] = batch / min(before, after)
                used[f"c{level}"] = count_before if before <= after else count_after
                served[level], batches[level] = result.images_per_s, result.mean_batch
            single_s, _ = best(1, 3)
            calls = max(5, round(seconds_per_figure / single_s / 2))
            direct_before, count_before = best(1, calls)
            one = run_level(url, 1, 2 * calls, body, "c1")
            direct_after, count_after = best(1, calls)
            used["c1"] = count_before if direct_before <= direct_after else count_after
            r = Round(
                inproc,
                served,
                batches,
                min(direct_before, direct_after) * 1000,
                one.pct(50),
                one.pct(50, one.inference_ms),
                used,
            )
            results.append(r)
            parts = [
                f"c{level}: served {served[level]:.1f} images/s (mean batch "
                f"{batches[level] if batches[level] is None else round(batches[level] or 0, 2)}) / in process batch "
                f"{min(level, SERVE_MAX_BATCH)} {inproc[level]:.1f} ({used[f'c{level}']} threads) = "
                f"{r.throughput_ratio(level):.2f}"
                for level in levels
            ]
            parts.append(
                f"c1: served p50 {r.served_c1_ms:.1f} ms / direct {r.direct_ms:.1f} ms ({used['c1']} threads) = "
                f"{r.latency_ratio:.2f} (its pipeline call {r.served_c1_device_ms:.1f} ms)"
            )
            report(f"round {i + 1} (load {os.getloadavg()[0]:.1f}): " + "; ".join(parts))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    return results


def _levels(raw: str) -> tuple[int, ...]:
    try:
        levels = tuple(int(part) for part in raw.split(","))
    except ValueError:
        levels = ()
    if not levels or min(levels) < 1:
        raise ValueError(f"invalid --concurrency {raw!r}: allowed integers >= 1 separated by commas, e.g. 8,16")
    return levels


class CompareSettings(ProgramSettings):
    """How long to compare, and with which request (the tiny model's defaults)."""

    PROG: ClassVar[str] = "python -m runtime.bench.load"
    DESCRIPTION: ClassVar[str] = "Served images/s and latency against the same pipeline called in process."

    model: str = setting(flag="--model", default=TINY_MODEL_ID)
    rounds: int = setting(flag="--rounds", default=6, ge=1)
    concurrency: str = setting(
        flag="--concurrency",
        default=",".join(str(level) for level in DEFAULT_LEVELS),
        help="client counts, comma-separated; each against in-process batches of min(count, 8)",
    )
    seconds: float = setting(flag="--seconds", default=2.0, gt=0, help="per figure per round")
    steps: int = setting(flag="--steps", default=4, ge=1)
    width: int = setting(flag="--width", default=TINY_IMAGE_SIZE, ge=1)
    height: int = setting(flag="--height", default=TINY_IMAGE_SIZE, ge=1)
    torch_threads: int = setting(flag="--torch-threads", default=0, ge=0, help="the server's; 0: its auto choice")
    log: Path = setting(flag="--log", default=Path(tempfile.gettempdir()) / "edge-diffusion-compare-server.log")


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = CompareSettings.from_args(argv)
        levels = _levels(args.concurrency)
    except (SettingsError, ValueError) as exc:
        return error_exit(CompareSettings.PROG, exc)
    body = {
        "prompt": "a lighthouse on a cliff at dawn",
        "steps": args.steps,
        "guidance_scale": 7.5,
        "width": args.width,
        "height": args.height,
        "response_format": "png",
    }
    print(
        f"{args.model} {args.width}x{args.height}, {args.steps} steps; server: `make serve` ({' '.join(SERVE_ARGS)}, "
        f"UI on, torch threads {args.torch_threads or 'auto'}); {os.cpu_count()} CPUs, load average "
        f"{os.getloadavg()[0]:.1f}",
        flush=True,
    )
    rounds = compare_served(
        body,
        model=args.model,
        rounds=args.rounds,
        levels=levels,
        seconds_per_figure=args.seconds,
        threads=args.torch_threads,
        log_path=str(args.log),
        report=lambda line: print(line, flush=True),
    )
    medians = [f"c{level} {statistics.median(r.throughput_ratio(level) for r in rounds):.2f}" for level in levels]
    latency = statistics.median(r.latency_ratio for r in rounds)
    print(
        f"median over {len(rounds)} rounds: served / best in process images/s {', '.join(medians)}; "
        f"served concurrency-1 latency / direct call {latency:.2f}; load average {os.getloadavg()[0]:.1f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
