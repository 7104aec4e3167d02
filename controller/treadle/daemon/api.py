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
server or mirror could serve; this endpoint adds only the ETag. The agents'
poll is the hot path (100,000 agents every 60 s: 1,700 requests a second,
nearly all 304), so it is answered before Starlette's routing and middleware
(:class:`_Api`), and a 304 or an unknown node's 404 comes from the store's
in-memory ETag index (:class:`treadle.daemon.publish.ManifestIndex`) without touching
the disk; only a full answer reads the file. A node name that is not a plain
path segment (``..``, separators, odd characters) is a 404, exactly like an
unknown node: the answer never tells which names exist beyond the ones asked
for.

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
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.types import Receive, Scope, Send

from treadle import log
from treadle.daemon.metrics import ControllerMetrics
from treadle.daemon.publish import ManifestIndex, PublishStore, etag_of, valid_node_name
from treadle.daemon.state import StateDB
from treadle.errors import NoSuchRolloutError, StoreError, TransitionError

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
    target_of: Callable[[str], Any] | None = (
        None  # node -> treadle.rollout.observe.Target (Pipeline.target_of)
    )
    scrape_timeout_s: float = 2.0
    mirror: str | None = (
        None  # the git mirror's path: the console reads commits, plans and provenance there
    )
    console_read: str = (
        "loopback"  # who reads the console without the token (ApiSettings.console_read)
    )
    health_status: Callable[[], dict[str, Any]] | None = (
        None  # HealthWatcher.status: the last round of observation
    )


_MANIFEST_PREFIX, _MANIFEST_SUFFIX = "/v1/nodes/", "/manifest"
_NOT_FOUND = b'{"error":"no such node"}\n'
_JSON = (b"content-type", ENVELOPE_MEDIA_TYPE.encode())
_NO_CACHE = (b"cache-control", b"no-cache")
Answer = tuple[
    int, list[tuple[bytes, bytes]], bytes
]  # status, headers, body: what the manifest endpoint sends


def manifest_answer(index: ManifestIndex, node: str, if_none_match: str | None) -> Answer:
    """The answer to ``GET /v1/nodes/<node>/manifest`` for a valid node name.

    A 304 and a 404 are decided from the index alone; a 200 reads the file and
    takes its ETag from the bytes read, so body and ETag always agree, even
    while a publication renames the file.
    """
    etag = index.etag(node)
    if etag is not None and etag_matches(if_none_match, etag):
        return 304, [(b"etag", etag.encode()), _NO_CACHE], b""
    data = None if etag is None else index.read(node)
    if data is None:
        return 404, [(b"content-length", b"%d" % len(_NOT_FOUND)), _JSON], _NOT_FOUND
    return (
        200,
        [
            (b"content-length", b"%d" % len(data)),
            _JSON,
            (b"etag", etag_of(data).encode()),
            _NO_CACHE,
        ],
        data,
    )


def _manifest_node(scope: Scope) -> str | None:
    """The node of a ``GET``/``HEAD /v1/nodes/<node>/manifest`` with a valid name, else None (Starlette routes it)."""
    path = scope["path"]
    if (
        scope["type"] != "http"
        or scope["method"] not in ("GET", "HEAD")
        or scope.get("root_path")
        or not path.startswith(_MANIFEST_PREFIX)
        or not path.endswith(_MANIFEST_SUFFIX)
    ):
        return None
    node = path[len(_MANIFEST_PREFIX) : -len(_MANIFEST_SUFFIX)]
    return node if valid_node_name(node) else None


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


