"""A real Chromium for UI tests, driven by Playwright; import the `browser` fixture from here."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# This machine has no network but loopback: without these Chromium keeps dialling out at start.
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-quic", "--no-first-run", "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"


def _require_browser() -> None:
    """Skip when Chromium is absent, unless the run demands the browser tests (CI does)."""
    if Path(CHROMIUM).exists():
        return
    message = f"Chromium not found at {CHROMIUM}; install Debian's chromium package"
    if os.environ.get("IMAGEREC_REQUIRE_BROWSER") == "1":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def browser():
    """A headless Chromium for the whole test session."""
    _require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield chromium
        chromium.close()


def screenshot_path(name: str) -> Path:
    """Where a test keeps a screenshot as an artifact of the run."""
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS / name


def recognize_upload(page, url: str, photo: str | Path) -> None:
    """Open the demo, upload a photo and wait until its caption is written."""
    page.goto(url)
    page.locator("#photo input[type=file]").set_input_files(str(photo))
    page.wait_for_function("el => el.value.length > 0", arg=page.locator("#caption textarea").element_handle(),
                           timeout=60_000)
