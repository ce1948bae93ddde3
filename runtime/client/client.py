"""Pull the endpoint inventory, pick the nearest healthy endpoint, generate there, fail over.

Order: round-trip time of ``GET /healthz`` (the best of two probes, so connection setup does not
decide), rounded to ``tie_ms``; ties go to the cheaper accelerator (the entry's ``cost_weight``,
which the publisher fills from the app's accelerator table: higher is cheaper). Failover: a
connection error, a timeout, 429 or a 5xx moves to the next endpoint, all within one total
deadline; a 4xx other than 429 is the request's fault and fails at once (no other endpoint would
accept it). Malformed inventory entries are skipped with a warning, never an exception.

This module needs httpx (and botocore only to sign inventory requests); it does not import the
CDK app: cost weights travel in the inventory, not in a table copied from ``spec/``.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

import httpx

from runtime.client.auth import SigV4Auth, region_of
from runtime.inventory.endpoint import Endpoint
from spec import contract

log = logging.getLogger("edge_diffusion.client")

RETRYABLE_STATUSES: Final = frozenset({429, 500, 502, 503, 504})
DEFAULT_DEADLINE_S: Final = 120.0
DEFAULT_PROBE_TIMEOUT_S: Final = 2.0
DEFAULT_TIE_MS: Final = 5.0


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


def parse_inventory(document: object) -> tuple[list[Endpoint], list[str]]:
    """(usable endpoints, one warning per skipped entry) from the API's JSON or a list of entries."""
    entries = document.get("endpoints") if isinstance(document, Mapping) else document
    if not isinstance(entries, list):
        return [], [f"inventory has no 'endpoints' list (got {type(entries).__name__})"]
    endpoints: list[Endpoint] = []
    skipped: list[str] = []
    seen: set[str] = set()
    for index, entry in enumerate(entries):
        try:
            endpoint = Endpoint.from_entry(entry)
        except ValueError as err:
            skipped.append(f"inventory entry {index} skipped: {err}")
            continue
        if endpoint.url in seen:
            continue
        seen.add(endpoint.url)
        endpoints.append(endpoint)
    for warning in skipped:
        log.warning("%s", warning)
    return endpoints, skipped


@dataclass(frozen=True)
class ImageRequest:
    """The body of ``POST /v1/images`` (``None`` leaves the server's default)."""

    prompt: str
    negative_prompt: str | None = None
    steps: int | None = None
    guidance_scale: float | None = None
    width: int | None = None
    height: int | None = None
    seed: int | None = None
    num_images: int = 1

    def body(self) -> dict[str, Any]:
        body = {k: v for k, v in asdict(self).items() if v is not None}
        if self.guidance_scale is not None:
            body["guidance_scale"] = float(self.guidance_scale)  # the server takes JSON numbers strictly
        body["response_format"] = "json"  # carries every image, the seed and server timings
        return body


@dataclass(frozen=True)
class Probe:
    endpoint: Endpoint
    rtt_ms: float | None  # None: unreachable or unhealthy
    error: str | None = None


@dataclass(frozen=True)
class Attempt:
    endpoint: Endpoint
    outcome: str  # "ok", "429", "503", "timeout", "connection error: ..."
    seconds: float


@dataclass(frozen=True)
class GenerationResult:
    images: list[bytes]  # PNG
    endpoint: Endpoint
    attempts: tuple[Attempt, ...]
    probes: tuple[Probe, ...]
    timings: dict[str, float]  # seconds: inventory, probe, generate, total
    seed: int | None = None
    request_id: str | None = None
    server_timings: dict[str, Any] = field(default_factory=dict)
    skipped_entries: tuple[str, ...] = ()


