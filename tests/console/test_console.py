"""The web console over real HTTP (uvicorn on 127.0.0.1, httpx), on real state, publish store and rollout service."""

from __future__ import annotations

import re
from pathlib import Path

import anyio
import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.testclient import TestClient

from support.console_state import XSS, Fleet, make_fleet, serving
from treadle.console import CSP, MAX_FORM_BYTES, read_form, resource_rows
from treadle.console.health import DRIFT, HEALTH
from treadle.console.index import Filters, NodeInfo, parse_filters, rack_elevations
from treadle.daemon.api import build_app

PAGES = [
    "/ui/",
    "/ui/racks",
    "/ui/racks?site=s2",
    "/ui/rollouts",
    "/ui/rollouts/1",
    "/ui/rollouts/1/approve",
    "/ui/nodes",
    "/ui/nodes?q=r1",
    "/ui/nodes?site=s2&label=rack%3Dr1",
    "/ui/nodes/n000",
    "/ui/login",
]
TOKEN = b"t0ken-of-the-admin"


def _csrf(page: str) -> str:
    found = re.search(r'name="csrf" value="([0-9a-f]{64})"', page)
    assert found, "no CSRF token in the form"
    return found.group(1)


@pytest.fixture
def fleet(tmp_path: Path) -> Fleet:
    return make_fleet(tmp_path, n=150)


@pytest.mark.parametrize("path", PAGES)
def test_every_page_answers_with_html_and_the_strict_csp(fleet: Fleet, path: str) -> None:
    with serving(fleet.ctx) as url:
        r = httpx.get(url + path)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/html")
    assert (
        r.headers["content-security-policy"] == CSP
        and "script-src" not in CSP
        and "default-src 'none'" in CSP
    )
    assert (
        r.headers["x-content-type-options"] == "nosniff" and r.headers["x-frame-options"] == "DENY"
    )
    assert "<script" not in r.text.lower()


@pytest.mark.parametrize("path", ["/ui/", "/ui/nodes?q=n000", "/ui/nodes/n000"])
def test_fabric_content_with_markup_is_shown_as_text(fleet: Fleet, path: str) -> None:
    with serving(fleet.ctx) as url:
        text = httpx.get(url + path).text
    assert XSS not in text
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in text


def test_the_overview_shows_the_deployed_commit_the_rollout_waves_and_the_refusal(
    fleet: Fleet,
) -> None:
    with serving(fleet.ctx) as url:
        text = httpx.get(url + "/ui/").text
    assert "abababababab" in text and "Rollout 1" in text
    assert ">canary<" in text and ">rest<" in text and "pending 149" in text
    assert "cdcdcdcdcdcd" in text and "nodes/n1.yaml:3" in text
    assert 'href="/ui/nodes?site=s1">s1</a>: 75' in text


def test_the_node_page_shows_published_state_rollout_history_and_manifest(fleet: Fleet) -> None:
    with serving(fleet.ctx) as url:
        text = httpx.get(url + "/ui/nodes/n001").text
    assert "s2 / c1" in text and "a" * 0 + "ab" * 20 in text
    assert 'href="/ui/rollouts/1"' in text and "wave rest" in text
    assert "<code>/etc/motd</code>" in text and "<code>chrony</code>" in text
    assert "Ada &lt;ada@example.com&gt;" in text
    assert "unreachable" in text  # no agent runs: said so, never guessed


