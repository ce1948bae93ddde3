"""Pull the endpoint inventory, pick the nearest healthy endpoint, generate there, fail over.

Order: Local Zone endpoints by round-trip time of ``GET /healthz`` (the best of two probes, so
connection setup does not decide), rounded to ``tie_ms``; ties go to the cheaper accelerator (the
entry's ``cost_weight``, which the publisher fills from the app's accelerator table: higher is
cheaper). Then the Region's ALB entries (the last resort in the inventory, also probed), then the
``fallback_urls`` given by the caller (not probed: they work with no inventory at all). Failover:
a connection error, a TLS failure, a timeout, 429 or any 5xx moves to the next endpoint; any other
answer but 200 is the request's fault and fails at once (no other endpoint would accept it), except
a 401 on a fetched token, which is renewed and retried once. One total deadline covers the
inventory, the token, the probes and every attempt: each request's connect and reads wait at most
what is left of it, and a probe the deadline cut short says nothing about its endpoint (it is
neither ranked nor named as unreachable). Malformed inventory entries are skipped with a warning,
never an exception.

Security: TLS is verified (the certifi roots, plus ``ca_bundle`` for a private CA); there is no
switch to turn verification off. A Local Zone entry's URL names a node IP that changes, which no
certificate can name: its ``server_name`` is sent as SNI and the certificate is verified against
that name instead (probes included); entries without one, and fallback URLs, verify the URL's
host. A plain-http endpoint is used only when its URL says http (the inventory marks it so, or
the caller gave it), with one warning each. Every inference request carries ``Authorization:
Bearer <token>`` when the inventory says endpoints require tokens, or when a token was given.
A token is good on every endpoint of the deployment until it expires, so it goes only over https
or to a loopback address: with a token, a plain-http endpoint elsewhere is skipped (one warning)
and failover goes on; the inventory and token URLs must be https (or loopback) in any case, since
the inventory's answer decides where tokens go.

This module needs httpx (and botocore only to sign inventory requests); it does not import the
CDK app: cost weights travel in the inventory, not in a table copied from ``plan/``.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import math
import os
import re
import ssl
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import httpx

from plan import contract
from runtime.client.auth import (
    CREDENTIAL_URLS,
    SigV4Auth,
    TokenError,
    TokenSource,
    carries_credentials,
    region_of,
    token_url_for,
)
from runtime.inventory import api as layout
from runtime.inventory.endpoint import Endpoint

log = logging.getLogger("edge_diffusion.client")

# OpenSSL's X509_V_ERR_HOSTNAME_MISMATCH and X509_V_ERR_IP_ADDRESS_MISMATCH: a trusted certificate
# for another name, which no CA bundle fixes.
NAME_MISMATCH_CODES: Final = frozenset({62, 64})
DEFAULT_DEADLINE_S: Final = 120.0
DEFAULT_PROBE_TIMEOUT_S: Final = 2.0
DEFAULT_TIE_MS: Final = 5.0
FALLBACK_LOCATION: Final = "fallback"  # the location shown for a caller-given fallback URL
FILTER_FLAGS: Final = {"model": "--model", "location": "--location", "accelerator": "--accelerator"}
IMAGE_FORMATS: Final = ("png", "jpeg", "webp")  # the encodings an answer's images may have
RESPONSE_FORMATS: Final = (*IMAGE_FORMATS, "json")
MEDIA_TYPES: Final = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
# The server's InputLimits.max_bytes (runtime/server/codec.py, not imported: it needs numpy and Pillow).
MAX_IMAGE_BYTES: Final = 8 * 1024 * 1024
IMAGE_ALLOWED: Final = f"a PNG, JPEG or WebP image of at most {MAX_IMAGE_BYTES} bytes"
_DATA_URL: Final = re.compile(r"^data:[\w.+-]+/[\w.+-]+;base64,", re.IGNORECASE)
_BASE64: Final = re.compile(r"^[A-Za-z0-9+/]*={0,2}$")


class ClientError(Exception):
    """The client could not produce an image; the message is one line for a person."""


class RequestRejectedError(ClientError):
    """An endpoint rejected the request itself (4xx other than 429): no other endpoint would accept it."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"request rejected ({status}): {message}")
        self.status = status


