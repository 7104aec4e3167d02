"""The console in a real browser: Debian's chromium, headless, driven by Selenium through chromium-driver.

Each page loads with no console error (a Content-Security-Policy violation is
one), an XSS attempt in a node label renders as text, an operator action
works through its confirmation form. Screenshots of every page are written to
the test's tmp dir, and copied to ``$TREADLE_CONSOLE_SCREENSHOTS`` when set
(how README's pictures are made).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.common.by import By

from .chromium import console_errors as _errors
from .chromium import start_chromium
from .fleet import XSS, Fleet, make_fleet, serving

PAGES = {"overview": "/ui/", "rollouts": "/ui/rollouts", "rollout": "/ui/rollouts/1", "fabric": "/ui/nodes?site=s1",
         "node": "/ui/nodes/n000", "racks": "/ui/racks", "confirm": "/ui/rollouts/1/approve", "login": "/ui/login"}


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[webdriver.Chrome]:
    driver = start_chromium(tmp_path_factory.mktemp("chromium-profile"))
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def fleet(tmp_path: Path) -> Fleet:
    return make_fleet(tmp_path, n=40)


def _screenshot(driver: webdriver.Chrome, tmp_path: Path, name: str) -> None:
    driver.save_screenshot(str(tmp_path / f"console-{name}.png"))
    out = os.environ.get("TREADLE_CONSOLE_SCREENSHOTS")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        shutil.copy(tmp_path / f"console-{name}.png", Path(out) / f"console-{name}.png")


def test_every_page_loads_styled_without_console_errors(browser: webdriver.Chrome, fleet: Fleet,
                                                        tmp_path: Path) -> None:
    with serving(fleet.ctx) as url:
        for name, path in PAGES.items():
            browser.get(url + path)
            assert browser.find_element(By.TAG_NAME, "h1").text, name
            # The stylesheet applied (it is the only style the CSP allows): the header is dark.
            assert browser.find_element(By.TAG_NAME, "header").value_of_css_property("background-color") == \
                "rgba(32, 38, 45, 1)", name
            assert _errors(browser) == [], name
            _screenshot(browser, tmp_path, name)
    assert sorted(p.name for p in tmp_path.glob("console-*.png")) == sorted(f"console-{n}.png" for n in PAGES)


def test_a_label_with_a_script_renders_as_text(browser: webdriver.Chrome, fleet: Fleet) -> None:
    with serving(fleet.ctx) as url:
        browser.get(url + "/ui/nodes/n000")
        shown = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "span.kv")]
        assert f"note={XSS}" in shown
        assert browser.find_elements(By.TAG_NAME, "script") == []
        with pytest.raises(NoAlertPresentException):
            browser.switch_to.alert.text  # noqa: B018 - raises when no alert() ran
        assert _errors(browser) == []


def test_an_operator_approves_through_the_confirmation_form(browser: webdriver.Chrome, fleet: Fleet) -> None:
    with serving(fleet.ctx) as url:
        browser.get(url + "/ui/rollouts/1")
        browser.find_element(By.LINK_TEXT, "approve").click()
        assert "Approve rollout 1?" in browser.find_element(By.TAG_NAME, "h1").text
        browser.find_element(By.CSS_SELECTOR, "button.danger").click()
        assert "approve: done." in browser.find_element(By.CSS_SELECTOR, "p.ok").text
        assert _errors(browser) == []
    assert fleet.ctx.rollouts.active().approved == {0} and fleet.triggered == [1]
