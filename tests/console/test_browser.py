"""The console in a real browser: Debian's chromium, headless, driven by Selenium through chromium-driver.

Each page loads with no console error (a Content-Security-Policy violation is
one), the commit page and a node's sources included (over the example fabric
in git); an XSS attempt in a node label or a commit message renders as text;
an operator action works through its confirmation form, and with an admin
token only after the login. Screenshots of every page are written to the
test's tmp dir, and copied to ``$TREADLE_CONSOLE_SCREENSHOTS`` when set (how
README's pictures are made).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException, StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

from support.chromium import console_errors as _errors
from support.chromium import start_chromium
from support.console_git import NODE, GitFleet, make_git_fleet, template_repo
from support.console_state import XSS, Fleet, make_fleet, serving

PAGES = {
    "overview": "/ui/",
    "rollouts": "/ui/rollouts",
    "rollout": "/ui/rollouts/1",
    "fabric": "/ui/nodes?site=s1",
    "node": "/ui/nodes/n000",
    "racks": "/ui/racks",
    "confirm": "/ui/rollouts/1/approve",
    "login": "/ui/login",
}
#: The pages that read the fabric repository, shown over the example fabric; their screenshots are these.
GIT_PAGES = {
    "overview": "/ui/",
    "node": f"/ui/nodes/{NODE}",
    "node-sources": f"/ui/nodes/{NODE}#sources",
    "commit": "/ui/commits/{head}",
    "commit-first": "/ui/commits/{first}",
    "fabric": "/ui/nodes?site=meyrin",
}


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[webdriver.Chrome]:
    driver = start_chromium(tmp_path_factory.mktemp("chromium-profile"))
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(autouse=True)
def blank_page(browser: webdriver.Chrome) -> Iterator[None]:
    """Each test leaves the shared browser on a blank page, its console log read.

    A page left open would outlive its test's server: a live rollout's page
    reloads itself, a request still in flight fails, and the next test would
    find that error in its console log.
    """
    yield
    browser.get("about:blank")
    _errors(browser)


@pytest.fixture
def fleet(tmp_path: Path) -> Fleet:
    return make_fleet(tmp_path, n=40)


@pytest.fixture
def git_fleet(tmp_path: Path) -> GitFleet:
    first, head = template_repo(tmp_path / "fabric")
    return make_git_fleet(tmp_path, tmp_path / "fabric", first, head)


def _screenshot(driver: webdriver.Chrome, tmp_path: Path, name: str) -> None:
    driver.save_screenshot(str(tmp_path / f"console-{name}.png"))
    out = os.environ.get("TREADLE_CONSOLE_SCREENSHOTS")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        shutil.copy(tmp_path / f"console-{name}.png", Path(out) / f"console-{name}.png")


def _wait_for(browser: webdriver.Chrome, css: str, text: str = "") -> WebElement:
    """The element (holding ``text``) once the page that a click loads holds it and has loaded.

    A click returns as soon as the browser took it: a form's submission, and
    a link's navigation on a loaded machine, start after that, and until the
    next page commits, elements are looked up in the page clicked on. Its
    stylesheet is waited for too: a request still in flight when the test's
    server stops would log its refusal as a console error.
    """

    def loaded(driver: webdriver.Chrome) -> WebElement | bool:
        found = [
            e for e in driver.find_elements(By.CSS_SELECTOR, css) if not text or text in e.text
        ]
        complete = driver.execute_script("return document.readyState") == "complete"
        return found[0] if found and complete else False

    return WebDriverWait(browser, 10, ignored_exceptions=[StaleElementReferenceException]).until(
        loaded
    )


def _load(browser: webdriver.Chrome, url: str, name: str) -> None:
    """Open a page; it must be styled and raise no console error (a page still computing is waited for)."""
    browser.get(url)
    for _ in range(
        100
    ):  # a plan or provenance still computing, the agents still being asked: their end is shown
        text = browser.find_element(By.TAG_NAME, "main").text
        if "this page reloads itself" not in text and "the agents are being asked" not in text:
            break
        time.sleep(0.2)
        browser.get(url)
    assert browser.find_element(By.TAG_NAME, "h1").text, name
    # The stylesheet applied (it is the only style the CSP allows): the header is dark.
    assert (
        browser.find_element(By.TAG_NAME, "header").value_of_css_property("background-color")
        == "rgba(32, 38, 45, 1)"
    ), name
    assert _errors(browser) == [], name


def test_every_page_loads_styled_without_console_errors(
    browser: webdriver.Chrome, fleet: Fleet, tmp_path: Path
) -> None:
    with serving(fleet.ctx) as url:
        for name, path in PAGES.items():
            _load(browser, url + path, name)
            if name not in GIT_PAGES:
                _screenshot(browser, tmp_path, name)
    assert sorted(p.name for p in tmp_path.glob("console-*.png")) == sorted(
        f"console-{n}.png" for n in PAGES if n not in GIT_PAGES
    )


def test_the_pages_that_read_the_repository_load_without_console_errors(
    browser: webdriver.Chrome, git_fleet: GitFleet, tmp_path: Path
) -> None:
    with serving(git_fleet.ctx) as url:
        for name, path in GIT_PAGES.items():
            _load(browser, url + path.format(head=git_fleet.head, first=git_fleet.first), name)
            _screenshot(browser, tmp_path, name)
        browser.get(f"{url}/ui/commits/{git_fleet.head}")
        assert "1 changed, 0 added, 0 removed" in browser.find_element(By.TAG_NAME, "main").text
        browser.get(f"{url}/ui/nodes/{NODE}")
        rows = browser.find_elements(By.CSS_SELECTOR, "table.sources tbody tr")
        assert (
            len(rows) > 20
            and "labels.rack" in browser.find_element(By.CSS_SELECTOR, "table.sources").text
        )
    assert sorted(p.name for p in tmp_path.glob("console-*.png")) == sorted(
        f"console-{n}.png" for n in GIT_PAGES
    )


def test_markup_in_a_label_and_a_commit_message_renders_as_text_on_the_commit_and_node_pages(
    browser: webdriver.Chrome, git_fleet: GitFleet
) -> None:
    with serving(git_fleet.ctx) as url:
        for path in (f"/ui/commits/{git_fleet.head}", f"/ui/nodes/{NODE}", "/ui/"):
            _load(browser, url + path, path)
            assert XSS in browser.find_element(By.TAG_NAME, "main").text, path
            assert browser.find_elements(By.TAG_NAME, "script") == [], path
            with pytest.raises(NoAlertPresentException):
                browser.switch_to.alert.text  # noqa: B018 - raises when no alert() ran


def test_a_label_with_a_script_renders_as_text(browser: webdriver.Chrome, fleet: Fleet) -> None:
    with serving(fleet.ctx) as url:
        browser.get(url + "/ui/nodes/n000")
        shown = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "span.kv")]
        assert f"note={XSS}" in shown
        assert browser.find_elements(By.TAG_NAME, "script") == []
        with pytest.raises(NoAlertPresentException):
            browser.switch_to.alert.text  # noqa: B018 - raises when no alert() ran
        assert _errors(browser) == []


def test_an_operator_approves_through_the_confirmation_form(
    browser: webdriver.Chrome, fleet: Fleet
) -> None:
    with serving(fleet.ctx) as url:
        browser.get(url + "/ui/rollouts/1")
        browser.find_element(By.LINK_TEXT, "approve").click()
        _wait_for(browser, "h1", "Approve rollout 1?")
        browser.find_element(By.CSS_SELECTOR, "button.danger").click()
        assert "approve: done." in _wait_for(browser, "p.ok").text
        assert _errors(browser) == []
    assert fleet.ctx.rollouts.active().approved == {0} and fleet.triggered == [1]


def test_with_an_admin_token_an_action_is_refused_until_the_operator_logs_in(
    browser: webdriver.Chrome, tmp_path: Path
) -> None:
    fleet = make_fleet(tmp_path, n=8, admin_token=b"t0ken-of-the-admin")
    with serving(fleet.ctx) as url:
        browser.delete_all_cookies()
        browser.get(url + "/ui/rollouts/1/approve")
        assert (
            "actions need the admin token" in browser.find_element(By.CSS_SELECTOR, "p.error").text
        )
        assert browser.find_elements(By.CSS_SELECTOR, "button.danger") == []
        browser.find_element(By.LINK_TEXT, "Log in with the admin token").click()
        _wait_for(browser, "input[name=token]").send_keys("a wrong token")
        browser.find_element(By.CSS_SELECTOR, "main button").click()
        assert "wrong token" in _wait_for(browser, "p.error", "wrong token").text
        assert [
            e for e in _errors(browser) if "401" not in e
        ] == []  # the refusal's status, nothing else
        browser.find_element(By.NAME, "token").send_keys("t0ken-of-the-admin")
        browser.find_element(By.CSS_SELECTOR, "main button").click()
        WebDriverWait(browser, 10).until(EC.url_to_be(url + "/ui/"))
        browser.get(url + "/ui/rollouts/1/approve")
        browser.find_element(By.CSS_SELECTOR, "button.danger").click()
        assert "approve: done." in _wait_for(browser, "p.ok").text
        assert _errors(browser) == []
    assert fleet.ctx.rollouts.active().approved == {0} and fleet.triggered == [1]
