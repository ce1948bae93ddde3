"""End to end on loopback: two real inference servers (tiny model), one behind a latency-adding
proxy. The client picks the faster; killed in the middle of a request, it fails over and the image
still arrives."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from runtime.client import client as c
from spec import contract
from tests.runtime.conftest import ROOT

LOOPBACK = "127.0.0.1"
DELAY_S = 0.2  # per forwarded chunk and direction: a /healthz round trip gains ~400 ms
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
QUICK = c.ImageRequest(prompt="a cat", steps=2, width=64, height=64, seed=1)
# Long enough (~0.15 s on an idle tiny model, vs ~1 ms from POST to SIGKILL) to be killed while it works.
SLOW = c.ImageRequest(prompt="a lighthouse at dawn", steps=8, width=96, height=96, seed=2)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


class DelayProxy:
    """TCP proxy on loopback adding ``delay_s`` to every chunk in both directions; it notes when
    a ``POST`` went through, so a test can kill the server while it works on that request."""

    def __init__(self, upstream_port: int, delay_s: float) -> None:
        self.upstream_port, self.delay_s = upstream_port, delay_s
        self.post_seen = threading.Event()
        self._listener = socket.create_server((LOOPBACK, 0))
        self.port = int(self._listener.getsockname()[1])
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                downstream, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection((LOOPBACK, self.upstream_port))
            except OSError:
                downstream.close()
                continue
            threading.Thread(target=self._pump, args=(downstream, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, downstream, False), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, to_server: bool) -> None:
        try:
            while chunk := source.recv(65536):
                time.sleep(self.delay_s)
                sink.sendall(chunk)
                if to_server and chunk.startswith(b"POST "):
                    self.post_seen.set()
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def close(self) -> None:
        self._closed = True
        self._listener.close()


@dataclass
class Server:
    name: str
    process: subprocess.Popen[bytes]
    proxy: DelayProxy

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.proxy.port}"


def start_server(port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    command = [sys.executable, "-m", "runtime.server", "--model", "tiny", "--host", LOOPBACK, "--port", str(port)]
    command += ["--metrics-sink", "none", "--no-ui", "--max-batch", "1"]
    with log.open("wb") as out:
        return subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)


def wait_ready(port: int, process: subprocess.Popen[bytes], log: Path, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"server on {port} exited {process.returncode}: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"http://{LOOPBACK}:{port}{contract.READY_PATH}", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    pytest.fail(f"server on {port} not ready after {timeout_s}s: {log.read_text()[-2000:]}")


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Server]]:
    logs = tmp_path_factory.mktemp("servers")
    ports = {"fast": free_port(), "slow": free_port()}
    processes = {name: start_server(port, logs / f"{name}.log") for name, port in ports.items()}
    try:
        for name, port in ports.items():  # both load in parallel; wait for each
            wait_ready(port, processes[name], logs / f"{name}.log")
        yield {
            "fast": Server("fast", processes["fast"], DelayProxy(ports["fast"], 0.0)),
            "slow": Server("slow", processes["slow"], DelayProxy(ports["slow"], DELAY_S)),
        }
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
            process.wait(timeout=10)


def inventory(servers: dict[str, Server], *extra: object) -> dict[str, object]:
    entries: list[object] = [
        {
            "endpoint_id": f"local/serving/sd/{s.name}",
            "url": s.url,
            "location": "us-west-2-lax-1a",
            "accelerator": "cpu",
            "model": "tiny",
            "cost_weight": 10,
            "health": "ready",
        }
        for s in (servers["slow"], servers["fast"])  # the slow one first: order must come from probing
    ]
    return {"endpoints": [*entries, *extra]}


def test_cli_picks_the_faster_endpoint_and_skips_malformed_entries(servers: dict[str, Server], tmp_path: Path) -> None:
    endpoints_file = tmp_path / "endpoints.json"
    endpoints_file.write_text(json.dumps(inventory(servers, {"endpoint_id": "broken", "url": 42}, "junk")))
    out = tmp_path / "out.png"
    command = [sys.executable, "-m", "runtime.client", "a cat", "-o", str(out), "--endpoints-file", str(endpoints_file)]
    command += ["--steps", "2", "--width", "64", "--height", "64", "--seed", "1", "--deadline", "60"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=90, check=False)
    assert done.returncode == 0, done.stderr
    assert out.read_bytes().startswith(PNG_MAGIC)
    assert "served by local/serving/sd/fast" in done.stdout
    assert "attempt local/serving/sd/fast: ok" in done.stdout
    assert done.stderr.count("warning: inventory entry") == 2  # skipped, not fatal


def test_library_orders_by_measured_latency(servers: dict[str, Server]) -> None:
    with c.EdgeDiffusionClient(endpoints=inventory(servers)["endpoints"]) as client:  # type: ignore[arg-type]
        endpoints, _ = client.load_inventory()
        probes = {p.endpoint.endpoint_id: p.rtt_ms for p in client.probe_all(endpoints)}
        result = client.generate(QUICK, deadline_s=60)
    fast, slow = probes["local/serving/sd/fast"], probes["local/serving/sd/slow"]
    assert fast is not None and slow is not None and slow - fast > DELAY_S * 1000  # ~400 ms apart
    assert result.endpoint.endpoint_id == "local/serving/sd/fast"
    assert [a.outcome for a in result.attempts] == ["ok"]
    assert result.images[0].startswith(PNG_MAGIC) and result.seed == 1


def test_killing_the_serving_endpoint_mid_request_fails_over(servers: dict[str, Server]) -> None:
    fast = servers["fast"]
    fast.proxy.post_seen.clear()
    client = c.EdgeDiffusionClient(endpoints=inventory(servers)["endpoints"])  # type: ignore[arg-type]
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(client.generate, SLOW, deadline_s=60)
        assert fast.proxy.post_seen.wait(30), "the client never sent its request to the faster endpoint"
        fast.process.send_signal(signal.SIGKILL)  # the node or pod dies while it generates
        result = pending.result(timeout=60)
    client.close()
    assert [a.endpoint.endpoint_id for a in result.attempts] == ["local/serving/sd/fast", "local/serving/sd/slow"]
    assert result.attempts[0].outcome.startswith("connection error")
    assert result.attempts[1].outcome == "ok"
    assert result.endpoint.endpoint_id == "local/serving/sd/slow"
    assert result.images[0].startswith(PNG_MAGIC)
    assert result.timings["total_s"] < 60
