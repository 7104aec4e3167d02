"""The fleet by health and drift: the agents' expositions read over real HTTP, shown and filtered by the console.

One HTTP server on 127.0.0.1 answers for several agents (the URL path names
the node): a healthy one in sync, an unhealthy one with a drifted resource,
one that answers 503, one that answers with another node's metrics. The rest
of the fleet has no agent the console can find.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from support.agent_pages import PathTarget
from support.console_state import Fleet, make_fleet, serving
from treadle.console.health import FleetWatch, Seen, classify
from treadle.rollout.observe import Target


def exposition(node: str, healthy: int, drifted: int) -> str:
    return (
        f'treadle_agent_info{{node="{node}",version="0.1.0"}} 1\n'
        f"treadle_agent_applied_generation 1\ntreadle_agent_last_apply_success 1\n"
        f"treadle_agent_healthy {healthy}\n"
        f'treadle_agent_resources{{type="file",status="in_sync"}} 3\n'
        f'treadle_agent_resources{{type="file",status="drifted"}} {drifted}\n'
    )


PAGES = {
    "n000": exposition("n000", 1, 0),
    "n001": exposition("n001", 0, 2),
    "n003": exposition("n999", 1, 0),
}


@pytest.fixture
def agents(agent_pages: tuple[int, dict[str, str]]) -> int:
    port, pages = agent_pages
    pages.update(PAGES)
    return port


def _with_agents(tmp_path: Path, port: int) -> Fleet:
    """A fleet whose nodes n000..n003 have an agent on the test server."""
    fleet = make_fleet(tmp_path, n=12)
    fleet.ctx.target_of = lambda n: (
        PathTarget(n, "127.0.0.1", port) if n in ("n000", "n001", "n002", "n003") else None
    )
    return fleet


def _swept(url: str, path: str) -> str:
    """The page once a sweep of the agents has finished (the first request starts it in the background)."""
    deadline = time.monotonic() + 30
    while True:
        text = httpx.get(url + path).text
        if "the agents as asked at" in text or time.monotonic() > deadline:
            return text
        time.sleep(0.05)


def test_each_answer_is_classified_never_guessed(agents: int) -> None:
    targets = [PathTarget(n, "127.0.0.1", agents) for n in ("n000", "n001", "n002", "n003")]
    watch = FleetWatch(lambda: targets, timeout_s=5)
    first = watch.read()
    assert first.running and first.finished_at is None
    watch.wait(30)
    seen = watch.read(refresh=False)
    assert not seen.running and seen.finished_at is not None
    assert {n: (s.health, s.drift) for n, s in seen.seen.items()} == {
        "n000": ("healthy", "in_sync"),
        "n001": ("unhealthy", "drifted"),
        "n002": ("unreachable", "unknown"),  # 503
        "n003": ("unreachable", "unknown"),  # another node's metrics
    }


def test_a_fresh_sweep_is_not_repeated_and_a_node_gone_from_the_targets_is_forgotten(
    agents: int,
) -> None:
    targets = [PathTarget("n000", "127.0.0.1", agents), PathTarget("n001", "127.0.0.1", agents)]
    calls: list[int] = []

    def listed() -> list[Target]:
        calls.append(1)
        return list(targets)

    watch = FleetWatch(listed, timeout_s=5, interval_s=3600)
    watch.read()
    watch.wait(30)
    assert not watch.read().running and calls == [1]  # fresh: no new sweep
    targets.pop()
    watch.interval_s = 0
    watch.read()
    watch.wait(30)
    assert set(watch.read(refresh=False).seen) == {"n000"} and calls == [1, 1]


def test_a_sweep_whose_targets_cannot_be_listed_ends_empty_and_is_retried() -> None:
    def broken() -> list[Target]:
        raise OSError("mirror unreadable")

    watch = FleetWatch(broken, timeout_s=1, interval_s=0)
    watch.read()
    watch.wait(30)
    sweep = watch.read(refresh=False)
    assert sweep.seen == {} and sweep.finished_at is not None


def test_classify_reads_health_and_drift_from_the_parsed_exposition() -> None:
    assert classify(None) == ("unreachable", "unknown")
    facts = {"healthy": True, "resources": {"in_sync": 1, "drifted": 0, "failed": 0}}
    assert classify(facts) == ("healthy", "in_sync")
    assert classify(
        {**facts, "healthy": None, "resources": {"in_sync": 0, "drifted": 1, "failed": 0}}
    ) == ("unknown", "drifted")
    assert Seen("healthy", "in_sync", 0.0).health == "healthy"


def test_the_overview_counts_the_fleet_by_health_and_drift_with_links_to_the_filtered_list(
    tmp_path: Path, agents: int
) -> None:
    fleet = _with_agents(tmp_path, agents)
    with serving(fleet.ctx) as url:
        text = _swept(url, "/ui/")
    assert 'href="/ui/nodes?health=healthy">healthy 1</a>' in text
    assert 'href="/ui/nodes?health=unhealthy">unhealthy 1</a>' in text
    assert 'href="/ui/nodes?health=unreachable">unreachable 2</a>' in text
    assert (
        'href="/ui/nodes?health=unknown">unknown 8</a>' in text
    )  # no agent found for them: not asked
    assert 'href="/ui/nodes?drift=drifted">drifted 1</a>' in text
    assert 'href="/ui/nodes?drift=in_sync">in sync 1</a>' in text


def test_the_fabric_list_filters_by_health_and_drift(tmp_path: Path, agents: int) -> None:
    fleet = _with_agents(tmp_path, agents)
    with serving(fleet.ctx) as url:
        _swept(url, "/ui/nodes")
        unhealthy = httpx.get(url + "/ui/nodes?health=unhealthy").text
        drifted = httpx.get(url + "/ui/nodes?drift=drifted&site=s2").text
        unreachable = httpx.get(url + "/ui/nodes?health=unreachable").text
        bad = httpx.get(url + "/ui/nodes?health=%3Cb%3Ebogus&drift=x").text
    assert "1 node(s)" in unhealthy and 'href="/ui/nodes/n001"' in unhealthy
    assert "1 node(s)" in drifted and 'href="/ui/nodes/n001"' in drifted  # n001 is in s2
    assert "2 node(s)" in unreachable
    assert 'href="/ui/nodes/n002"' in unreachable and 'href="/ui/nodes/n003"' in unreachable
    assert (
        "health filter &#39;&lt;b&gt;bogus&#39; ignored" in bad
        and "drift filter &#39;x&#39; ignored" in bad
    )
    assert "12 node(s)" in bad


def test_the_racks_are_coloured_by_health_by_default_or_by_lifecycle(
    tmp_path: Path, agents: int
) -> None:
    fleet = _with_agents(tmp_path, agents)
    with serving(fleet.ctx) as url:
        health = _swept(url, "/ui/racks?site=s2")
        lifecycle = httpx.get(url + "/ui/racks?site=s2&by=lifecycle").text
        bogus = httpx.get(url + "/ui/racks?site=s2&by=%3Cx%3E").text
    # s2 holds the odd nodes: n001 (unhealthy), n003 (unreachable), n005... (no agent: unknown)
    assert '<td class="slot h-unhealthy">\n        <a href="/ui/nodes/n001">' in health
    assert '<td class="slot h-unreachable">\n        <a href="/ui/nodes/n003">' in health
    assert '<td class="slot h-unknown">\n        <a href="/ui/nodes/n005">' in health
    assert (
        '<td class="slot lc-production">\n        <a href="/ui/nodes/n001">' in lifecycle
        and "h-" not in lifecycle
    )
    assert (
        '<option value="health" selected>' in bogus
        and "&lt;x&gt;" not in bogus
        and "<x>" not in bogus
    )