class NoEndpointError(ClientError):
    """No endpoint produced an image before the deadline; ``attempts`` says what each did."""

    def __init__(self, message: str, attempts: Sequence[Attempt] = ()) -> None:
        super().__init__(message)
        self.attempts = tuple(attempts)


def retryable(status: int) -> bool:
    """Another endpoint may serve it: the queue is full (429) or the endpoint failed (any 5xx)."""
    return status == 429 or 500 <= status <= 599


def parse_inventory(document: object) -> tuple[list[Endpoint], list[str]]:
    """(usable endpoints, one warning per skipped entry) from the API's JSON or a list of entries."""
    entries = document.get("endpoints") if isinstance(document, Mapping) else document
    if not isinstance(entries, list):
        return [], [f"inventory has no 'endpoints' list (got {type(entries).__name__})"]
    endpoints: list[Endpoint] = []
    skipped: list[str] = []
    seen: set[tuple[str, str]] = set()
    for index, entry in enumerate(entries):
        try:
            endpoint = Endpoint.from_entry(entry)
        except ValueError as err:
            skipped.append(f"inventory entry {index} skipped: {err}")
            continue
        # The Region's entries share the ALB's URL, one per accelerator: distinct until filtered.
        if (endpoint.url, endpoint.accelerator) in seen:
            continue
        seen.add((endpoint.url, endpoint.accelerator))
        endpoints.append(endpoint)
    for warning in skipped:
        log.warning("%s", warning)
    return endpoints, skipped


def fallback_endpoint(url: str) -> Endpoint:
    """A caller-given URL as an endpoint; ClientError (one line) when it is not http(s)://host[:port]."""
    entry = {
        layout.ATTR_ENDPOINT_ID: f"fallback {url}",
        layout.ATTR_URL: url,
        layout.ATTR_LOCATION: FALLBACK_LOCATION,
        layout.ATTR_ACCELERATOR: "any",
        layout.ATTR_KIND: contract.ENDPOINT_KIND_REGION,
    }
    try:
        return Endpoint.from_entry(entry)
    except ValueError as err:
        raise ClientError(f"fallback URL {url!r} is not usable: {err}") from None


def tls_context(ca_bundle: str | Path | None = None) -> ssl.SSLContext:
    """Verifying TLS context: the roots httpx trusts (certifi), plus ``ca_bundle`` for a private CA."""
    import certifi

    context = ssl.create_default_context(cafile=certifi.where())
    if ca_bundle is not None:
        try:
            context.load_verify_locations(cafile=str(ca_bundle))
        except FileNotFoundError:
            raise ClientError(f"CA bundle {ca_bundle}: no such file") from None
        except (ssl.SSLError, OSError) as err:
            raise ClientError(f"CA bundle {ca_bundle} is not a PEM certificate file: {err}") from None
    return context


def _why(err: BaseException) -> str:
    """One word or phrase for a failed connection; TLS verification failures say how to fix them."""
    cause: BaseException | None = err
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            reason = (cause.verify_message or cause.reason or "certificate not trusted").rstrip(".")
            if cause.verify_code in NAME_MISMATCH_CODES:
                return f"TLS verification failed ({reason})"
            return f"TLS verification failed ({reason}; a private CA needs --ca-bundle)"
        if isinstance(cause, ssl.SSLError):
            return f"TLS error ({cause.reason or type(cause).__name__})"
        cause = cause.__cause__ or cause.__context__
    return type(err).__name__


def sniff_image(data: bytes) -> str | None:
    """The media type of encoded image bytes by their first bytes: image/png, image/jpeg, image/webp or None."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def check_image(data: bytes, name: str = "image") -> str:
    """The media type of an image prompt's bytes; ClientError (one line) where the server would refuse them."""
    if len(data) > MAX_IMAGE_BYTES:
        raise ClientError(f"{name}: {len(data)} bytes is too large; allowed: {IMAGE_ALLOWED}")
    kind = sniff_image(data)
    if kind is None:
        raise ClientError(f"{name}: not a PNG, JPEG or WebP image (by its first bytes); allowed: {IMAGE_ALLOWED}")
    return kind


