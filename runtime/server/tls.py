"""HTTPS on the pods' port: the certificate and key, checked once at startup, and the TLS context.

Local Zone pods answer devices directly (NodePort, no load balancer in front), so they terminate
TLS themselves (docs/adr/0003-local-zone-pods-terminate-tls.md, with what TLS costs, measured).
The pair comes from two PEM files or one Secrets Manager secret (``plan.contract.TLS_SECRET_*``);
any problem with it is one line naming the setting, and the server exits 2 rather than serve
plain HTTP or a broken handshake.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from plan import contract
from runtime.server.settings import Settings
from runtime.settings import SettingsError

MINIMUM_VERSION: Final = ssl.TLSVersion.TLSv1_2
# TLS 1.2 suites: ECDHE (forward secrecy) with AES-GCM or ChaCha20-Poly1305 only. TLS 1.3 suites are
# all AEAD and are not affected by this string.
TLS12_CIPHERS: Final = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL:!MD5:!DSS"


class TlsError(SettingsError):
    """The certificate or key cannot be served; the message is one line naming the setting."""


@dataclass(frozen=True)
class PemPair:
    """A certificate chain and its private key as PEM text, and where they came from (for messages)."""

    certificate: bytes
    private_key: bytes
    certificate_source: str
    key_source: str


def _read(path: str, setting: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise TlsError(f"{setting}: {path!r} cannot be read ({exc.strerror or type(exc).__name__})") from None


def pem_from_files(cert_file: str, key_file: str) -> PemPair:
    return PemPair(
        _read(cert_file, contract.ENV_TLS_CERT_FILE),
        _read(key_file, contract.ENV_TLS_KEY_FILE),
        f"{contract.ENV_TLS_CERT_FILE} {cert_file!r}",
        f"{contract.ENV_TLS_KEY_FILE} {key_file!r}",
    )


def pem_from_secret(secret_id: str, region: str | None, client: Any = None) -> PemPair:
    """The pair from one Secrets Manager secret whose SecretString is JSON with the contract's two fields."""
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    where = f"{contract.ENV_TLS_SECRET_ID} {secret_id!r}"
    try:
        sm = client or boto3.client("secretsmanager", region_name=region)
        answer = sm.get_secret_value(SecretId=secret_id)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "error")
        raise TlsError(f"{where}: cannot be read ({code})") from None
    except BotoCoreError as exc:
        raise TlsError(f"{where}: cannot be read ({type(exc).__name__})") from None
    text = answer.get("SecretString")
    fields = (contract.TLS_SECRET_CERTIFICATE_FIELD, contract.TLS_SECRET_PRIVATE_KEY_FIELD)
    shape = f'a JSON object {{"{fields[0]}": "<PEM chain>", "{fields[1]}": "<PEM key>"}}'
    if not isinstance(text, str):
        raise TlsError(f"{where}: has no SecretString; it must be {shape}")
    try:
        doc = json.loads(text)
    except ValueError:
        doc = None  # the text itself is never quoted: it may hold the key
    if not isinstance(doc, dict):
        raise TlsError(f"{where}: SecretString is not {shape}")
    for name in fields:
        if not isinstance(doc.get(name), str) or not doc[name].strip():
            raise TlsError(f"{where}: field {name!r} is missing or empty; it must be {shape}")
    return PemPair(doc[fields[0]].encode(), doc[fields[1]].encode(), f"{where} field {fields[0]!r}", where)


def check_pair(pair: PemPair, now: datetime.datetime | None = None) -> None:
    """Refuse what would make every handshake fail: not PEM, expired, or a key of another certificate."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        chain = x509.load_pem_x509_certificates(pair.certificate)
    except ValueError:
        raise TlsError(f"{pair.certificate_source}: not a PEM certificate chain") from None
    try:
        key = serialization.load_pem_private_key(pair.private_key, password=None)
    except (ValueError, TypeError):
        raise TlsError(f"{pair.key_source}: not an unencrypted PEM private key") from None
    leaf = chain[0]
    now = now or datetime.datetime.now(datetime.UTC)
    if leaf.not_valid_after_utc < now:
        raise TlsError(f"{pair.certificate_source}: expired on {leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(*spki) != leaf.public_key().public_bytes(*spki):
        raise TlsError(f"{pair.key_source}: the private key does not match the certificate ({pair.certificate_source})")


def server_context(pair: PemPair) -> ssl.SSLContext:
    """The server's TLS context (1.2+, forward-secret AEAD suites) holding the checked pair."""
    check_pair(pair)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = MINIMUM_VERSION
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_RENEGOTIATION
    ctx.set_alpn_protocols(["http/1.1"])
    private = tempfile.mkdtemp(prefix="edge-diffusion-tls-")  # 0700, this process's user only
    try:
        paths = []
        for name, data in (("chain.pem", pair.certificate), ("key.pem", pair.private_key)):
            path = os.path.join(private, name)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            paths.append(path)
        try:
            ctx.load_cert_chain(paths[0], paths[1])
        except ssl.SSLError as exc:
            raise TlsError(f"{pair.key_source}: cannot be used with the certificate ({exc.reason})") from None
    finally:
        shutil.rmtree(private, ignore_errors=True)
    return ctx


def context_from_settings(settings: Settings, secrets_client: Any = None) -> ssl.SSLContext | None:
    """The TLS context the settings ask for, or None for plain HTTP; TlsError (one line) otherwise."""
    if settings.tls_secret_id:
        return server_context(pem_from_secret(settings.tls_secret_id, settings.aws_region, secrets_client))
    if settings.tls_cert_file and settings.tls_key_file:
        return server_context(pem_from_files(settings.tls_cert_file, settings.tls_key_file))
    return None
