"""The breaking point of a serving endpoint, and the autoscaling target and cost it implies.

``python -m runtime.bench.breaking_point --url https://... --slo-p90-ms 4000`` steps a closed-loop
load (1, 2, 3, ... clients, each sending its next request when the last one answers) for a fixed
time per step until the p90 latency passes the SLO or a request fails. The last step within the
SLO is the sustainable load: divided by the pods behind the URL it is the pending requests (queued
plus in flight) one pod holds at the SLO, which is what ``serving.targetPendingPerReplica`` means
to KEDA; its images/s priced per instance hour is the cost per 1,000 images, On-Demand and Spot.

Workstation tool: it is not in the serving image and reads prices from ``plan.prices``.
"""

from __future__ import annotations

import http.client
import json
import math
import ssl
import sys
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, Final

from plan import contract, prices
from runtime.bench.load import LevelResult
from runtime.settings import InvalidValueError, ProgramSettings, SettingsError, error_exit, refusal, setting

REQUEST_TIMEOUT_S: Final = 300.0
READY_TIMEOUT_S: Final = 60.0
PROMPT: Final = "a lighthouse on a cliff at dawn"
# OpenSSL's X509_V_ERR_HOSTNAME_MISMATCH and X509_V_ERR_IP_ADDRESS_MISMATCH: the certificate names another host.
NAME_MISMATCH_CODES: Final = frozenset({62, 64})
HPA_TOLERANCE: Final = 0.1  # kube-controller-manager's default --horizontal-pod-autoscaler-tolerance


def _price_map(raw: str) -> dict[str, float]:
    try:
        value = json.loads(raw)
    except ValueError:
        raise InvalidValueError("not JSON") from None
    if not isinstance(value, dict):
        raise InvalidValueError("not a JSON object")
    return value


PRICES_ALLOWED: Final = 'a JSON object of USD per hour like {"g5.xlarge": 1.006} (the onDemandPrices config key)'


def _are_prices(value: Mapping[str, float]) -> bool:
    return all(price >= 0 for price in value.values())


def _are_instance_types(value: tuple[str, ...]) -> bool:
    return all(prices.INSTANCE_TYPE_PATTERN.match(v) for v in value)


class BreakingPointSettings(ProgramSettings):
    """The endpoint, the load steps, the SLO, and what the pods behind the URL cost."""

    PROG: ClassVar[str] = "python -m runtime.bench.breaking_point"
    DESCRIPTION: ClassVar[str] = (
        "Step a closed-loop load against an endpoint until p90 latency passes the SLO; print the sustainable "
        "concurrency per pod, the KEDA target it implies and the cost per 1,000 images."
    )

    url: str = setting(flag="--url", help="the endpoint, e.g. https://203.0.113.10:30443 or http://127.0.0.1:7860")
    slo_p90_ms: float = setting(flag="--slo-p90-ms", gt=0, unit="milliseconds")
    max_clients: int = setting(flag="--max-clients", default=25, ge=1, le=1000, help="last step of the load")
    step_s: float = setting(flag="--step-s", default=30.0, gt=0, unit="seconds")
    max_error_rate: float = setting(
        flag="--max-error-rate", default=0.0, ge=0, le=1, help="share of failed requests a step may have (0-1)"
    )
    pods: int = setting(flag="--pods", default=1, ge=1, help="ready serving pods behind the URL")
    token: str | None = setting(flag="--token", default=None, help="bearer token (Authorization header)")
    token_file: Path | None = setting(flag="--token-file", default=None, help="file holding the bearer token")
    ca_bundle: Path | None = setting(flag="--ca-bundle", default=None, help="PEM CA bundle to verify TLS with")
    server_name: str | None = setting(
        flag="--server-name",
        default=None,
        help="DNS name the certificate names, sent as SNI and verified (a Local Zone --url names a node IP)",
    )
    steps: int = setting(flag="--steps", default=25, ge=1, help="denoising steps per image")
    width: int = setting(flag="--width", default=contract.DEFAULT_IMAGE_SIZE, ge=1)
    height: int = setting(flag="--height", default=contract.DEFAULT_IMAGE_SIZE, ge=1)
    guidance_scale: float = setting(flag="--guidance-scale", default=7.5, ge=0)
    warmup_requests: int = setting(flag="--warmup-requests", default=4, ge=0)
    instance_types: tuple[str, ...] = setting(
        flag="--instance-type",
        default=(),
        check=_are_instance_types,
        allowed="a comma-separated list of EC2 instance types such as g5.xlarge,g6.xlarge",
        help="instance types the pods run on, to price",
    )
    pods_per_instance: int = setting(flag="--pods-per-instance", default=1, ge=1)
    region: str = setting(flag="--region", default=prices.REFERENCE_REGION, help="Region whose prices to use")
    on_demand_prices: Mapping[str, float] = setting(
        flag="--on-demand-prices",
        default_factory=dict,
        parse=_price_map,
        check=_are_prices,
        allowed=PRICES_ALLOWED,
        help="overrides of the dated price table",
    )
    price_per_hour: float | None = setting(
        flag="--price-per-hour", default=None, ge=0, unit="USD", help="price of the one --instance-type"
    )
    spot_prices: Mapping[str, float] = setting(
        flag="--spot-prices",
        default_factory=dict,
        parse=_price_map,
        check=_are_prices,
        allowed=PRICES_ALLOWED.replace("onDemandPrices config key", "Spot price you pay"),
        help="Spot prices (plan.prices records none with a source: without one Spot is costed at On-Demand)",
    )
    json_out: Path | None = setting(flag="--json", default=None, help="also write the result as JSON here")

    def check(self) -> None:
        scheme = urllib.parse.urlparse(self.url).scheme
        if scheme not in ("http", "https") or not urllib.parse.urlparse(self.url).hostname:
            raise refusal("--url", self.url, "an http:// or https:// URL with a host")
        if self.server_name is not None and (scheme != "https" or not contract.is_dns_name(self.server_name)):
            raise refusal("--server-name", self.server_name, "a DNS name such as lz.example.com, with an https --url")
        if self.token is not None and self.token_file is not None:
            raise refusal("--token-file", str(self.token_file), "either --token or --token-file, not both")
        if self.price_per_hour is not None and len(self.instance_types) != 1:
            raise refusal(
                "--price-per-hour", self.price_per_hour, "with exactly one --instance-type (use --on-demand-prices)"
            )


