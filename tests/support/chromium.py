"""Debian's chromium, headless, driven by Selenium through chromium-driver; shared by the console's browser tests."""

from __future__ import annotations

import shutil
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

#: Flags for a quiet, isolated browser: nothing fetched from anywhere but the pages under test.
FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
    "--window-size=1280,900",
)


def start_chromium(profile: Path) -> webdriver.Chrome:
    """A fresh headless chromium with its own profile directory ``profile``, keeping the console log."""
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium and driver, (
        "install Debian's chromium and chromium-driver (.ci/install-deps does)"
    )
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in (*FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=Service(executable_path=driver))


def console_errors(driver: webdriver.Chrome) -> list[str]:
    """The browser console's errors and warnings since the last call (a CSP violation is one)."""
    return [e["message"] for e in driver.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
