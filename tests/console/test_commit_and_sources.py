"""The console's pages that read the fabric repository: a commit and its plan, where a node's values come from.

A real git repository (the example fabric and a commit by another author),
rendered by the real renderer and published to a real store; the console
reads the repository as it reads the controller's mirror, over real HTTP.
"""

from __future__ import annotations

import html
import json
import re
import threading
from pathlib import Path
from urllib.parse import quote

import anyio
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from support.console_git import NODE, GitFleet, make_git_fleet, template_repo
from support.console_state import XSS, serving
from treadle.console.work import Outcome, Work
from treadle.daemon.api import build_app
from treadle.fabric import GitRevisionSource, explain
from treadle.fabric.explain import explain_node
from treadle.review.jsonreport import render_json
from treadle.review.plan import build_plan

ESCAPED_XSS = "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;"


def _text(page: str) -> str:
    """What a reader sees: the page without its tags, entities decoded."""
    return html.unescape(re.sub(r"<[^>]+>", "", page))


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    root = tmp_path_factory.mktemp("repo") / "fabric"
    first, head = template_repo(root)
    return root, first, head


@pytest.fixture
def fleet(tmp_path: Path, repo: tuple[Path, str, str]) -> GitFleet:
    return make_git_fleet(tmp_path, *repo)


def test_the_commit_page_shows_what_treadle_plan_shows_between_the_commit_and_its_parent(
    fleet: GitFleet,
) -> None:
    expected = json.loads(render_json(build_plan(fleet.root, fleet.first, fleet.head)))
    with serving(fleet.ctx) as url:
        r = httpx.get(f"{url}/ui/commits/{fleet.head}", timeout=60)
    assert r.status_code == 200
    text = _text(r.text)
    assert f"treadle plan {fleet.first[:12]} {fleet.head[:12]}" in text
    assert expected["summary"]["changed"] == 1
    assert "1 changed, 0 added, 0 removed node(s)." in text
    for group in expected["groups"]:
        assert group["title"] in text
        for change in group["changes"]:
            assert change["diff"].strip() in text
            for source in change["sources"] or []:
                for s in source["settings"]:  # a template as a whole is named without a line
                    assert (
                        f"template {s['file']}"
                        if s["how"] == "template"
                        else f"{s['file']}:{s['line']}"
                    ) in text
    assert (
        "Grace Hopper &lt;ada@example.org&gt;" in r.text
        and "The old rack is being emptied." in r.text
    )
    assert f'href="/ui/commits/{fleet.first}"' in r.text and f'href="/ui/nodes/{NODE}"' in r.text


def test_fabric_content_and_commit_messages_are_escaped_on_the_commit_and_node_pages(
    fleet: GitFleet,
) -> None:
    with serving(fleet.ctx) as url:
        pages = [
            httpx.get(f"{url}/ui/commits/{fleet.head}", timeout=60).text,
            httpx.get(f"{url}/ui/nodes/{NODE}").text,
            httpx.get(f"{url}/ui/").text,
        ]
    for text in pages:
        assert XSS not in text and "<script" not in text.lower()
        assert ESCAPED_XSS in text


def test_the_first_commit_has_no_plan_and_unknown_or_malformed_commits_are_404(
    fleet: GitFleet,
) -> None:
    with serving(fleet.ctx) as url:
        root = httpx.get(f"{url}/ui/commits/{fleet.first}")
        short = httpx.get(f"{url}/ui/commits/{fleet.head[:10]}", timeout=60)
        missing = [
            httpx.get(f"{url}/ui/commits/{sha}")
            for sha in ("0" * 40, "nothex", "abc", "a" * 41, "HEAD")
        ]
    assert root.status_code == 200 and "the first commit: there is no parent" in root.text
    assert short.status_code == 200 and fleet.head in short.text and "1 changed" in short.text
    assert [r.status_code for r in missing] == [404] * 5


def test_overview_node_and_rollout_pages_link_each_commit_to_its_page(fleet: GitFleet) -> None:
    link = f'href="/ui/commits/{fleet.head}"'
    fleet.ctx.state.record_refusal(fleet.first, "invalid", "bad", ["x.yaml:1: bad"])
    with serving(fleet.ctx) as url:
        overview = httpx.get(f"{url}/ui/").text
        node = httpx.get(f"{url}/ui/nodes/{NODE}").text
        rollout = httpx.get(f"{url}/ui/rollouts/1").text
    assert (
        link in overview and f"Move {NODE} to rack r09" in overview and "Grace Hopper" in overview
    )
    assert f'href="/ui/commits/{fleet.first}"' in overview  # the refused commit
    assert node.count(link) >= 2  # the published commit and the history's generation
    assert link in rollout


