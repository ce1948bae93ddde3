"""Hostile connections against a real `python -m runtime.server` on loopback, its open-file limit at 256.

An attacker holds hundreds of idle sockets (reopening each one the server closes) and sockets that
send a request head one line a second, over plain HTTP and over TLS; meanwhile /healthz must answer
200 within a bound, the server must close every such socket, and its stderr must stay a few lines
(no "Too many open files" traceback per accept). A body that does not arrive gets 408; an idle
keep-alive connection is closed; when every connection has a request in progress a new one is
refused with the fixed 503; a connection limit the open-file limit cannot hold refuses to start.
The settings come from the environment, as in pods. Each test prints what it measured
(``pytest -s`` shows it); ``FLOOD_IDLE_SOCKETS`` and ``FLOOD_SLOW_SOCKETS`` size the flood
(default 300 and 20).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import resource
import selectors
import socket
import ssl
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from plan import contract
from tests.runtime.conftest import ROOT
from tests.runtime.server.conftest import free_port, metric_value, wait_until
from tests.tls_ca import LOOPBACK, Ca

NOFILE = 256  # the server's RLIMIT_NOFILE, soft and hard: it cannot raise it
MAX_CONNECTIONS = 100
HEADER_TIMEOUT_S = 2.0
BODY_TIMEOUT_S = 2.0
KEEP_ALIVE_S = 1
IDLE_SOCKETS = int(os.environ.get("FLOOD_IDLE_SOCKETS", "300"))
SLOW_SOCKETS = int(os.environ.get("FLOOD_SLOW_SOCKETS", "20"))
HOLD_S = 8.0  # how long the attacker keeps the flood up while /healthz is probed
PROBE_INTERVAL_S = 0.25
PROBE_BOUND_S = 2.0  # the slowest /healthz answer allowed during the flood
CLOSE_MARGIN_S = 1.5  # scheduling slack on a shared machine, on top of a timeout
STDERR_LINES_BOUND = 6  # during the flood: the listeners' interval lines, nothing per connection
LOG_WAIT_S = 15.0  # the server logs what it counted at least every 10 s (runtime.server.transport)
MISUSE = ("Too many open files", "Traceback", "out of system resource", "Exceeded concurrency limit")


def _nofile_256() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    port: int
    metrics_port: int
    stderr: Path
    tls: ssl.SSLContext | None  # the client context when the server speaks TLS

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{LOOPBACK}:{self.port}"

    def stderr_text(self) -> str:
        return self.stderr.read_text(errors="replace")

    def connect(self, timeout: float = 10.0) -> socket.socket:
        """A plain TCP connection to the server's port (no TLS handshake: idle, to a TLS server)."""
        return socket.create_connection((LOOPBACK, self.port), timeout=timeout)

    def connect_http(self, timeout: float = 10.0) -> socket.socket:
        """A connection ready for HTTP: TCP, and the TLS handshake done when the server speaks TLS."""
        sock = self.connect(timeout)
        return self.tls.wrap_socket(sock, server_hostname=LOOPBACK) if self.tls else sock

    def healthz(self) -> tuple[int, float]:
        """(status or 0 on a connection error, seconds) of GET /healthz on a new connection."""
        status, seconds, _ = self.healthz_answer()
        return status, seconds

    def healthz_answer(self) -> tuple[int, float, str]:
        """(status or 0 on a connection error, seconds, the body or the error) of GET /healthz."""
        started = time.monotonic()
        conn = (
            http.client.HTTPSConnection(LOOPBACK, self.port, context=self.tls, timeout=5)
            if self.tls
            else http.client.HTTPConnection(LOOPBACK, self.port, timeout=5)
        )
        try:
            conn.request("GET", contract.HEALTH_PATH)
            response = conn.getresponse()
            said = response.read().decode(errors="replace")
            status = response.status
        except (OSError, http.client.HTTPException) as exc:
            status, said = 0, repr(exc)
        finally:
            conn.close()
        return status, time.monotonic() - started, said


