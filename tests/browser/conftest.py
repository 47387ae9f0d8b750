"""Headless Chromium for the browser tests: Debian's ``chromium`` driven through its ``chromedriver``
by Selenium. Nothing is downloaded: the driver is named outright and Selenium Manager stays offline.

scripts/setup installs both with apt. Without them (or without selenium) these tests are skipped on a
developer's machine and fail under CI (``CI`` set), where set-up must have installed them.
"""

from __future__ import annotations

import base64
import io
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

try:
    from selenium.webdriver.common.by import By
except ImportError:  # the chrome fixture skips (or fails under CI) and says why
    By = None

CHROMIUM = Path(os.environ.get("DEVICELINK_TEST_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("DEVICELINK_TEST_CHROMEDRIVER", "/usr/bin/chromedriver"))
#: A closed network (no internet here, nor in CI): nothing in the background, no QUIC, no updates.
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--no-default-browser-check", "--disable-extensions")
#: A phone: 390x844 CSS pixels (an iPhone 12-14 class screen), touch, a mobile user agent.
PHONE = {"deviceMetrics": {"width": 390, "height": 844, "pixelRatio": 3.0, "touch": True},
         "userAgent": "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
                      "Chrome/120.0 Mobile Safari/537.36"}
WAIT = 30.0  # seconds any one condition may take in the browser


def _unavailable() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            return f"{path} is missing (apt-get install chromium chromium-driver; scripts/setup does)"
    return None


@pytest.fixture(scope="session")
def chrome() -> Iterator[Callable[..., object]]:
    """``chrome(phone=False)``: a new headless Chromium (a WebDriver), quit at the end of the session."""
    missing = _unavailable()
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"the browser tests cannot run: {missing}")
        pytest.skip(missing)
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager never fetches anything
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    started: list[tuple[object, str]] = []

    def start(phone: bool = False):
        profile = tempfile.mkdtemp(prefix="dl-chromium-")
        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)
        for flag in FLAGS:
            options.add_argument(flag)
        options.add_argument(f"--user-data-dir={profile}")
        if phone:
            options.add_experimental_option("mobileEmulation", PHONE)
        else:
            options.add_argument("--window-size=1500,1100")
        driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
        driver.set_page_load_timeout(WAIT)
        started.append((driver, profile))
        return driver

    yield start
    for driver, profile in started:
        try:
            driver.quit()
        finally:
            shutil.rmtree(profile, ignore_errors=True)


def wait_until(driver, condition: Callable[[object], object], message: str = "", timeout: float = WAIT):
    """``condition(driver)``'s first truthy value, checked as Selenium's waits do (every 0.1 s)."""
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(condition, message)


def png_of(data_url: str):
    """The picture an ``<img>`` shows from a ``data:image/png;base64,...`` address, as a PIL image."""
    from PIL import Image

    head, _, data = data_url.partition(",")
    assert head == "data:image/png;base64", head
    return Image.open(io.BytesIO(base64.b64decode(data)))


def qr_in(image) -> str | None:
    """The QR code's text in ``image`` (enlarged 4x, as a camera would see it sharp), or None."""
    import zxingcpp
    from PIL import Image

    grey = image.convert("L")
    found = zxingcpp.read_barcodes(grey.resize((grey.width * 4, grey.height * 4), Image.Resampling.NEAREST))
    return found[0].text if found else None
