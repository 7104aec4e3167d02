"""The web console against a real controller and real agents, in a real browser (Debian's chromium, headless).

The rollout page is opened once and never navigated again while the rollout
runs: the page's own refresh must show it advance, from waiting for approval
to complete, after the operator approved through the console's form.
"""

from __future__ import annotations

import time
from pathlib import Path

from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

from support.chromium import console_errors, start_chromium
from support.fleet import APP_FILE, CANARY, Fleet


def _find(driver, css: str):  # type: ignore[no-untyped-def]
    """The element once the page holds it (a page may be in the middle of reloading itself)."""
    return WebDriverWait(driver, 10).until(EC.presence_of_element_located((By.CSS_SELECTOR, css)))


def _state(driver) -> str:  # type: ignore[no-untyped-def]
    return _find(driver, "dl.facts dd span.state").text


def _wait_for(driver, fleet: Fleet, state: str, timeout_s: float) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if _state(driver) == state:
                return
        except Exception:  # noqa: BLE001 - the page is being replaced by its refresh
            pass
        time.sleep(0.2)
    raise AssertionError(f"the page never showed {state!r}; rollout: {fleet.rollout('current')}")


def test_the_rollout_page_follows_a_real_rollout_and_approve_works(
    make_fleet, tmp_path: Path
) -> None:
    # The last wave soaks 4 s: the rollout cannot be complete when the page is first shown after the approval.
    fleet = make_fleet(clusters=1, per_cluster=3, half_approval="true", rest_soak_s=4)
    sha = fleet.change_app("v2")
    waiting = fleet.wait_rollout(sha, {"waiting"}, 90, also=lambda d: "approval" in d["reason"])
    driver = start_chromium(tmp_path / "profile")
    try:
        driver.get(f"{fleet.url}/ui/rollouts/{waiting['id']}")
        assert _state(driver) == "waiting" and "approval" in driver.page_source
        driver.save_screenshot(str(tmp_path / "console-rollout-waiting.png"))
        # The rollout page reloads itself; the confirmation page, the form's answer and what follows do not.
        driver.get(f"{fleet.url}/ui/rollouts/{waiting['id']}/approve")
        _find(driver, "button.danger").click()
        assert "approve: done." in _find(driver, "p.ok").text
        _find(driver, "p.ok a").click()
        assert _state(driver) != "complete"
        driver.execute_script("window.treadleMarker = 1")  # gone when the page reloads itself
        _wait_for(
            driver, fleet, "complete", 90
        )  # no navigation from here: the page's refresh shows it
        assert driver.execute_script("return window.treadleMarker") is None
        driver.save_screenshot(str(tmp_path / "console-rollout-complete.png"))
        assert fleet.rollout(waiting["id"])["state"] == "complete"
        fleet.wait_applied("v2", fleet.agents)
        driver.get(f"{fleet.url}/ui/nodes/{CANARY}")
        facts = driver.find_element(By.CSS_SELECTOR, "main").text
        assert "Healthy\nyes" in facts and "app-config" in facts and sha in facts, facts
        # Where each value comes from, at the published commit: the change's own line, by its commit.
        rows = driver.find_elements(By.CSS_SELECTOR, "table.sources tbody tr")
        content = [r.text for r in rows if f"files.{APP_FILE}.content" in r.text]
        assert content and "profiles/app.yaml" in content[0] and sha[:12] in content[0], content
        # The fleet by health and drift, from the console's own sweep of the real agents.
        driver.get(f"{fleet.url}/ui/")
        deadline = time.monotonic() + 60
        while (
            "the agents as asked at" not in _find(driver, "main").text
            and time.monotonic() < deadline
        ):
            time.sleep(0.5)
            driver.get(f"{fleet.url}/ui/")
        counts = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "dl.fleet a.state")]
        assert (
            f"healthy {len(fleet.agents)}" in counts and f"in sync {len(fleet.agents)}" in counts
        ), counts
        driver.find_element(By.LINK_TEXT, f"healthy {len(fleet.agents)}").click()
        assert f"{len(fleet.agents)} node(s)" in _find(driver, "main").text
        driver.get(f"{fleet.url}/ui/commits/{sha}")
        assert (
            "valid" in _find(driver, "main").text
            and "changed" in driver.find_element(By.TAG_NAME, "main").text
        )
        assert console_errors(driver) == []
    finally:
        driver.quit()