def start(tmp: Path, *, tls: Ca | None = None, env: dict[str, str] | None = None) -> Server:
    port, metrics_port = free_port(), free_port()
    full_env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        contract.ENV_AUTH: "none",
        contract.ENV_METRICS_SINK: "none",
        contract.ENV_TORCH_THREADS: "1",
        contract.ENV_METRICS_PORT: str(metrics_port),
        contract.ENV_MAX_CONNECTIONS: str(MAX_CONNECTIONS),
        contract.ENV_HEADER_TIMEOUT_S: str(HEADER_TIMEOUT_S),
        contract.ENV_BODY_TIMEOUT_S: str(BODY_TIMEOUT_S),
        contract.ENV_KEEP_ALIVE_S: str(KEEP_ALIVE_S),
        **(env or {}),
    }
    if tls is not None:
        _, chain, key = tls.write(tmp)
        full_env |= {contract.ENV_TLS_CERT_FILE: str(chain), contract.ENV_TLS_KEY_FILE: str(key)}
    stderr = tmp / "server.stderr"
    command = [sys.executable, "-m", "runtime.server", "--model", "tiny", "--host", LOOPBACK, "--port", str(port)]
    with stderr.open("wb") as err, (tmp / "server.stdout").open("wb") as out:
        proc = subprocess.Popen(command, cwd=ROOT, env=full_env, stdout=out, stderr=err, preexec_fn=_nofile_256)
    server = Server(proc, port, metrics_port, stderr, tls.client_context() if tls else None)

    def ready() -> bool:  # every worker loaded: their log lines are out before a test counts the server's lines
        assert proc.poll() is None, server.stderr_text()[-3000:]
        try:
            if httpx.get(server.url + contract.READY_PATH, verify=server.tls or True, timeout=5).status_code != 200:
                return False
        except httpx.HTTPError:
            return False
        logged = server.stderr_text()
        return "in worker process" not in logged or "device workers serving" in logged  # the others join after ready

    wait_until(ready, timeout_s=120, interval_s=0.25)
    return server


def stop(server: Server) -> None:
    server.proc.terminate()
    try:
        server.proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait()


@pytest.fixture(scope="module", autouse=True)
def _room_for_the_attacker() -> None:
    """This process holds the attacker's sockets: make room for them under its own limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = IDLE_SOCKETS + SLOW_SOCKETS + 512
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(
            resource.RLIMIT_NOFILE, (wanted if hard == resource.RLIM_INFINITY else min(wanted, hard), hard)
        )


@pytest.fixture(scope="module")
def ca() -> Ca:
    return Ca.make("edge-diffusion-connections-ca")


@pytest.fixture(scope="module", params=["http", "https"])
def server(request: pytest.FixtureRequest, ca: Ca, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = start(tmp_path_factory.mktemp(request.param), tls=ca if request.param == "https" else None)
    yield running
    stop(running)


def closed_by_peer(sock: socket.socket, wait_s: float = 0.0) -> bool:
    """Whether the server closed this socket (EOF or reset), waiting up to ``wait_s`` for it."""
    sock.settimeout(wait_s or 0.001)
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True
    except (TimeoutError, BlockingIOError, ssl.SSLWantReadError):
        return False
    except OSError:  # reset, or TLS torn down
        return True


def wait_closed(sock: socket.socket, timeout_s: float) -> float | None:
    """Seconds until the server closes ``sock``, or None when it stays open for ``timeout_s``."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if closed_by_peer(sock, 0.05):
            return time.monotonic() - started
    return None


# --- the flood ---------------------------------------------------------------------------------------


