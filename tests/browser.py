"""Headless Chromium for the dashboard's tests and screenshots: Debian's ``chromium`` and
``chromium-driver`` driven by Selenium; never a downloaded browser. Without them the browser
tests skip, except in CI (``CI=true``), where ``.ci/run`` installs them and a missing browser
fails."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)


def have_browser() -> bool:
    return os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)


def start_browser(width: int = 1280, height: int = 900) -> Any:
    """A Selenium Chrome driver on the system Chromium with a fresh profile; ``.quit()`` it.
    The profile directory is removed when the driver quits."""
    if not have_browser():
        if os.environ.get("CI") == "true":
            pytest.fail(
                f"{CHROMIUM} and {CHROMEDRIVER} are needed (apt-get install chromium chromium-driver)"
            )
        pytest.skip("no system Chromium (apt-get install chromium chromium-driver)")
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager: never fetch a browser or driver
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="truckllm-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument(f"--window-size={width},{height}")
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    quit_driver = driver.quit

    def quit_and_clean() -> None:
        try:
            quit_driver()
        finally:
            shutil.rmtree(profile, ignore_errors=True)

    driver.quit = quit_and_clean
    return driver


def wait_text(driver: Any, css: str, check: Callable[[str], bool], timeout: float = 15) -> str:
    """Wait until the element ``css`` exists and its text passes ``check``; its text."""
    from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    seen: list[str] = []

    def ready(d: Any) -> str | bool:
        try:
            els = d.find_elements(By.CSS_SELECTOR, css)
            text = els[0].text if els else None
        except StaleElementReferenceException:
            return False
        if text is None:
            return False
        seen.append(text)
        return text if check(text) else False

    try:
        result: str = WebDriverWait(driver, timeout, poll_frequency=0.1).until(ready)
    except TimeoutException:
        raise AssertionError(f"{css}: last text {seen[-1:]!r}") from None
    return result


def sign_in(driver: Any, base_url: str, key: str, refresh_ms: int = 300, page: str = "") -> None:
    from selenium.webdriver.common.by import By

    driver.get(f"{base_url}/ui/?refresh={refresh_ms}{'#' + page if page else ''}")
    box = driver.find_element(By.ID, "login-key")
    box.send_keys(key)
    driver.find_element(By.ID, "login-btn").click()
    wait_text(driver, "#nav a.active", bool)


def go(driver: Any, page: str) -> None:
    driver.execute_script("location.hash = arguments[0]", page)
    wait_text(driver, "#nav a.active", lambda t: t.lower().startswith(page[:4]))


def click(driver: Any, css: str) -> None:
    """Click the element ``css`` once it is there (a refresh may have just replaced it)."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def clicked(d: Any) -> bool:
        try:
            els = d.find_elements(By.CSS_SELECTOR, css)
            if not els:
                return False
            els[0].click()
            return True
        except StaleElementReferenceException:
            return False

    WebDriverWait(driver, 10, poll_frequency=0.05).until(clicked)