@dataclass(frozen=True)
class Verdict:
    """What the steps say: the last step within the SLO (None: even one client breaks it)."""

    sustainable: LevelResult | None
    breaking: LevelResult | None  # the first step past the SLO; None: never broke up to max clients
    pods: int

    @property
    def concurrency_per_pod(self) -> float:
        return self.sustainable.concurrency / self.pods if self.sustainable else 0.0

    @property
    def images_per_s_per_pod(self) -> float:
        return self.sustainable.images_per_s / self.pods if self.sustainable else 0.0

    @property
    def target_pending_per_replica(self) -> int:
        """Whole pending requests per pod to target: the HPA leaves replicas alone while the metric is
        within its tolerance of the target, so the target times (1 + tolerance) must not pass the
        concurrency at which p90 held."""
        return max(1, math.floor(self.concurrency_per_pod / (1 + HPA_TOLERANCE) + 1e-9))


def within_slo(step: LevelResult, slo_p90_ms: float, max_error_rate: float) -> bool:
    if step.requests == 0 or step.requests == step.errors:
        return False
    return step.pct(90) <= slo_p90_ms and step.errors / step.requests <= max_error_rate


def verdict(steps: Sequence[LevelResult], slo_p90_ms: float, pods: int, max_error_rate: float = 0.0) -> Verdict:
    """The last step before the first one past the SLO (steps in increasing concurrency)."""
    sustainable = None
    for step in steps:
        if not within_slo(step, slo_p90_ms, max_error_rate):
            return Verdict(sustainable, step, pods)
        sustainable = step
    return Verdict(sustainable, None, pods)


@dataclass(frozen=True)
class Cost:
    price: prices.Price
    usd_per_1000_images: float