def read_image(path: str | os.PathLike[str], name: str = "image") -> bytes:
    """An image prompt file's bytes, checked (a file, readable, its size, its type) before anything is sent."""
    shown = f"{name} {str(path)!r}"
    try:
        info = Path(path).stat()
    except OSError as err:
        raise ClientError(f"{shown}: {err.strerror or type(err).__name__}") from None
    if not Path(path).is_file():
        raise ClientError(f"{shown}: not a file; allowed: {IMAGE_ALLOWED}")
    if info.st_size > MAX_IMAGE_BYTES:  # refused before reading: it may be huge
        raise ClientError(f"{shown}: {info.st_size} bytes is too large; allowed: {IMAGE_ALLOWED}")
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise ClientError(f"{shown}: cannot read it ({err.strerror or type(err).__name__})") from None
    check_image(data, shown)
    return data


def _check_image_text(text: str) -> None:
    """Base64 text or a data URL holding an image the server would take; a path given as str says so."""
    match = _DATA_URL.match(text[:64])
    payload = "".join((text[match.end() :] if match else text).split())
    if len(payload) % 4 or not _BASE64.match(payload):
        raise ClientError(
            f"image {text[:40]!r}: not base64 or a data:image/...;base64, URL "
            "(give a file's bytes, or its path as a pathlib.Path)"
        )
    if len(payload) > (MAX_IMAGE_BYTES + 2) // 3 * 4:
        raise ClientError(f"image: more than {MAX_IMAGE_BYTES} bytes once decoded; allowed: {IMAGE_ALLOWED}")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ClientError("image: not valid base64") from None
    check_image(data)


@dataclass(frozen=True)
class ImageRequest:
    """The body of ``POST /v1/images`` (``None`` leaves the server's default), as the TypeScript SDK sends it.

    ``image`` is an image prompt: ``bytes`` or a path (``pathlib.Path``, any ``os.PathLike``) go as
    the file part of a multipart/form-data body; a ``str`` is base64 text or a ``data:`` URL and
    goes in JSON. Either is checked here (PNG, JPEG or WebP, at most ``MAX_IMAGE_BYTES``) before
    anything is sent. ``strength`` (0 < s <= 1, only with an image; the server's default 0.8) is
    how far to move from it. ``response_format`` "json" (the default) carries every image, the seed
    and the timings, its images encoded in ``output_format`` (png unless said); "png", "jpeg" or
    "webp" answer one image as binary. ``quality`` (1-100) is for jpeg and webp only.
    """

    prompt: str
    negative_prompt: str | None = None
    steps: int | None = None
    guidance_scale: float | None = None
    width: int | None = None
    height: int | None = None
    seed: int | None = None
    num_images: int = 1
    response_format: str = "json"
    output_format: str | None = None
    quality: int | None = None
    image: bytes | str | os.PathLike[str] | None = None
    strength: float | None = None

    def body(self) -> dict[str, Any]:
        """The fields under their wire names, in the SDK's order; an image only when it is text."""
        body: dict[str, Any] = {}
        for name in (f.name for f in fields(self)):
            value = getattr(self, name)
            if value is None or (name == "image" and not isinstance(value, str)):
                continue
            body[name] = float(value) if name in ("guidance_scale", "strength") else value  # strict JSON numbers
        return body

    def encode(self) -> dict[str, Any]:
        """httpx ``post`` arguments: ``json=`` the body, or multipart ``data=``/``files=`` when the image is bytes.

        ClientError (one line) for an image the server would refuse: raised before any request.
        """
        image = self.image
        if image is None or isinstance(image, str):
            if isinstance(image, str):
                _check_image_text(image)
            return {"json": self.body()}
        if isinstance(image, bytes | bytearray | memoryview):
            data = bytes(image)
            kind = check_image(data)
        elif isinstance(image, os.PathLike):
            data = read_image(image)
            kind = check_image(data)
        else:
            raise ClientError(f"image: a {type(image).__name__}; allowed: bytes, a path, or base64 text or a data URL")
        extension = next(name for name, media in MEDIA_TYPES.items() if media == kind)
        form = {name: _form_text(value) for name, value in self.body().items()}
        return {"data": form, "files": {"image": (f"image.{extension}", data, kind)}}


def _form_text(value: Any) -> str:
    """A field's value as form text spelling its JSON value (numbers as JSON writes them)."""
    return value if isinstance(value, str) else json.dumps(value)


