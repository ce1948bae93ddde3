"""Driving a server over HTTP and timing it: closed-loop clients per concurrency level, tables.

Clients are threads with keep-alive `http.client` connections: the lightest client Python
has, because on a small machine the client competes with the server for the same cores.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from spec import contract


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


def _post(conn: http.client.HTTPConnection, path: str, body: bytes) -> tuple[int, float | None]:
    conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    resp.read()
    inference = resp.getheader("X-Inference-Ms")
    return resp.status, float(inference) if inference else None


def run_level(url: str, concurrency: int, requests: int, body: dict[str, Any], config: str) -> LevelResult:
    """`requests` requests from `concurrency` closed-loop clients (each sends, waits, sends again)."""
    parsed = urllib.parse.urlparse(url)
    host, port = parsed.hostname or "127.0.0.1", parsed.port or 80
    latencies: list[float] = []
    inference: list[float] = []
    errors = 0
    lock = threading.Lock()
    counter = iter(range(requests))

    def client() -> None:
        nonlocal errors
        conn = http.client.HTTPConnection(host, port, timeout=300)
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                break
            payload = json.dumps({**body, "seed": i}).encode()
            started = time.perf_counter()
            try:
                status, server_ms = _post(conn, contract.IMAGES_PATH, payload)
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection(host, port, timeout=300)
                status, server_ms = 0, None
            elapsed = (time.perf_counter() - started) * 1000
            with lock:
                if status == 200:
                    latencies.append(elapsed)
                    if server_ms is not None:
                        inference.append(server_ms)
                else:
                    errors += 1
        conn.close()

    before = _batch_metrics(url)
    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - started
    after = _batch_metrics(url)
    mean_batch = None
    if before and after and after[1] > before[1]:
        mean_batch = (after[0] - before[0]) / (after[1] - before[1])
    return LevelResult(config, concurrency, requests, errors, seconds, latencies, mean_batch, inference)


def _batch_metrics(url: str) -> tuple[float, float] | None:
    """(sum, count) of the server's batch-size histogram, to report the mean batch per level."""
    parsed = urllib.parse.urlparse(url)
    try:
        conn = http.client.HTTPConnection(parsed.hostname or "127.0.0.1", parsed.port or 80, timeout=10)
        conn.request("GET", contract.METRICS_PATH)
        text = conn.getresponse().read().decode()
        conn.close()
    except OSError:
        return None
    values = {}
    for line in text.splitlines():
        for suffix in ("_sum", "_count"):
            if line.startswith(contract.PROM_BATCH_SIZE + suffix + " "):
                values[suffix] = float(line.split()[1])
    return (values["_sum"], values["_count"]) if len(values) == 2 else None


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


def start_server(model: str, env_overrides: dict[str, str], log_path: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **env_overrides}
    cmd = [
        sys.executable,
        "-m",
        "runtime.server",
        "--model",
        model,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--metrics-sink",
        "none",
        "--no-ui",
    ]
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
