"""The HTTP API over real HTTP: uvicorn on 127.0.0.1 (port 0), requests with httpx."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from support.api_server import serving
from support.procs import wait_until
from treadle.daemon.api import ApiContext, build_app, etag_matches, verify_webhook
from treadle.daemon.metrics import ControllerMetrics
from treadle.daemon.publish import PublishStore
from treadle.daemon.state import StateDB

SECRET = b"s3cret"


@dataclass
class Api:
    url: str
    ctx: ApiContext
    triggered: list[int]
    store: PublishStore


@pytest.fixture
def api(tmp_path: Path):  # type: ignore[no-untyped-def]
    triggered: list[int] = []
    store = PublishStore(tmp_path / "pub")
    ctx = ApiContext(
        store=store,
        state=StateDB(tmp_path / "state.db"),
        metrics=ControllerMetrics(),
        trigger=lambda: triggered.append(1),
        branch="main",
        repository="/srv/fabric.git",
        webhook_secret=SECRET,
    )
    with serving(ctx) as url:
        yield Api(url, ctx, triggered, store)


def test_manifest_has_a_strong_etag_and_a_conditional_get_is_304(api: Api) -> None:
    api.store.publish({"n1": b'{"envelope":1}'})
    r = httpx.get(f"{api.url}/v1/nodes/n1/manifest")
    assert r.status_code == 200 and r.content == b'{"envelope":1}'
    etag = r.headers["etag"]
    assert etag == '"' + hashlib.sha256(
        b'{"envelope":1}'
    ).hexdigest() + '"' and not etag.startswith("W/")
    again = httpx.get(f"{api.url}/v1/nodes/n1/manifest", headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == etag


def test_a_republished_manifest_gets_a_new_etag_and_a_full_answer(api: Api) -> None:
    api.store.publish({"n1": b"old"})
    etag = httpx.get(f"{api.url}/v1/nodes/n1/manifest").headers["etag"]
    api.store.publish({"n1": b"new"})
    r = httpx.get(f"{api.url}/v1/nodes/n1/manifest", headers={"If-None-Match": etag})
    assert r.status_code == 200 and r.content == b"new" and r.headers["etag"] != etag


def test_unknown_node_is_404(api: Api) -> None:
    assert httpx.get(f"{api.url}/v1/nodes/nope/manifest").status_code == 404


def _bare_context(tmp_path: Path, store: PublishStore) -> ApiContext:
    """An API context over ``store`` with nothing else configured (no webhook secret, no rollouts)."""
    return ApiContext(
        store=store,
        state=StateDB(tmp_path / "s.db"),
        metrics=ControllerMetrics(),
        trigger=lambda: None,
        branch="main",
        repository="r",
    )


def _loaded(store: PublishStore) -> None:
    wait_until(lambda: store.index().loaded, 10, "the publish store's ETag index is loaded")


def test_after_a_publish_the_old_etag_gets_the_new_envelope_and_the_new_etag_a_304(
    api: Api,
) -> None:
    _loaded(api.store)
    api.store.publish({"n1": b"v1"})
    old = httpx.get(f"{api.url}/v1/nodes/n1/manifest").headers["etag"]
    assert (
        httpx.get(f"{api.url}/v1/nodes/n1/manifest", headers={"If-None-Match": old}).status_code
        == 304
    )
    api.store.publish({"n1": b"v2"})
    r = httpx.get(f"{api.url}/v1/nodes/n1/manifest", headers={"If-None-Match": old})
    assert (
        r.status_code == 200
        and r.content == b"v2"
        and r.headers["etag"] == '"' + hashlib.sha256(b"v2").hexdigest() + '"'
    )
    assert (
        r.headers["content-type"] == "application/json" and r.headers["cache-control"] == "no-cache"
    )
    again = httpx.get(
        f"{api.url}/v1/nodes/n1/manifest", headers={"If-None-Match": f'W/"zz", {r.headers["etag"]}'}
    )
    assert again.status_code == 304 and again.headers["etag"] == r.headers["etag"]


def test_a_removed_node_is_404_even_with_its_last_etag(api: Api) -> None:
    _loaded(api.store)
    api.store.publish({"n1": b"v1"})
    etag = httpx.get(f"{api.url}/v1/nodes/n1/manifest").headers["etag"]
    api.store.publish({}, remove=["n1"])
    r = httpx.get(f"{api.url}/v1/nodes/n1/manifest", headers={"If-None-Match": etag})
    assert r.status_code == 404 and r.json() == {"error": "no such node"}
    assert (
        httpx.get(f"{api.url}/v1/nodes/n1/manifest", headers={"If-None-Match": "*"}).status_code
        == 404
    )


def test_head_answers_the_headers_of_get_without_a_body(api: Api) -> None:
    api.store.publish({"n1": b"envelope"})
    r = httpx.head(f"{api.url}/v1/nodes/n1/manifest")
    assert r.status_code == 200 and r.content == b"" and r.headers["content-length"] == "8"
    assert r.headers["etag"] == '"' + hashlib.sha256(b"envelope").hexdigest() + '"'
    assert (
        httpx.head(
            f"{api.url}/v1/nodes/n1/manifest", headers={"If-None-Match": r.headers["etag"]}
        ).status_code
        == 304
    )


def test_other_methods_on_a_manifest_are_refused(api: Api) -> None:
    api.store.publish({"n1": b"envelope"})
    r = httpx.post(f"{api.url}/v1/nodes/n1/manifest", content=b"x")
    assert r.status_code == 405 and api.store.read("n1") == b"envelope"


def test_envelopes_published_before_a_restart_are_answered_304_from_the_index(
    tmp_path: Path,
) -> None:
    PublishStore(tmp_path / "pub").publish({"n1": b"before the restart"})
    store = PublishStore(tmp_path / "pub")
    ctx = _bare_context(tmp_path, store)
    etag = '"' + hashlib.sha256(b"before the restart").hexdigest() + '"'
    with TestClient(build_app(ctx)) as client:
        _loaded(store)
        assert (
            client.get("/v1/nodes/n1/manifest", headers={"If-None-Match": etag}).status_code == 304
        )
        # The index is the store's own record: a file written behind its back is not served.
        (tmp_path / "pub/nodes/n2").mkdir()
        (tmp_path / "pub/nodes/n2/manifest").write_bytes(b"stray")
        assert client.get("/v1/nodes/n2/manifest").status_code == 404


def test_below_a_root_path_the_manifest_is_answered_by_the_router_alike(tmp_path: Path) -> None:
    store = PublishStore(tmp_path / "pub")
    ctx = _bare_context(tmp_path, store)
    with TestClient(build_app(ctx), root_path="/treadle") as client:
        store.publish({"n1": b"env"})
        r = client.get("/treadle/v1/nodes/n1/manifest")
        assert (
            r.status_code == 200
            and r.content == b"env"
            and r.headers["cache-control"] == "no-cache"
        )
        assert (
            client.get(
                "/treadle/v1/nodes/n1/manifest", headers={"If-None-Match": r.headers["etag"]}
            ).status_code
            == 304
        )
        assert client.get("/treadle/v1/nodes/nope/manifest").status_code == 404


@settings(max_examples=300, deadline=None)
@given(
    path=st.one_of(
        st.text(max_size=60), st.builds(lambda n: f"/v1/nodes/{n}/manifest", st.text(max_size=30))
    ),
    method=st.sampled_from(["GET", "HEAD", "POST", "PUT"]),
)
def test_the_fast_path_takes_only_a_valid_node_name_as_one_path_segment(
    path: str, method: str
) -> None:
    from treadle.daemon.api import _manifest_node
    from treadle.daemon.publish import valid_node_name

    node = _manifest_node({"type": "http", "method": method, "path": path, "root_path": ""})
    if node is not None:
        assert method in ("GET", "HEAD") and valid_node_name(node) and "/" not in node
        assert path == f"/v1/nodes/{node}/manifest"


@pytest.mark.parametrize(
    "path",
    [
        "/v1/nodes/../manifest",
        "/v1/nodes/%2e%2e/manifest",
        "/v1/nodes/..%2Fstate.db/manifest",
        "/v1/nodes/n1/../n1/manifest",
        "/v1/nodes/.n1/manifest",
        "/v1/nodes/n%00/manifest",
    ],
)
def test_paths_with_dot_dot_or_odd_characters_are_404(api: Api, path: str) -> None:
    api.store.publish({"n1": b"x"})
    with socket.create_connection(("127.0.0.1", int(api.url.rsplit(":", 1)[1]))) as s:
        # Sent raw: an HTTP client would normalise the dots away before they reach the server.
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    assert answer.split(b"\r\n", 1)[0].split(b" ")[1] in (b"404", b"400")
    assert b'"x"' not in answer.split(b"\r\n\r\n", 1)[1]


def test_if_none_match_uses_the_weak_comparison_and_lists() -> None:
    assert (
        etag_matches('W/"a", "b"', '"a"')
        and etag_matches('"x", "b"', '"b"')
        and etag_matches("*", '"z"')
    )
    assert not etag_matches('"a"', '"b"') and not etag_matches(None, '"b"')


def _sig(body: bytes, secret: bytes = SECRET) -> str:
    return hmac.new(secret, body, hashlib.sha256).hexdigest()


PUSH = json.dumps({"ref": "refs/heads/main", "after": "0" * 40}).encode()


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Hub-Signature-256": "sha256=" + _sig(PUSH)},
        {"X-Gitea-Signature": _sig(PUSH)},
        {"X-Gitlab-Token": SECRET.decode()},
    ],
    ids=["github", "gitea", "gitlab"],
)
def test_webhook_with_a_valid_signature_triggers_a_fetch(api: Api, headers: dict[str, str]) -> None:
    r = httpx.post(f"{api.url}/v1/hooks/git", content=PUSH, headers=headers)
    assert r.status_code == 202 and r.json() == {"triggered": True} and api.triggered == [1]


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Hub-Signature-256": "sha256=" + _sig(PUSH, b"wrong")},
        {"X-Hub-Signature-256": _sig(PUSH)},  # the sha256= prefix is part of the value
        {"X-Gitea-Signature": _sig(PUSH + b" ")},
        {"X-Gitlab-Token": "guess"},
        {},
    ],
    ids=[
        "github-wrong-secret",
        "github-no-prefix",
        "gitea-other-body",
        "gitlab-wrong-token",
        "unsigned",
    ],
)
def test_webhook_with_a_bad_signature_is_401_and_triggers_nothing(
    api: Api, headers: dict[str, str]
) -> None:
    r = httpx.post(f"{api.url}/v1/hooks/git", content=PUSH, headers=headers)
    assert r.status_code == 401 and api.triggered == []


def test_webhook_for_another_branch_triggers_nothing(api: Api) -> None:
    body = json.dumps({"ref": "refs/heads/feature"}).encode()
    r = httpx.post(
        f"{api.url}/v1/hooks/git", content=body, headers={"X-Gitea-Signature": _sig(body)}
    )
    assert r.status_code == 202 and r.json()["triggered"] is False and api.triggered == []


def test_status_shows_refusal_diagnostics_and_pending_history(api: Api) -> None:
    api.ctx.state.record_refusal("f" * 40, "non_fast_forward", "history rewritten", [])
    doc = httpx.get(f"{api.url}/v1/status").json()
    assert (
        doc["pending_history_acceptance"] == "f" * 40
        and doc["last_refusal"]["reason"] == "non_fast_forward"
    )
    api.ctx.state.record_refusal(
        "e" * 40, "invalid", "the fabric has errors", ["sites/a/site.yaml:3:5: unknown field"]
    )
    doc = httpx.get(f"{api.url}/v1/status").json()
    assert doc["last_refusal"]["diagnostics"] == ["sites/a/site.yaml:3:5: unknown field"]
    assert doc["pending_history_acceptance"] is None


def test_accept_history_records_expands_a_prefix_of_the_pending_commit_and_triggers(
    api: Api,
) -> None:
    api.ctx.state.record_refusal("ab" * 20, "non_fast_forward", "history rewritten", [])
    r = httpx.post(f"{api.url}/v1/history/accept", json={"commit": "abababab"})
    assert r.status_code == 200 and r.json() == {"accepted": "ab" * 20}
    assert api.ctx.state.history_accepted("ab" * 20) and api.triggered == [1]
    bad = httpx.post(f"{api.url}/v1/history/accept", json={"commit": "zz"})
    assert bad.status_code == 400 and "full commit id" in bad.json()["error"]


def test_metrics_endpoint_serves_the_controller_registry(api: Api) -> None:
    api.ctx.metrics.set_deployed_commit("c" * 40)
    text = httpx.get(f"{api.url}/metrics").text
    assert f'treadle_controller_deployed_commit_info{{commit="{"c" * 40}"}} 1.0' in text


@settings(max_examples=200, deadline=None)
@given(
    secret=st.binary(min_size=1, max_size=40),
    other=st.binary(min_size=1, max_size=40),
    body=st.binary(max_size=200),
)
def test_a_webhook_verifies_only_with_its_own_secret_for_every_provider(
    secret: bytes, other: bytes, body: bytes
) -> None:
    sig = hmac.new(secret, body, hashlib.sha256).hexdigest()
    assert verify_webhook(secret, {"x-hub-signature-256": f"sha256={sig}"}, body)
    assert verify_webhook(secret, {"x-gitea-signature": sig}, body)
    if other != secret:
        assert not verify_webhook(other, {"x-hub-signature-256": f"sha256={sig}"}, body)
        assert not verify_webhook(other, {"x-gitea-signature": sig}, body)
    assert not verify_webhook(secret, {}, body)


def test_with_an_admin_token_accepting_history_needs_the_bearer_token(api: Api) -> None:
    api.ctx.admin_token = b"operator-token"
    for headers in (
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": "Basic operator-token"},
    ):
        r = httpx.post(f"{api.url}/v1/history/accept", json={"commit": "a" * 40}, headers=headers)
        assert r.status_code == 401 and "admin_token_file" in r.json()["error"]
    assert not api.ctx.state.history_accepted("a" * 40) and api.triggered == []
    r = httpx.post(
        f"{api.url}/v1/history/accept",
        json={"commit": "a" * 40},
        headers={"Authorization": "Bearer operator-token"},
    )
    assert r.status_code == 200 and api.ctx.state.history_accepted("a" * 40)


@pytest.mark.parametrize(
    ("client", "allowed"),
    [
        ("127.0.0.1", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        ("10.1.2.3", False),
        ("192.0.2.7", False),
        ("", False),
    ],
)
def test_without_an_admin_token_operator_actions_come_from_loopback_only(
    tmp_path: Path, client: str, allowed: bool
) -> None:
    from starlette.requests import Request

    from treadle.daemon.api import authorize_operator

    ctx = _bare_context(tmp_path, PublishStore(tmp_path / "pub"))
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/history/accept",
        "headers": [],
        "client": (client, 40000) if client else None,
    }
    refusal = authorize_operator(ctx, Request(scope))
    assert (refusal is None) == allowed
    if not allowed:
        assert refusal.status_code == 403 and b"admin_token_file" in refusal.body


def test_no_such_rollout_is_404_and_an_action_that_does_not_apply_is_409(
    api: Api, tmp_path: Path
) -> None:
    """The handlers map the tree's NoSuchRolloutError and TransitionError (real service, real SQLite)."""
    import sqlite3

    from treadle.rollout.machine import Rollout, State, Wave
    from treadle.rollout.service import RolloutService
    from treadle.rollout.store import RolloutStore

    class NobodyAnswers:
        async def observe(self, targets):  # type: ignore[no-untyped-def]
            raise AssertionError("not asked")

    db = tmp_path / "rollouts.db"
    api.ctx.rollouts = RolloutService(db, NobodyAnswers())
    done = Rollout(
        commit="c" * 40,
        waves=(Wave("all", ("n1",), soak_s=0, timeout_s=60, allowed_failures=0),),
        state=State.COMPLETE,
    )
    rid = RolloutStore(sqlite3.connect(db)).create(done, now=1.0)
    assert httpx.get(f"{api.url}/v1/rollouts/{rid + 1}").status_code == 404
    missing = httpx.post(f"{api.url}/v1/rollouts/{rid + 1}/approve")
    assert missing.status_code == 404 and missing.json() == {"error": "no such rollout"}
    refused = httpx.post(f"{api.url}/v1/rollouts/{rid}/approve")
    assert refused.status_code == 409 and "complete" in refused.json()["error"]
    assert httpx.get(f"{api.url}/v1/rollouts/{rid}").json()["state"] == "complete"
