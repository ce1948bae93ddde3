"""The breaking point: its logic and cost maths by hand, and runs against fake endpoints (token, TLS)."""

from __future__ import annotations

import json
import ssl
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from plan import contract, prices
from runtime.bench import breaking_point as bp
from runtime.bench.load import LevelResult
from scaling.loop import HPA_TOLERANCE
from tests.tls_ca import LOOPBACK, Ca


def level(clients: int, p90_ms: float, images: int = 100, errors: int = 0, seconds: float = 10.0) -> LevelResult:
    """A step whose successful latencies are all ``p90_ms`` (so every percentile is that value)."""
    return LevelResult("step", clients, images + errors, errors, seconds, [p90_ms] * images)


# --- logic ---------------------------------------------------------------------------------
def test_the_last_step_within_the_slo_is_sustainable() -> None:
    steps = [level(1, 100), level(2, 200), level(3, 300), level(4, 100)]
    v = bp.verdict(steps, slo_p90_ms=250, pods=2)
    assert v.sustainable is steps[1] and v.breaking is steps[2]
    assert v.concurrency_per_pod == 1.0
    assert v.images_per_s_per_pod == 5.0  # 100 images in 10 s over 2 pods


def test_no_sustainable_step_and_no_breaking_step() -> None:
    assert bp.verdict([level(1, 900)], 250, 1).sustainable is None
    steps = [level(1, 100), level(2, 120)]
    v = bp.verdict(steps, 250, 1)
    assert (v.sustainable, v.breaking) == (steps[1], None)


def test_errors_past_the_allowed_share_break_the_slo() -> None:
    step = level(3, 100, images=99, errors=1)
    assert not bp.within_slo(step, 250, 0.0)
    assert bp.within_slo(step, 250, 0.01)
    assert not bp.within_slo(level(1, 100, images=0, errors=5), 250, 1.0)


@pytest.mark.parametrize(("clients", "pods", "target"), [(4, 1, 3), (8, 2, 3), (9, 1, 8), (1, 1, 1), (11, 1, 10)])
def test_target_leaves_the_hpa_tolerance_below_the_sustainable_concurrency(
    clients: int, pods: int, target: int
) -> None:
    v = bp.Verdict(level(clients, 100), None, pods)
    assert v.target_pending_per_replica == target
    assert v.target_pending_per_replica * (1 + bp.HPA_TOLERANCE) <= max(1.1, clients / pods) + 1e-9
    assert bp.HPA_TOLERANCE == HPA_TOLERANCE


def test_cost_per_1000_images_by_hand() -> None:
    v = bp.Verdict(level(2, 100, images=16, seconds=10.0), None, pods=2)  # 1.6 images/s, 0.8 per pod
    table, _ = bp.costs(v, ["g5.xlarge"], region="us-east-1", overrides={}, price_per_hour=None, pods_per_instance=1)
    assert table.usd_per_1000_images == pytest.approx(1.006 / (0.8 * 3600) * 1000)
    assert table.price.source == prices.TABLES["us-east-1"][0].url
    given, _ = bp.costs(v, ["g5.xlarge"], region="us-west-2", overrides={}, price_per_hour=2.0, pods_per_instance=2)
    assert given.usd_per_1000_images == pytest.approx(2.0 / (1.6 * 3600) * 1000)
    override, _ = bp.costs(
        v, ["g6.xlarge"], region="us-west-2", overrides={"g6.xlarge": 0.9}, price_per_hour=None, pods_per_instance=1
    )
    assert override.price.usd_per_hour == 0.9 and override.price.source == "config onDemandPrices"


def test_spot_is_costed_beside_on_demand_and_labelled_when_no_spot_price_is_recorded() -> None:
    v = bp.Verdict(level(2, 100, images=16, seconds=10.0), None, pods=2)  # 0.8 images/s per pod
    on_demand, spot = bp.costs(
        v, ["g5.xlarge"], region="us-east-1", overrides={}, price_per_hour=None, pods_per_instance=1
    )
    assert (spot.price.usd_per_hour, spot.price.source) == (on_demand.price.usd_per_hour, on_demand.price.source)
    assert spot.price.note == prices.NO_SPOT_PRICE
    _, given = bp.costs(v, ["g5.xlarge"], region="us-east-1", overrides={}, price_per_hour=2.0, pods_per_instance=1)
    assert given.price.usd_per_hour == 2.0 and given.price.source == "--price-per-hour"  # falls back to what was given
    _, paid = bp.costs(
        v,
        ["g5.xlarge"],
        region="us-east-1",
        overrides={},
        price_per_hour=None,
        pods_per_instance=1,
        spot_overrides={"g5.xlarge": 0.36},
    )
    assert paid.price.purchase == prices.SPOT and paid.usd_per_1000_images == pytest.approx(0.36 / (0.8 * 3.6))
    lines = [x for x in bp.summary(v, 250, [on_demand, spot, paid], "us-east-1") if "cost:" in x]
    assert lines[0].startswith("cost: g5.xlarge at 1.0060 USD/h ->")
    assert lines[1].startswith(f"spot cost: g5.xlarge at 1.0060 USD/h ({prices.NO_SPOT_PRICE}) ->")
    assert lines[2].startswith("spot cost: g5.xlarge at 0.3600 USD/h (Spot) ->")


def test_a_region_without_its_own_table_is_labelled() -> None:
    v = bp.Verdict(level(2, 100), None, pods=1)
    rows = bp.costs(v, ["inf2.xlarge"], region="us-west-2", overrides={}, price_per_hour=None, pods_per_instance=1)
    lines = [x for x in bp.summary(v, 250, rows, "us-west-2") if "cost:" in x]
    assert len(lines) == 2 and all("(no cited us-west-2 table: us-east-1 price)" in line for line in lines)


