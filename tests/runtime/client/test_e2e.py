"""End to end on loopback: real inference servers (tiny model), one behind a latency-adding proxy.
The client picks the faster; the Local Zone server killed in the middle of a request, the Region
serves and the image still arrives; an empty inventory falls back to --fallback-url; everything
down is one line naming what was tried. And with TLS and tokens: a private CA made here issues a
certificate for one DNS name only (as for Local Zone pods, whose node IPs no certificate can name),
the server on 127.0.0.1 serves it, and the client verifies it through the entry's server name; a
loopback inventory API whose token route is the real Lambda handler signing with a (moto) KMS key,
and a server that verifies them with that key's public half."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
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
from typing import Any

import httpx
import pytest

from plan import contract
from runtime.client import client as c
from tests.runtime.conftest import ROOT
from tests.tls_ca import Ca

LOOPBACK = "127.0.0.1"
DELAY_S = 0.2  # per forwarded chunk and direction: a /healthz round trip gains ~400 ms
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
QUICK = c.ImageRequest(prompt="a cat", steps=2, width=64, height=64, seed=1)
# Long enough (~0.15 s on an idle tiny model, vs ~1 ms from POST to SIGKILL) to be killed while it works:
# larger than the tiny model's served 64x64, so the servers that get it start with --max-image-size 96.
SLOW = c.ImageRequest(prompt="a lighthouse at dawn", steps=8, width=96, height=96, seed=2)
MAX_IMAGE_SIZE = "96"


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


def start_server(port: int, log: Path, *extra: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    command = [sys.executable, "-m", "runtime.server", "--model", "tiny", "--host", LOOPBACK, "--port", str(port)]
    # --metrics-port 0: the metrics listener on a free port, so servers started together do not collide.
    command += ["--metrics-sink", "none", "--metrics-port", "0", "--no-ui", "--max-batch", "1", *extra]
    with log.open("wb") as out:
        return subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)


def wait_ready(
    port: int,
    process: subprocess.Popen[bytes],
    log: Path,
    timeout_s: float = 120.0,
    verify: Any = True,
    server_name: str | None = None,
) -> None:
    deadline = time.monotonic() + timeout_s
    scheme = "http" if verify is True else "https"
    extensions = {"sni_hostname": server_name} if server_name else {}
    with httpx.Client(verify=verify) as http:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                pytest.fail(f"server on {port} exited {process.returncode}: {log.read_text()[-2000:]}")
            try:
                url = f"{scheme}://{LOOPBACK}:{port}{contract.READY_PATH}"
                if http.get(url, timeout=1, extensions=extensions).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
    pytest.fail(f"server on {port} not ready after {timeout_s}s: {log.read_text()[-2000:]}")


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Server]]:
    logs = tmp_path_factory.mktemp("servers")
    ports = {"fast": free_port(), "slow": free_port()}
    # Plain http without tokens: what a workstation runs (the inventory marks such endpoints http).
    processes = {
        name: start_server(port, logs / f"{name}.log", "--auth", "none", "--max-image-size", MAX_IMAGE_SIZE)
        for name, port in ports.items()
    }
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


def cli(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "runtime.client", "a cat", *args]
    command += ["--steps", "2", "--width", "64", "--height", "64", "--seed", "1"]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False)


def test_an_empty_inventory_falls_back_to_the_fallback_url(servers: dict[str, Server], tmp_path: Path) -> None:
    empty = tmp_path / "endpoints.json"
    empty.write_text(json.dumps({"endpoints": []}))
    out = tmp_path / "out.png"
    done = cli("-o", str(out), "--endpoints-file", str(empty), "--fallback-url", servers["slow"].url)
    assert done.returncode == 0, done.stderr
    assert out.read_bytes().startswith(PNG_MAGIC)
    assert f"served by fallback {servers['slow'].url}" in done.stdout
    assert done.stderr.count("is plain http (no TLS)") == 1  # used, with one warning


def test_everything_down_is_one_line_naming_what_was_tried(tmp_path: Path) -> None:
    lz, region, fallback = free_port(), free_port(), free_port()  # nothing listens on them
    endpoints = tmp_path / "endpoints.json"
    entries = [
        {"endpoint_id": "lz", "url": f"http://{LOOPBACK}:{lz}", "location": "us-west-2-lax-1a", "accelerator": "cpu"},
        {
            "endpoint_id": "region",
            "url": f"http://{LOOPBACK}:{region}",
            "location": "us-west-2",
            "accelerator": "cpu",
            "kind": contract.ENDPOINT_KIND_REGION,
        },
    ]
    endpoints.write_text(json.dumps({"endpoints": entries}))
    done = cli(
        "-o",
        str(tmp_path / "o.png"),
        "--endpoints-file",
        str(endpoints),
        "--fallback-url",
        f"http://{LOOPBACK}:{fallback}",
        "--deadline",
        "20",
    )
    assert done.returncode == 1
    (line,) = [line for line in done.stderr.splitlines() if not line.startswith("warning: ")]
    assert line == (
        "python -m runtime.client: error: no endpoint produced an image within 20s ("
        f"fallback http://{LOOPBACK}:{fallback}: connection error: ConnectError; "
        f"lz (http://{LOOPBACK}:{lz}): not tried, /healthz ConnectError; "
        f"region (http://{LOOPBACK}:{region}): not tried, /healthz ConnectError)"
    )
    assert not (tmp_path / "o.png").exists()


def prompt_image(path: Path, colour: tuple[int, int, int]) -> Path:
    """A 64 x 64 PNG of one colour: the smallest image prompt the server takes."""
    from PIL import Image

    Image.new("RGB", (64, 64), colour).save(path, format="PNG")
    return path


def test_cli_sends_an_image_prompt_and_the_image_decides_the_result(servers: dict[str, Server], tmp_path: Path) -> None:
    """The same seed and prompt from two image prompts gives two images; the library's data URL (JSON)
    gives the very image the CLI's file part (multipart) gave."""
    url = servers["fast"].url
    white, black = (
        prompt_image(tmp_path / "white.png", (255, 255, 255)),
        prompt_image(tmp_path / "black.png", (0, 0, 0)),
    )
    outs = {}
    for name, image in (("white", white), ("black", black)):
        outs[name] = tmp_path / f"{name}-out.png"
        done = cli("-o", str(outs[name]), "--fallback-url", url, "--image", str(image), "--strength", "0.5")
        assert done.returncode == 0, done.stderr
        assert f"wrote {outs[name]}" in done.stdout
        assert outs[name].read_bytes().startswith(PNG_MAGIC)
    assert outs["white"].read_bytes() != outs["black"].read_bytes()
    data_url = "data:image/png;base64," + base64.b64encode(white.read_bytes()).decode()
    request = dataclasses.replace(QUICK, image=data_url, strength=0.5)
    with c.EdgeDiffusionClient(fallback_urls=[url]) as client:
        result = client.generate(request, deadline_s=60)
    assert result.media_type == "image/png"
    assert result.images == [outs["white"].read_bytes()]