def rank(probes: Iterable[Probe], tie_ms: float = DEFAULT_TIE_MS) -> list[Endpoint]:
    """Reachable endpoints, nearest first; within ``tie_ms`` the cheaper accelerator first."""
    reachable = [p for p in probes if p.rtt_ms is not None]
    bucket = max(tie_ms, 1e-6)
    reachable.sort(key=lambda p: (int((p.rtt_ms or 0.0) // bucket), -(p.endpoint.cost_weight or 0), p.rtt_ms))
    return [p.endpoint for p in reachable]


class EdgeDiffusionClient:
    """Finds the nearest healthy endpoint and generates there, failing over within a deadline.

    Give exactly one inventory source: ``inventory_url`` (the InventoryStack's ``InventoryUrl``,
    signed with ``credentials`` or the default boto3 credential chain), ``endpoints_file`` (JSON
    as the API returns it), or ``endpoints`` (entries already fetched).
    """

    def __init__(
        self,
        *,
        inventory_url: str | None = None,
        endpoints_file: str | Path | None = None,
        endpoints: Sequence[Mapping[str, Any]] | None = None,
        filters: Mapping[str, str] | None = None,
        credentials: Any = None,
        region: str | None = None,
        probe_timeout_s: float = DEFAULT_PROBE_TIMEOUT_S,
        tie_ms: float = DEFAULT_TIE_MS,
        http: httpx.Client | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        sources = [s is not None for s in (inventory_url, endpoints_file, endpoints)]
        if sum(sources) != 1:
            raise ClientError("give exactly one of inventory_url, endpoints_file or endpoints")
        self._inventory_url, self._endpoints_file, self._endpoints = inventory_url, endpoints_file, endpoints
        self._filters = {k: v for k, v in (filters or {}).items() if v}
        self._credentials, self._region = credentials, region
        self._probe_timeout_s, self._tie_ms = probe_timeout_s, tie_ms
        self._http = http or httpx.Client(follow_redirects=False)
        self._owns_http = http is None
        self._clock = clock

    def __enter__(self) -> EdgeDiffusionClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    # --- inventory ----------------------------------------------------------------------------

    def load_inventory(self) -> tuple[list[Endpoint], list[str]]:
        """(endpoints, warnings about skipped entries) from the configured source."""
        if self._endpoints is not None:
            document: object = list(self._endpoints)
        elif self._endpoints_file is not None:
            path = Path(self._endpoints_file)
            try:
                document = json.loads(path.read_text())
            except OSError as err:
                raise ClientError(f"cannot read endpoints file {path}: {err.strerror}") from None
            except json.JSONDecodeError as err:
                raise ClientError(f"endpoints file {path} is not JSON: {err.msg} at line {err.lineno}") from None
        else:
            document = self._fetch_inventory(str(self._inventory_url))
        endpoints, skipped = parse_inventory(document)
        for name, value in self._filters.items():
            endpoints = [e for e in endpoints if getattr(e, name, None) == value]
        return endpoints, skipped

    def _fetch_inventory(self, url: str) -> object:
        region = self._region or region_of(url)
        if region is None:
            raise ClientError(f"cannot tell the Region of {url}: pass region=")
        credentials = self._credentials
        if credentials is None:
            import boto3

            credentials = boto3.Session().get_credentials()
            if credentials is None:
                raise ClientError("no AWS credentials to sign the inventory request (IAM auth)")
        try:
            response = self._http.get(
                url, params=self._filters, auth=SigV4Auth(credentials, region), timeout=self._probe_timeout_s * 5
            )
        except httpx.HTTPError as err:
            raise ClientError(f"inventory {url} unreachable: {type(err).__name__}: {err}") from None
        if response.status_code != 200:
            raise ClientError(f"inventory {url} answered {response.status_code}: {response.text[:200]}")
        try:
            return response.json()
        except ValueError:
            raise ClientError(f"inventory {url} did not answer JSON") from None

    # --- probing and ranking --------------------------------------------------------------------

    def probe(self, endpoint: Endpoint, attempts: int = 2) -> Probe:
        """Best round-trip time of ``GET /healthz`` over ``attempts`` (the first pays the connect)."""
        best: float | None = None
        for _ in range(attempts):
            start = self._clock()
            try:
                response = self._http.get(endpoint.url + contract.HEALTH_PATH, timeout=self._probe_timeout_s)
            except httpx.HTTPError as err:
                return Probe(endpoint, None, f"{type(err).__name__}")
            if response.status_code != 200:
                return Probe(endpoint, None, f"healthz {response.status_code}")
            rtt = (self._clock() - start) * 1000.0
            best = rtt if best is None else min(best, rtt)
        return Probe(endpoint, best)

    def probe_all(self, endpoints: Sequence[Endpoint]) -> list[Probe]:
        if not endpoints:
            return []
        with ThreadPoolExecutor(max_workers=min(16, len(endpoints))) as pool:
            return list(pool.map(self.probe, endpoints))

    # --- generation -----------------------------------------------------------------------------

    def generate(self, request: ImageRequest, *, deadline_s: float = DEFAULT_DEADLINE_S) -> GenerationResult:
        """Generate on the nearest endpoint, failing over until ``deadline_s`` (total) passes."""
        if deadline_s <= 0:
            raise ClientError(f"deadline {deadline_s!r}: allowed a positive number of seconds")
        start = self._clock()
        deadline = start + deadline_s
        endpoints, skipped = self.load_inventory()
        inventory_done = self._clock()
        if not endpoints:
            raise NoEndpointError("the inventory lists no usable endpoint" + (f" ({skipped[0]})" if skipped else ""))
        probes = self.probe_all(endpoints)
        ranked = rank(probes, self._tie_ms)
        probe_done = self._clock()
        if not ranked:
            reasons = ", ".join(f"{p.endpoint.endpoint_id}: {p.error}" for p in probes)
            raise NoEndpointError(f"no endpoint answered {contract.HEALTH_PATH} ({reasons})")
        attempts: list[Attempt] = []
        body = request.body()
        for endpoint in ranked:
            remaining = deadline - self._clock()
            if remaining <= 0:
                break
            began = self._clock()
            try:
                response = self._http.post(endpoint.url + contract.IMAGES_PATH, json=body, timeout=remaining)
            except httpx.TimeoutException:
                attempts.append(Attempt(endpoint, "timeout", self._clock() - began))
                log.warning("%s timed out, failing over", endpoint.endpoint_id)
                continue
            except httpx.HTTPError as err:
                attempts.append(Attempt(endpoint, f"connection error: {type(err).__name__}", self._clock() - began))
                log.warning("%s failed (%s), failing over", endpoint.endpoint_id, type(err).__name__)
                continue
            took = self._clock() - began
            if response.status_code in RETRYABLE_STATUSES:
                attempts.append(Attempt(endpoint, str(response.status_code), took))
                log.warning("%s answered %d, failing over", endpoint.endpoint_id, response.status_code)
                continue
            if response.status_code != 200:
                raise RequestRejectedError(response.status_code, _error_message(response))
            try:
                images, meta = _decode_images(response)
            except ValueError as err:
                attempts.append(Attempt(endpoint, f"bad response: {err}", took))
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
                skipped_entries=tuple(skipped),
            )
        tried = "; ".join(f"{a.endpoint.endpoint_id}: {a.outcome}" for a in attempts) or "none tried"
        raise NoEndpointError(f"no endpoint produced an image within {deadline_s:g}s ({tried})", attempts)


def _error_message(response: httpx.Response) -> str:
    try:
        body = response.json()
        message = body.get("error") or body.get("detail") or body
    except ValueError:
        message = response.text
    return " ".join(str(message).split())[:300]


def _decode_images(response: httpx.Response) -> tuple[list[bytes], dict[str, Any]]:
    """PNG bytes from a PNG or a JSON (base64 images) response."""
    kind = response.headers.get("content-type", "").split(";")[0].strip()
    if kind == "image/png":
        return [response.content], {"seed": _int_or_none(response.headers.get("X-Seed"))}
    if kind != "application/json":
        raise ValueError(f"unexpected content type {kind or 'none'}")
    body = response.json()
    encoded = body.get("images") if isinstance(body, dict) else None
    if not isinstance(encoded, list) or not encoded:
        raise ValueError("no images in the response")
    try:
        return [base64.b64decode(item, validate=True) for item in encoded], body
    except (TypeError, ValueError):
        raise ValueError("images are not base64") from None


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None
