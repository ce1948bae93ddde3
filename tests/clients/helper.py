"""What the TypeScript SDK's tests need from Python: ``python -m tests.clients.helper tls DIR | inventory ...``.

``tls DIR`` writes the scenarios' certificates (tests/tls_ca.py's test CA): ca.pem, and
trusted/name-only/untrusted .pem and .key.

``inventory --document FILE`` serves the inventory API on loopback, as API Gateway would in front of
the real Lambda handlers: ``GET /v1/endpoints`` answers FILE (read at every request, so a test may
rewrite it) and ``GET /v1/token`` is ``runtime.inventory.api.handle_token`` signing with a (moto)
KMS key. Both check the request's SigV4 signature with botocore (the test credentials
AKIDEXAMPLE/secret) and refuse anything else with 403, as the IAM authorizer does. It writes the
key's public half to a file for the inference server's ``--token-public-key-file``, prints one JSON
line ``{"port", "public_key", "issuer"}`` and serves until killed; ``GET /stats`` (unsigned) says
how many tokens it issued. ``--first-token-bad`` signs the first token with another key, which
the server refuses (a key rotation, as far as a device can tell).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from tests.clients.scripted import LOOPBACK, Tls

ACCESS_KEY: Final = "AKIDEXAMPLE"
SECRET_KEY: Final = "secret"
REGION: Final = "us-west-2"
ISSUER: Final = "edge-diffusion:sdk-test"
KEY_ALIAS: Final = "alias/sdk-test-token-signing"
OTHER_ALIAS: Final = "alias/sdk-test-other-key"


def signature_ok(method: str, path: str, headers: dict[str, str]) -> bool:
    """Whether ``Authorization`` is the SigV4 signature botocore computes for this request."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    authorization = headers.get("authorization", "")
    if not authorization.startswith("AWS4-HMAC-SHA256 ") or "x-amz-date" not in headers:
        return False
    fields = dict(part.strip().split("=", 1) for part in authorization.removeprefix("AWS4-HMAC-SHA256 ").split(","))
    signed = fields.get("SignedHeaders", "").split(";")
    scope = fields.get("Credential", "").split("/")
    if len(scope) != 5 or scope[0] != ACCESS_KEY:
        return False
    request = AWSRequest(
        method=method,
        url=f"http://{headers.get('host', '')}{path}",
        headers={name: headers[name] for name in signed if name in headers},
    )
    request.context["timestamp"] = headers["x-amz-date"]
    auth = SigV4Auth(Credentials(ACCESS_KEY, SECRET_KEY), scope[3], scope[2])
    expected = auth.signature(auth.string_to_sign(request, auth.canonical_request(request)), request)
    return fields.get("Signature") == expected


def serve_inventory(document: Path, ttl_s: int, first_token_bad: bool, key_file: Path) -> None:
    import boto3
    from cryptography.hazmat.primitives import serialization
    from moto import mock_aws

    from plan import contract
    from runtime.inventory import api

    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION=REGION)
    with mock_aws():
        kms = boto3.client("kms", region_name=REGION)
        for alias in (KEY_ALIAS, OTHER_ALIAS):
            key_id = kms.create_key(KeySpec="RSA_2048", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["KeyId"]
            kms.create_alias(AliasName=alias, TargetKeyId=key_id)
        der = kms.get_public_key(KeyId=KEY_ALIAS)["PublicKey"]
        key_file.write_bytes(
            serialization.load_der_public_key(der).public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        issued = [0]
        lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                path = urlsplit(self.path).path
                if path == "/stats":
                    return self.answer({"statusCode": 200, "body": json.dumps({"token_calls": issued[0]})})
                headers = {name.lower(): value for name, value in self.headers.items()}
                if not signature_ok("GET", self.path, headers):
                    return self.answer(
                        {"statusCode": 403, "body": '{"message":"The request signature does not match"}'}
                    )
                if path == "/v1" + contract.TOKEN_PATH:
                    with lock:
                        issued[0] += 1
                        alias = OTHER_ALIAS if first_token_bad and issued[0] == 1 else KEY_ALIAS
                    settings = api.TokenSettings(
                        key_id=alias, issuer=ISSUER, audience=contract.TOKEN_AUDIENCE, ttl_s=ttl_s
                    )
                    event = {"requestContext": {"identity": {"userArn": "arn:aws:iam::123456789012:user/sdk"}}}
                    return self.answer(api.handle_token(event, kms=kms, settings=settings, now=time.time()))
                if path == "/v1/endpoints":
                    return self.answer({"statusCode": 200, "body": document.read_text()})
                return self.answer({"statusCode": 404, "body": '{"message":"Not Found"}'})

            def answer(self, response: dict[str, Any]) -> None:
                body = str(response["body"]).encode()
                self.send_response(int(response["statusCode"]))
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        ready = {"port": server.server_address[1], "public_key": str(key_file), "issuer": ISSUER}
        print(json.dumps(ready), flush=True)
        server.serve_forever()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.clients.helper")
    commands = parser.add_subparsers(dest="command", required=True)
    tls = commands.add_parser("tls", help="write the scenarios' certificates to DIR")
    tls.add_argument("directory", type=Path)
    inventory = commands.add_parser("inventory", help="serve the inventory API and token route on loopback")
    inventory.add_argument("--document", type=Path, required=True, help="the GET /v1/endpoints answer (JSON)")
    inventory.add_argument("--public-key", type=Path, required=True, help="where to write the token key's public half")
    inventory.add_argument("--ttl-s", type=int, default=300)
    inventory.add_argument("--first-token-bad", action="store_true")
    args = parser.parse_args(argv)
    if args.command == "tls":
        if not args.directory.is_dir():
            parser.error(f"tls: {str(args.directory)!r} is not a directory")
        Tls.make(args.directory)
        return 0
    serve_inventory(args.document, args.ttl_s, args.first_token_bad, args.public_key)
    return 0


if __name__ == "__main__":
    sys.exit(main())