def test_the_fabric_is_filtered_and_paged_on_the_server(fleet: Fleet) -> None:
    with serving(fleet.ctx) as url:
        first = httpx.get(url + "/ui/nodes").text
        second = httpx.get(url + "/ui/nodes?page=2").text
        site = httpx.get(url + "/ui/nodes?site=s2&label=rack%3Dr1").text
        text = httpx.get(url + "/ui/nodes?q=N14").text
        bad = httpx.get(url + "/ui/nodes?label=rack&page=x").text
    assert "150 node(s), page 1 of 2" in first and first.count('href="/ui/nodes/n') == 100
    assert 'href="/ui/nodes/n099"' in first and 'href="/ui/nodes/n100"' not in first
    assert (
        "page 2 of 2" in second and second.count('href="/ui/nodes/n') == 50 and "page=1" in second
    )
    # s2 is the odd nodes, rack r1 is i % 3 == 1: i % 6 == 1
    assert (
        "25 node(s)" in site and 'href="/ui/nodes/n007"' in site and 'href="/ui/nodes/n001"' in site
    )
    assert "site=s2&amp;label=rack%3Dr1" not in site or "page=" not in site  # one page: no pager
    assert "10 node(s)" in text and ">n140<" in text  # n140..n149, whatever the case
    assert (
        "label filter &#39;rack&#39; ignored: write it as key=value" in bad and "150 node(s)" in bad
    )


def test_unknown_nodes_rollouts_and_odd_names_are_404(fleet: Fleet) -> None:
    with serving(fleet.ctx) as url:
        css = httpx.get(url + "/ui/static/console.css")
        assert css.status_code == 200 and css.headers["content-security-policy"] == CSP
        for path in (
            "/ui/static/nope.css",
            "/ui/no-such-page",
            "/ui/nodes/nope",
            "/ui/nodes/.n000",
            "/ui/rollouts/99",
            "/ui/rollouts/x",
            "/ui/rollouts/1/explode",
        ):
            r = httpx.get(url + path)
            assert r.status_code == 404, path
            assert r.headers["content-security-policy"] == CSP


def test_an_action_without_the_csrf_token_is_refused_and_changes_nothing(fleet: Fleet) -> None:
    with serving(fleet.ctx) as url, httpx.Client(base_url=url) as client:
        client.get("/ui/rollouts/1/approve")  # a session cookie, but no token sent
        for data in ({}, {"csrf": "0" * 64}):
            r = client.post("/ui/rollouts/1/approve", data=data)
            assert r.status_code == 403 and "CSRF" in r.text
        stranger = httpx.post(url + "/ui/rollouts/1/approve", data={"csrf": "0" * 64})
        assert stranger.status_code == 403
    assert fleet.ctx.rollouts.document(1)["state"] == "pending" and fleet.triggered == []


def test_an_action_posted_from_another_origin_is_refused(fleet: Fleet) -> None:
    with serving(fleet.ctx) as url, httpx.Client(base_url=url) as client:
        csrf = _csrf(client.get("/ui/rollouts/1/approve").text)
        r = client.post(
            "/ui/rollouts/1/approve",
            data={"csrf": csrf},
            headers={"Origin": "https://evil.example"},
        )
    assert r.status_code == 403 and fleet.triggered == []


def test_approve_from_the_console_does_what_the_cli_does(fleet: Fleet, tmp_path: Path) -> None:
    cli_fleet = make_fleet(tmp_path / "cli", n=150)
    expected = cli_fleet.ctx.rollouts.act(cli_fleet.rollout_id, "approve")
    with serving(fleet.ctx) as url, httpx.Client(base_url=url) as client:
        confirm = client.get("/ui/rollouts/1/approve").text
        assert "treadle rollout approve 1" in confirm
        r = client.post(
            "/ui/rollouts/1/approve", data={"csrf": _csrf(confirm)}, headers={"Origin": url}
        )
    assert r.status_code == 200 and "approve: done." in r.text
    after = fleet.ctx.rollouts.document(1)
    assert after["state"] == expected["state"] and after["reason"] == expected["reason"]
    assert fleet.ctx.rollouts.active().approved == cli_fleet.ctx.rollouts.active().approved
    assert fleet.ctx.rollouts.active().approved == {0} and fleet.triggered == [1]  # wave 0, canary


