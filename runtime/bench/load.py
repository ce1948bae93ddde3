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
SERVE_ARGS: Final = ("--max-batch", "8")


@dataclass
class Round:
    """One round of the comparison: each figure measured right before or after its counterpart."""

    inprocess_images_per_s: float  # the pipeline called here with batches of `batch`
    served_images_per_s: float  # `concurrency` closed-loop HTTP clients
    mean_batch: float | None
    direct_ms: float  # median direct single-image call
    served_c1_ms: float  # median HTTP latency of one client
    served_c1_device_ms: float  # median of the server's own pipeline time for those (X-Inference-Ms)

    @property
    def throughput_ratio(self) -> float:
        return self.served_images_per_s / self.inprocess_images_per_s

    @property
    def latency_ratio(self) -> float:
        return self.served_c1_ms / self.direct_ms


def inprocess_timer(model: str, threads: int) -> Callable[[dict[str, Any], int, int], list[float]]:
    """Seconds per call of the server's own backend (runtime.server.backends) in this process.

    Loaded once; the returned function times `calls` generate() calls of `batch` images.
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
    concurrency: int = 8,
    seconds_per_figure: float = 2.0,
    threads: int = 0,
    log_path: str,
    report: Callable[[str], None] = print,
) -> list[Round]:
    """Alternate in-process and served measurements `rounds` times (see the module doc)."""
    timed = inprocess_timer(model, threads)
    proc, url = start_server(model, {**SERVE_ENV, contract.ENV_TORCH_THREADS: str(threads)}, log_path, SERVE_ARGS)
    results: list[Round] = []
    try:
        run_level(url, concurrency, concurrency * 4, body, "warm-up")
        run_level(url, 1, 4, body, "warm-up")
        batch_s = statistics.median(timed(body, concurrency, 3))
        single_s = statistics.median(timed(body, 1, 3))
        batch_calls = max(3, round(seconds_per_figure / batch_s))
        served_requests = batch_calls * concurrency
        single_calls = max(5, round(seconds_per_figure / single_s))
        for i in range(rounds):
            before = timed(body, concurrency, batch_calls // 2)
            level = run_level(url, concurrency, served_requests, body, "served")
            after = timed(body, concurrency, batch_calls - batch_calls // 2)
            inproc = concurrency * len(before + after) / sum(before + after)
            direct = timed(body, 1, single_calls // 2)
            one = run_level(url, 1, single_calls, body, "served c1")
            direct += timed(body, 1, single_calls - single_calls // 2)
            r = Round(
                inproc,
                level.images_per_s,
                level.mean_batch,
                statistics.median(direct) * 1000,
                one.pct(50),
                one.pct(50, one.inference_ms),
            )
            results.append(r)
            batch = f"{r.mean_batch:.2f}" if r.mean_batch is not None else "n/a"
            report(
                f"round {i + 1}: in process batch {concurrency} {r.inprocess_images_per_s:.1f} images/s, served at "
                f"concurrency {concurrency} {r.served_images_per_s:.1f} (mean batch {batch}, {level.errors} errors): "
                f"{r.throughput_ratio:.2f}; direct call {r.direct_ms:.1f} ms, served at concurrency 1 p50 "
                f"{r.served_c1_ms:.1f} ms: {r.latency_ratio:.2f} (its pipeline call {r.served_c1_device_ms:.1f} ms)"
            )
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    return results


class CompareSettings(ProgramSettings):
    """How long to compare, and with which request (the tiny model's defaults)."""

    PROG: ClassVar[str] = "python -m runtime.bench.load"
    DESCRIPTION: ClassVar[str] = "Served images/s and latency against the same pipeline called in process."

    model: str = setting(flag="--model", default=TINY_MODEL_ID)
    rounds: int = setting(flag="--rounds", default=6, ge=1)
    concurrency: int = setting(flag="--concurrency", default=8, ge=1, help="clients, and the in-process batch")
    seconds: float = setting(flag="--seconds", default=2.0, gt=0, help="per figure per round")
    steps: int = setting(flag="--steps", default=4, ge=1)
    width: int = setting(flag="--width", default=TINY_IMAGE_SIZE, ge=1)
    height: int = setting(flag="--height", default=TINY_IMAGE_SIZE, ge=1)
    torch_threads: int = setting(flag="--torch-threads", default=0, ge=0, help="0: the server's auto choice")
    log: Path = setting(flag="--log", default=Path(tempfile.gettempdir()) / "edge-diffusion-compare-server.log")


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = CompareSettings.from_args(argv)
    except SettingsError as exc:
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
        f"{args.model} {args.width}x{args.height}, {args.steps} steps; server: `make serve` ({' '.join(SERVE_ARGS)}); "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    rounds = compare_served(
        body,
        model=args.model,
        rounds=args.rounds,
        concurrency=args.concurrency,
        seconds_per_figure=args.seconds,
        threads=args.torch_threads,
        log_path=str(args.log),
        report=lambda line: print(line, flush=True),
    )
    throughput = statistics.median(r.throughput_ratio for r in rounds)
    latency = statistics.median(r.latency_ratio for r in rounds)
    print(
        f"median over {len(rounds)} rounds: served/in-process images/s {throughput:.2f}; "
        f"served concurrency-1 latency / direct call {latency:.2f}; load average {os.getloadavg()[0]:.1f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