@dataclass(frozen=True)
class Probe:
    endpoint: Endpoint
    rtt_ms: float | None  # None: unreachable or unhealthy
    error: str | None = None


@dataclass(frozen=True)
class Attempt:
    endpoint: Endpoint
    outcome: str  # "ok", "429", "503", "timeout", "connection error: ...", "401: token renewed"
    seconds: float


@dataclass(frozen=True)
class GenerationResult:
    images: list[bytes]  # encoded as media_type says
    endpoint: Endpoint
    attempts: tuple[Attempt, ...]
    probes: tuple[Probe, ...]
    timings: dict[str, float]  # seconds: inventory, probe, generate, total
    seed: int | None = None
    request_id: str | None = None
    server_timings: dict[str, Any] = field(default_factory=dict)
    skipped_entries: tuple[str, ...] = ()
    media_type: str = "image/png"  # image/png, image/jpeg or image/webp


@dataclass(frozen=True)
class Inventory:
    """What the inventory offered, after the caller's filters."""

    endpoints: list[Endpoint]
    skipped: list[str]
    auth: str | None = None  # what the inventory says endpoints require: token | none (None: not said)
    unmatched: str | None = None  # the filters matched nothing: which, and what there is
    error: str | None = None  # the inventory could not be read (fallback URLs were given)