def costs(
    result: Verdict,
    instance_types: Sequence[str],
    *,
    region: str,
    overrides: Mapping[str, float],
    price_per_hour: float | None,
    pods_per_instance: int,
    spot_overrides: Mapping[str, float] | None = None,
) -> list[Cost]:
    """Cost per 1,000 images of each instance type at the sustainable images/s of one pod: On-Demand,
    then Spot (the On-Demand price, labelled, where no Spot price is recorded or given)."""
    per_instance = result.images_per_s_per_pod * pods_per_instance
    out = []
    for instance_type in instance_types:
        if price_per_hour is not None:
            price = prices.Price(instance_type, price_per_hour, region, "--price-per-hour")
        else:
            price = prices.on_demand_price(instance_type, region, overrides)
        spot = prices.spot_price(
            instance_type, region, spot_overrides, on_demand_overrides={**overrides, instance_type: price.usd_per_hour}
        )
        if spot.purchase == prices.ON_DEMAND:  # the fallback: the On-Demand price and its origin
            spot = replace(price, note=prices.NO_SPOT_PRICE)
        for row in (price, spot):
            out.append(Cost(row, prices.cost_per_1000_images(row.usd_per_hour, per_instance)))
    return out


# --- HTTP ----------------------------------------------------------------------------------
class NamedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to ``host`` (a node IP) that sends ``server_name`` as SNI and verifies the certificate
    against that name: ``HTTPSConnection.connect`` with the name in place of the host."""

    def __init__(self, host: str, port: int, server_name: str, context: ssl.SSLContext, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout, context=context)
        self.server_name, self.tls = server_name, context

    def connect(self) -> None:
        http.client.HTTPConnection.connect(self)
        self.sock = self.tls.wrap_socket(self.sock, server_hostname=self.server_name)


@dataclass
class Endpoint:
    """Connections to one URL: TLS verified (system CAs or --ca-bundle) against the URL's host or
    ``server_name``, optional bearer token."""

    url: str
    token: str | None = None
    ca_bundle: Path | None = None
    server_name: str | None = None
    _tls: ssl.SSLContext | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        parsed = urllib.parse.urlparse(self.url)
        self.https = parsed.scheme == "https"
        self.host = parsed.hostname or ""
        self.port = parsed.port or (443 if self.https else 80)
        self.base_path = parsed.path.rstrip("/")
        if self.https:
            self._tls = ssl.create_default_context(cafile=str(self.ca_bundle) if self.ca_bundle else None)

    def connect(self) -> http.client.HTTPConnection:
        if self.https and self.server_name and self._tls is not None:
            return NamedHTTPSConnection(self.host, self.port, self.server_name, self._tls, REQUEST_TIMEOUT_S)
        if self.https:
            return http.client.HTTPSConnection(self.host, self.port, timeout=REQUEST_TIMEOUT_S, context=self._tls)
        return http.client.HTTPConnection(self.host, self.port, timeout=REQUEST_TIMEOUT_S)

    def headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        last = "no answer"
        while time.monotonic() < deadline:
            conn = self.connect()
            try:
                conn.request("GET", self.base_path + contract.READY_PATH, headers=self.headers())
                response = conn.getresponse()
                response.read()
                if response.status == 200:
                    return
                if response.status in (401, 403):
                    raise ConnectionError(
                        f"{self.url}{contract.READY_PATH} answered HTTP {response.status}: check --token"
                    )
                last = f"HTTP {response.status}"
            except ssl.SSLCertVerificationError as exc:
                fix = "pass --ca-bundle with the CA that signed the endpoint's certificate"
                if exc.verify_code in NAME_MISMATCH_CODES:
                    fix = "pass --server-name with the DNS name the endpoint's certificate names"
                raise ConnectionError(f"TLS to {self.url} failed: {exc.reason} ({exc.verify_message}); {fix}") from None
            except ssl.SSLError as exc:
                raise ConnectionError(f"TLS to {self.url} failed: {exc.reason or exc}") from None
            except (OSError, http.client.HTTPException) as exc:
                last = str(exc) or type(exc).__name__
            finally:
                conn.close()
            time.sleep(0.5)
        raise TimeoutError(f"{self.url}{contract.READY_PATH} not ready after {timeout_s:g}s ({last})")


def run_step(
    endpoint: Endpoint, clients: int, duration_s: float, body: Mapping[str, Any], seed_base: int = 0
) -> tuple[LevelResult, Counter[str]]:
    """``clients`` closed-loop clients for ``duration_s``; requests sent before the end are all awaited."""
    latencies: list[float] = []
    outcomes: Counter[str] = Counter()
    lock = threading.Lock()
    seeds = iter(range(seed_base, seed_base + 10**9))
    deadline = time.perf_counter() + duration_s

    def client() -> None:
        conn = endpoint.connect()
        while time.perf_counter() < deadline:
            with lock:
                seed = next(seeds)
            payload = json.dumps({**body, "seed": seed}).encode()
            started = time.perf_counter()
            try:
                conn.request(
                    "POST", endpoint.base_path + contract.IMAGES_PATH, body=payload, headers=endpoint.headers()
                )
                response = conn.getresponse()
                response.read()
                outcome = str(response.status)
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                conn = endpoint.connect()
                outcome = type(exc).__name__
            elapsed_ms = (time.perf_counter() - started) * 1000
            with lock:
                outcomes[outcome] += 1
                if outcome == "200":
                    latencies.append(elapsed_ms)
        conn.close()

    threads = [threading.Thread(target=client, name=f"client-{i}") for i in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - started
    requests = sum(outcomes.values())
    errors = requests - outcomes["200"]
    result = LevelResult(
        config="step", concurrency=clients, requests=requests, errors=errors, seconds=seconds, latencies_ms=latencies
    )
    return result, outcomes


def warm_up(endpoint: Endpoint, body: Mapping[str, Any], requests: int) -> Counter[str]:
    """Sequential requests before the first step (first calls pay one-off kernel selection)."""
    outcomes: Counter[str] = Counter()
    conn = endpoint.connect()
    try:
        for seed in range(requests):
            try:
                conn.request(
                    "POST",
                    endpoint.base_path + contract.IMAGES_PATH,
                    body=json.dumps({**body, "seed": seed}).encode(),
                    headers=endpoint.headers(),
                )
                response = conn.getresponse()
                response.read()
                outcomes[str(response.status)] += 1
            except (OSError, http.client.HTTPException) as exc:
                outcomes[type(exc).__name__] += 1
                conn.close()
                conn = endpoint.connect()
    finally:
        conn.close()
    return outcomes


# --- Output --------------------------------------------------------------------------------
STEP_HEADER: Final = (
    "| clients | requests | errors | images/s | p50 ms | p90 ms | p99 ms | within SLO |\n"
    "|---:|---:|---:|---:|---:|---:|---:|---|"
)


def step_row(step: LevelResult, ok: bool, outcomes: Mapping[str, int] | None = None) -> str:
    failed = {k: v for k, v in (outcomes or {}).items() if k != "200"}
    errors = f"{step.errors}" + (f" ({', '.join(f'{k}: {v}' for k, v in sorted(failed.items()))})" if failed else "")
    return (
        f"| {step.concurrency} | {step.requests} | {errors} | {step.images_per_s:.2f} | {step.pct(50):.1f} | "
        f"{step.pct(90):.1f} | {step.pct(99):.1f} | {'yes' if ok else 'no'} |"
    )


def summary(result: Verdict, slo_p90_ms: float, cost_rows: Sequence[Cost], region: str) -> list[str]:
    if result.sustainable is None:
        return [f"no sustainable load: even 1 client is past p90 {slo_p90_ms:g} ms (or failed); nothing to scale on"]
    s = result.sustainable
    where = (
        f"the first step past it was {result.breaking.concurrency} clients (p90 {result.breaking.pct(90):.1f} ms, "
        f"{result.breaking.errors} errors)"
        if result.breaking
        else "no step up to --max-clients passed it: the breaking point is higher"
    )
    lines = [
        f"sustainable: {s.concurrency} clients within p90 {slo_p90_ms:g} ms ({where})",
        f"per pod ({result.pods} behind the URL): concurrency {result.concurrency_per_pod:.2f}, "
        f"{result.images_per_s_per_pod:.2f} images/s, p90 {s.pct(90):.1f} ms",
        f"serving.targetPendingPerReplica = {result.target_pending_per_replica}: each closed-loop client keeps one "
        f"request queued or in flight, so pods held {result.concurrency_per_pod:.2f} pending (queued + in flight) "
        f"at the SLO; the HPA acts only outside {HPA_TOLERANCE:.0%} of the target, so the target is that over "
        f"{1 + HPA_TOLERANCE:g}, rounded down",
    ]
    for c in cost_rows:
        origin = c.price.source + (f", {c.price.as_of}" if c.price.as_of else "")
        fallback = f" (no cited {region} table: {c.price.region} price)" if c.price.region != region else ""
        spot = bool(c.price.note) or c.price.purchase == prices.SPOT
        priced_as = f" ({c.price.note or prices.SPOT})" if spot else ""
        lines.append(
            f"{'spot cost' if spot else 'cost'}: {c.price.instance_type} at {c.price.usd_per_hour:.4f} USD/h"
            f"{priced_as}{fallback} -> {c.usd_per_1000_images:.4f} USD per 1,000 images [{origin}]"
        )
    return lines


def to_json(result: Verdict, steps: Sequence[LevelResult], slo_p90_ms: float, cost_rows: Sequence[Cost]) -> dict:
    """What scaling.simulate reads (--breaking-point): per-pod throughput and concurrency at the SLO."""
    return {
        "slo_p90_ms": slo_p90_ms,
        "pods": result.pods,
        "steps": [
            {"clients": s.concurrency, "requests": s.requests, "errors": s.errors, "images_per_s": s.images_per_s}
            | {f"p{q}_ms": s.pct(q) for q in (50, 90, 99)}
            for s in steps
        ],
        "sustainable_clients": result.sustainable.concurrency if result.sustainable else 0,
        "concurrency_per_pod": result.concurrency_per_pod,
        "images_per_s_per_pod": result.images_per_s_per_pod,
        "p90_ms_at_sustainable": result.sustainable.pct(90) if result.sustainable else None,
        "target_pending_per_replica": result.target_pending_per_replica if result.sustainable else None,
        "costs": [
            {"instance_type": c.price.instance_type, "usd_per_hour": c.price.usd_per_hour, "region": c.price.region}
            | {"source": c.price.source, "as_of": c.price.as_of, "usd_per_1000_images": c.usd_per_1000_images}
            | {"purchase": prices.SPOT if c.price.note else c.price.purchase, "priced_as": c.price.label}
            for c in cost_rows
        ],
    }


def main(argv: Sequence[str] | None = None, out: Callable[[str], None] = print) -> int:
    try:
        args = BreakingPointSettings.from_args(argv)
        token = args.token
        if args.token_file is not None:
            token = args.token_file.read_text().strip()
        for instance_type in () if args.price_per_hour is not None else args.instance_types:
            prices.on_demand_price(instance_type, args.region, args.on_demand_prices)  # refuse unknown types first
    except (SettingsError, prices.UnknownPriceError) as exc:
        return error_exit(BreakingPointSettings.PROG, exc)
    except OSError as exc:
        return error_exit(BreakingPointSettings.PROG, f"--token-file: cannot read {args.token_file}: {exc.strerror}")
    endpoint = Endpoint(args.url, token, args.ca_bundle, args.server_name)
    body = {
        "prompt": PROMPT,
        "steps": args.steps,
        "guidance_scale": args.guidance_scale,
        "width": args.width,
        "height": args.height,
        "response_format": "png",
    }
    try:
        endpoint.wait_ready()
        outcomes = warm_up(endpoint, body, args.warmup_requests)
        if args.warmup_requests and outcomes["200"] == 0:
            return error_exit(BreakingPointSettings.PROG, f"every warm-up request failed: {dict(outcomes)}", code=1)
    except (ConnectionError, TimeoutError) as exc:
        return error_exit(BreakingPointSettings.PROG, exc, code=1)

    out(f"closed-loop steps of {args.step_s:g} s against {args.url}, SLO p90 <= {args.slo_p90_ms:g} ms")
    out(STEP_HEADER)
    steps: list[LevelResult] = []
    for clients in range(1, args.max_clients + 1):
        step, outcomes = run_step(endpoint, clients, args.step_s, body, seed_base=clients * 1_000_000)
        ok = within_slo(step, args.slo_p90_ms, args.max_error_rate)
        out(step_row(step, ok, outcomes))
        steps.append(step)
        if not ok:
            break
    result = verdict(steps, args.slo_p90_ms, args.pods, args.max_error_rate)
    cost_rows = (
        costs(
            result,
            args.instance_types,
            region=args.region,
            overrides=args.on_demand_prices,
            price_per_hour=args.price_per_hour,
            pods_per_instance=args.pods_per_instance,
            spot_overrides=args.spot_prices,
        )
        if result.sustainable
        else []
    )
    out("")
    for line in summary(result, args.slo_p90_ms, cost_rows, args.region):
        out(line)
    if args.json_out is not None:
        args.json_out.write_text(json.dumps(to_json(result, steps, args.slo_p90_ms, cost_rows), indent=2) + "\n")
    return 0 if result.sustainable else 1


if __name__ == "__main__":
    sys.exit(main())