def test_pause_and_abort_change_the_rollout_and_a_wrong_action_is_409(fleet: Fleet) -> None:
    with serving(fleet.ctx) as url, httpx.Client(base_url=url) as client:
        csrf = _csrf(client.get("/ui/rollouts/1/pause").text)
        assert client.post("/ui/rollouts/1/pause", data={"csrf": csrf}).status_code == 200
        assert fleet.ctx.rollouts.document(1)["paused"] is True
        assert client.post("/ui/rollouts/1/abort", data={"csrf": csrf}).status_code == 200
        assert fleet.ctx.rollouts.document(1)["state"] == "aborted"
        again = client.post("/ui/rollouts/1/resume", data={"csrf": csrf})
    assert again.status_code == 409 and "cannot" in again.text


def test_with_an_admin_token_actions_need_a_login_with_it(tmp_path: Path) -> None:
    fleet = make_fleet(tmp_path, n=4, admin_token=TOKEN)
    with serving(fleet.ctx) as url, httpx.Client(base_url=url) as client:
        confirm = client.get("/ui/rollouts/1/approve")
        assert (
            confirm.status_code == 200 and "actions need the admin token" in confirm.text
        )  # reading: loopback
        csrf = _csrf(client.get("/ui/login").text)
        refused = client.post("/ui/rollouts/1/approve", data={"csrf": csrf})
        assert refused.status_code == 401 and fleet.ctx.rollouts.document(1)["state"] == "pending"
        wrong = client.post("/ui/login", data={"csrf": csrf, "token": "guess"})
        assert wrong.status_code == 401 and "wrong token" in wrong.text
        forged = client.post("/ui/login", data={"csrf": "f" * 64, "token": TOKEN.decode()})
        assert forged.status_code == 403
        ok = client.post("/ui/login", data={"csrf": csrf, "token": TOKEN.decode()})
        assert ok.status_code == 303 and ok.headers["location"] == "/ui/"
        assert (
            "httponly" in ok.headers["set-cookie"].lower()
            and "samesite=strict" in ok.headers["set-cookie"].lower()
        )
        done = client.post("/ui/rollouts/1/approve", data={"csrf": csrf})
        assert done.status_code == 200 and fleet.triggered == [1]
        # The admin cookie is bound to its session: another browser's session with a copied admin cookie is not admin.
        other = httpx.Client(
            base_url=url, cookies={"treadle_admin": client.cookies["treadle_admin"]}
        )
        other_csrf = _csrf(other.get("/ui/login").text)
        assert other.post("/ui/rollouts/1/pause", data={"csrf": other_csrf}).status_code == 401
        other.close()


def test_from_another_machine_reading_needs_the_token_too(tmp_path: Path) -> None:
    # Starlette's in-process client connects as host "testclient": not loopback, like a remote browser.
    open_fleet = make_fleet(tmp_path / "open", n=4)
    with TestClient(build_app(open_fleet.ctx)) as client:
        r = client.get("/ui/nodes/n000")
        assert (
            r.status_code == 403
            and "own machine only" in r.text
            and "n000" not in r.text.split("<main>")[1]
        )
    guarded = make_fleet(tmp_path / "guarded", n=4, admin_token=TOKEN)
    with TestClient(build_app(guarded.ctx), follow_redirects=False) as client:
        r = client.get("/ui/")
        assert r.status_code == 303 and r.headers["location"] == "/ui/login"
        assert (
            client.get("/ui/", headers={"Authorization": "Bearer " + TOKEN.decode()}).status_code
            == 200
        )
        csrf = _csrf(client.get("/ui/login").text)
        assert (
            client.post("/ui/login", data={"csrf": csrf, "token": TOKEN.decode()}).status_code
            == 303
        )
        assert client.get("/ui/nodes/n000").status_code == 200


def test_pages_of_a_rollout_in_flight_reload_themselves_and_stop_when_it_ends(fleet: Fleet) -> None:
    refresh = '<meta http-equiv="refresh" content="5">'
    with serving(fleet.ctx) as url:
        assert (
            refresh in httpx.get(url + "/ui/").text
            and refresh in httpx.get(url + "/ui/rollouts/1").text
        )
        assert refresh not in httpx.get(url + "/ui/nodes").text
        fleet.ctx.rollouts.act(1, "abort")
        assert (
            refresh not in httpx.get(url + "/ui/").text
            and refresh not in httpx.get(url + "/ui/rollouts/1").text
        )


