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

from support.api_server import serving
from treadle.daemon.api import ApiContext, etag_matches, verify_webhook
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
    ctx = ApiContext(store=store, state=StateDB(tmp_path / "state.db"), metrics=ControllerMetrics(),
                     trigger=lambda: triggered.append(1), branch="main", repository="/srv/fabric.git", webhook_secret=SECRET)
    with serving(ctx) as url:
        yield Api(url, ctx, triggered, store)


def test_manifest_has_a_strong_etag_and_a_conditional_get_is_304(api: Api) -> None:
    api.store.publish({"n1": b'{"envelope":1}'})
    r = httpx.get(f"{api.url}/v1/nodes/n1/manifest")
    assert r.status_code == 200 and r.content == b'{"envelope":1}'
    etag = r.headers["etag"]
    assert etag == '"' + hashlib.sha256(b'{"envelope":1}').hexdigest() + '"' and not etag.startswith("W/")
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


@pytest.mark.parametrize("path", ["/v1/nodes/../manifest", "/v1/nodes/%2e%2e/manifest", "/v1/nodes/..%2Fstate.db/manifest",
                                  "/v1/nodes/n1/../n1/manifest", "/v1/nodes/.n1/manifest", "/v1/nodes/n%00/manifest"])
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
    assert etag_matches('W/"a", "b"', '"a"') and etag_matches('"x", "b"', '"b"') and etag_matches("*", '"z"')
    assert not etag_matches('"a"', '"b"') and not etag_matches(None, '"b"')


def _sig(body: bytes, secret: bytes = SECRET) -> str:
    return hmac.new(secret, body, hashlib.sha256).hexdigest()


PUSH = json.dumps({"ref": "refs/heads/main", "after": "0" * 40}).encode()


@pytest.mark.parametrize("headers", [
    {"X-Hub-Signature-256": "sha256=" + _sig(PUSH)},
    {"X-Gitea-Signature": _sig(PUSH)},
    {"X-Gitlab-Token": SECRET.decode()},
], ids=["github", "gitea", "gitlab"])
def test_webhook_with_a_valid_signature_triggers_a_fetch(api: Api, headers: dict[str, str]) -> None:
    r = httpx.post(f"{api.url}/v1/hooks/git", content=PUSH, headers=headers)
    assert r.status_code == 202 and r.json() == {"triggered": True} and api.triggered == [1]


@pytest.mark.parametrize("headers", [
    {"X-Hub-Signature-256": "sha256=" + _sig(PUSH, b"wrong")},
    {"X-Hub-Signature-256": _sig(PUSH)},  # the sha256= prefix is part of the value
    {"X-Gitea-Signature": _sig(PUSH + b" ")},
    {"X-Gitlab-Token": "guess"},
    {},
], ids=["github-wrong-secret", "github-no-prefix", "gitea-other-body", "gitlab-wrong-token", "unsigned"])
def test_webhook_with_a_bad_signature_is_401_and_triggers_nothing(api: Api, headers: dict[str, str]) -> None:
    r = httpx.post(f"{api.url}/v1/hooks/git", content=PUSH, headers=headers)
    assert r.status_code == 401 and api.triggered == []


def test_webhook_for_another_branch_triggers_nothing(api: Api) -> None:
    body = json.dumps({"ref": "refs/heads/feature"}).encode()
    r = httpx.post(f"{api.url}/v1/hooks/git", content=body, headers={"X-Gitea-Signature": _sig(body)})
    assert r.status_code == 202 and r.json()["triggered"] is False and api.triggered == []


def test_status_shows_refusal_diagnostics_and_pending_history(api: Api) -> None:
    api.ctx.state.record_refusal("f" * 40, "non_fast_forward", "history rewritten", [])
    doc = httpx.get(f"{api.url}/v1/status").json()
    assert doc["pending_history_acceptance"] == "f" * 40 and doc["last_refusal"]["reason"] == "non_fast_forward"
    api.ctx.state.record_refusal("e" * 40, "invalid", "the fabric has errors", ["sites/a/site.yaml:3:5: unknown field"])
    doc = httpx.get(f"{api.url}/v1/status").json()
    assert doc["last_refusal"]["diagnostics"] == ["sites/a/site.yaml:3:5: unknown field"]
    assert doc["pending_history_acceptance"] is None


def test_accept_history_records_expands_a_prefix_of_the_pending_commit_and_triggers(api: Api) -> None:
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
@given(secret=st.binary(min_size=1, max_size=40), other=st.binary(min_size=1, max_size=40), body=st.binary(max_size=200))
def test_a_webhook_verifies_only_with_its_own_secret_for_every_provider(secret: bytes, other: bytes, body: bytes) -> None:
    sig = hmac.new(secret, body, hashlib.sha256).hexdigest()
    assert verify_webhook(secret, {"x-hub-signature-256": f"sha256={sig}"}, body)
    assert verify_webhook(secret, {"x-gitea-signature": sig}, body)
    if other != secret:
        assert not verify_webhook(other, {"x-hub-signature-256": f"sha256={sig}"}, body)
        assert not verify_webhook(other, {"x-gitea-signature": sig}, body)
    assert not verify_webhook(secret, {}, body)


def test_with_an_admin_token_accepting_history_needs_the_bearer_token(api: Api) -> None:
    api.ctx.admin_token = b"operator-token"
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic operator-token"}):
        r = httpx.post(f"{api.url}/v1/history/accept", json={"commit": "a" * 40}, headers=headers)
        assert r.status_code == 401 and "admin_token_file" in r.json()["error"]
    assert not api.ctx.state.history_accepted("a" * 40) and api.triggered == []
    r = httpx.post(f"{api.url}/v1/history/accept", json={"commit": "a" * 40}, headers={"Authorization": "Bearer operator-token"})
    assert r.status_code == 200 and api.ctx.state.history_accepted("a" * 40)


@pytest.mark.parametrize(("client", "allowed"), [("127.0.0.1", True), ("::1", True), ("::ffff:127.0.0.1", True),
                                                 ("10.1.2.3", False), ("192.0.2.7", False), ("", False)])
def test_without_an_admin_token_operator_actions_come_from_loopback_only(tmp_path: Path, client: str, allowed: bool) -> None:
    from starlette.requests import Request

    from treadle.daemon.api import authorize_operator

    ctx = ApiContext(store=PublishStore(tmp_path / "pub"), state=StateDB(tmp_path / "s.db"), metrics=ControllerMetrics(),
                     trigger=lambda: None, branch="main", repository="r")
    scope = {"type": "http", "method": "POST", "path": "/v1/history/accept", "headers": [],
             "client": (client, 40000) if client else None}
    refusal = authorize_operator(ctx, Request(scope))
    assert (refusal is None) == allowed
    if not allowed:
        assert refusal.status_code == 403 and b"admin_token_file" in refusal.body
