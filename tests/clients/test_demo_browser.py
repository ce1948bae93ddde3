"""The SDK's browser demo (sdk/typescript/demo) in a real browser, against the real server.

The tiny inference server and the demo's Node server (`serve.mjs --api ...`) run on free loopback
ports; Debian's chromium, driven by Playwright, opens the page with Chromium's fake camera (a
moving test pattern) and fake permission prompt. The page generates from a camera frame and from
an uploaded picture through EdgeDiffusionClient, and draws the answer over the camera view. Every
request the page makes must go to its own origin (the demo server forwards the API): any other is
aborted and fails the test. Screenshots land in a directory under the system temp dir (or
$UI_SCREENSHOTS_DIR) whose path is printed.

Nothing is built here: `make sdk` builds sdk/typescript/dist and the demo before the tests run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from plan import contract
from tests.browser import CHROMIUM, FAKE_CAMERA_ARGS, need_browser, screenshot_dir
from tests.browser import CHROMIUM_ARGS as BROWSER_ARGS
from tests.runtime.conftest import ROOT
from tests.runtime.server.conftest import free_port, wait_until

CHROMIUM_ARGS = [*BROWSER_ARGS, *FAKE_CAMERA_ARGS]
SDK = ROOT / "sdk" / "typescript"
SERVE = SDK / "demo" / "serve.mjs"
BUILT = (SDK / "dist" / "index.js", SDK / "demo" / "dist" / "app.js")
APP_SOURCE = SDK / "demo" / "app.ts"
TIMEOUT_MS = 60_000
CANCEL_ONCE_ENABLED = """() => {
  const cancel = document.querySelector('#cancel');
  new MutationObserver((_, observer) => {
    if (!cancel.disabled) { observer.disconnect(); cancel.click(); }
  }).observe(cancel, { attributes: true, attributeFilter: ['disabled'] });
}"""

# The overlay canvas's pixels: how many are drawn (alpha > 0) and how many distinct colours.
OVERLAY_PIXELS = """
() => {
  const canvas = document.querySelector('#overlay');
  const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
  const colours = new Set();
  let drawn = 0;
  for (let i = 0; i < data.length; i += 4) {
    if (data[i + 3] > 0) drawn++;
    colours.add((data[i] << 16) | (data[i + 1] << 8) | data[i + 2]);
  }
  return {width: canvas.width, height: canvas.height, drawn, colours: colours.size};
}
"""


@pytest.fixture(scope="module", autouse=True)
def _built() -> None:
    missing = [str(path.relative_to(ROOT)) for path in BUILT if not path.exists()]
    if missing:
        pytest.fail(f"{', '.join(missing)} missing: run `make sdk` first", pytrace=False)
    if APP_SOURCE.stat().st_mtime > BUILT[1].stat().st_mtime:
        pytest.fail(f"{BUILT[1].relative_to(ROOT)} is older than {APP_SOURCE.name}: run `make sdk`", pytrace=False)
    if shutil.which("node") is None:
        pytest.fail("node is not on PATH: the demo server runs on Node 18.17 or later", pytrace=False)


@pytest.fixture(scope="module")
def _need_browser() -> None:
    need_browser()


def _log_tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:]


@pytest.fixture(scope="module")
def inference(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`make serve`'s server (tiny model, no token auth) on a free port: its URL."""
    port = free_port()
    log = tmp_path_factory.mktemp("inference") / "server.log"
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        contract.ENV_AUTH: "none",
        contract.ENV_METRICS_SINK: "none",
        contract.ENV_TORCH_THREADS: "1",  # the machine is shared with the browser
    }
    cmd = [sys.executable, "-m", "runtime.server", "--model", "tiny", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--metrics-port", "0"]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"the inference server exited with {proc.returncode}: {_log_tail(log)}")
        try:
            return httpx.get(url + contract.READY_PATH, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(ready, timeout_s=180, interval_s=0.25)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        assert "Traceback" not in log.read_text(errors="replace"), _log_tail(log)


@dataclass
class Demo:
    url: str  # the page's origin, with a trailing slash
    log: Path


def _start_demo(api: str, log: Path) -> tuple[subprocess.Popen[bytes], Demo]:
    """serve.mjs on a port of its choosing; its one line says which."""
    with log.open("wb") as out:
        proc = subprocess.Popen(["node", str(SERVE), "--api", api, "--port", "0"], cwd=ROOT, stdout=out, stderr=out)
    found: list[str] = []

    def listening() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"serve.mjs exited with {proc.returncode}: {_log_tail(log)}")
        found[:] = re.findall(r"^demo: (http://127\.0\.0\.1:\d+/) ", log.read_text(), re.MULTILINE)
        return bool(found)

    wait_until(listening, timeout_s=30)
    return proc, Demo(found[0], log)


@pytest.fixture(scope="module")
def demo(inference: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    proc, running = _start_demo(inference, tmp_path_factory.mktemp("demo") / "demo.log")
    try:
        yield running
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def screenshots() -> Path:
    return screenshot_dir("demo-", "demo")


@dataclass
class Page:
    page: Any
    origin: str
    offsite: list[str] = field(default_factory=list)  # requests that tried to leave the page's origin
    problems: list[str] = field(default_factory=list)  # uncaught exceptions, CSP violations
    generations: list[dict[str, Any]] = field(default_factory=list)  # the JSON bodies of POST /v1/images


@pytest.fixture
def open_page(_need_browser: None) -> Iterator[Any]:
    """Opens the demo at a URL in chromium (fake camera); checks on close that nothing left the origin."""
    from playwright.sync_api import sync_playwright

    opened: list[Page] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:

            def open_at(url: str) -> Page:
                tab = browser.new_page(viewport={"width": 1100, "height": 800})
                wrapped = Page(tab, url.rstrip("/"))

                def route(r: Any) -> None:
                    if r.request.url.startswith((url, "data:", "blob:")):
                        r.continue_()
                    else:
                        wrapped.offsite.append(r.request.url)
                        r.abort()

                def console(message: Any) -> None:
                    if "Content Security Policy" in message.text:
                        wrapped.problems.append(message.text)

                def request(r: Any) -> None:
                    if r.method == "POST" and r.url.endswith(contract.IMAGES_PATH):
                        wrapped.generations.append(json.loads(r.post_data or "null"))

                tab.route("**/*", route)
                tab.on("console", console)
                tab.on("pageerror", lambda err: wrapped.problems.append(f"uncaught: {err}"))
                tab.on("request", request)
                tab.goto(url)
                opened.append(wrapped)
                return wrapped

            yield open_at
            for wrapped in opened:
                assert wrapped.offsite == [], f"the page reached outside its origin {wrapped.origin}: {wrapped.offsite}"
                assert wrapped.problems == [], wrapped.problems
        finally:
            browser.close()


def _overlay(tab: Any) -> dict[str, int]:
    return dict(tab.evaluate(OVERLAY_PIXELS))


def _generate(tab: Any, expect_in_latency: str) -> str:
    """Clicks Generate and waits for the latency line that names the source; returns it."""
    tab.locator("#generate").click()
    tab.wait_for_function(
        "([text]) => document.querySelector('#latency').innerText.includes(text)"
        " || document.querySelector('#error').innerText !== ''",
        arg=[expect_in_latency],
        timeout=TIMEOUT_MS,
    )
    error = tab.locator("#error").inner_text()
    assert error == "", error
    return str(tab.locator("#latency").inner_text())


def _picture(path: Path) -> Path:
    """A 3:2 PNG with four coloured quarters: the page crops it to the square the stage shows."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (300, 200), (240, 240, 240))
    draw = ImageDraw.Draw(image)
    for i, colour in enumerate([(220, 30, 30), (30, 160, 60), (30, 60, 220), (240, 200, 20)]):
        x, y = 50 + 100 * (i % 2), 100 * (i // 2)
        draw.rectangle([x, y, x + 99, y + 99], fill=colour)
    image.save(path, format="PNG")
    return path


LATENCY = re.compile(
    r"^(camera frame|picture) → 64x64 (jpeg|webp): total \d+ ms \(frame \d+ ms, SDK \d+ ms\) · "
    r"server: queue \d+ ms, inference \d+ ms, batch 1 · seed \d+$"
)


def test_generates_from_the_camera_and_an_upload_and_draws_over_the_view(
    demo: Demo, open_page: Any, screenshots: Path, tmp_path: Path, record_property: Any
) -> None:
    page = open_page(demo.url)
    tab = page.page
    tab.wait_for_function(
        "() => document.querySelector('#status').innerText === 'inference server ready'", timeout=TIMEOUT_MS
    )
    # the fake camera runs: frames arrive and time moves on
    tab.wait_for_function("() => document.querySelector('#camera').currentTime > 1", timeout=TIMEOUT_MS)
    assert tab.evaluate("document.querySelector('#camera').videoWidth") > 0
    assert _overlay(tab)["drawn"] == 0  # nothing over the view yet

    tab.locator("#prompt").fill("a watercolor harbour at dusk")
    tab.locator("#strength").fill("0.7")
    latency = _generate(tab, "camera frame →")
    assert LATENCY.match(latency), latency
    assert "jpeg" in latency
    camera_pixels = _overlay(tab)
    assert camera_pixels["width"] == camera_pixels["height"] == 64, camera_pixels
    assert camera_pixels["drawn"] == 64 * 64 and camera_pixels["colours"] > 16, camera_pixels
    assert tab.evaluate("document.querySelector('#overlay').dataset.source") == "camera"
    tab.locator("#opacity").fill("0.5")
    assert tab.evaluate("getComputedStyle(document.querySelector('#overlay')).opacity") == "0.5"
    camera_shot = screenshots / "demo-camera.png"
    tab.screenshot(path=str(camera_shot))
    camera_image = tab.evaluate("document.querySelector('#overlay').toDataURL()")

    tab.locator("#upload").set_input_files(str(_picture(tmp_path / "quarters.png")))
    assert tab.locator("#source-picture").is_checked()
    tab.wait_for_function("() => document.querySelector('#picture').naturalWidth === 300", timeout=TIMEOUT_MS)
    tab.locator("#format").select_option("webp")
    latency = _generate(tab, "picture →")
    assert LATENCY.match(latency) and "webp" in latency, latency
    picture_pixels = _overlay(tab)
    assert picture_pixels["drawn"] == 64 * 64 and picture_pixels["colours"] > 16, picture_pixels
    assert tab.evaluate("document.querySelector('#overlay').toDataURL()") != camera_image
    assert tab.evaluate("document.querySelector('#overlay').dataset.source") == "picture"
    picture_shot = screenshots / "demo-picture.png"
    tab.screenshot(path=str(picture_shot))
    record_property("screenshot_camera", str(camera_shot))
    record_property("screenshot_picture", str(picture_shot))

    # what went on the wire: the cropped frame as a JPEG data URL, the strength, the asked format
    assert [(g["strength"], g["response_format"]) for g in page.generations] == [(0.7, "jpeg"), (0.7, "webp")]
    assert all(g["image"].startswith("data:image/jpeg;base64,") for g in page.generations), page.generations


def test_a_refused_request_shows_the_servers_one_line(demo: Demo, open_page: Any, screenshots: Path) -> None:
    tab = open_page(demo.url).page
    tab.wait_for_function("() => document.querySelector('#camera').videoWidth > 0", timeout=TIMEOUT_MS)
    tab.locator("#prompt").fill("   ")
    tab.locator("#generate").click()
    error = tab.locator("#error")
    error.filter(has_text="must not be empty").wait_for(timeout=TIMEOUT_MS)
    text = error.inner_text()
    assert text.startswith("request rejected (422): prompt: must not be empty"), text
    assert "\n" not in text
    assert tab.locator("#latency").inner_text() == ""
    tab.screenshot(path=str(screenshots / "demo-refused.png"))


def test_cancel_stops_the_generation_and_says_so(demo: Demo, open_page: Any) -> None:
    tab = open_page(demo.url).page
    tab.wait_for_function("() => document.querySelector('#camera').videoWidth > 0", timeout=TIMEOUT_MS)
    tab.locator("#steps").fill("30")
    # Cancel is clicked the moment the page enables it (the generation is under way): a generation can end
    # between two of Playwright's actionability checks, which would then wait for an enabled Cancel forever.
    tab.evaluate(CANCEL_ONCE_ENABLED)
    tab.locator("#generate").click()
    tab.locator("#error").filter(has_text="cancelled").wait_for(timeout=TIMEOUT_MS)
    assert tab.locator("#error").inner_text() == "cancelled"
    assert tab.locator("#generate").is_enabled() and tab.locator("#cancel").is_disabled()
    assert _overlay(tab)["drawn"] == 0


def test_without_an_inference_server_the_page_says_so_in_one_line(
    open_page: Any, tmp_path: Path, screenshots: Path
) -> None:
    nobody = f"http://127.0.0.1:{free_port()}"
    proc, down = _start_demo(nobody, tmp_path / "demo.log")
    try:
        ready = httpx.get(down.url + "readyz", timeout=10)
        assert ready.status_code == 502
        assert ready.json()["error"] == f"inference server {nobody} unreachable (ECONNREFUSED); start it or pass --api"
        tab = open_page(down.url).page
        status = tab.locator("#status")
        status.filter(has_text="unreachable (ECONNREFUSED)").wait_for(timeout=TIMEOUT_MS)
        assert status.inner_text() == f"inference server {nobody} unreachable (ECONNREFUSED); start it or pass --api"
        tab.wait_for_function("() => document.querySelector('#camera').videoWidth > 0", timeout=TIMEOUT_MS)
        tab.locator("#generate").click()
        error = tab.locator("#error")
        error.filter(has_text="no endpoint").wait_for(timeout=TIMEOUT_MS)
        # the page's own origin answered 502 for the missing server, and nothing else was tried
        assert error.inner_text() == f"no endpoint produced an image within 60s (fallback {down.url.rstrip('/')}: 502)"
        tab.screenshot(path=str(screenshots / "demo-no-server.png"))
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--api", "ftp://127.0.0.1:21"], 'demo: --api "ftp://127.0.0.1:21": allowed http(s)://host:port'),
        (["--api", "http://127.0.0.1:7860/v1"], 'demo: --api "http://127.0.0.1:7860/v1": allowed http(s)://host:port'),
        (["--api", "not a url"], 'demo: --api "not a url" is not a URL; allowed: http(s)://host:port'),
        (["--port", "99999"], 'demo: --port "99999": allowed an integer from 0 (any free port) to 65535'),
        (["--verbose"], 'demo: unknown argument "--verbose"; allowed: --api, --port, --host'),
    ],
)
def test_the_demo_server_refuses_bad_arguments_in_one_line(args: list[str], message: str) -> None:
    done = subprocess.run(["node", str(SERVE), *args], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2, done
    assert done.stderr.startswith(message) and done.stderr.count("\n") == 1, done.stderr
    assert done.stdout == ""


def test_the_demo_server_serves_only_the_page_and_the_sdk(demo: Demo) -> None:
    """No file outside the page, its module and the SDK's browser modules; the API goes through."""
    with httpx.Client(base_url=demo.url, timeout=30) as http:
        page = http.get("/")
        assert page.status_code == 200
        policy = page.headers["content-security-policy"]
        assert "connect-src 'self'" in policy and "default-src 'self'" in policy
        assert http.get("/sdk/index.js").headers["content-type"].startswith("text/javascript")
        for path in ("/sdk/node.js", "/serve.mjs", "/app.ts", "/sdk/index.d.ts", "/sdk/../package.json"):
            refused = http.get(path)
            assert refused.status_code == 404, (path, refused.text)
            assert refused.json()["error"].endswith("forwards /v1/*, /healthz, /readyz")
        assert http.get("/healthz").json() == {"status": "alive"}
        answer = http.post(contract.IMAGES_PATH, json={"prompt": "a cat", "steps": 2})
        assert answer.status_code == 200 and answer.headers["content-type"] == "image/png", answer.text
        assert answer.headers["x-request-id"]