@dataclass
class Attacker:
    """Keeps IDLE_SOCKETS idle sockets open (a new one for each the server closes) and SLOW_SOCKETS that
    send a request head one header line a second (each one closed is replaced too)."""

    server: Server
    opened: int = 0
    refused_connects: int = 0
    most_held: int = 0
    slow_lived_s: list[float] = field(default_factory=list)  # from open to the server's close, per slow socket
    stop: threading.Event = field(default_factory=threading.Event)
    errors: list[str] = field(default_factory=list)

    def _open(self, slow: bool) -> tuple[socket.socket, float] | None:
        if self.stop.is_set():
            return None
        try:
            sock = self.server.connect_http(timeout=5) if slow else self.server.connect(timeout=5)
        except OSError:  # refused, or closed by the server during the TLS handshake
            self.refused_connects += 1
            return None
        self.opened += 1
        try:
            if slow:
                sock.sendall(f"GET {contract.HEALTH_PATH} HTTP/1.1\r\nHost: {LOOPBACK}\r\n".encode())
        except OSError:  # closed by the server already
            sock.close()
            return None
        sock.setblocking(False)
        return sock, time.monotonic()

    def run(self) -> None:
        try:
            self._run()
        except Exception as exc:  # reported by the test, not lost in a thread
            self.errors.append(repr(exc))

    def _run(self) -> None:
        selector = selectors.DefaultSelector()
        held: dict[socket.socket, tuple[bool, float]] = {}

        def top_up(slow: bool, count: int) -> None:
            for _ in range(count):
                opened = self._open(slow)
                if opened is not None:
                    held[opened[0]] = (slow, opened[1])
                    selector.register(opened[0], selectors.EVENT_READ)

        def drop(sock: socket.socket) -> None:
            slow, since = held.pop(sock)
            if slow:
                self.slow_lived_s.append(time.monotonic() - since)
            selector.unregister(sock)
            sock.close()

        top_up(False, IDLE_SOCKETS)
        top_up(True, SLOW_SOCKETS)
        next_line = time.monotonic() + 1.0
        while not self.stop.is_set():
            self.most_held = max(self.most_held, len(held))
            for key, _ in selector.select(timeout=0.05):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if closed_by_peer(sock):
                    drop(sock)
            if time.monotonic() >= next_line:
                next_line += 1.0
                for sock, (slow, _) in list(held.items()):
                    if slow:
                        try:
                            sock.send(b"X-Slow: 1\r\n")
                        except (BlockingIOError, ssl.SSLWantWriteError):
                            pass
                        except OSError:
                            drop(sock)
            idle = sum(1 for slow, _ in held.values() if not slow)
            top_up(False, IDLE_SOCKETS - idle)
            top_up(True, SLOW_SOCKETS - (len(held) - idle))
        for sock in list(held):
            drop(sock)


def test_a_flood_of_idle_and_slow_sockets_leaves_healthz_answering(server: Server) -> None:
    stderr_before = len(server.stderr_text().splitlines())
    attacker = Attacker(server)
    thread = threading.Thread(target=attacker.run, name="attacker", daemon=True)
    thread.start()
    time.sleep(0.5)  # the first wave is in
    probes: list[tuple[int, float]] = []
    failures: list[str] = []
    deadline = time.monotonic() + HOLD_S
    while time.monotonic() < deadline:
        status, seconds, said = server.healthz_answer()
        probes.append((status, seconds))
        if status != 200:
            failures.append(f"{status} after {seconds:.2f} s: {said[:120]}")
        time.sleep(PROBE_INTERVAL_S)
    attacker.stop.set()
    thread.join(timeout=60)
    assert not thread.is_alive() and not attacker.errors, attacker.errors
    during = server.stderr_text().splitlines()[stderr_before:]

    latencies_ms = sorted(seconds * 1000 for _, seconds in probes)
    print(
        f"\nflood over {server.url.split(':')[0]}: the attacker held {attacker.most_held} sockets at once "
        f"({IDLE_SOCKETS} idle + {SLOW_SOCKETS} sending a header line a second; {attacker.opened} opened in "
        f"{HOLD_S:g} s, {attacker.refused_connects} connects refused) against max_connections {MAX_CONNECTIONS} "
        f"under RLIMIT_NOFILE {NOFILE}; /healthz: {sum(1 for s, _ in probes if s == 200)}/{len(probes)} x 200, "
        f"p50 {statistics.median(latencies_ms):.1f} ms, max {latencies_ms[-1]:.1f} ms; "
        f"server stderr: {len(during)} lines, {sum(len(line) + 1 for line in during)} bytes during the flood"
    )
    for line in during[:5]:
        print("  server:", line[:300])
    assert [status for status, _ in probes] == [200] * len(probes), failures
    assert max(seconds for _, seconds in probes) <= PROBE_BOUND_S, probes
    assert attacker.most_held >= IDLE_SOCKETS + SLOW_SOCKETS - 5  # the flood was held, not refused at connect
    # every slow socket was closed by the server before the flood ended, none lived past the head timeout
    assert len(attacker.slow_lived_s) >= SLOW_SOCKETS, attacker.slow_lived_s
    assert max(attacker.slow_lived_s) <= HEADER_TIMEOUT_S + CLOSE_MARGIN_S, max(attacker.slow_lived_s)
    assert attacker.opened > IDLE_SOCKETS + SLOW_SOCKETS  # the server closed sockets, the attacker reopened
    metrics = httpx.get(f"http://{LOOPBACK}:{server.metrics_port}{contract.METRICS_PATH}", timeout=10)
    assert metrics.status_code == 200  # the metrics listener is not the API's: it answers after the flood

    def counted() -> bool:  # the listener's interval line: what it evicted, refused and timed out
        return any("api connections in the last" in line for line in server.stderr_text().splitlines()[stderr_before:])

    wait_until(counted, timeout_s=LOG_WAIT_S, interval_s=0.25)
    logged = server.stderr_text().splitlines()[stderr_before:]
    print("\n".join(f"  server: {line}" for line in logged))
    assert len(logged) <= STDERR_LINES_BOUND, logged
    assert not [line for line in logged if any(word in line for word in MISUSE)], logged