def test_cli_writes_jpeg_when_the_output_name_says_so(servers: dict[str, Server], tmp_path: Path) -> None:
    out = tmp_path / "out.jpg"
    done = cli("-o", str(out), "--fallback-url", servers["fast"].url, "--quality", "80", "--num-images", "2")
    assert done.returncode == 0, done.stderr
    second = tmp_path / "out-2.jpg"
    assert done.stdout.splitlines()[:2] == [f"wrote {out}", f"wrote {second}"]
    assert out.read_bytes().startswith(JPEG_MAGIC) and second.read_bytes().startswith(JPEG_MAGIC)
    refused = cli("-o", str(tmp_path / "x.png"), "--format", "jpeg", "--fallback-url", servers["fast"].url)
    assert refused.returncode == 2 and not (tmp_path / "x.png").exists()
    assert refused.stderr.splitlines() == [
        f"python -m runtime.client: error: --output '{tmp_path / 'x.png'}' does not name a jpeg file; "
        "allowed with --format jpeg: a name ending .jpg or .jpeg"
    ]


def test_library_binary_answers_carry_their_type_and_seed(servers: dict[str, Server]) -> None:
    with c.EdgeDiffusionClient(fallback_urls=[servers["fast"].url]) as client:
        webp = client.generate(dataclasses.replace(QUICK, response_format="webp", quality=70), deadline_s=60)
        jpeg = client.generate(dataclasses.replace(QUICK, response_format="json", output_format="jpeg"), deadline_s=60)
    assert webp.media_type == "image/webp" and c.sniff_image(webp.images[0]) == "image/webp"
    assert webp.seed == 1 and webp.server_timings.get("batch_size") == 1
    assert jpeg.media_type == "image/jpeg" and jpeg.images[0].startswith(JPEG_MAGIC) and jpeg.seed == 1