def test_the_rack_page_shows_each_rack_of_the_site_top_unit_first(fleet: Fleet) -> None:
    with serving(fleet.ctx) as url:
        text = httpx.get(url + "/ui/racks?site=s2").text
    assert text.count('<table class="rack">') == 3 and "<caption>A / r0</caption>" in text
    assert 'href="/ui/nodes/n001"' in text and 'href="/ui/nodes/n000"' not in text  # n000 is in s1
    # rack r1 of s2 holds n001 (unit 1) and n007 (unit 3): the higher unit is drawn above
    assert text.index("/ui/nodes/n007") < text.index("/ui/nodes/n001")
    assert XSS not in text


def test_rack_elevations_order_units_and_colour_by_the_rollout() -> None:
    def node(name: str, site: str = "s", **labels: str) -> NodeInfo:
        return NodeInfo(
            name=name,
            lifecycle="production",
            generation=1,
            commit=None,
            present=True,
            site=site,
            labels=labels,
        )

    nodes = [
        node("a", rack="r1", unit="U2"),
        node("b", rack="r1", unit="10"),
        node("c", rack="r1"),
        node("d", rack="r0", room="B", unit="1"),
        node("e", rack="r0", room="A", unit="1"),
        node("f", site="other", rack="r1", unit="3"),
        node("g"),
    ]
    racks = rack_elevations(nodes, "s", {"b": "failed"})
    assert [(r.room, r.rack) for r in racks] == [("", "r1"), ("A", "r0"), ("B", "r0")]
    assert [(s.node.name, s.unit, s.status) for s in racks[0].slots] == [
        ("b", "10", "failed"),
        ("a", "U2", ""),
        ("c", "", ""),
    ]


def test_the_manifest_table_names_each_resource_and_leaves_file_content_out() -> None:
    rows = resource_rows(
        {
            "resources": [
                {
                    "type": "file",
                    "path": "/etc/a",
                    "content": "secret-ish",
                    "mode": "0644",
                    "requires": [],
                },
                {"type": "sysctl", "key": "net.ipv4.ip_forward", "value": "1"},
                {"type": "service", "name": "chronyd", "enabled": True, "state": "running"},
            ]
        }
    )
    assert [(r["type"], r["id"]) for r in rows] == [
        ("file", "/etc/a"),
        ("sysctl", "net.ipv4.ip_forward"),
        ("service", "chronyd"),
    ]
    assert rows[0]["details"] == {"mode": "0644", "content": "10 characters"}
    assert resource_rows(None) == []


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(
                ["q", "lifecycle", "site", "cluster", "label", "page", "health", "drift", "x"]
            ),
            st.text(max_size=300),
        ),
        max_size=8,
    )
)
def test_any_query_string_gives_filters_never_an_exception(items: list[tuple[str, str]]) -> None:
    filters, problems = parse_filters(QueryParams(items))
    assert isinstance(filters, Filters) and all(isinstance(p, str) for p in problems)
    assert len(filters.text) <= 200 and all(len(k) + len(v) <= 200 for k, v in filters.labels)
    assert filters.health in ("", *HEALTH) and filters.drift in ("", *DRIFT)


# Found by the fuzz test above or by hand: each is parsed without raising, to these filters.
REGRESSIONS = [
    ([("label", "=")], Filters(), 1),
    ([("label", "a==b")], Filters(labels=(("a", "=b"),)), 0),
    ([("label", "")], Filters(), 0),
    ([("q", "  MiXeD  ")], Filters(text="mixed"), 0),
    (
        [("health", "unreachable"), ("drift", "drifted")],
        Filters(health="unreachable", drift="drifted"),
        0,
    ),
    ([("health", "Healthy"), ("drift", "in sync")], Filters(), 2),  # the values are exact
    ([("health", "x" * 5000)], Filters(), 1),
]


