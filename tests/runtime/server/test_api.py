"""The REST API against a real uvicorn server on loopback with the tiny model."""

from __future__ import annotations

import base64
import io
import json
import logging
import socket
import threading
import time
from typing import Any

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from plan import contract
from tests.runtime.server.conftest import RunningServer, metric_value


def png_pixels(data: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def test_png_default_request(server: RunningServer) -> None:
    with server.client() as c:
        r = c.post(contract.IMAGES_PATH, json={"prompt": "a red lighthouse", "seed": 7})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    assert r.headers["x-seed"] == "7"
    assert len(r.headers[contract.REQUEST_ID_HEADER]) >= 8
    assert png_pixels(r.content).shape == (64, 64, 3)


def test_json_response_with_several_images_and_client_request_id(server: RunningServer) -> None:
    body = {"prompt": "a cat", "seed": 11, "num_images": 3, "response_format": "json", "width": 72, "height": 64}
    with server.client() as c:
        r = c.post(contract.IMAGES_PATH, json=body, headers={contract.REQUEST_ID_HEADER: "device-42.req-1"})
    assert r.status_code == 200, r.text
    doc = r.json()
    assert r.headers[contract.REQUEST_ID_HEADER] == "device-42.req-1"
    assert doc["request_id"] == "device-42.req-1"
    assert doc["seed"] == 11 and (doc["width"], doc["height"]) == (72, 64) and doc["steps"] >= 1
    assert len(doc["images"]) == 3
    shapes = {png_pixels(base64.b64decode(i)).shape for i in doc["images"]}
    assert shapes == {(64, 72, 3)}
    assert {"queue_ms", "inference_ms", "batch_size"} <= set(doc["timings"])
    # image i uses seed + i: the second image equals a single-image request with seed 12
    with server.client() as c:
        alone = c.post(contract.IMAGES_PATH, json={**body, "seed": 12, "num_images": 1, "response_format": "png"})
    assert np.abs(png_pixels(alone.content) - png_pixels(base64.b64decode(doc["images"][1]))).max() <= 2


def test_same_seed_same_image_different_seed_different_image(server: RunningServer) -> None:
    body = {"prompt": "a boat", "steps": 2}
    with server.client() as c:
        a = png_pixels(c.post(contract.IMAGES_PATH, json={**body, "seed": 1}).content)
        b = png_pixels(c.post(contract.IMAGES_PATH, json={**body, "seed": 1}).content)
        d = png_pixels(c.post(contract.IMAGES_PATH, json={**body, "seed": 2}).content)
    assert np.array_equal(a, b)
    assert np.abs(a - d).mean() > 1


def test_probes_metrics_docs_and_ui(server: RunningServer) -> None:
    with server.client() as c:
        health = c.get(contract.HEALTH_PATH)
        assert health.json() == {"status": "alive"}  # liveness only: no model, device or version
        ready = c.get(contract.READY_PATH)
        assert ready.status_code == 200 and ready.json() == {"ready": True, "state": "ready", "reason": "ready"}
        assert c.get(contract.METRICS_PATH).status_code == 404  # on the metrics listener only
        metrics = httpx.get(server.metrics_url, timeout=30)
        assert metrics.status_code == 200
        assert metrics.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
        for name in (
            contract.PROM_REQUEST_DURATION,
            contract.PROM_BATCH_SIZE,
            contract.PROM_QUEUE_DEPTH,
            contract.PROM_IN_FLIGHT,
            contract.PROM_REJECTIONS,
            contract.PROM_READY,
        ):
            assert name in metrics.text
        assert metric_value(metrics.text, contract.PROM_READY) == 1
        assert c.get(contract.DOCS_PATH).status_code == 200
        openapi = c.get("/openapi.json").json()
        body_schema = openapi["paths"][contract.IMAGES_PATH]["post"]["requestBody"]["content"]["application/json"]
        assert body_schema["schema"]["properties"]["steps"]["anyOf"][0]["maximum"] == 100
        ui = c.get(contract.UI_PATH + "/")
        assert ui.status_code == 200 and "gradio" in ui.text.lower()


def test_docs_and_metrics_are_off_the_api_port_by_default(tight_server: RunningServer) -> None:
    """Pods (docs off): the API port describes nothing and has no /metrics; the metrics port has /metrics only."""
    assert not tight_server.service.settings.docs
    with tight_server.client() as c:
        for path in (contract.DOCS_PATH, "/openapi.json", f"{contract.DOCS_PATH}/static/swagger-ui.css"):
            r = c.get(path)
            assert r.status_code == 404 and "described" not in r.json()["error"], (path, r.text)  # no pointer to /docs
        assert c.get(contract.METRICS_PATH).status_code == 404
        assert c.get(contract.HEALTH_PATH).status_code == 200
    metrics_base = tight_server.metrics_url.removesuffix(contract.METRICS_PATH)
    assert httpx.get(tight_server.metrics_url, timeout=10).status_code == 200
    for path in (contract.HEALTH_PATH, contract.DOCS_PATH, "/openapi.json"):
        assert httpx.get(metrics_base + path, timeout=10).status_code == 404, path
    assert httpx.post(metrics_base + contract.IMAGES_PATH, json={"prompt": "a"}, timeout=10).status_code == 404
    assert httpx.post(tight_server.metrics_url, timeout=10).status_code == 405


def test_ui_generate_goes_through_the_batcher(server: RunningServer) -> None:
    from gradio_client import Client

    before = metric_value(server.metrics(), contract.PROM_IMAGES_GENERATED + "_total")
    client = Client(server.url + contract.UI_PATH + "/", verbose=False)
    image_path, info = client.predict("a kite", "", 2, 7.5, 64, 64, 5, None, 0.8, api_name="/generate")
    assert "seed 5" in info
    assert Image.open(image_path).size == (64, 64)
    assert metric_value(server.metrics(), contract.PROM_IMAGES_GENERATED + "_total") == before + 1
    with pytest.raises(Exception, match="prompt"):
        client.predict("   ", "", 2, 7.5, 64, 64, 5, None, 0.8, api_name="/generate")


def test_concurrent_requests_are_batched_and_match_their_solo_images(server: RunningServer) -> None:
    n = 8
    body = {"prompt": "a forest", "steps": 3}
    text = server.metrics()
    count0 = metric_value(text, contract.PROM_BATCH_SIZE + "_count")
    sum0 = metric_value(text, contract.PROM_BATCH_SIZE + "_sum")
    results: dict[int, httpx.Response] = {}
    barrier = threading.Barrier(n)

    def send(i: int) -> None:
        with server.client() as c:
            barrier.wait()
            results[i] = c.post(contract.IMAGES_PATH, json={**body, "seed": 100 + i, "prompt": f"a forest {i}"})

    threads = [threading.Thread(target=send, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r.status_code == 200 for r in results.values())
    batch_sizes = [int(r.headers["x-batch-size"]) for r in results.values()]
    assert max(batch_sizes) > 1, batch_sizes
    text = server.metrics()
    batches = metric_value(text, contract.PROM_BATCH_SIZE + "_count") - count0
    images = metric_value(text, contract.PROM_BATCH_SIZE + "_sum") - sum0
    assert images == n and batches < n  # coalesced: fewer pipeline calls than requests
    with server.client() as c:
        for i, r in results.items():
            solo = c.post(contract.IMAGES_PATH, json={**body, "seed": 100 + i, "prompt": f"a forest {i}"})
            assert solo.headers["x-batch-size"] == "1"
            # Same noise, prompt and seed; batched GEMMs may round differently in the last bit,
            # which can move a pixel by one level after quantisation to 8 bits.
            assert np.abs(png_pixels(solo.content) - png_pixels(r.content)).max() <= 2


BAD_INPUTS: list[tuple[str, Any, str]] = [
    ("empty prompt", {"prompt": ""}, "prompt"),
    ("blank prompt", {"prompt": "   \n "}, "prompt"),
    ("missing prompt", {"steps": 2}, "prompt"),
    ("over-long prompt", {"prompt": "x" * 1001}, "prompt"),
    ("prompt not a string", {"prompt": 42}, "prompt"),
    ("NUL in prompt", {"prompt": "a\x00b"}, "prompt"),
    ("steps zero", {"prompt": "a", "steps": 0}, "steps"),
    ("steps too many", {"prompt": "a", "steps": 101}, "steps"),
    ("steps as string", {"prompt": "a", "steps": "5"}, "steps"),
    ("steps as float", {"prompt": "a", "steps": 2.5}, "steps"),
    ("steps as bool", {"prompt": "a", "steps": True}, "steps"),
    ("guidance negative", {"prompt": "a", "guidance_scale": -1}, "guidance_scale"),
    ("guidance too high", {"prompt": "a", "guidance_scale": 31}, "guidance_scale"),
    ("guidance as string", {"prompt": "a", "guidance_scale": "high"}, "guidance_scale"),
    ("width not multiple of 8", {"prompt": "a", "width": 65}, "width"),
    ("width too small", {"prompt": "a", "width": 8}, "width"),
    ("height too large", {"prompt": "a", "height": 4096}, "height"),
    ("seed negative", {"prompt": "a", "seed": -1}, "seed"),
    ("seed too large", {"prompt": "a", "seed": 2**40}, "seed"),
    ("num_images zero", {"prompt": "a", "num_images": 0}, "num_images"),
    ("num_images too many", {"prompt": "a", "num_images": 5, "response_format": "json"}, "num_images"),
    ("png with several images", {"prompt": "a", "num_images": 2}, "num_images"),
    ("unknown format", {"prompt": "a", "response_format": "gif"}, "response_format"),
    ("unknown field", {"prompt": "a", "sampler": "ddim"}, "sampler"),
    ("negative prompt too long", {"prompt": "a", "negative_prompt": "n" * 1001}, "negative_prompt"),
    ("body is a list", ["a cat"], "body"),
    ("body is a string", "a cat", "body"),
    ("body is null", None, "body"),
]


@pytest.mark.parametrize(("case", "body", "field"), BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_is_a_one_line_422_naming_the_field(server: RunningServer, case: str, body: Any, field: str) -> None:
    raw = json.dumps(body).encode()  # httpx's json=None would send no body at all
    with server.client() as c:
        r = c.post(contract.IMAGES_PATH, content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    doc = r.json()
    assert doc["field"] == field
    assert doc["error"].startswith(field)
    assert "\n" not in doc["error"] and "Traceback" not in r.text
    if field in ("steps", "guidance_scale", "width", "height", "seed") and case != "png with several images":
        assert "allowed:" in doc["error"]


@pytest.mark.parametrize(
    "raw",
    [b'{"prompt": "a cat",', b"", b"\xff\xfe not utf8", b"NaN", b'{"prompt": "a", "guidance_scale": NaN}'],
    ids=["truncated", "empty", "not utf-8", "bare NaN", "NaN guidance"],
)
def test_malformed_json_is_422(server: RunningServer, raw: bytes) -> None:
    with server.client() as c:
        r = c.post(contract.IMAGES_PATH, content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert r.json()["field"] in ("body", "guidance_scale")


@pytest.mark.parametrize(
    ("content_type", "raw"),
    [
        ("text/plain", b"a cat"),
        ("text/plain", b'{"prompt": "a cat"}'),
        (None, b'{"prompt": "a cat"}'),
        ("application/x-www-form-urlencoded", b"prompt=a+cat"),
        ("application/jsonx", b"{}"),
    ],
    ids=["text", "json as text", "no content type", "form", "lookalike"],
)
def test_a_body_not_declared_json_is_415(server: RunningServer, content_type: str | None, raw: bytes) -> None:
    headers = {"content-type": content_type} if content_type else {}
    with server.client() as c:
        r = c.post(contract.IMAGES_PATH, content=raw, headers=headers)
    assert r.status_code == 415, r.text
    doc = r.json()
    assert doc["error"].startswith("Content-Type must be application/json")
    assert doc["field"] == "content-type" and doc["request_id"] == r.headers[contract.REQUEST_ID_HEADER]


def test_json_with_charset_is_accepted(server: RunningServer) -> None:
    with server.client() as c:
        r = c.post(
            contract.IMAGES_PATH,
            content=b'{"prompt": "a cat", "steps": 2.0}',  # 2.0 is an integer in JSON Schema
            headers={"content-type": "Application/JSON; charset=utf-8"},
        )
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    ("method", "path", "status", "field"),
    [
        ("GET", contract.IMAGES_PATH, 405, "method"),
        ("DELETE", contract.HEALTH_PATH, 405, "method"),
        ("GET", "/v2/images", 404, "path"),
        ("POST", "/", 405, "method"),
        ("GET", "/index.html", 404, "path"),
    ],
)
def test_unknown_paths_and_methods_answer_the_one_error_shape(
    server: RunningServer, method: str, path: str, status: int, field: str
) -> None:
    with server.client() as c:
        r = c.request(method, path)
    assert r.status_code == status
    assert r.headers["content-type"] == "application/json"
    doc = r.json()
    assert set(doc) == {"error", "field", "request_id"} and "detail" not in doc
    assert doc["field"] == field and doc["request_id"] == r.headers[contract.REQUEST_ID_HEADER]
    assert "\n" not in doc["error"]
    if status == 405:
        assert doc["error"] == f"method: {method} is not allowed on {path}; allowed: {r.headers['allow']}"


def test_oversized_body_is_413(server: RunningServer) -> None:
    with server.client() as c:
        r = c.post(contract.IMAGES_PATH, json={"prompt": "a", "pad": "x" * 70_000})
    assert r.status_code == 413 and r.json()["field"] == "body"


def _not_in(low: int, high: int) -> Any:
    """Floats that are not an integer from low to high: 2.0 is the integer 2 (JSON Schema), 2.5 is no integer."""
    return lambda v: not v.is_integer() or not low <= v <= high


MIN_SIZE, MAX_SIZE = contract.IMAGE_SIZE_BOUNDS  # the request limits (runtime.server.settings.Limits)
_INVALID_VALUES = {
    "prompt": st.one_of(
        st.just(""), st.text(min_size=1001, max_size=1100), st.integers(), st.none(), st.lists(st.text())
    ),
    "steps": st.one_of(
        st.integers(max_value=0),
        st.integers(min_value=101),
        st.text(),
        st.floats(allow_nan=True).filter(_not_in(1, 100)),
    ),
    "guidance_scale": st.one_of(st.floats(max_value=-0.01), st.floats(min_value=30.01), st.text(), st.booleans()),
    "width": st.one_of(
        st.integers(max_value=MIN_SIZE - 1),
        st.integers(min_value=MAX_SIZE + 1),
        st.integers().filter(lambda v: v % 8),
        st.text(),
    ),
    "height": st.one_of(
        st.integers(max_value=MIN_SIZE - 1), st.integers(min_value=MAX_SIZE + 1), st.text(), st.booleans()
    ),
    "seed": st.one_of(
        st.integers(max_value=-1), st.integers(min_value=2**32), st.text(), st.floats().filter(_not_in(0, 2**32 - 1))
    ),
    "num_images": st.one_of(st.integers(max_value=0), st.integers(min_value=5), st.text(), st.booleans()),
    "response_format": st.text().filter(lambda v: v not in ("png", "jpeg", "webp", "json")),
}


@st.composite
def invalid_bodies(draw: st.DrawFn) -> tuple[dict[str, Any], set[str]]:
    """A body with at least one invalid field (plus maybe valid ones and junk keys)."""
    bad = draw(st.sets(st.sampled_from(sorted(_INVALID_VALUES)), min_size=1, max_size=3))
    body: dict[str, Any] = {"prompt": "a cat"}
    for name in bad:
        body[name] = draw(_INVALID_VALUES[name])
    junk = draw(
        st.dictionaries(
            st.text(min_size=1, max_size=20).filter(lambda k: k not in _INVALID_VALUES), st.integers(), max_size=2
        )
    )
    body.update(junk)
    return body, bad | set(junk)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=invalid_bodies())
def test_hypothesis_invalid_bodies_are_422(server: RunningServer, case: tuple[dict[str, Any], set[str]]) -> None:
    body, bad = case
    raw = json.dumps(body).encode()  # Python's json writes Infinity/NaN: the server must refuse those too
    r = httpx.post(
        server.url + contract.IMAGES_PATH, content=raw, headers={"content-type": "application/json"}, timeout=30
    )
    assert r.status_code == 422, (body, r.text)
    doc = r.json()
    assert "\n" not in doc["error"]
    assert doc["field"].split(".")[0] in {" ".join(b.split())[:64] for b in bad} | {"body"}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    body=st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=30),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=3),
        max_leaves=8,
    )
)
def test_hypothesis_arbitrary_json_never_5xx(server: RunningServer, body: Any) -> None:
    raw = json.dumps(body).encode()
    r = httpx.post(
        server.url + contract.IMAGES_PATH, content=raw, headers={"content-type": "application/json"}, timeout=30
    )
    assert r.status_code == 422, (body, r.text)