def test_the_node_page_traces_every_value_to_its_file_line_commit_and_author(
    fleet: GitFleet,
) -> None:
    src = GitRevisionSource(fleet.root, fleet.head)
    with serving(fleet.ctx) as url:
        text = httpx.get(f"{url}/ui/nodes/{NODE}").text
    section = html.unescape(
        text.split('id="sources"', 1)[1].split('<h2 id="history">', 1)[0]
    )  # tags kept
    for keypath in ("labels.rack", "data.ntp.servers", "address"):
        chain = explain(src, NODE, keypath)
        assert chain, keypath
        assert f"<code>{keypath}</code>" in section
        for p in chain:
            assert (
                f"{p.file}:{p.line}" in section
                and p.blame is not None
                and p.blame.commit[:12] in section
            )
    rack = section.split("<code>labels.rack</code>", 1)[1].split("</tr>", 1)[0]
    assert "Grace Hopper" in rack and fleet.head[:12] in rack  # the line the second commit changed
    ntp = section.split("<code>data.ntp.servers</code>", 1)[1]
    assert (
        "(append)" in ntp.split("</tr>", 1)[0] and "overridden" in ntp
    )  # the fabric-wide list it extends


def test_explain_node_gives_what_explain_gives_for_each_key_path(
    repo: tuple[Path, str, str],
) -> None:
    root, _, head = repo
    src = GitRevisionSource(root, head)
    values, complete = explain_node(src, NODE)
    assert complete and len(values) > 20
    keypaths = [k for k, _ in values]
    assert keypaths[:2] == ["address", "lifecycle"] and "labels.rack" in keypaths
    for keypath, chain in values:
        assert chain == explain(src, NODE, keypath), keypath
    cut, complete = explain_node(src, NODE, max_values=3)
    assert not complete and [k for k, _ in cut] == keypaths[:3]


def test_a_slow_computation_is_said_running_then_served_from_the_cache() -> None:
    work = Work("test", max_pending=1)
    release, calls = threading.Event(), []

    def compute() -> str:
        calls.append(1)
        release.wait(30)
        return "plan"

    async def scenario() -> list[Outcome]:
        first = await work.get("k", compute, 0.05)
        busy = await work.get(
            "other", lambda: "x", 0.05
        )  # one pending at most: refused, not queued
        release.set()
        done = await work.get("k", compute, 30)
        again = await work.get("k", compute, 0)
        return [first, busy, done, again]

    first, busy, done, again = anyio.run(scenario)
    assert first.state == "running" and busy.state == "busy"
    assert done == again == Outcome("done", "plan") and calls == [1]


def test_a_failed_computation_is_said_once_and_tried_again() -> None:
    work = Work("test")
    attempts: list[int] = []

    def compute() -> str:
        attempts.append(1)
        if len(attempts) == 1:
            raise LookupError("the mirror is being repacked")
        return "ok"

    async def scenario() -> list[Outcome]:
        return [await work.get("k", compute, 30), await work.get("k", compute, 30)]

    failed, ok = anyio.run(scenario)
    assert failed == Outcome("failed", error="the mirror is being repacked")
    assert ok == Outcome("done", "ok") and len(attempts) == 2


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=60))
def test_any_commit_in_the_address_is_a_page_or_a_404_never_an_error(
    fleet: GitFleet, sha: str
) -> None:
    with TestClient(build_app(fleet.ctx), client=("127.0.0.1", 1)) as client:
        r = client.get("/ui/commits/" + quote(sha, safe=""))
    assert r.status_code in (200, 404), (sha, r.status_code)
    assert "<script" not in r.text.lower()
    assert (
        "<h1>Commit" not in r.text
        or fleet.head.startswith(sha.lower())
        or fleet.first.startswith(sha.lower())
    )


# Commit addresses that once could trip a page like this one (case, abbreviations, path tricks), kept as a corpus.
COMMIT_CORPUS = ["A" * 40, "..", "%2e%2e", "0" * 7, "ffffffff", " ", "\x00", "HEAD~1", "main"]


@pytest.mark.parametrize("sha", COMMIT_CORPUS)
def test_commit_address_regression_corpus(fleet: GitFleet, sha: str) -> None:
    with TestClient(build_app(fleet.ctx), client=("127.0.0.1", 1)) as client:
        r = client.get("/ui/commits/" + quote(sha, safe=""))
    # ".." leaves the commit pages (the client resolves it to /ui/): whatever answers, it is no commit's page.
    assert r.status_code in (200, 404) and "<h1>Commit" not in r.text, sha
