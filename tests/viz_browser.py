"""Headless Debian Chromium for the HTML views' tests, driven by Selenium.

`browser()` gives a fresh Chromium (own profile directory, no background
networking: this network refuses Chromium's own connections) or skips the test
with the reason. `SHOTS` is the folder the tests write their screenshots to.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
SHOTS = Path(os.environ.get("PNYX_SHOTS", Path(tempfile.gettempdir()) / "pnyx-viz-screenshots"))
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1280,900"]


def skip_reason() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            return f"{path} is missing (apt-get install chromium chromium-driver)"
    return None


@contextmanager
def browser(width: int = 1280, height: int = 900) -> Iterator[Any]:
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="pnyx-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        driver.set_window_size(width, height)
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def open_page(driver: Any, path: Path, ready: str = "return document.body.dataset.ready") -> float:
    """Open a local page and wait for its script to say it is ready; seconds it took."""
    started = time.perf_counter()
    driver.get(path.resolve().as_uri())
    deadline = started + 30
    while not driver.execute_script(ready):
        if time.perf_counter() > deadline:
            raise AssertionError(f"{path} not ready in 30 s; console: {console_errors(driver)}")
        time.sleep(0.02)
    return time.perf_counter() - started


def first_paint_ms(driver: Any) -> float:
    """Milliseconds from navigation to the first contentful paint (-1: none in 5 s)."""
    deadline = time.perf_counter() + 5
    while True:
        named = dict(driver.execute_script(
            "return performance.getEntriesByType('paint').map(e => [e.name, e.startTime])"))
        if "first-contentful-paint" in named or time.perf_counter() > deadline:
            return float(named.get("first-contentful-paint", -1))
        time.sleep(0.02)


def console_errors(driver: Any) -> list[str]:
    try:
        logs = driver.get_log("browser")
    except Exception:
        return []
    return [e["message"] for e in logs if e.get("level") == "SEVERE"]


def screenshot(driver: Any, name: str) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / name
    driver.save_screenshot(str(path))
    print(f"screenshot: {path}")
    return path
