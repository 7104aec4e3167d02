"""The controller's HTTP API (Starlette, served by uvicorn).

    GET  /v1/nodes/<node>/manifest   the published envelope; strong ETag, 304 on If-None-Match
    GET  /v1/nodes/<node>            one node: lifecycle, labels, published generation and commit, rollout
                                     and wave, and what its agent reports now (schemas/node-status.json)
    GET  /v1/nodes/<node>/history    the generations published for it: commit, author, time, why
                                     (schemas/node-history.json)
    POST /v1/hooks/git               push webhook (GitHub, Gitea, GitLab); HMAC checked, then a fetch is triggered
    GET  /v1/status                  deployed commit, last refusal with diagnostics, counts by lifecycle,
                                     pending history acceptance
    POST /v1/history/accept          {"commit": SHA}: accept a rewritten history ending at SHA
    GET  /v1/rollouts                the newest rollouts with their wave tables
    GET  /v1/rollouts/<id|current>   one rollout, with its events and the current wave's per-node progress
    POST /v1/rollouts/<id|current>/(pause|resume|approve|abort)   operator actions (409 when not applicable)
    GET  /metrics                    Prometheus exposition
    GET  /ui/...                     the web console (treadle.console), same access rules

Manifests are read from the publish store, the same static files any web
server or mirror could serve; this endpoint adds only the ETag, kept in a
small cache keyed by the file's (inode, mtime, size) so a 304 costs one stat.
A node name that is not a plain path segment (``..``, separators, odd
characters) is a 404, exactly like an unknown node: the answer never tells
which names exist beyond the ones asked for.

Webhook secrets are compared in constant time (:func:`hmac.compare_digest`);
a mismatch is a 401 and triggers nothing. Operator actions (accepting a
rewritten history, and the rollout actions) change what the gate lets
through, while the manifest endpoint must be reachable from every node: they
need the admin bearer token when one is configured, and are otherwise
accepted only from loopback clients (:func:`authorize_operator`).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

from treadle.errors import NoSuchRolloutError, StoreError, TransitionError
from treadle.daemon.metrics import ControllerMetrics
from treadle.daemon.publish import PublishStore, valid_node_name
from treadle.daemon.state import StateDB

MAX_WEBHOOK_BYTES = 1024 * 1024
ENVELOPE_MEDIA_TYPE = "application/json"
_SHA = re.compile(r"^[0-9a-f]{7,64}$")


@dataclass
class ApiContext:
    """What the API reads and the one action it may trigger."""

    store: PublishStore
    state: StateDB
    metrics: ControllerMetrics
    trigger: Callable[[], None]
    branch: str
    repository: str
    webhook_secret: bytes | None = None
    admin_token: bytes | None = None
    rollouts: Any | None = None  # treadle.rollout.service.RolloutService
    last_cycle: dict[str, Any] = field(default_factory=dict)
    target_of: Callable[[str], Any] | None = None  # node -> treadle.rollout.observe.Target (Pipeline.target_of)
    scrape_timeout_s: float = 2.0
    mirror: str | None = None  # the git mirror's path: the console reads commits, plans and provenance there
    console_read: str = "loopback"  # who reads the console without the token (ApiSettings.console_read)
    health_status: Callable[[], dict[str, Any]] | None = None  # HealthWatcher.status: the last round of observation


class _ETagCache:
    """node -> (stat key, etag, bytes); a changed file has a new inode (rename), so the key catches every publish."""

    def __init__(self) -> None:
        self._entries: dict[str, tuple[tuple[int, int, int], str, bytes]] = {}

    def get(self, path: str, node: str) -> tuple[str, bytes] | None:
        try:
            st = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            self._entries.pop(node, None)
            return None
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        hit = self._entries.get(node)
        if hit is not None and hit[0] == key:
            return hit[1], hit[2]
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return None
        etag = f'"{hashlib.sha256(data).hexdigest()}"'
        self._entries[node] = (key, etag, data)
        return etag, data


def etag_matches(header: str | None, etag: str) -> bool:
    """If-None-Match uses the weak comparison (RFC 9110 13.1.2): ``W/`` is ignored; ``*`` matches any."""
    if not header:
        return False
    for tag in header.split(","):
        tag = tag.strip()
        if tag == "*" or tag.removeprefix("W/") == etag:
            return True
    return False


def verify_webhook(secret: bytes, headers: Any, body: bytes) -> bool:
    """True when the request carries a valid GitHub, Gitea or GitLab signature for ``body``."""
    expected = hmac.new(secret, body, hashlib.sha256).hexdigest()
    github = headers.get("x-hub-signature-256")
    if github is not None:
        return hmac.compare_digest(github.strip().encode(), f"sha256={expected}".encode())
    gitea = headers.get("x-gitea-signature")
    if gitea is not None:
        return hmac.compare_digest(gitea.strip().encode(), expected.encode())
    gitlab = headers.get("x-gitlab-token")
    if gitlab is not None:
        return hmac.compare_digest(gitlab.encode(), secret)
    return False


def authorize_operator(ctx: ApiContext, request: Request) -> Response | None:
    """None when ``request`` may perform an operator action, else the 401/403 answer to send."""
    if ctx.admin_token is not None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), ctx.admin_token):
            return None
        return JSONResponse({"error": "operator actions need `Authorization: Bearer <token>` with the token of "
                                      "admin_token_file (treadle ... --token-file)"}, 401)
    host = request.client.host if request.client else ""
    if _loopback(host):
        return None
    return JSONResponse({"error": "operator actions are accepted from the controller's own machine only; "
                                  "set admin_token_file in controller.toml to allow them with a token"}, 403)


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.removeprefix("::ffff:")).is_loopback
    except ValueError:
        return False


def status_document(ctx: ApiContext) -> dict[str, Any]:
    """The body of ``GET /v1/status``."""
    state = ctx.state
    refusal = state.last_refusal()
    counts = state.lifecycle_counts()
    from treadle import __version__
    return {
        "version": __version__,
        "repository": ctx.repository,
        "branch": ctx.branch,
        "deployed_commit": state.deployed_commit(),
        "last_refusal": None if refusal is None else {
            "commit": refusal.commit, "reason": refusal.reason, "message": refusal.message,
            "diagnostics": list(refusal.diagnostics), "at": refusal.at},
        "pending_history_acceptance": state.pending_history(),
        "nodes": {"total": sum(counts.values()), "by_lifecycle": dict(sorted(counts.items()))},
        "deployments": state.deployments(limit=5),
        "last_cycle": dict(ctx.last_cycle),
        "rollout": None if ctx.rollouts is None else ctx.rollouts.summary(),
        "health": None if ctx.health_status is None else ctx.health_status(),
    }


def build_app(ctx: ApiContext) -> Starlette:
    """The ASGI application over ``ctx``."""
    cache = _ETagCache()
    not_found = Response(b'{"error":"no such node"}\n', status_code=404, media_type="application/json")

    async def manifest(request: Request) -> Response:
        node = request.path_params["node"]
        if not valid_node_name(node):
            return not_found
        hit = cache.get(os.path.join(ctx.store.nodes_dir, node, "manifest"), node)
        if hit is None:
            return not_found
        etag, data = hit
        headers = {"etag": etag, "cache-control": "no-cache"}
        if etag_matches(request.headers.get("if-none-match"), etag):
            return Response(status_code=304, headers=headers)
        return Response(data, media_type=ENVELOPE_MEDIA_TYPE, headers=headers)

    async def node_view(request: Request) -> Response:
        from treadle.daemon.nodeview import node_document

        node = request.path_params["node"]
        if not valid_node_name(node):
            return not_found
        try:
            doc = await anyio.to_thread.run_sync(node_document, ctx, node, ctx.target_of, ctx.scrape_timeout_s)
        except StoreError as e:
            return JSONResponse({"error": str(e)}, 503)
        return not_found if doc is None else JSONResponse(doc)

    async def node_history(request: Request) -> Response:
        from treadle.daemon.nodeview import history_document

        node = request.path_params["node"]
        if not valid_node_name(node):
            return not_found
        try:
            doc = await anyio.to_thread.run_sync(history_document, ctx, node)
        except StoreError as e:
            return JSONResponse({"error": str(e)}, 503)
        return not_found if doc is None else JSONResponse(doc)

    async def hook(request: Request) -> Response:
        if ctx.webhook_secret is None:
            return JSONResponse({"error": "webhooks are disabled: set webhook_secret_file in controller.toml"}, 403)
        body = await _bounded_body(request)
        if body is None:
            return JSONResponse({"error": f"body larger than {MAX_WEBHOOK_BYTES} bytes"}, 413)
        if not verify_webhook(ctx.webhook_secret, request.headers, body):
            return JSONResponse({"error": "signature missing or invalid"}, 401)
        ref = _push_ref(body)
        if ref is not None and ref != f"refs/heads/{ctx.branch}":
            return JSONResponse({"triggered": False, "reason": f"push to {ref}, tracking refs/heads/{ctx.branch}"}, 202)
        ctx.trigger()
        return JSONResponse({"triggered": True}, 202)

    async def status(_request: Request) -> Response:
        try:
            return JSONResponse(status_document(ctx))
        except StoreError as e:
            return JSONResponse({"error": str(e)}, 503)

    async def accept_history(request: Request) -> Response:
        refusal = authorize_operator(ctx, request)
        if refusal is not None:
            return refusal
        try:
            commit = str(json.loads(await request.body())["commit"]).lower()
        except (ValueError, KeyError, TypeError):
            return JSONResponse({"error": 'send {"commit": "<sha>"}'}, 400)
        pending = ctx.state.pending_history()
        if pending and pending.startswith(commit) and len(commit) >= 7:
            commit = pending
        if not _SHA.match(commit) or len(commit) not in (40, 64):
            return JSONResponse({"error": f"{commit!r} is not a full commit id (40 or 64 hex digits)"}, 400)
        ctx.state.accept_history(commit)
        ctx.trigger()
        return JSONResponse({"accepted": commit})

    async def metrics(_request: Request) -> Response:
        return Response(ctx.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    def _rollout_id(raw: str) -> int | None:
        if raw in ("current", "latest"):
            return ctx.rollouts.latest_id()
        return int(raw) if raw.isdigit() else None

    async def rollouts(_request: Request) -> Response:
        if ctx.rollouts is None:
            return JSONResponse({"rollouts": []})
        return JSONResponse({"rollouts": await anyio.to_thread.run_sync(ctx.rollouts.documents)})

    async def rollout(request: Request) -> Response:
        rid = None if ctx.rollouts is None else _rollout_id(request.path_params["rid"])
        if rid is None:
            return JSONResponse({"error": "no such rollout"}, 404)
        try:
            return JSONResponse(await anyio.to_thread.run_sync(ctx.rollouts.document, rid))
        except NoSuchRolloutError:
            return JSONResponse({"error": "no such rollout"}, 404)

    async def rollout_action(request: Request) -> Response:
        refusal = authorize_operator(ctx, request)
        if refusal is not None:
            return refusal
        rid = None if ctx.rollouts is None else _rollout_id(request.path_params["rid"])
        if rid is None:
            return JSONResponse({"error": "no such rollout"}, 404)
        action = request.path_params["action"]
        try:
            doc = await anyio.to_thread.run_sync(ctx.rollouts.act, rid, action)
        except NoSuchRolloutError:
            return JSONResponse({"error": "no such rollout"}, 404)
        except TransitionError as e:
            return JSONResponse({"error": str(e)}, 409)
        except ValueError as e:
            return JSONResponse({"error": str(e)}, 404)
        ctx.trigger()  # let the pipeline act on it now
        return JSONResponse(doc)

    from treadle.console import build_console

    return Starlette(routes=[
        Route("/v1/nodes/{node}/manifest", manifest, methods=["GET", "HEAD"]),
        Route("/v1/nodes/{node}", node_view, methods=["GET"]),
        Route("/v1/nodes/{node}/history", node_history, methods=["GET"]),
        Route("/v1/hooks/git", hook, methods=["POST"]),
        Route("/v1/status", status, methods=["GET"]),
        Route("/v1/history/accept", accept_history, methods=["POST"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/v1/rollouts", rollouts, methods=["GET"]),
        Route("/v1/rollouts/{rid}", rollout, methods=["GET"]),
        Route("/v1/rollouts/{rid}/{action}", rollout_action, methods=["POST"]),
        Mount("/ui", app=build_console(ctx)),
    ])


async def _bounded_body(request: Request) -> bytes | None:
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_WEBHOOK_BYTES:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _push_ref(body: bytes) -> str | None:
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    ref = doc.get("ref") if isinstance(doc, dict) else None
    return ref if isinstance(ref, str) else None