def test_the_local_zone_killed_mid_request_the_region_serves(servers: dict[str, Server]) -> None:
    """Runs last among the plain-http tests: it kills the fast server."""
    fast, slow = servers["fast"], servers["slow"]
    fast.proxy.post_seen.clear()
    entries = inventory(servers)["endpoints"]
    assert isinstance(entries, list)
    region = {**entries[0], "endpoint_id": "region/ingress/cpu", "location": "us-west-2", "kind": "region"}
    local = {**entries[1], "endpoint_id": "lz/serving/sd/fast"}
    assert (region["url"], local["url"]) == (slow.url, fast.url)
    client = c.EdgeDiffusionClient(endpoints=[region, local])
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(client.generate, SLOW, deadline_s=60)
        assert fast.proxy.post_seen.wait(30), "the client never sent its request to the Local Zone endpoint"
        fast.process.send_signal(signal.SIGKILL)  # the Local Zone node or pod dies while it generates
        result = pending.result(timeout=60)
    client.close()
    assert [a.endpoint.endpoint_id for a in result.attempts] == ["lz/serving/sd/fast", "region/ingress/cpu"]
    assert result.attempts[0].outcome.startswith("connection error")
    assert result.attempts[1].outcome == "ok"
    assert result.endpoint.is_region
    assert result.images[0].startswith(PNG_MAGIC)
    assert result.timings["total_s"] < 60


# --- TLS and tokens -------------------------------------------------------------------------------

ISSUER = contract.token_issuer("e2e")
KEY_ALIAS = "alias/e2e-token-signing"
SERVER_NAME = "lz.test.example"  # the one name the server's certificate carries (not 127.0.0.1)


def make_ca(directory: Path) -> tuple[Path, Path, Path]:
    """(CA certificate, server certificate for SERVER_NAME only, its key): a private CA made here."""
    return Ca.make("Edge Diffusion test CA").write(directory, names=(SERVER_NAME,))