# --- refusals ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--slo-p90-ms", "100"], "--url is required"),
        (["--url", "ftp://host", "--slo-p90-ms", "100"], "--url: 'ftp://host' is not allowed"),
        (["--url", "http://h", "--slo-p90-ms", "0"], "argument --slo-p90-ms: '0' is not allowed"),
        (
            [
                "--url",
                "http://h",
                "--slo-p90-ms",
                "9",
                "--instance-type",
                "g5.xlarge,g6.xlarge",
                "--price-per-hour",
                "1",
            ],
            "with exactly one --instance-type",
        ),
        (["--url", "http://h", "--slo-p90-ms", "9", "--instance-type", "x9.huge"], "no On-Demand price for 'x9.huge'"),
        (["--url", "http://h", "--slo-p90-ms", "9", "--on-demand-prices", "[1]"], "not a JSON object"),
        (["--url", "http://h", "--slo-p90-ms", "9", "--spot-prices", '{"g5.xlarge": -1}'], "--spot-prices"),
        (["--url", "http://h", "--slo-p90-ms", "9", "--token", "a", "--token-file", "/x"], "not both"),
    ],
)
def test_bad_input_is_one_line(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert bp.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


# --- against fake endpoints ----------------------------------------------------------------
SERVICE_S = 0.2
TOKEN = "s3cret"


class _Device(BaseHTTPRequestHandler):
    """Two requests at a time, 0.2 s each: 2 clients wait for nothing, the 3rd waits a full turn."""

    slots = threading.Semaphore(2)

    def log_message(self, *args: object) -> None:
        pass

    def _authorized(self) -> bool:
        if self.headers.get("Authorization") == f"Bearer {TOKEN}":
            return True
        self.send_response(401)
        self.send_header("Content-Length", "0")
        self.end_headers()
        return False

    def do_GET(self) -> None:  # probes carry no token
        self.send_response(200 if self.path == contract.READY_PATH else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if not self._authorized():
            return
        assert self.path == contract.IMAGES_PATH and body["prompt"] and isinstance(body["seed"], int)
        with self.slots:
            time.sleep(SERVICE_S)
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")


def _serve(tls: ssl.SSLContext | None = None) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Device)
    server.daemon_threads = True
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"{'https' if tls else 'http'}://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def endpoint() -> Iterator[str]:
    yield from _serve()


@pytest.fixture
def tls_endpoint(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    ca_path, cert_path, key_path = Ca.make("breaking-point-test-ca").write(tmp_path, names=(LOOPBACK,))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    for url in _serve(context):
        yield url, ca_path


def test_finds_the_breaking_point_of_a_two_slot_device(endpoint: str, tmp_path: Path) -> None:
    lines: list[str] = []
    out = tmp_path / "bp.json"
    argv = ["--url", endpoint, "--token", TOKEN, "--slo-p90-ms", "300", "--step-s", "1.2", "--max-clients", "6"]
    argv += ["--warmup-requests", "1", "--instance-type", "g5.xlarge", "--json", str(out)]
    assert bp.main(argv, out=lines.append) == 0
    rows = [line for line in lines if line.startswith("| ") and line[2].isdigit()]
    assert [row.split(" | ")[0] for row in rows] == ["| 1", "| 2", "| 3"]  # stops at the first step past the SLO
    assert rows[-1].endswith("| no |") and rows[1].endswith("| yes |")
    doc = json.loads(out.read_text())
    assert doc["sustainable_clients"] == 2
    assert doc["target_pending_per_replica"] == 1  # floor(2 / 1.1)
    assert 0.6 / SERVICE_S * 2 / 2 <= doc["images_per_s_per_pod"] <= 2 / SERVICE_S  # at most 10/s with 2 slots
    # The third client waited for a slot: a whole turn less the moment its request took to come back
    # after its previous answer (the slot it waits for began then), so p90 sits just under 2 service times.
    assert doc["steps"][2]["p90_ms"] >= 1.75 * SERVICE_S * 1000
    cost, spot = doc["costs"]
    assert cost["usd_per_1000_images"] == pytest.approx(1.006 / (doc["images_per_s_per_pod"] * 3.6))
    assert (cost["purchase"], cost["as_of"]) == ("On-Demand", prices.TABLES["us-east-1"][0].as_of)
    assert (spot["purchase"], spot["priced_as"]) == ("Spot", f"On-Demand ({prices.NO_SPOT_PRICE})")


def test_without_the_token_nothing_is_measured(endpoint: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert bp.main(["--url", endpoint, "--slo-p90-ms", "300", "--step-s", "0.5"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "every warm-up request failed: {'401': 4}" in err


def test_tls_is_verified_against_the_ca_bundle(
    tls_endpoint: tuple[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    url, ca = tls_endpoint
    common = ["--url", url, "--token", TOKEN, "--slo-p90-ms", "5000", "--step-s", "0.3", "--max-clients", "1"]
    assert bp.main([*common, "--warmup-requests", "0"]) == 1  # system CAs do not know this certificate
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "CERTIFICATE_VERIFY_FAILED" in err and "pass --ca-bundle" in err
    lines: list[str] = []
    assert bp.main([*common, "--warmup-requests", "0", "--ca-bundle", str(ca)], out=lines.append) == 0
    assert any(line.startswith("sustainable: 1 clients") for line in lines)
