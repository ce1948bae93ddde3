"""Debian's chromium driven by Playwright, as the browser tests use it: its path, flags, and whether it can run here."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Final

import pytest

CHROMIUM: Final = "/usr/bin/chromium"
CHROMIUM_ARGS: Final = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
# A moving test pattern as the camera, and the camera permission prompt accepted.
FAKE_CAMERA_ARGS: Final = ["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]


def browser_missing() -> str | None:
    """Why the browser cannot run here, or None."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (requirements-dev.txt)"
    if not (Path(CHROMIUM).exists() or shutil.which("chromium")):
        return f"{CHROMIUM} is missing (apt-get install -y chromium; .ci/run installs it)"
    return None


def need_browser() -> None:
    """Skip without a browser; fail under CI, which installs both (a missing one there is a broken setup)."""
    missing = browser_missing()
    if missing and os.environ.get("CI"):
        pytest.fail(missing)
    if missing:
        pytest.skip(missing)


def screenshot_dir(prefix: str, what: str) -> Path:
    """A new directory for a run's screenshots: under $UI_SCREENSHOTS_DIR, else under the system temp dir
    (which pytest does not rotate away); its path is printed so a run can be looked at afterwards."""
    base = Path(os.environ.get("UI_SCREENSHOTS_DIR") or Path(tempfile.gettempdir()) / "edge-diffusion-ui-screenshots")
    directory = base / time.strftime(f"{prefix}%Y%m%d-%H%M%S")
    directory.mkdir(parents=True, exist_ok=True)
    print(f"\n{what} screenshots: {directory}")
    return directory
