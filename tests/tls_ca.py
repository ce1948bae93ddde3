"""A private certificate authority made in a test: a CA and the server certificates it issues.

The TLS tests of the server, the device client, the breaking-point tool and the image's
HEALTHCHECK all need "a CA the client trusts (or not) and a server certificate for these names";
this is the one place that builds them.
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

LOOPBACK = "127.0.0.1"
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
# What a server on loopback is reached as, unless a test names others.
LOOPBACK_NAMES = ("localhost", LOOPBACK)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def pem_key(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _subject_alternative_name(names: Sequence[str]) -> x509.SubjectAlternativeName:
    """DNS names as DNS entries, IP addresses as IP entries (a client checks an IP only against the latter)."""
    entries: list[x509.GeneralName] = []
    for name in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(entries)


@dataclass
class Ca:
    key: PrivateKey
    cert: x509.Certificate

    @classmethod
    def make(cls, name: str) -> Ca:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(_name(name))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .sign(key, hashes.SHA256())
        )
        return cls(key, cert)

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(
        self, key: PrivateKey | None = None, *, days: float = 1.0, names: Sequence[str] = LOOPBACK_NAMES
    ) -> tuple[bytes, bytes]:
        """(chain PEM, key PEM) of a server certificate for ``names`` (DNS names or IP addresses)."""
        key = key or ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name("edge-diffusion-test-server"))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=2))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(_subject_alternative_name(names), critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.PEM) + self.pem, pem_key(key)

    def write(self, directory: Path, *, names: Sequence[str] = LOOPBACK_NAMES) -> tuple[Path, Path, Path]:
        """(CA certificate, server chain, server key) as files in ``directory``, for programs that read paths."""
        chain, key = self.issue(names=names)
        paths = directory / "ca.pem", directory / "server.pem", directory / "server.key"
        for path, data in zip(paths, (self.pem, chain, key), strict=True):
            path.write_bytes(data)
        return paths

    def client_context(self, **versions: ssl.TLSVersion) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cadata=self.pem.decode())
        for name, version in versions.items():
            setattr(ctx, name, version)
        return ctx
