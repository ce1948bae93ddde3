"""The scripted loopback world of tests/clients/scenarios.json, in Python: endpoints and an inventory API.

Real HTTP(S) servers on 127.0.0.1 (one thread per connection) that answer as a scenario scripts
them and record what reached them, so the Python client runs over its real HTTP layer. The
TypeScript runner (sdk/typescript/test/world.ts) builds the same world with Node's http module;
scenarios.json's ``about`` is the script language both follow.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Final
from urllib.parse import parse_qsl, urlsplit

from tests.tls_ca import Ca

LOOPBACK: Final = "127.0.0.1"
SERVER_NAME: Final = "lz.test.example"  # the DNS name a Local Zone certificate names
SCENARIOS: Final = Path(__file__).with_name("scenarios.json")
_PLACEHOLDER: Final = re.compile(r"\{([a-z0-9_-]+)(\.port)?\}")


def load() -> dict[str, Any]:
    return dict(json.loads(SCENARIOS.read_text()))


@dataclass(frozen=True)
class Tls:
    """The certificates a scenario's https servers use; ``ca`` is what the client trusts."""

    ca: Path
    trusted: tuple[Path, Path]  # the test CA's, for localhost, 127.0.0.1 and SERVER_NAME
    name_only: tuple[Path, Path]  # the test CA's, for SERVER_NAME only
    untrusted: tuple[Path, Path]  # another CA's, for localhost and 127.0.0.1

    @classmethod
    def make(cls, directory: Path) -> Tls:
        ca = Ca.make("Edge Diffusion scenarios CA")
        other = Ca.make("Some other CA")
        written: dict[str, tuple[Path, Path]] = {}
        for name, authority, names in (
            ("trusted", ca, ("localhost", LOOPBACK, SERVER_NAME)),
            ("name-only", ca, (SERVER_NAME,)),
            ("untrusted", other, ("localhost", LOOPBACK)),
        ):
            chain, key = authority.issue(names=names)
            paths = directory / f"{name}.pem", directory / f"{name}.key"
            paths[0].write_bytes(chain)
            paths[1].write_bytes(key)
            written[name] = paths
        (directory / "ca.pem").write_bytes(ca.pem)
        return cls(directory / "ca.pem", written["trusted"], written["name-only"], written["untrusted"])

    def context(self, certificate: str) -> ssl.SSLContext:
        chain, key = {"trusted": self.trusted, "name-only": self.name_only, "untrusted": self.untrusted}[certificate]
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(chain, key)
        return context


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def compact(value: object) -> bytes:
    """JSON as JSON.stringify writes it, so both worlds send byte-identical bodies."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass
class Record:
    server: str
    method: str
    path: str
    authorization: str | None
    body: bytes


@dataclass
class World:
    """One scenario's servers, the inventory API, and what reached them."""

    png: bytes
    offset_s: float = 0.0  # the client's wall clock runs this far ahead of real time
    records: list[Record] = field(default_factory=list)
    token_calls: int = 0  # this call's
    tokens_issued: int = 0  # the token route's answers so far: its script goes on across calls
    inventory_queries: list[dict[str, str]] = field(default_factory=list)
    urls: dict[str, str] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    _servers: list[ThreadingHTTPServer] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    stopping: threading.Event = field(default_factory=threading.Event)

    def record(self, entry: Record) -> None:
        with self._lock:
            self.records.append(entry)

    def reset(self) -> None:
        with self._lock:
            self.records.clear()
            self.inventory_queries.clear()
            self.token_calls = 0

    def wait(self, delay_ms: float) -> None:
        self.stopping.wait(delay_ms / 1000)

    def sub(self, value: Any) -> Any:
        """``value`` with every placeholder ({name}, {name.port}, {inventory}, {token_url}) filled in."""
        if isinstance(value, str):

            def fill(match: re.Match[str]) -> str:
                name, port = match.group(1), match.group(2)
                if port and name in self.ports:
                    return str(self.ports[name])
                if not port and name in self.urls:
                    return self.urls[name]
                return match.group(0)

            return _PLACEHOLDER.sub(fill, value)
        if isinstance(value, list):
            return [self.sub(item) for item in value]
        if isinstance(value, dict):
            return {key: self.sub(item) for key, item in value.items()}
        return value

    def start(self, scenario: dict[str, Any], tls: Tls) -> None:
        for name, spec in scenario["servers"].items():
            scheme = spec.get("scheme", "http")
            port = free_port()
            self.ports[name] = port
            self.urls[name] = f"{scheme}://{LOOPBACK}:{port}"
            if spec.get("listen", True):
                context = tls.context(spec.get("certificate", "trusted")) if scheme == "https" else None
                self._serve(port, _endpoint_handler(self, name, spec), context)
        inventory = scenario["inventory"]
        if inventory["via"] == "api":
            port = free_port()
            self._serve(port, _inventory_handler(self, inventory), None)
            self.urls["inventory"] = f"http://{LOOPBACK}:{port}/v1/endpoints"
            self.urls["token_url"] = f"http://{LOOPBACK}:{port}/v1/token"

    def _serve(self, port: int, handler: type[BaseHTTPRequestHandler], context: ssl.SSLContext | None) -> None:
        server = _Server((LOOPBACK, port), handler)
        server.ssl_context = context
        self._servers.append(server)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def stop(self) -> None:
        self.stopping.set()
        for server in self._servers:
            server.shutdown()
            server.server_close()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    ssl_context: ssl.SSLContext | None = None

    def finish_request(self, request: Any, client_address: Any) -> None:
        if self.ssl_context is not None:  # the handshake in the connection's thread, never the accept loop's
            try:
                request = self.ssl_context.wrap_socket(request, server_side=True)
            except (OSError, ssl.SSLError):
                return
        super().finish_request(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients that leave mid-answer are part of the script: no traceback."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def answer(self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def scripted(self, spec: dict[str, Any], default_error: dict[str, Any]) -> None:
        """{status, json | text, content_type}: the status with that body."""
        status = int(spec.get("status", 200))
        if "text" in spec:
            self.answer(status, str(spec["text"]).encode(), spec.get("content_type", "text/plain; charset=utf-8"))
        else:
            self.answer(status, compact(spec.get("json", default_error)), spec.get("content_type", "application/json"))

    def drop(self) -> None:
        """Close the connection without answering (a pod killed mid-request)."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)


def _endpoint_handler(world: World, name: str, spec: dict[str, Any]) -> type[BaseHTTPRequestHandler]:
    answers: list[dict[str, Any]] = spec.get("images") or [{"ok": "json"}]
    tokens: list[str] | None = spec.get("tokens")
    served = [0]

    class Endpoint(_Handler):
        def do_GET(self) -> None:
            world.record(Record(name, "GET", self.path, self.headers.get("Authorization"), b""))
            if self.path != "/healthz":
                return self.answer(404, compact({"error": "not found"}), "application/json")
            healthz = spec.get("healthz", {})
            world.wait(float(healthz.get("delay_ms", 0)))
            self.answer(int(healthz.get("status", 200)), compact({"status": "alive"}), "application/json")

        def do_POST(self) -> None:
            authorization = self.headers.get("Authorization")
            body = self.body()
            world.record(Record(name, "POST", self.path, authorization, body))
            if self.path != "/v1/images":
                return self.answer(404, compact({"error": "not found"}), "application/json")
            if tokens is not None and authorization not in {f"Bearer {t}" for t in tokens}:
                reason = "authorization: missing" if not authorization else "token: signature does not verify"
                error = {"error": reason, "field": "authorization", "request_id": f"req-{name}-401"}
                return self.answer(401, compact(error), "application/json", {"WWW-Authenticate": "Bearer"})
            answer = answers[min(served[0], len(answers) - 1)]
            served[0] += 1
            world.wait(float(answer.get("delay_ms", 0)))
            request_id = f"req-{name}-{served[0]}"
            if answer.get("close"):
                return self.drop()
            meta = {"X-Request-Id": request_id, "X-Queue-Ms": "1.5", "X-Inference-Ms": "20.0", "X-Batch-Size": "1"}
            seed = int(answer.get("seed", 7))
            if answer.get("ok") == "png":
                return self.answer(200, world.png, "image/png", {**meta, "X-Seed": str(seed)})
            if answer.get("ok") == "json":
                images = [base64.b64encode(world.png).decode()] * int(answer.get("count", 1))
                timings = {"queue_ms": 1.5, "inference_ms": 20.0, "batch_size": 1}
                payload = {"request_id": request_id, "seed": seed, "width": 64, "height": 64, "steps": 2}
                payload |= {"images": images, "timings": timings}
                return self.answer(200, compact(payload), "application/json", {**meta, "X-Seed": str(seed)})
            status = int(answer["status"])
            self.scripted(answer, {"error": f"{status} from {name}", "request_id": request_id})

    return Endpoint


def _inventory_handler(world: World, spec: dict[str, Any]) -> type[BaseHTTPRequestHandler]:
    token_route: list[dict[str, Any]] = spec.get("token_route") or [
        {"status": 404, "json": {"message": "no token route"}}
    ]

    class Inventory(_Handler):
        def do_GET(self) -> None:
            if not self.headers.get("Authorization", "").startswith("AWS4-HMAC-SHA256 "):
                return self.answer(403, compact({"message": "Missing Authentication Token"}), "application/json")
            parts = urlsplit(self.path)
            if parts.path == "/v1/token":
                world.token_calls += 1
                world.tokens_issued += 1
                answer = token_route[min(world.tokens_issued - 1, len(token_route) - 1)]
                if "token" in answer:
                    expires = answer.get("expires_at")
                    if expires is None:
                        expires = int(time.time() + world.offset_s + float(answer["expires_in_s"]))
                    return self.answer(
                        200, compact({"token": answer["token"], "expiresAt": expires}), "application/json"
                    )
                return self.scripted(answer, {"message": "token route error"})
            world.inventory_queries.append(dict(parse_qsl(parts.query)))
            if "answer" in spec:
                return self.scripted(spec["answer"], {"message": "inventory error"})
            self.answer(200, compact(world.sub(spec["document"])), "application/json")

    return Inventory