# --- one connection at a time ------------------------------------------------------------------------


def test_a_request_head_must_arrive_in_time_even_a_line_at_a_time(server: Server) -> None:
    idle = server.connect()  # to a TLS server: not even a handshake
    slow = server.connect_http()
    slow.sendall(f"GET {contract.HEALTH_PATH} HTTP/1.1\r\nHost: {LOOPBACK}\r\n".encode())
    opened = time.monotonic()
    closed_at: float | None = None
    while time.monotonic() - opened < HEADER_TIMEOUT_S + CLOSE_MARGIN_S + 1:
        try:
            slow.sendall(b"X-Slow: 1\r\n")  # a line every 0.25 s: data does not restart the clock
        except OSError:
            closed_at = time.monotonic() - opened
            break
        if closed_by_peer(slow, 0.25):
            closed_at = time.monotonic() - opened
            break
    idle_closed = wait_closed(idle, CLOSE_MARGIN_S)
    print(f"\nhead timeout {HEADER_TIMEOUT_S:g} s: the slow head was closed after {closed_at} s")
    assert closed_at is not None and HEADER_TIMEOUT_S - 0.5 <= closed_at <= HEADER_TIMEOUT_S + CLOSE_MARGIN_S
    assert idle_closed is not None  # the idle one (opened first) is gone by then too
    slow.close()
    idle.close()


def test_a_body_that_does_not_arrive_gets_408_and_the_connection_closes(server: Server) -> None:
    sock = server.connect_http()
    sock.sendall(
        f"POST {contract.IMAGES_PATH} HTTP/1.1\r\nHost: {LOOPBACK}\r\nContent-Type: application/json\r\n"
        f"Content-Length: 1000\r\n\r\n".encode()
        + b'{"prompt": "a'
    )
    sent = time.monotonic()
    received = b""
    sock.settimeout(0.2)
    while time.monotonic() - sent < BODY_TIMEOUT_S + CLOSE_MARGIN_S + 2:
        with contextlib.suppress(OSError):
            sock.sendall(b"a")  # a byte every 0.2 s: a trickle does not restart the clock
        try:
            chunk = sock.recv(65536)
        except (TimeoutError, ssl.SSLWantReadError):
            continue
        except OSError:
            break
        if not chunk:
            break
        received += chunk
    elapsed = time.monotonic() - sent
    sock.close()
    head, _, body = received.partition(b"\r\n\r\n")
    print(f"\nbody timeout {BODY_TIMEOUT_S:g} s: answered and closed after {elapsed:.2f} s: {head.splitlines()[:1]}")
    assert head.startswith(b"HTTP/1.1 408 "), received
    assert json.loads(body) == {
        "error": f"body: not received within {BODY_TIMEOUT_S:g} s",
        "request_id": None,
        "field": "body",
    }
    assert BODY_TIMEOUT_S - 0.5 <= elapsed <= BODY_TIMEOUT_S + CLOSE_MARGIN_S + 1.0
    assert server.healthz()[0] == 200


def test_an_idle_keep_alive_connection_is_closed(server: Server) -> None:
    sock = server.connect_http()
    sock.sendall(f"GET {contract.HEALTH_PATH} HTTP/1.1\r\nHost: {LOOPBACK}\r\n\r\n".encode())
    sock.settimeout(10)
    answer = b""
    while b'"alive"' not in answer:
        chunk = sock.recv(65536)
        assert chunk, answer
        answer += chunk
    assert answer.startswith(b"HTTP/1.1 200 ") and b"connection: close" not in answer.lower()
    closed_after = wait_closed(sock, KEEP_ALIVE_S + CLOSE_MARGIN_S + 1)
    sock.close()
    print(f"\nkeep-alive {KEEP_ALIVE_S} s: the idle connection was closed after {closed_after} s")
    assert closed_after is not None and KEEP_ALIVE_S - 0.5 <= closed_after <= KEEP_ALIVE_S + CLOSE_MARGIN_S