def test_worker_still_serves_after_bad_input(server: RunningServer) -> None:
    with server.client() as c:
        for body in ({"prompt": ""}, {"prompt": "a", "steps": -5}, ["junk"]):
            assert c.post(contract.IMAGES_PATH, json=body).status_code == 422
        assert c.post(contract.IMAGES_PATH, json={"prompt": "still fine", "steps": 2}).status_code == 200
    assert metric_value(server.metrics(), contract.PROM_REJECTIONS + "_total", 'reason="invalid"') >= 3


def test_json_nested_deeper_than_the_parser_allows_is_a_one_line_422(server: RunningServer) -> None:
    """A 40 KB body of nested arrays exhausts json.loads' recursion: a client error, not a 500."""
    raw = b'{"prompt": ' + b"[" * 20_000 + b"]" * 20_000 + b"}"
    with server.client() as c:
        r = c.post(contract.IMAGES_PATH, content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    doc = r.json()
    assert doc["field"] == "body" and doc["error"].startswith("body: JSON nested too deeply"), doc


def test_a_client_gone_mid_body_is_no_server_error(server: RunningServer, caplog: pytest.LogCaptureFixture) -> None:
    """The body stops short and the connection closes: the server answers nobody and logs no traceback."""
    host, port = httpx.URL(server.url).host, httpx.URL(server.url).port
    assert port is not None
    caplog.set_level(logging.INFO)
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(
            f"POST {contract.IMAGES_PATH} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            "Content-Length: 1000\r\n\r\n".encode()
            + b'{"prompt": "a'
        )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not any("client left" in r.getMessage() for r in caplog.records):
        time.sleep(0.05)
    assert any("client left before its request body arrived" in r.getMessage() for r in caplog.records)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [r.getMessage() for r in caplog.records]
    with server.client() as c:  # and the server goes on serving
        assert c.get(contract.HEALTH_PATH).status_code == 200