class InventoryApi:
    """The inventory API on loopback: GET /v1/endpoints answers ``document``; GET /v1/token is the real
    token Lambda (``runtime.inventory.api.handle_token``) signing with a moto KMS key. API Gateway's
    IAM authorizer is modelled by refusing requests without a SigV4 Authorization header."""

    def __init__(self, kms: Any, document: dict[str, Any]) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        from runtime.inventory import api

        self.document, self.token_calls = document, 0
        settings = api.TokenSettings(key_id=KEY_ALIAS, issuer=ISSUER, audience=contract.TOKEN_AUDIENCE, ttl_s=300)
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if not self.headers.get("Authorization", "").startswith("AWS4-HMAC-SHA256 "):
                    return self._answer({"statusCode": 403, "body": '{"message":"Missing Authentication Token"}'})
                if self.path.startswith("/v1" + contract.TOKEN_PATH):
                    outer.token_calls += 1
                    event = {"requestContext": {"identity": {"userArn": "arn:aws:iam::123456789012:user/e2e"}}}
                    return self._answer(api.handle_token(event, kms=kms, settings=settings, now=time.time()))
                return self._answer({"statusCode": 200, "body": json.dumps(outer.document)})

            def _answer(self, response: dict[str, Any]) -> None:
                body = response["body"].encode()
                self.send_response(response["statusCode"])
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self.url = f"http://{LOOPBACK}:{self._server.server_address[1]}/v1/endpoints"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@dataclass
class SecureWorld:
    url: str  # the TLS server, at its IP: https://127.0.0.1:<port>
    ca: Path
    inventory: InventoryApi
    kms: Any

    def entry(self, **changes: object) -> dict[str, object]:
        """The server's inventory entry, as the publisher writes one for a Local Zone node."""
        return {**self.inventory.document["endpoints"][0], **changes}


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureWorld]:
    """One server with TLS (the test CA's certificate) and token auth (the KMS key's public half)."""
    import boto3
    from cryptography.hazmat.primitives import serialization
    from moto import mock_aws

    directory = tmp_path_factory.mktemp("secure")
    ca, certificate, key = make_ca(directory)
    saved = {name: os.environ.get(name) for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")
    with mock_aws():
        kms = boto3.client("kms", region_name="us-west-2")
        key_id = kms.create_key(KeySpec="RSA_2048", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["KeyId"]
        kms.create_alias(AliasName=KEY_ALIAS, TargetKeyId=key_id)
        der = kms.get_public_key(KeyId=KEY_ALIAS)["PublicKey"]
        public = directory / "token-key.pem"
        public.write_bytes(
            serialization.load_der_public_key(der).public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        port = free_port()
        log = directory / "server.log"
        process = start_server(
            port,
            log,
            *("--tls-cert-file", str(certificate), "--tls-key-file", str(key)),
            *("--auth", "token", "--token-public-key-file", str(public), "--token-issuer", ISSUER),
        )
        url = f"https://{LOOPBACK}:{port}"
        document = {
            "auth": "token",
            "endpoints": [
                {
                    "endpoint_id": "lz/tls",
                    "url": url,
                    "location": "us-west-2-lax-1a",
                    "accelerator": "cpu",
                    "server_name": SERVER_NAME,
                }
            ],
        }
        inventory_api = InventoryApi(kms, document)
        try:
            wait_ready(port, process, log, verify=c.tls_context(ca), server_name=SERVER_NAME)
            yield SecureWorld(url=url, ca=ca, inventory=inventory_api, kms=kms)
        finally:
            inventory_api.close()
            process.kill()
            process.wait(timeout=10)
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


def secure_client(world: SecureWorld, **changes: Any) -> c.EdgeDiffusionClient:
    from botocore.credentials import Credentials

    options: dict[str, Any] = {
        "inventory_url": world.inventory.url,
        "region": "us-west-2",
        "credentials": Credentials("testing", "testing"),
        "ca_bundle": world.ca,
    }
    return c.EdgeDiffusionClient(**{**options, **changes})


def test_tls_and_a_vended_token_generate(secure: SecureWorld) -> None:
    before = secure.inventory.token_calls
    with secure_client(secure) as client:
        first = client.generate(QUICK, deadline_s=60)
        second = client.generate(QUICK, deadline_s=60)
    assert first.images[0].startswith(PNG_MAGIC) and second.images[0].startswith(PNG_MAGIC)
    assert first.endpoint.url.startswith("https://")
    assert secure.inventory.token_calls - before == 1  # one token, cached for both requests


def test_without_the_private_ca_tls_verification_fails_clearly(secure: SecureWorld) -> None:
    with secure_client(secure, ca_bundle=None) as client, pytest.raises(c.NoEndpointError) as err:
        client.generate(QUICK, deadline_s=30)
    assert "lz/tls" in str(err.value)
    assert "TLS verification failed (" in str(err.value) and "a private CA needs --ca-bundle" in str(err.value)


def test_the_server_refuses_requests_without_a_valid_token(secure: SecureWorld) -> None:
    endpoints = secure.inventory.document["endpoints"]
    with (
        c.EdgeDiffusionClient(endpoints=endpoints, ca_bundle=secure.ca) as client,
        pytest.raises(c.RequestRejectedError) as missing,
    ):
        client.generate(QUICK, deadline_s=30)
    assert missing.value.status == 401 and "requires a token" in str(missing.value)
    with (
        c.EdgeDiffusionClient(endpoints=endpoints, ca_bundle=secure.ca, token="a.b.c") as client,
        pytest.raises(c.RequestRejectedError) as forged,
    ):
        client.generate(QUICK, deadline_s=30)
    assert forged.value.status == 401


def test_cli_over_tls_with_a_token_from_the_environment(secure: SecureWorld, tmp_path: Path) -> None:
    from runtime.inventory import api

    event = {"requestContext": {"identity": {"userArn": "arn:aws:iam::123456789012:user/cli"}}}
    settings = api.TokenSettings(key_id=KEY_ALIAS, issuer=ISSUER, audience=contract.TOKEN_AUDIENCE)
    token = json.loads(api.handle_token(event, kms=secure.kms, settings=settings, now=time.time())["body"])["token"]
    endpoints = tmp_path / "endpoints.json"
    endpoints.write_text(json.dumps(secure.inventory.document))
    out = tmp_path / "secure.png"
    command = [sys.executable, "-m", "runtime.client", "a cat", "-o", str(out), "--endpoints-file", str(endpoints)]
    command += ["--ca-bundle", str(secure.ca), "--steps", "2", "--width", "64", "--height", "64"]
    env = {**os.environ, "EDGE_DIFFUSION_TOKEN": token}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=90, check=False)
    assert done.returncode == 0, done.stderr
    assert out.read_bytes().startswith(PNG_MAGIC)
    assert "plain http" not in done.stderr


# --- A token never travels in the clear beyond loopback -------------------------------------------
# 192.0.2.0/24 and 198.51.100.0/24 are documentation networks (RFC 5737): nothing answers there, so an
# attempt to reach one would show as a probe or an attempt, or time out.
PLAIN_ELSEWHERE = "http://192.0.2.10:7860"
ALLOWED = "allowed: https, or http to a loopback address (127.0.0.0/8, ::1, localhost) for development"


def test_cli_with_a_token_skips_plain_http_elsewhere_and_serves_over_tls(secure: SecureWorld, tmp_path: Path) -> None:
    plain = {**secure.entry(), "endpoint_id": "lz/plain", "url": PLAIN_ELSEWHERE}
    plain.pop("server_name")
    endpoints = tmp_path / "endpoints.json"
    endpoints.write_text(json.dumps({"auth": "token", "endpoints": [plain, secure.entry()]}))
    out = tmp_path / "secure.png"
    command = [sys.executable, "-m", "runtime.client", "a cat", "-o", str(out), "--endpoints-file", str(endpoints)]
    command += ["--ca-bundle", str(secure.ca), "--steps", "2", "--width", "64", "--height", "64", "--deadline", "60"]
    env = {**os.environ, "EDGE_DIFFUSION_TOKEN": vended_token(secure)}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=90, check=False)
    assert done.returncode == 0, done.stderr
    assert out.read_bytes().startswith(PNG_MAGIC)
    assert "served by lz/tls" in done.stdout and "lz/plain" not in done.stdout  # neither probed nor tried
    assert done.stderr.splitlines() == [
        f"warning: lz/plain ({PLAIN_ELSEWHERE}) skipped: plain http to a non-loopback host would expose the "
        f"bearer token ({ALLOWED})"
    ]


def test_cli_with_every_candidate_refused_is_one_line(tmp_path: Path) -> None:
    endpoints = tmp_path / "endpoints.json"
    entry = {"endpoint_id": "lz", "url": PLAIN_ELSEWHERE, "location": "us-west-2-lax-1a", "accelerator": "cpu"}
    endpoints.write_text(json.dumps({"endpoints": [entry]}))
    out = tmp_path / "o.png"
    command = [sys.executable, "-m", "runtime.client", "a cat", "-o", str(out), "--endpoints-file", str(endpoints)]
    command += ["--fallback-url", "http://198.51.100.7:80", "--deadline", "5"]
    env = {**os.environ, "EDGE_DIFFUSION_TOKEN": "a.b.c"}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1
    (line,) = [line for line in done.stderr.splitlines() if not line.startswith("warning: ")]
    assert line == (
        "python -m runtime.client: error: refused to send the bearer token over plain http to "
        f"{PLAIN_ELSEWHERE}, http://198.51.100.7:80; {ALLOWED} (or give no token, if these endpoints need none)"
    )
    assert not out.exists()


# --- One DNS name for node IPs that change ----------------------------------------------------------


def vended_token(world: SecureWorld) -> str:
    """A token from the real token route, signed by the moto KMS key the server trusts."""
    from runtime.inventory import api

    event = {"requestContext": {"identity": {"userArn": "arn:aws:iam::123456789012:user/e2e"}}}
    settings = api.TokenSettings(key_id=KEY_ALIAS, issuer=ISSUER, audience=contract.TOKEN_AUDIENCE)
    return str(json.loads(api.handle_token(event, kms=world.kms, settings=settings, now=time.time())["body"])["token"])


def test_an_entry_at_the_node_ip_is_verified_against_its_server_name(secure: SecureWorld) -> None:
    entry = secure.entry()
    assert entry["url"] == f"https://{LOOPBACK}:{secure.url.rsplit(':', 1)[1]}"  # an IP the certificate lacks
    with c.EdgeDiffusionClient(endpoints=[entry], ca_bundle=secure.ca, token=vended_token(secure)) as client:
        result = client.generate(QUICK, deadline_s=60)
    assert result.images[0].startswith(PNG_MAGIC)
    assert (result.endpoint.url, result.endpoint.server_name) == (secure.url, SERVER_NAME)
    assert [p.rtt_ms is not None for p in result.probes] == [True]  # the /healthz probe verified the name too
    assert [a.outcome for a in result.attempts] == ["ok"]


def test_a_wrong_server_name_fails_in_one_line(secure: SecureWorld, tmp_path: Path) -> None:
    endpoints = tmp_path / "endpoints.json"
    endpoints.write_text(json.dumps({"endpoints": [secure.entry(server_name="wrong.test.example")]}))
    done = cli("-o", str(tmp_path / "o.png"), "--endpoints-file", str(endpoints), "--ca-bundle", str(secure.ca))
    assert done.returncode == 1
    (line,) = [line for line in done.stderr.splitlines() if not line.startswith("warning: ")]
    assert line == (
        "python -m runtime.client: error: no endpoint produced an image within 120s ("
        f"lz/tls ({secure.url}, TLS name wrong.test.example): not tried, /healthz TLS verification failed "
        "(Hostname mismatch, certificate is not valid for 'wrong.test.example'); no endpoint was reachable)"
    )
    assert not (tmp_path / "o.png").exists()


def test_a_fallback_url_has_no_server_name_and_verifies_its_own_host(secure: SecureWorld) -> None:
    with (
        c.EdgeDiffusionClient(fallback_urls=[secure.url], ca_bundle=secure.ca, token=vended_token(secure)) as client,
        pytest.raises(c.NoEndpointError) as err,
    ):
        client.generate(QUICK, deadline_s=30)
    (attempt,) = err.value.attempts
    assert attempt.endpoint.server_name is None
    assert attempt.outcome == (
        f"connection error: TLS verification failed (IP address mismatch, certificate is not valid for '{LOOPBACK}')"
    )


def test_the_breaking_point_tool_verifies_the_server_name_it_is_given(
    secure: SecureWorld, capsys: pytest.CaptureFixture[str]
) -> None:
    from runtime.bench import breaking_point

    breaking_point.Endpoint(secure.url, None, secure.ca, SERVER_NAME).wait_ready(timeout_s=10)
    with pytest.raises(ConnectionError) as err:
        breaking_point.Endpoint(secure.url, None, secure.ca).wait_ready(timeout_s=10)
    assert "IP address mismatch" in str(err.value) and "pass --server-name" in str(err.value)
    for url, name in ((f"http://{LOOPBACK}:1", SERVER_NAME), (secure.url, "*.test.example")):
        assert breaking_point.main(["--url", url, "--slo-p90-ms", "1000", "--server-name", name]) == 2
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert "--server-name" in line and "a DNS name such as lz.example.com, with an https --url" in line