def test_invalid_requests_are_counted_not_logged_one_by_one(server: Server) -> None:
    """uvicorn logs a warning per invalid request: an attacker's request rate would be the log's line rate."""
    before = len(server.stderr_text().splitlines())
    sent = 40
    for _ in range(sent):
        sock = server.connect_http()
        sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        sock.settimeout(10)
        assert sock.recv(65536).startswith(b"HTTP/1.1 400 ")
        sock.close()

    def counted() -> int:
        lines = server.stderr_text().splitlines()[before:]
        return sum(
            int(part.split("=")[1]) for line in lines for part in line.split() if part.startswith("invalid_request=")
        )

    wait_until(lambda: counted() >= sent, timeout_s=2 * LOG_WAIT_S, interval_s=0.25)
    logged = server.stderr_text().splitlines()[before:]
    print("\n".join(f"  server: {line}" for line in logged))
    assert counted() == sent
    assert len(logged) <= 3 and not [line for line in logged if "Invalid HTTP request" in line], logged


# --- past the limit, and a limit that cannot fit ------------------------------------------------------


def test_when_every_connection_is_busy_a_new_one_is_refused_with_503(tmp_path: Path) -> None:
    server = start(tmp_path, env={contract.ENV_MAX_CONNECTIONS: "2", contract.ENV_MAX_BATCH: "8"})
    metrics_url = f"http://{LOOPBACK}:{server.metrics_port}{contract.METRICS_PATH}"
    try:
        body = {"prompt": "a slow one", "steps": 100, "num_images": 4, "response_format": "json"}
        results: list[int] = []

        def busy() -> None:
            results.append(httpx.post(server.url + contract.IMAGES_PATH, json=body, timeout=300).status_code)

        threads = [threading.Thread(target=busy) for _ in range(2)]
        for t in threads:
            t.start()

        def pending() -> float:
            text = httpx.get(metrics_url, timeout=10).text
            return metric_value(text, contract.PROM_QUEUE_DEPTH) + metric_value(text, contract.PROM_IN_FLIGHT)

        wait_until(lambda: pending() >= 2, timeout_s=60, interval_s=0.02)  # both requests are in
        sock = server.connect()
        sock.sendall(f"GET {contract.HEALTH_PATH} HTTP/1.1\r\nHost: {LOOPBACK}\r\n\r\n".encode())
        answer = b""
        while chunk := sock.recv(65536):  # until the server closes
            answer += chunk
        sock.close()
        still_busy = pending() >= 2
        for t in threads:
            t.join(timeout=300)
        head, _, refusal = answer.partition(b"\r\n\r\n")
        print(f"\nall {2} connections busy: a third got {head.splitlines()[:1]}")
        assert still_busy  # the refusal came while both were in progress
        assert head.startswith(b"HTTP/1.1 503 ") and b"retry-after: 1" in head.lower(), answer
        assert json.loads(refusal)["error"].startswith("server busy: all 2 connections have a request in progress")
        assert results == [200, 200]
        assert server.healthz()[0] == 200  # room again once they are answered
    finally:
        stop(server)


def test_a_connection_limit_the_open_file_limit_cannot_hold_refuses_to_start() -> None:
    env = {
        **os.environ,
        contract.ENV_AUTH: "none",
        contract.ENV_MAX_CONNECTIONS: "200",
        contract.ENV_METRICS_PORT: str(free_port()),
    }
    command = [
        sys.executable,
        "-m",
        "runtime.server",
        "--model",
        "tiny",
        "--host",
        LOOPBACK,
        "--port",
        str(free_port()),
    ]
    done = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, preexec_fn=_nofile_256, check=False
    )
    lines = done.stderr.strip().splitlines()
    print("\n" + "\n".join(lines))
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and "Traceback" not in done.stderr
    assert f"{contract.ENV_MAX_CONNECTIONS}: 200 is not allowed: this process may open {NOFILE} files" in lines[0]
    assert "allowed: an integer from 1 to " in lines[0]