class _Api(Starlette):
    """Starlette, with the agents' manifest poll answered before its middleware and routing.

    The poll is most of the traffic a large fleet makes; Starlette's error and
    exception middleware, router and Request/Response objects were half of
    the time spent on each. Everything else, including a manifest request
    with an invalid node name, goes through Starlette as before.
    """

    def __init__(self, index: ManifestIndex, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._index = index

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        node = _manifest_node(scope) if scope["type"] == "http" else None
        if node is None:
            await super().__call__(scope, receive, send)
            return
        status, headers, body = manifest_answer(self._index, node, _header(scope, b"if-none-match"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def load_index(index: ManifestIndex) -> None:
    """Index what the store already holds, in a thread: at 100,000 nodes that reads 100,000 files (seconds)."""
    if not index.begin_load():
        return

    def run() -> None:
        started = time.monotonic()
        try:
            count = index.load()
        except OSError as e:  # the index stays in its disk-reading mode: slower, still correct
            log.error("api.index_failed", error=str(e))
            return
        log.event("api.index_loaded", nodes=count, seconds=round(time.monotonic() - started, 3))

    threading.Thread(target=run, name="treadle-manifest-index", daemon=True).start()


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
        if scheme.lower() == "bearer" and hmac.compare_digest(
            token.strip().encode(), ctx.admin_token
        ):
            return None
        return JSONResponse(
            {
                "error": "operator actions need `Authorization: Bearer <token>` with the token of "
                "admin_token_file (treadle ... --token-file)"
            },
            401,
        )
    host = request.client.host if request.client else ""
    if _loopback(host):
        return None
    return JSONResponse(
        {
            "error": "operator actions are accepted from the controller's own machine only; "
            "set admin_token_file in controller.toml to allow them with a token"
        },
        403,
    )


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
        "last_refusal": None
        if refusal is None
        else {
            "commit": refusal.commit,
            "reason": refusal.reason,
            "message": refusal.message,
            "diagnostics": list(refusal.diagnostics),
            "at": refusal.at,
        },
        "pending_history_acceptance": state.pending_history(),
        "nodes": {"total": sum(counts.values()), "by_lifecycle": dict(sorted(counts.items()))},
        "deployments": state.deployments(limit=5),
        "last_cycle": dict(ctx.last_cycle),
        "rollout": None if ctx.rollouts is None else ctx.rollouts.summary(),
        "health": None if ctx.health_status is None else ctx.health_status(),
    }


def build_app(ctx: ApiContext) -> Starlette:
    """The ASGI application over ``ctx``; starts indexing the store's ETags (:func:`load_index`)."""
    index = ctx.store.index()
    load_index(index)
    not_found = Response(_NOT_FOUND, status_code=404, media_type="application/json")

    async def manifest(request: Request) -> Response:
        # Reached only when _Api's fast path does not apply (an invalid name, a root_path).
        node = request.path_params["node"]
        if not valid_node_name(node):
            return not_found
        status, headers, body = manifest_answer(index, node, request.headers.get("if-none-match"))
        return Response(
            body,
            status,
            headers={k.decode(): v.decode() for k, v in headers if k != b"content-length"},
        )

    async def node_view(request: Request) -> Response:
        from treadle.daemon.nodeview import node_document

        node = request.path_params["node"]
        if not valid_node_name(node):
            return not_found
        try:
            doc = await anyio.to_thread.run_sync(
                node_document, ctx, node, ctx.target_of, ctx.scrape_timeout_s
            )
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
            return JSONResponse(
                {"error": "webhooks are disabled: set webhook_secret_file in controller.toml"}, 403
            )
        body = await _bounded_body(request)
        if body is None:
            return JSONResponse({"error": f"body larger than {MAX_WEBHOOK_BYTES} bytes"}, 413)
        if not verify_webhook(ctx.webhook_secret, request.headers, body):
            return JSONResponse({"error": "signature missing or invalid"}, 401)
        ref = _push_ref(body)
        if ref is not None and ref != f"refs/heads/{ctx.branch}":
            return JSONResponse(
                {"triggered": False, "reason": f"push to {ref}, tracking refs/heads/{ctx.branch}"},
                202,
            )
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
            return JSONResponse(
                {"error": f"{commit!r} is not a full commit id (40 or 64 hex digits)"}, 400
            )
        ctx.state.accept_history(commit)
        ctx.trigger()
        return JSONResponse({"accepted": commit})

    async def metrics(_request: Request) -> Response:
        return Response(ctx.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    def _rollout_id(service: Any, raw: str) -> int | None:
        if raw in ("current", "latest"):
            return service.latest_id()
        return int(raw) if raw.isdigit() else None

    async def rollouts(_request: Request) -> Response:
        if ctx.rollouts is None:
            return JSONResponse({"rollouts": []})
        return JSONResponse({"rollouts": await anyio.to_thread.run_sync(ctx.rollouts.documents)})

    async def rollout(request: Request) -> Response:
        service = ctx.rollouts
        rid = None if service is None else _rollout_id(service, request.path_params["rid"])
        if service is None or rid is None:
            return JSONResponse({"error": "no such rollout"}, 404)
        try:
            return JSONResponse(await anyio.to_thread.run_sync(service.document, rid))
        except NoSuchRolloutError:
            return JSONResponse({"error": "no such rollout"}, 404)

    async def rollout_action(request: Request) -> Response:
        refusal = authorize_operator(ctx, request)
        if refusal is not None:
            return refusal
        service = ctx.rollouts
        rid = None if service is None else _rollout_id(service, request.path_params["rid"])
        if service is None or rid is None:
            return JSONResponse({"error": "no such rollout"}, 404)
        action = request.path_params["action"]
        try:
            doc = await anyio.to_thread.run_sync(service.act, rid, action)
        except NoSuchRolloutError:
            return JSONResponse({"error": "no such rollout"}, 404)
        except TransitionError as e:
            return JSONResponse({"error": str(e)}, 409)
        except ValueError as e:
            return JSONResponse({"error": str(e)}, 404)
        ctx.trigger()  # let the pipeline act on it now
        return JSONResponse(doc)

    from treadle.console import build_console

    return _Api(
        index,
        routes=[
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
        ],
    )


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