@pytest.mark.parametrize(("items", "expected", "problems"), REGRESSIONS)
def test_query_string_regression_corpus(
    items: list[tuple[str, str]], expected: Filters, problems: int
) -> None:
    filters, found = parse_filters(QueryParams(items))
    assert filters == expected and len(found) == problems


def _form(
    body: bytes, content_type: bytes = b"application/x-www-form-urlencoded"
) -> dict[str, str]:
    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": body, "more_body": False}

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/",
        "headers": [(b"content-type", content_type)],
    }
    return anyio.run(read_form, Request(scope, receive))


@settings(max_examples=100, deadline=None)
@given(
    st.binary(max_size=2000),
    st.sampled_from([b"application/x-www-form-urlencoded", b"text/plain", b""]),
)
def test_any_posted_body_gives_form_fields_never_an_exception(
    body: bytes, content_type: bytes
) -> None:
    fields = _form(body, content_type)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in fields.items())


FORM_REGRESSIONS = [
    (b"csrf=abc&token=x%20y", {"csrf": "abc", "token": "x y"}),
    (b"csrf=a&csrf=b", {"csrf": "a"}),  # the first value counts
    (b"\xff\xfe=1", {}),  # not UTF-8
    (b"&".join(b"f%d=1" % i for i in range(40)), {}),  # more fields than a console form has
    (b"csrf=" + b"a" * MAX_FORM_BYTES, {}),  # larger than any console form
]


@pytest.mark.parametrize(("body", "expected"), FORM_REGRESSIONS)
def test_form_regression_corpus(body: bytes, expected: dict[str, str]) -> None:
    assert _form(body) == expected


def test_the_rollout_page_lists_each_waves_nodes_and_the_soak_left_of_each_applied_node(
    fleet: Fleet,
) -> None:
    from treadle.console import environment

    doc = fleet.ctx.rollouts.document(1)
    soak_s = doc["waves"][0]["soak_s"]
    doc = {
        **doc,
        "state": "soaking",
        "progress": {"n000": {"status": "applied", "since": 1000.0, "reason": ""}},
    }
    text = (
        environment()
        .get_template("rollout.html")
        .render(r=doc, actions=(), now=1003.5, rc=None, wave_nodes_shown=100)
    )
    assert f"{soak_s - 3} s left" in text and f"(of {soak_s} s)" in text
    waves = text.split("<h2>Each wave's nodes</h2>", 1)[1]
    assert waves.count("<details") == 2 and "<summary>canary: 1 node(s)" in waves
    canary, rest = waves.split("<details", 2)[1:]
    assert 'href="/ui/nodes/n000"' in canary and ">applied<" in canary and " open>" in canary
    assert "… and 49 more" in rest and ">not reached<" in rest  # 149 nodes, 100 listed
    done = (
        environment()
        .get_template("rollout.html")
        .render(
            r={**doc, "state": "complete"}, actions=(), now=1003.5, rc=None, wave_nodes_shown=100
        )
    )
    assert ">passed<" in done.split("<h2>Each wave's nodes</h2>", 1)[1] and " open>" not in done


def test_the_fabric_page_draws_sites_then_clusters_with_their_node_counts(fleet: Fleet) -> None:
    with serving(fleet.ctx) as url:
        text = httpx.get(url + "/ui/nodes?site=s2&cluster=c1").text
    tree = text.split('<nav class="tree"', 1)[1].split("</nav>", 1)[0]
    assert '<a href="/ui/nodes?site=s1">s1</a> <span class="muted">75</span>' in tree
    assert (
        '<li class="here"><a href="/ui/nodes?site=s2&amp;cluster=c1">c1</a> <span class="muted">75</span>'
        in tree
    )
    assert tree.index(">s1<") < tree.index(">s2<") and tree.count("<details open>") == 1
