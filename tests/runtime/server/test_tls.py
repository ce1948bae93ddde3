"""HTTPS on loopback with a CA made here: clients that trust it verify the server, others fail.

Also: every certificate or key problem is one line naming the setting, the Secrets Manager path
(moto) never leaves the key on disk or in a message, and ``python -m runtime.server`` serves HTTPS.
``python -m tests.runtime.server.test_tls --measure`` prints the latency TLS adds (quoted in
runtime.server.tls).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import ssl
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import httpx
import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from moto import mock_aws

from plan import contract
from runtime.server import tls
from runtime.server.backends import Backend, BatchParams, ImageSpec
from runtime.server.settings import Settings
from runtime.settings import SettingsError
from tests.runtime.server.conftest import free_port, start_subprocess, wait_until
from tests.tls_ca import LOOPBACK, Ca, PrivateKey

REGION = "us-west-2"


class InstantBackend(Backend):
    """Answers every batch at once with flat images of the asked size: these tests are about the API, not a model."""

    def __init__(self) -> None:
        super().__init__()
        self.default_steps, self.default_width, self.default_height = 2, 64, 64

    def load(self) -> None:
        self.description = "instant test backend"

    def generate(
        self, params: BatchParams, images: Sequence[ImageSpec], should_stop: Any = None, *args: Any, **kwargs: Any
    ) -> list[np.ndarray]:
        return [np.full((params.height, params.width, 3), 0.5, dtype=np.float32) for _ in images]


# --- the CA (tests.tls_ca) ------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> Ca:
    return Ca.make("edge-diffusion-test-ca")


@pytest.fixture(scope="module")
def pem_files(ca: Ca, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    chain, key = ca.issue()
    folder = tmp_path_factory.mktemp("tls")
    (folder / "chain.pem").write_bytes(chain)
    (folder / "key.pem").write_bytes(key)
    return folder / "chain.pem", folder / "key.pem"


# --- an in-process server with the server's own TLS context -------------------------------------


@dataclass
class TlsServer:
    url: str
    server: Any
    thread: threading.Thread

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def serve(ssl_context: ssl.SSLContext | None) -> TlsServer:
    import uvicorn

    from runtime.server.app import create_app

    port = free_port()
    app = create_app(Settings(auth="none", metrics_sink="none", host=LOOPBACK, port=port), InstantBackend())
    config = uvicorn.Config(
        app,
        host=LOOPBACK,
        port=port,
        log_level="warning",
        access_log=False,
        ssl_context_factory=(lambda _c, _d: ssl_context) if ssl_context else None,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"uvicorn-tls-{port}", daemon=True)
    thread.start()
    wait_until(lambda: server.started, timeout_s=30)
    wait_until(lambda: app.state.service.ready, timeout_s=30)
    return TlsServer(f"{'https' if ssl_context else 'http'}://{LOOPBACK}:{port}", server, thread)


@pytest.fixture(scope="module")
def https_server(pem_files: tuple[Path, Path]) -> Iterator[TlsServer]:
    running = serve(tls.server_context(tls.pem_from_files(str(pem_files[0]), str(pem_files[1]))))
    yield running
    running.stop()


def test_a_client_that_trusts_the_ca_verifies_the_server(ca: Ca, https_server: TlsServer) -> None:
    with httpx.Client(base_url=https_server.url, verify=ca.client_context(), timeout=30) as c:
        assert c.get(contract.HEALTH_PATH).json() == {"status": "alive"}
        r = c.post(contract.IMAGES_PATH, json={"prompt": "a cat"})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"


def test_a_client_that_trusts_another_ca_fails(https_server: TlsServer) -> None:
    other = Ca.make("someone-else")
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(https_server.url + contract.HEALTH_PATH, verify=other.client_context(), timeout=10)
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(https_server.url + contract.HEALTH_PATH, timeout=10)  # the system trust store does not know it


def test_plain_http_on_the_tls_port_gets_no_answer(https_server: TlsServer) -> None:
    with pytest.raises(httpx.TransportError):
        httpx.get(https_server.url.replace("https://", "http://") + contract.HEALTH_PATH, timeout=10)


def _handshake(url: str, ctx: ssl.SSLContext) -> tuple[str | None, str | None]:
    host, port = url.removeprefix("https://").split(":")
    conn = http.client.HTTPSConnection(host, int(port), context=ctx, timeout=10)
    try:
        conn.connect()
        sock = conn.sock
        assert isinstance(sock, ssl.SSLSocket)
        cipher = sock.cipher()
        return sock.version(), cipher[0] if cipher else None
    finally:
        conn.close()


def test_tls_1_2_and_1_3_only_and_tls_1_2_only_with_forward_secret_aead(ca: Ca, https_server: TlsServer) -> None:
    assert _handshake(https_server.url, ca.client_context(minimum_version=ssl.TLSVersion.TLSv1_3))[0] == "TLSv1.3"
    version, cipher = _handshake(https_server.url, ca.client_context(maximum_version=ssl.TLSVersion.TLSv1_2))
    assert version == "TLSv1.2" and cipher is not None
    assert cipher.startswith("ECDHE-") and ("GCM" in cipher or "CHACHA20" in cipher), cipher
    cbc_only = ca.client_context(maximum_version=ssl.TLSVersion.TLSv1_2)
    cbc_only.set_ciphers("ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA384")
    with pytest.raises(ssl.SSLError):
        _handshake(https_server.url, cbc_only)
    context = tls.server_context(tls.PemPair(*ca.issue(), "cert", "key"))
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2


# --- refusals: one line naming the setting ------------------------------------------------------


def test_certificate_and_key_problems_are_one_line(ca: Ca, tmp_path: Path) -> None:
    chain, key = ca.issue()
    other_chain, other_key = ca.issue()
    expired_chain, expired_key = ca.issue(days=-1)
    files = {
        "chain.pem": chain,
        "key.pem": key,
        "other-key.pem": other_key,
        "garbage.pem": b"-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n",
        "expired.pem": expired_chain,
        "expired-key.pem": expired_key,
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    (tmp_path / "a-directory").mkdir()
    cases = [
        ("missing.pem", "key.pem", contract.ENV_TLS_CERT_FILE, "cannot be read (No such file or directory)"),
        ("chain.pem", "missing.pem", contract.ENV_TLS_KEY_FILE, "cannot be read"),
        ("a-directory", "key.pem", contract.ENV_TLS_CERT_FILE, "cannot be read"),
        ("garbage.pem", "key.pem", contract.ENV_TLS_CERT_FILE, "not a PEM certificate chain"),
        ("chain.pem", "garbage.pem", contract.ENV_TLS_KEY_FILE, "not an unencrypted PEM private key"),
        ("chain.pem", "other-key.pem", contract.ENV_TLS_KEY_FILE, "does not match the certificate"),
        ("expired.pem", "expired-key.pem", contract.ENV_TLS_CERT_FILE, "expired on"),
    ]
    for cert_name, key_name, named, says in cases:
        with pytest.raises(tls.TlsError) as err:
            tls.server_context(tls.pem_from_files(str(tmp_path / cert_name), str(tmp_path / key_name)))
        message = str(err.value)
        assert message.startswith(named) and says in message and "\n" not in message, message
        assert "PRIVATE KEY" not in message
    assert other_chain  # issued only for its key


def test_settings_refuse_half_or_double_tls_configuration() -> None:
    with pytest.raises(SettingsError, match=f"{contract.ENV_TLS_CERT_FILE}.*together with {contract.ENV_TLS_KEY_FILE}"):
        Settings(tls_cert_file="/c.pem")
    with pytest.raises(SettingsError, match=f"{contract.ENV_TLS_KEY_FILE}.*together with {contract.ENV_TLS_CERT_FILE}"):
        Settings(tls_key_file="/k.pem")
    with pytest.raises(SettingsError, match=contract.ENV_TLS_SECRET_ID):
        Settings(tls_cert_file="/c.pem", tls_key_file="/k.pem", tls_secret_id="edge-diffusion/tls")
    env = {contract.ENV_TLS_SECRET_ID: "edge-diffusion/tls"}
    assert Settings.from_env(env).tls and not Settings.from_env({}).tls


def test_server_refuses_to_start_with_a_mismatched_key(
    ca: Ca, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from runtime.server.__main__ import main

    chain, _ = ca.issue()
    _, other_key = ca.issue()
    (tmp_path / "chain.pem").write_bytes(chain)
    (tmp_path / "key.pem").write_bytes(other_key)
    argv = ["--model", "tiny", "--auth", "none", "--tls-cert-file", str(tmp_path / "chain.pem")]
    assert main([*argv, "--tls-key-file", str(tmp_path / "key.pem")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "does not match the certificate" in err and "Traceback" not in err


# --- the certificate from Secrets Manager ------------------------------------------------------------


@pytest.fixture
def secrets(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.setenv(name, "testing")
    with mock_aws():
        yield boto3.client("secretsmanager", region_name=REGION)


def _tls_dirs() -> set[str]:
    return {p for p in os.listdir(tempfile.gettempdir()) if p.startswith("edge-diffusion-tls-")}


def test_secret_with_both_fields_serves_and_leaves_no_key_on_disk(
    ca: Ca, secrets: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    chain, key = ca.issue()
    secret = {
        contract.TLS_SECRET_CERTIFICATE_FIELD: chain.decode(),
        contract.TLS_SECRET_PRIVATE_KEY_FIELD: key.decode(),
    }
    secrets.create_secret(Name="edge-diffusion/dev/tls", SecretString=json.dumps(secret))
    before = _tls_dirs()
    settings = Settings(tls_secret_id="edge-diffusion/dev/tls", aws_region=REGION)
    modes: dict[str, int] = {}
    remove = shutil.rmtree

    def recording_rmtree(path: str, *args: Any, **kwargs: Any) -> None:
        """What was on disk just before the server removed it."""
        modes["dir"] = os.stat(path).st_mode & 0o777
        modes.update({name: os.stat(os.path.join(path, name)).st_mode & 0o777 for name in os.listdir(path)})
        remove(path, *args, **kwargs)

    with monkeypatch.context() as patched:
        patched.setattr(tls.shutil, "rmtree", recording_rmtree)
        context = tls.context_from_settings(settings)
    assert isinstance(context, ssl.SSLContext)
    assert modes == {"dir": 0o700, "chain.pem": 0o600, "key.pem": 0o600}
    assert _tls_dirs() == before  # written only while ssl loaded it
    running = serve(context)
    try:
        r = httpx.get(running.url + contract.READY_PATH, verify=ca.client_context(), timeout=10)
        assert r.status_code == 200
    finally:
        running.stop()


def test_secret_problems_are_one_line_and_never_quote_the_secret(ca: Ca, secrets: Any) -> None:
    chain, key = ca.issue()
    cert_field, key_field = contract.TLS_SECRET_CERTIFICATE_FIELD, contract.TLS_SECRET_PRIVATE_KEY_FIELD
    secrets.create_secret(Name="no-key", SecretString=json.dumps({cert_field: chain.decode()}))
    secrets.create_secret(Name="empty-cert", SecretString=json.dumps({cert_field: " ", key_field: key.decode()}))
    secrets.create_secret(Name="not-json", SecretString=key.decode())
    secrets.create_secret(Name="binary", SecretBinary=key)
    secrets.create_secret(
        Name="swapped", SecretString=json.dumps({cert_field: key.decode(), key_field: chain.decode()})
    )
    cases = {
        "no-key": f"field '{key_field}' is missing or empty",
        "empty-cert": f"field '{cert_field}' is missing or empty",
        "not-json": "SecretString is not a JSON object",
        "binary": "has no SecretString",
        "swapped": "not a PEM certificate chain",
        "does-not-exist": "cannot be read (ResourceNotFoundException)",
    }
    for name, says in cases.items():
        with pytest.raises(tls.TlsError) as err:
            tls.context_from_settings(Settings(tls_secret_id=name, aws_region=REGION))
        message = str(err.value)
        assert message.startswith(f"{contract.ENV_TLS_SECRET_ID} '{name}'") and says in message, message
        assert "\n" not in message and "BEGIN" not in message and key.decode()[40:80] not in message


# --- the real server process -------------------------------------------------------------------------


def test_python_m_runtime_server_serves_https_and_warns_once_without_auth(ca: Ca, pem_files: tuple[Path, Path]) -> None:
    env = {
        contract.ENV_TLS_CERT_FILE: str(pem_files[0]),
        contract.ENV_TLS_KEY_FILE: str(pem_files[1]),
        contract.ENV_AUTH: "none",
    }
    proc, url = start_subprocess(env)
    https = url.replace("http://", "https://")
    try:

        def ready() -> bool:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            try:
                return httpx.get(https + contract.READY_PATH, verify=ca.client_context(), timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(ready, timeout_s=120, interval_s=0.25)
        health = httpx.get(https + contract.HEALTH_PATH, verify=ca.client_context(), timeout=10)
        assert health.json() == {"status": "alive"} and "server" not in health.headers
    finally:
        proc.terminate()
        output, _ = proc.communicate(timeout=60)
    warnings = [line for line in output.splitlines() if "authentication is off" in line]
    assert len(warnings) == 1 and contract.ENV_AUTH in warnings[0], output
    assert f"API docs: {https}{contract.DOCS_PATH}" in output
    assert "BEGIN" not in output


# --- what TLS costs on loopback ----------------------------------------------------------------------


def _request(conn: http.client.HTTPConnection) -> None:
    conn.request("GET", contract.HEALTH_PATH)
    response = conn.getresponse()
    response.read()
    assert response.status == 200


def measure(samples: int, key: PrivateKey | None = None) -> dict[str, float]:
    """Median milliseconds: a new connection with one request, and one request on a kept-alive connection.

    HTTP and HTTPS samples alternate, so load from other processes falls on both alike.
    """
    ca = Ca.make("measure-ca")
    chain, pem_key = ca.issue(key)
    servers = {"http": serve(None), "https": serve(tls.server_context(tls.PemPair(chain, pem_key, "c", "k")))}
    client_ctx = ca.client_context()

    def connect(scheme: str) -> http.client.HTTPConnection:
        port = int(servers[scheme].url.rsplit(":", 1)[1])
        if scheme == "https":
            return http.client.HTTPSConnection(LOOPBACK, port, context=client_ctx, timeout=10)
        return http.client.HTTPConnection(LOOPBACK, port, timeout=10)

    timings: dict[str, list[float]] = {
        f"{s}_{kind}_ms": [] for s in servers for kind in ("new_connection", "kept_alive")
    }
    try:
        kept = {scheme: connect(scheme) for scheme in servers}
        for conn in kept.values():
            _request(conn)
        for i in range(samples + 5):
            for scheme in servers:
                started = time.perf_counter()
                conn = connect(scheme)
                _request(conn)
                conn.close()
                new_ms = (time.perf_counter() - started) * 1000
                started = time.perf_counter()
                _request(kept[scheme])
                kept_ms = (time.perf_counter() - started) * 1000
                if i >= 5:  # warm-up
                    timings[f"{scheme}_new_connection_ms"].append(new_ms)
                    timings[f"{scheme}_kept_alive_ms"].append(kept_ms)
        for conn in kept.values():
            conn.close()
    finally:
        for running in servers.values():
            running.stop()
    return {name: statistics.median(values) for name, values in timings.items()}


def test_tls_costs_a_handshake_per_connection_not_per_request() -> None:
    costs = measure(samples=20)
    assert all(v > 0 for v in costs.values())
    assert costs["https_new_connection_ms"] > costs["https_kept_alive_ms"]
    assert costs["https_new_connection_ms"] > costs["http_new_connection_ms"]


def _main() -> None:
    parser = argparse.ArgumentParser(description="TLS latency on loopback: HTTPS vs HTTP, new vs kept-alive.")
    parser.add_argument("--measure", action="store_true", required=True)
    parser.add_argument("--samples", type=int, default=200)
    args = parser.parse_args()
    for label, key in (
        ("ECDSA P-256", ec.generate_private_key(ec.SECP256R1())),
        ("RSA 2048", rsa.generate_private_key(public_exponent=65537, key_size=2048)),
    ):
        costs = measure(args.samples, key)
        print(
            f"{label}: new connection {costs['https_new_connection_ms']:.2f} ms https vs "
            f"{costs['http_new_connection_ms']:.2f} ms http; kept-alive request "
            f"{costs['https_kept_alive_ms']:.3f} ms https vs {costs['http_kept_alive_ms']:.3f} ms http "
            f"(medians of {args.samples})"
        )


if __name__ == "__main__":
    _main()