def rank(probes: Iterable[Probe], tie_ms: float = DEFAULT_TIE_MS) -> list[Endpoint]:
    """Reachable endpoints, nearest first; within ``tie_ms`` the cheaper accelerator first."""
    reachable = [p for p in probes if p.rtt_ms is not None]
    bucket = max(tie_ms, 1e-6)
    reachable.sort(key=lambda p: (int((p.rtt_ms or 0.0) // bucket), -(p.endpoint.cost_weight or 0), p.rtt_ms))
    return [p.endpoint for p in reachable]


def _described(endpoint: Endpoint) -> str:
    """``id (url)``, ``id (url, TLS name n)``; a fallback URL's id already is its URL."""
    if endpoint.endpoint_id.endswith(endpoint.url):
        return endpoint.endpoint_id
    if endpoint.server_name:
        return f"{endpoint.endpoint_id} ({endpoint.url}, TLS name {endpoint.server_name})"
    return f"{endpoint.endpoint_id} ({endpoint.url})"


def tls_extensions(endpoint: Endpoint) -> dict[str, str]:
    """httpx request extensions: the entry's server name as SNI, which httpcore also hands to
    ``SSLContext.wrap_socket(server_hostname=...)``, so the certificate is verified against it."""
    return {"sni_hostname": endpoint.server_name} if endpoint.server_name else {}


class EdgeDiffusionClient:
    """Finds the nearest healthy endpoint and generates there, failing over within a deadline.

    Give at most one inventory source: ``inventory_url`` (the InventoryStack's ``InventoryUrl``,
    signed with ``credentials`` or the default boto3 credential chain; its token route issues the
    bearer tokens), ``endpoints_file`` (JSON as the API returns it), or ``endpoints`` (entries
    already fetched); ``fallback_urls`` are tried last, and work without any inventory. ``token``
    is a bearer token to send instead of fetching one; ``ca_bundle`` a PEM file of a private CA.
    """

    def __init__(
        self,
        *,
        inventory_url: str | None = None,
        endpoints_file: str | Path | None = None,
        endpoints: Sequence[Mapping[str, Any]] | None = None,
        fallback_urls: Sequence[str] = (),
        filters: Mapping[str, str] | None = None,
        credentials: Any = None,
        region: str | None = None,
        token: str | None = None,
        token_url: str | None = None,
        ca_bundle: str | Path | None = None,
        probe_timeout_s: float = DEFAULT_PROBE_TIMEOUT_S,
        tie_ms: float = DEFAULT_TIE_MS,
        http: httpx.Client | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        sources = [s is not None for s in (inventory_url, endpoints_file, endpoints)]
        if sum(sources) > 1 or (sum(sources) == 0 and not fallback_urls):
            raise ClientError("give one of inventory_url, endpoints_file or endpoints, or fallback_urls")
        if inventory_url is not None and not carries_credentials(inventory_url):
            why = "its answer decides where tokens go"
            raise ClientError(f"inventory URL {inventory_url!r} refused: {why}; allowed: {CREDENTIAL_URLS}")
        if token_url is not None and not carries_credentials(token_url):
            raise ClientError(f"token URL {token_url!r} refused: it hands out tokens; allowed: {CREDENTIAL_URLS}")
        self._inventory_url, self._endpoints_file, self._endpoints = inventory_url, endpoints_file, endpoints
        self._fallbacks = [fallback_endpoint(url) for url in fallback_urls]
        self._filters = {k: v for k, v in (filters or {}).items() if v}
        self._credentials, self._region = credentials, region
        self._probe_timeout_s, self._tie_ms = probe_timeout_s, tie_ms
        self._http = http or httpx.Client(follow_redirects=False, verify=tls_context(ca_bundle))
        self._owns_http = http is None
        self._clock = clock
        self._warned_http: set[str] = set()
        self._warned_refused: set[str] = set()
        self._explicit_token = token is not None
        self._tokens: TokenSource | None = None
        if token is not None:
            self._tokens = TokenSource(token=token, clock=wall_clock)
        else:
            url = token_url or (token_url_for(inventory_url) if inventory_url else None)
            if url is not None:
                self._tokens = TokenSource(token_url=url, auth=self._sigv4_for(url), http=self._http, clock=wall_clock)

    def __enter__(self) -> EdgeDiffusionClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    # --- inventory ----------------------------------------------------------------------------

    def load_inventory(self) -> tuple[list[Endpoint], list[str]]:
        """(endpoints, warnings about skipped entries) from the configured source, filtered."""
        inventory = self._inventory(math.inf)
        return inventory.endpoints, inventory.skipped

    def _left(self, deadline: float) -> float:
        """Seconds until ``deadline`` (a reading of the clock; ``math.inf``: none)."""
        return deadline - self._clock()

    def _document(self, deadline: float) -> object:
        if self._endpoints is not None:
            return list(self._endpoints)
        if self._endpoints_file is not None:
            path = Path(self._endpoints_file)
            try:
                return json.loads(path.read_text())
            except OSError as err:
                raise ClientError(f"cannot read endpoints file {path}: {err.strerror}") from None
            except json.JSONDecodeError as err:
                raise ClientError(f"endpoints file {path} is not JSON: {err.msg} at line {err.lineno}") from None
        if self._inventory_url is not None:
            return self._fetch_inventory(self._inventory_url, deadline)
        return {"endpoints": []}

    def _inventory(self, deadline: float) -> Inventory:
        document = self._document(deadline)
        endpoints, skipped = parse_inventory(document)
        auth = document.get(layout.FIELD_AUTH) if isinstance(document, Mapping) else None
        offered = endpoints
        for name, value in self._filters.items():
            endpoints = [e for e in endpoints if getattr(e, name, None) == value]
        unique: dict[str, Endpoint] = {}
        for endpoint in endpoints:  # one attempt per URL (the ALB's entries after an accelerator filter)
            unique.setdefault(endpoint.url, endpoint)
        unmatched = None
        if offered and not unique:
            asked = " ".join(f"{FILTER_FLAGS.get(k, k)} {v}" for k, v in self._filters.items())
            there = {name: sorted({str(getattr(e, name, "")) for e in offered}) for name in self._filters}
            listed = "; ".join(f"{name}s: {', '.join(values)}" for name, values in there.items())
            unmatched = f"no endpoint matches {asked} (the inventory lists {len(offered)}: {listed})"
        return Inventory(list(unique.values()), skipped, str(auth) if auth else None, unmatched)

    def _sigv4_for(self, url: str) -> Callable[[], httpx.Auth]:
        def auth() -> httpx.Auth:
            region = self._region or region_of(url)
            if region is None:
                raise ClientError(f"cannot tell the Region of {url}: pass region= (--region)")
            credentials = self._credentials
            if credentials is None:
                try:
                    import boto3
                except ModuleNotFoundError:
                    raise ClientError(
                        "signing inventory requests needs boto3: pip install -r runtime/requirements-client.txt"
                    ) from None
                credentials = boto3.Session().get_credentials()
                if credentials is None:
                    raise ClientError("no AWS credentials to sign the inventory request (IAM auth)")
            return SigV4Auth(credentials, region)

        return auth

    def _fetch_inventory(self, url: str, deadline: float) -> object:
        self._warn_plain_http(url, "inventory")
        timeout = min(self._probe_timeout_s * 5, self._left(deadline))
        if timeout <= 0:
            raise ClientError(f"inventory {url} not read: the deadline passed")
        try:
            response = self._http.get(url, params=self._filters, auth=self._sigv4_for(url)(), timeout=timeout)
        except httpx.HTTPError as err:
            raise ClientError(f"inventory {url} unreachable: {_why(err)}: {err}") from None
        if response.status_code != 200:
            raise ClientError(f"inventory {url} answered {response.status_code}: {response.text[:200]}")
        try:
            return response.json()
        except ValueError:
            raise ClientError(f"inventory {url} did not answer JSON") from None

    def _warn_plain_http(self, url: str, what: str) -> None:
        if urlsplit(url).scheme.lower() == "http" and url not in self._warned_http:
            self._warned_http.add(url)
            log.warning("%s %s is plain http (no TLS): requests to it are not encrypted", what, url)

    def _refuse(self, endpoint: Endpoint) -> None:
        """One warning per URL: this endpoint would get the token in the clear, so it is skipped."""
        if endpoint.url not in self._warned_refused:
            self._warned_refused.add(endpoint.url)
            log.warning(
                "%s skipped: plain http to a non-loopback host would expose the bearer token (allowed: %s)",
                _described(endpoint),
                CREDENTIAL_URLS,
            )

    # --- probing and ranking --------------------------------------------------------------------

    def probe(self, endpoint: Endpoint, attempts: int = 2) -> Probe:
        """Best round-trip time of ``GET /healthz`` over ``attempts`` (the first pays the connect)."""
        probe = self._probe_within(endpoint, math.inf, attempts)
        assert probe is not None  # only a deadline cuts a probe short
        return probe

    def _probe_within(self, endpoint: Endpoint, deadline: float, attempts: int = 2) -> Probe | None:
        """``probe`` within what is left of ``deadline``; None when the deadline, not the endpoint, cut it."""
        best: float | None = None
        for _ in range(attempts):
            allowed = min(self._probe_timeout_s, self._left(deadline))
            if allowed <= 0:
                return None
            start = self._clock()
            try:
                response = self._http.get(
                    endpoint.url + contract.HEALTH_PATH,
                    timeout=allowed,
                    extensions=tls_extensions(endpoint),
                )
            except httpx.TimeoutException as err:
                if allowed < self._probe_timeout_s:
                    return None  # the deadline's timeout, not the endpoint's
                return Probe(endpoint, None, _why(err))
            except httpx.HTTPError as err:
                return Probe(endpoint, None, _why(err))
            if response.status_code != 200:
                return Probe(endpoint, None, f"healthz {response.status_code}")
            rtt = (self._clock() - start) * 1000.0
            best = rtt if best is None else min(best, rtt)
        return Probe(endpoint, best)

    def probe_all(self, endpoints: Sequence[Endpoint]) -> list[Probe]:
        """Every endpoint probed in parallel (16 at a time), with no deadline but the probe timeout."""
        return [p for p in self._probe_each(endpoints, math.inf) if p is not None]

    def _probe_each(self, endpoints: Sequence[Endpoint], deadline: float) -> list[Probe | None]:
        if not endpoints:
            return []
        with ThreadPoolExecutor(max_workers=min(16, len(endpoints))) as pool:
            return list(pool.map(lambda endpoint: self._probe_within(endpoint, deadline), endpoints))

    def order(self, probes: Sequence[Probe]) -> list[Endpoint]:
        """Local Zone endpoints by latency, then the Region's, then the fallback URLs."""
        local = rank([p for p in probes if not p.endpoint.is_region], self._tie_ms)
        region = rank([p for p in probes if p.endpoint.is_region], self._tie_ms)
        return [*local, *region, *self._fallbacks]

    # --- tokens ---------------------------------------------------------------------------------

    def _bearer(self, inventory: Inventory, deadline: float) -> str | None:
        """The token to send: the given one, or a fetched one when the inventory says endpoints need it."""
        if self._tokens is None:
            return None
        wanted = self._explicit_token or inventory.auth == "token" or inventory.error is not None
        if not wanted:
            return None
        try:
            return self._tokens.get(timeout_s=self._left(deadline))
        except (TokenError, ClientError) as err:
            if inventory.error is not None:  # best effort: the fallback URLs may not need one
                log.warning("no token for the fallback URLs: %s", err)
                return None
            raise ClientError(str(err)) from None

    # --- generation -----------------------------------------------------------------------------

    def generate(self, request: ImageRequest, *, deadline_s: float = DEFAULT_DEADLINE_S) -> GenerationResult:
        """Generate on the nearest endpoint, failing over until ``deadline_s`` (total) passes."""
        if deadline_s <= 0:
            raise ClientError(f"deadline {deadline_s!r}: allowed a positive number of seconds")
        payload = request.encode()  # a bad image prompt is refused before any request
        start = self._clock()
        deadline = start + deadline_s
        try:
            inventory = self._inventory(deadline)
        except ClientError as err:
            if not self._fallbacks:
                raise
            log.warning("%s; trying the fallback URLs", err)
            inventory = Inventory([], [], error=str(err))
        token = self._bearer(inventory, deadline)
        inventory_done = self._clock()
        if not inventory.endpoints and not self._fallbacks:
            if inventory.unmatched:
                raise NoEndpointError(inventory.unmatched)
            skipped = inventory.skipped
            raise NoEndpointError("the inventory lists no usable endpoint" + (f" ({skipped[0]})" if skipped else ""))
        refused: list[Endpoint] = []
        if token is not None:
            refused = [e for e in (*inventory.endpoints, *self._fallbacks) if not carries_credentials(e.url)]
            for endpoint in refused:
                self._refuse(endpoint)
            if len(refused) == len(inventory.endpoints) + len(self._fallbacks):
                raise NoEndpointError(self._all_refused(refused, inventory))
        measured = self._probe_each([e for e in inventory.endpoints if e not in refused], deadline)
        probes = [p for p in measured if p is not None]  # None: the deadline cut the probe short
        ordered = [e for e in self.order(probes) if e not in refused]
        probe_done = self._clock()
        unreachable = [p for p in probes if p.rtt_ms is None]
        attempts: list[Attempt] = []
        renewed = False
        queue = list(ordered)
        while queue:
            endpoint = queue[0]
            remaining = deadline - self._clock()
            if remaining <= 0:
                break
            if token is not None and not carries_credentials(endpoint.url):  # a token came with a 401's renewal
                self._refuse(endpoint)
                refused.append(endpoint)
                queue.pop(0)
                continue
            self._warn_plain_http(endpoint.url, "endpoint")
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            began = self._clock()
            try:
                response = self._http.post(
                    endpoint.url + contract.IMAGES_PATH,
                    headers=headers,
                    timeout=remaining,
                    extensions=tls_extensions(endpoint),
                    **payload,
                )
            except httpx.TimeoutException:
                attempts.append(Attempt(endpoint, "timeout", self._clock() - began))
                log.warning("%s timed out, failing over", endpoint.endpoint_id)
                queue.pop(0)
                continue
            except httpx.HTTPError as err:
                attempts.append(Attempt(endpoint, f"connection error: {_why(err)}", self._clock() - began))
                log.warning("%s failed (%s), failing over", endpoint.endpoint_id, _why(err))
                queue.pop(0)
                continue
            took = self._clock() - began
            if response.status_code == 401 and self._tokens is not None and self._tokens.refreshable and not renewed:
                attempts.append(Attempt(endpoint, "401: token renewed", took))
                renewed = True
                self._tokens.invalidate()
                try:
                    token = self._tokens.get(timeout_s=self._left(deadline))
                except (TokenError, ClientError) as err:
                    raise ClientError(f"{endpoint.endpoint_id} refused the token and no new one came: {err}") from None
                continue  # the same endpoint again, once, with the new token
            if retryable(response.status_code):
                attempts.append(Attempt(endpoint, str(response.status_code), took))
                log.warning("%s answered %d, failing over", endpoint.endpoint_id, response.status_code)
                queue.pop(0)
                continue
            if response.status_code != 200:  # the request's fault: no other endpoint would accept it
                message = _error_message(response)
                if response.status_code == 401 and token is None:
                    message += " (the endpoint requires a token: pass --token, or use --inventory-url to get one)"
                raise RequestRejectedError(response.status_code, message)
            try:
                images, media_type, meta = _decode_images(response)
            except ValueError as err:
                attempts.append(Attempt(endpoint, f"bad response: {err}", took))
                queue.pop(0)
                continue
            attempts.append(Attempt(endpoint, "ok", took))
            done = self._clock()
            return GenerationResult(
                images=images,
                endpoint=endpoint,
                attempts=tuple(attempts),
                probes=tuple(probes),
                timings={
                    "inventory_s": inventory_done - start,
                    "probe_s": probe_done - inventory_done,
                    "generate_s": done - probe_done,
                    "total_s": done - start,
                },
                seed=meta.get("seed"),
                request_id=response.headers.get(contract.REQUEST_ID_HEADER) or meta.get("request_id"),
                server_timings=dict(meta.get("timings") or {}),
                skipped_entries=tuple(inventory.skipped),
                media_type=media_type,
            )
        raise NoEndpointError(self._failure(deadline_s, attempts, unreachable, refused, inventory), attempts)

    def _all_refused(self, refused: Sequence[Endpoint], inv: Inventory) -> str:
        """One line: every candidate is plain http elsewhere than loopback, and a token would go along."""
        urls = ", ".join(dict.fromkeys(e.url for e in refused))
        hint = " (or give no token, if these endpoints need none)" if self._explicit_token else ""
        context = "".join(f"; {why}" for why in (inv.unmatched, inv.error) if why)
        return f"refused to send the bearer token over plain http to {urls}; allowed: {CREDENTIAL_URLS}{hint}{context}"

    @staticmethod
    def _failure(
        deadline_s: float,
        attempts: Sequence[Attempt],
        unreachable: Sequence[Probe],
        refused: Sequence[Endpoint],
        inv: Inventory,
    ) -> str:
        """One line: every endpoint tried and why it did not serve, and what was never tried."""
        parts = [f"{_described(a.endpoint)}: {a.outcome}" for a in attempts]
        parts += [f"{_described(p.endpoint)}: not tried, {contract.HEALTH_PATH} {p.error}" for p in unreachable]
        parts += [f"{_described(e)}: not tried, plain http would expose the bearer token" for e in refused]
        if inv.unmatched:
            parts.append(inv.unmatched)
        if inv.error:
            parts.append(inv.error)
        if not attempts:
            parts.append("the deadline passed before any attempt" if not unreachable else "no endpoint was reachable")
        return f"no endpoint produced an image within {deadline_s:g}s ({'; '.join(parts)})"


def _error_message(response: httpx.Response) -> str:
    """The server's reason in one line: a JSON object's ``error`` or ``detail``, else the body as it is."""
    try:
        body = response.json()
    except ValueError:
        return " ".join(response.text.split())[:300]
    message = (body.get("error") or body.get("detail") or body) if isinstance(body, dict) else body
    return " ".join(str(message).split())[:300]


def _decode_images(response: httpx.Response) -> tuple[list[bytes], str, dict[str, Any]]:
    """(images, their media type, the answer's fields) from a binary image (png, jpeg, webp) or a JSON answer."""
    kind = response.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind in MEDIA_TYPES.values():
        headers = response.headers
        timings = {
            "queue_ms": _number_or_none(headers.get("X-Queue-Ms")),
            "inference_ms": _number_or_none(headers.get("X-Inference-Ms")),
            "batch_size": _int_or_none(headers.get("X-Batch-Size")),
        }
        known = {name: value for name, value in timings.items() if value is not None}
        return [response.content], kind, {"seed": _int_or_none(headers.get("X-Seed")), "timings": known}
    if kind != "application/json":
        raise ValueError(f"unexpected content type {kind or 'none'}")
    body = response.json()
    encoded = body.get("images") if isinstance(body, dict) else None
    if not isinstance(encoded, list) or not encoded:
        raise ValueError("no images in the response")
    try:
        images = [base64.b64decode(item, validate=True) for item in encoded]
    except (TypeError, ValueError):
        raise ValueError("images are not base64") from None
    return images, sniff_image(images[0]) or "image/png", body


def _number_or_none(value: str | None) -> float | None:
    try:
        number = float(value) if value is not None else None
    except ValueError:
        return None
    return number if number is not None and math.isfinite(number) else None


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None
