"""The web console: server-rendered pages under ``/ui/`` on the API's listener.

    GET  /ui/                          overview: deployed commit, newest rollout and its waves, refused commits,
                                       the fleet by lifecycle, health, drift and site
    GET  /ui/rollouts                  the newest rollouts
    GET  /ui/rollouts/<id>             one rollout: waves, per-node progress, reason, events, actions
    GET  /ui/rollouts/<id>/<action>    the confirmation page of an action (pause, resume, approve, abort)
    POST /ui/rollouts/<id>/<action>    the action itself (admin token, CSRF token)
    GET  /ui/nodes?q=&lifecycle=&site=&cluster=&health=&drift=&label=k=v&page=
                                       the fabric: filtered and paged server-side
    GET  /ui/racks?site=&by=           rack elevations from the labels room, rack and unit, coloured by
                                       health, by the running rollout's node status or by lifecycle
    GET  /ui/nodes/<node>              one node: published generation and commit, rollout, observation,
                                       history, manifest resources, where each value comes from
    GET  /ui/commits/<sha>             a commit and its plan against its parent (``treadle plan``)
    GET|POST /ui/login                 exchange the admin token for a session cookie (for actions and for
                                       reading from another machine)

Everything is read from the same library code as the JSON API and the CLI
(:func:`treadle.daemon.api.status_document`, :mod:`treadle.daemon.nodeview`, the rollout
service's documents and :meth:`~treadle.rollout.service.RolloutService.act`,
:func:`treadle.review.plan.build_plan`, :func:`treadle.fabric.explain.explain_node`).
Slow answers (plans, provenance) are computed off the event loop, once per
commit, with a bounded wait (:mod:`treadle.console.work`); the fleet's health
and drift come from a background sweep of the agents (:mod:`treadle.console.health`).

Security. Fabric content is user input: templates are rendered with Jinja2
autoescaping on, and every answer carries a Content-Security-Policy that
allows no script, no inline style and no foreign origin at all. Who reads
without the admin token is ``console_read`` in controller.toml: "loopback"
(the default: loopback clients read freely, others need the admin-token
session; no admin token configured: loopback only), "anyone", or "nobody"
(the token everywhere).
Actions need, on top of that rule, a CSRF token: an HMAC, under a key drawn
when the controller starts, of the browser's random session cookie
(``SameSite=Strict``, ``HttpOnly``); a form from another site can neither
read it nor forge it, and a restart invalidates every form and session.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

import anyio
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from treadle.console import sources
from treadle.console.health import DRIFT, HEALTH, UNKNOWN, FleetWatch
from treadle.console.index import PAGE_SIZE, NodeIndex, parse_filters, rack_elevations
from treadle.console.work import Work
from treadle.daemon.publish import valid_node_name
from treadle.errors import NoSuchRolloutError, StoreError, TransitionError
from treadle.rollout.observe import Target

HERE = Path(__file__).resolve().parent
SESSION_COOKIE = "treadle_session"
ADMIN_COOKIE = "treadle_admin"
#: No script, no inline style, nothing from another origin, no framing, forms post only here.
CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "cache-control": "no-store",
}
MAX_FORM_BYTES = 16 * 1024
#: Rollout states whose pages reload themselves (a meta refresh: no script needed), every REFRESH_S seconds.
LIVE_STATES = frozenset({"pending", "waiting", "publishing", "soaking", "rolling_back"})
REFRESH_S = 5
#: How long a page waits for a plan or for a node's provenance before it says "still computing" and reloads.
PLAN_WAIT_S = 5.0
PROVENANCE_WAIT_S = 2.0
WORKING_REFRESH_S = 3
COMMITS_KEPT = 1024
#: What the rack elevation colours nodes by (the query's ``by``), the first one the default.
RACK_COLOURS = {
    "health": "health (the agents' last sweep)",
    "rollout": "the running rollout's status, else lifecycle",
    "lifecycle": "lifecycle",
}
#: Nodes listed per wave on a rollout page (a wave of thousands is summed up by its counts).
WAVE_NODES_SHOWN = 200
ACTIONS = ("approve", "pause", "resume", "abort")
RESOURCE_KEY = {
    "directory": "path",
    "file": "path",
    "symlink": "path",
    "package": "name",
    "sysctl": "key",
    "service": "name",
}


def _when(ts: float | None) -> str:
    return "—" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def _short(sha: str | None) -> str:
    return "—" if not sha else sha[:12]


def environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(HERE / "templates"),
        autoescape=select_autoescape(default=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(when=_when, short=_short)
    return env


def resource_rows(manifest: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The manifest's resources as table rows: type, identity, and the other fields (file content left out)."""
    rows = []
    for res in (manifest or {}).get("resources", []):
        kind = str(res.get("type", "?"))
        key = RESOURCE_KEY.get(kind, "path")
        details = {
            k: v
            for k, v in res.items()
            if k not in ("type", key, "content") and v not in (None, [], "")
        }
        if "content" in res:
            details["content"] = f"{len(str(res['content']))} characters"
        rows.append({"type": kind, "id": str(res.get(key, "?")), "details": details})
    return rows


async def read_form(request: Request) -> dict[str, str]:
    """The fields of a small url-encoded form (first value of each); empty when it is too large or not a form."""
    if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        return {}
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            return {}
    try:
        fields = parse_qs(body.decode("utf-8"), max_num_fields=16)
    except (UnicodeDecodeError, ValueError):
        return {}
    return {k: v[0] for k, v in fields.items() if v}


class Console:
    """The console's state: templates, the CSRF key, the node index, the caches of commits, plans and provenance,
    and the sweep of the agents."""

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx
        self.env = environment()
        self.key = secrets.token_bytes(32)
        self.index = NodeIndex(ctx.state, ctx.store)
        self.plans = Work("plans", workers=1, keep=64, max_pending=8)
        self.provenance = Work(
            "provenance", workers=1, keep=256, max_pending=16
        )  # one worker: see ProvenanceReader
        self.trace = None if ctx.mirror is None else sources.ProvenanceReader(ctx.mirror)
        self._commits: dict[str, dict[str, Any]] = {}
        self.watch = FleetWatch(self.agent_targets, ctx.scrape_timeout_s)

    # -- reading the mirror ----------------------------------------------------

    def commit(self, sha: str | None) -> dict[str, Any] | None:
        """Author, time and subject of a commit from the mirror (kept: commits never change); None when unknown."""
        if not sha or self.ctx.mirror is None:
            return None
        hit = self._commits.get(sha)
        if hit is None:
            try:
                hit = sources.commit_info(self.ctx.mirror, sha)
            except LookupError:
                return None
            if hit is None:
                return None
            if len(self._commits) >= COMMITS_KEPT:
                self._commits.clear()
            self._commits[sha] = hit
        return hit

    def agent_targets(self) -> list[Target]:
        """Every present node's agent, as the deployed commit's node files place it (in one read of the
        mirror); without a mirror, as ``target_of`` says node by node; else none."""
        commit = self.ctx.state.deployed_commit()
        if self.ctx.mirror is not None and commit is not None:
            return sources.agent_targets(self.ctx.mirror, commit, self.index.nodes())
        if self.ctx.target_of is None:
            return []
        return [
            t
            for n in self.index.nodes()
            if n.present and (t := self.ctx.target_of(n.name)) is not None
        ]

    # -- sessions, access and CSRF ---------------------------------------------

    def _mac(self, purpose: str, session: str) -> str:
        return hmac.new(self.key, f"{purpose}|{session}".encode(), hashlib.sha256).hexdigest()

    def csrf_token(self, session: str) -> str:
        return self._mac("csrf", session)

    def is_admin(self, request: Request) -> bool:
        """The request carries the admin token (bearer) or the session cookie a login with it gave."""
        token = self.ctx.admin_token
        if token is None:
            return False
        scheme, _, bearer = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(bearer.strip().encode(), token):
            return True
        session, admin = (
            request.cookies.get(SESSION_COOKIE, ""),
            request.cookies.get(ADMIN_COOKIE, ""),
        )
        return bool(session) and hmac.compare_digest(
            admin.encode(), self._mac("admin", session).encode()
        )

    def may_read(self, request: Request) -> bool:
        """``console_read``: "anyone", "nobody" (the token everywhere), or "loopback" (the token elsewhere)."""
        from treadle.daemon.api import _loopback

        rule = self.ctx.console_read
        if rule == "anyone" or self.is_admin(request):
            return True
        return rule != "nobody" and _loopback(request.client.host if request.client else "")

    def may_act(self, request: Request) -> tuple[bool, str]:
        """Whether ``request`` may perform an action, the API's rule (:func:`treadle.daemon.api.authorize_operator`)."""
        from treadle.daemon.api import _loopback

        if self.ctx.admin_token is not None:
            if self.is_admin(request):
                return True, ""
            return False, "actions need the admin token: log in with it first"
        if _loopback(request.client.host if request.client else ""):
            return True, ""
        return False, (
            "actions are accepted from the controller's own machine only; set admin_token_file in "
            "controller.toml to allow them with a token"
        )

    def csrf_ok(self, request: Request, form: dict[str, str]) -> bool:
        session = request.cookies.get(SESSION_COOKIE, "")
        sent = str(form.get("csrf", ""))
        if (
            not session
            or not sent
            or not hmac.compare_digest(sent.encode(), self.csrf_token(session).encode())
        ):
            return False
        origin = request.headers.get("origin")
        if origin and origin != "null":
            host = request.headers.get("host", "")
            if origin.split("://", 1)[-1] != host:
                return False
        return True

    # -- rendering -------------------------------------------------------------

    def page(self, request: Request, template: str, code: int = 200, **values: Any) -> Response:
        session = request.cookies.get(SESSION_COOKIE) or secrets.token_urlsafe(32)
        values.setdefault("csrf", self.csrf_token(session))
        values.setdefault("admin", self.is_admin(request))
        values.setdefault("token_required", self.ctx.admin_token is not None)
        values.setdefault("now", time.time())
        values.setdefault("wave_nodes_shown", WAVE_NODES_SHOWN)
        body = self.env.get_template(template).render(request=request, **values)
        response = HTMLResponse(body, status_code=code, headers=SECURITY_HEADERS)
        if SESSION_COOKIE not in request.cookies:
            response.set_cookie(
                SESSION_COOKIE, session, httponly=True, samesite="strict", path="/ui"
            )
        return response

    def refused(self, request: Request, code: int, message: str) -> Response:
        return self.page(request, "error.html", code, message=message)

    def stale_form(self, request: Request) -> Response:
        """The answer to a form that fails :meth:`csrf_ok`, the same for every form the console posts."""
        return self.refused(
            request,
            403,
            "this form is stale or came from another site (CSRF check failed): "
            "reload the page and try again",
        )


class SecurityHeaders:
    """ASGI wrapper: every answer of the console (static files and Starlette's own 404s too) carries the headers."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.headers = [(k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                present = {k.lower() for k, _ in message.get("headers", [])}
                message = {
                    **message,
                    "headers": [
                        *message.get("headers", []),
                        *((k, v) for k, v in self.headers if k not in present),
                    ],
                }
            await send(message)

        await self.app(scope, receive, send_with_headers)


def fleet_counts(nodes: list[Any], watch: FleetWatch) -> dict[str, Any]:
    """The present nodes by health and by drift, from the agents' last sweep (a stale sweep starts a new one)."""
    sweep = watch.read()
    health = dict.fromkeys(HEALTH, 0)
    drift = dict.fromkeys(DRIFT, 0)
    for n in nodes:
        if not n.present:
            continue
        hit = sweep.seen.get(n.name)
        h, d = UNKNOWN if hit is None else (hit.health, hit.drift)
        health[h] += 1
        drift[d] += 1
    return {"health": health, "drift": drift, "sweep": sweep}


def build_console(ctx: Any) -> SecurityHeaders:
    """The ASGI application of the console, to be mounted at ``/ui`` (see :func:`treadle.daemon.api.build_app`)."""
    console = Console(ctx)

    def guarded(handler: Any) -> Any:
        async def endpoint(request: Request) -> Response:
            if not console.may_read(request):
                if ctx.admin_token is None:
                    return console.refused(
                        request,
                        403,
                        "the console is readable from the controller's own machine "
                        "only; set admin_token_file in controller.toml to allow "
                        "reading with the token",
                    )
                return RedirectResponse("/ui/login", 303, headers=SECURITY_HEADERS)
            try:
                return await handler(request)
            except StoreError as e:
                return console.refused(request, 503, str(e))

        return endpoint

    @guarded
    async def overview(request: Request) -> Response:
        from treadle.daemon.api import status_document

        def gather() -> dict[str, Any]:
            status = status_document(ctx)
            rollout = None
            if status["rollout"] is not None:
                try:
                    rollout = ctx.rollouts.document(status["rollout"]["id"])
                except NoSuchRolloutError:
                    rollout = None
            nodes = console.index.nodes()
            sites: dict[str, int] = {}
            for n in nodes:
                sites[n.site or "—"] = sites.get(n.site or "—", 0) + 1
            refusals = ctx.state.refusals(limit=5)
            return {
                "status": status,
                "rollout": rollout,
                "refusals": refusals,
                "sites": dict(sorted(sites.items())),
                "deployment": (status["deployments"] or [None])[0],
                "deployed": console.commit(status["deployed_commit"]),
                "refused": {f.commit: console.commit(f.commit) for f in refusals},
                **fleet_counts(nodes, console.watch),
            }

        values = await anyio.to_thread.run_sync(gather)
        live = values["rollout"] is not None and values["rollout"]["state"] in LIVE_STATES
        return console.page(request, "overview.html", refresh=REFRESH_S if live else None, **values)

    @guarded
    async def rollouts(request: Request) -> Response:
        docs = (
            [] if ctx.rollouts is None else await anyio.to_thread.run_sync(ctx.rollouts.documents)
        )
        return console.page(request, "rollouts.html", rollouts=docs)

    def _rollout_doc(raw: str) -> dict[str, Any] | None:
        if ctx.rollouts is None or not raw.isdigit():
            return None
        try:
            return ctx.rollouts.document(int(raw))
        except NoSuchRolloutError:
            return None

    @guarded
    async def rollout(request: Request) -> Response:
        doc = await anyio.to_thread.run_sync(_rollout_doc, request.path_params["rid"])
        if doc is None:
            return console.refused(request, 404, "no such rollout")
        return console.page(
            request,
            "rollout.html",
            r=doc,
            actions=ACTIONS,
            rc=await anyio.to_thread.run_sync(console.commit, doc["commit"]),
            refresh=REFRESH_S if doc["state"] in LIVE_STATES else None,
        )

    @guarded
    async def confirm(request: Request) -> Response:
        action = request.path_params["action"]
        doc = await anyio.to_thread.run_sync(_rollout_doc, request.path_params["rid"])
        if doc is None or action not in ACTIONS:
            return console.refused(request, 404, "no such rollout or action")
        allowed, why = console.may_act(request)
        return console.page(request, "confirm.html", r=doc, action=action, allowed=allowed, why=why)

    async def act(request: Request) -> Response:
        action = request.path_params["action"]
        form = await read_form(request)
        if not console.csrf_ok(request, form):
            return console.stale_form(request)
        allowed, why = console.may_act(request)
        if not allowed:
            return console.refused(request, 401 if ctx.admin_token is not None else 403, why)
        raw = request.path_params["rid"]
        if ctx.rollouts is None or not raw.isdigit() or action not in ACTIONS:
            return console.refused(request, 404, "no such rollout or action")
        try:
            doc = await anyio.to_thread.run_sync(ctx.rollouts.act, int(raw), action)
        except NoSuchRolloutError:
            return console.refused(request, 404, "no such rollout")
        except TransitionError as e:
            return console.refused(request, 409, str(e))
        ctx.trigger()  # as the API does: let the pipeline act on it now
        return console.page(
            request, "rollout.html", r=doc, actions=ACTIONS, outcome=doc.get("outcome"), done=action
        )

    @guarded
    async def nodes(request: Request) -> Response:
        filters, problems = parse_filters(request.query_params)
        try:
            page = max(1, int(request.query_params.get("page", "1")))
        except ValueError:
            page = 1
        sweep = console.watch.read()
        result = await anyio.to_thread.run_sync(
            console.index.search, filters, page, PAGE_SIZE, sweep.seen
        )
        query = {k: v for k, v in request.query_params.multi_items() if k != "page"}
        return console.page(
            request,
            "nodes.html",
            result=result,
            filters=filters,
            problems=problems,
            page_size=PAGE_SIZE,
            base_query=urlencode(query),
            seen=sweep.seen,
            sweep=sweep,
            tree=await anyio.to_thread.run_sync(console.index.tree),
            choices={
                **await anyio.to_thread.run_sync(console.index.choices),
                "health": HEALTH,
                "drift": DRIFT,
            },
        )

    @guarded
    async def node(request: Request) -> Response:
        from treadle.daemon.nodeview import history_document, node_document

        name = request.path_params["node"]
        if not valid_node_name(name):
            return console.refused(request, 404, "no such node")

        def gather() -> dict[str, Any] | None:
            doc = node_document(ctx, name, ctx.target_of, ctx.scrape_timeout_s)
            if doc is None:
                return None
            history = history_document(ctx, name, limit=50)
            return {
                "n": doc,
                "history": history["history"] if history else [],
                "resources": resource_rows(console.index.manifest(name)),
                "published_commit": console.commit(doc["published"]["commit"]),
            }

        values = await anyio.to_thread.run_sync(gather)
        if values is None:
            return console.refused(request, 404, "no such node")
        provenance = await node_provenance(name, values["n"])
        working = provenance.get("state") == "running"
        return console.page(
            request,
            "node.html",
            provenance=provenance,
            refresh=WORKING_REFRESH_S if working else None,
            **values,
        )

    async def node_provenance(name: str, doc: dict[str, Any]) -> dict[str, Any]:
        """Where each of the node's values comes from at its published commit: {"state", "values"|"why"}."""
        commit = doc["published"]["commit"]
        if not doc["present"]:
            return {"state": "none", "why": "the node is removed from the fabric"}
        trace = console.trace
        if trace is None or not commit:
            return {
                "state": "none",
                "why": "the controller has no git mirror to read the fabric from",
            }
        outcome = await console.provenance.get(
            (commit, name), lambda: trace(commit, name), PROVENANCE_WAIT_S
        )
        if outcome.state == "done":
            return {"state": "done", **outcome.value}
        if outcome.state == "failed":
            return {
                "state": "none",
                "why": f"cannot trace the values at {commit[:12]}: {outcome.error}",
            }
        if outcome.state == "busy":
            return {
                "state": "none",
                "why": "the controller is tracing many nodes at once: reload in a moment",
            }
        return {"state": "running"}

    @guarded
    async def commit(request: Request) -> Response:
        sha = request.path_params["sha"].lower()
        if ctx.mirror is None or not sources.SHA.fullmatch(sha):
            return console.refused(request, 404, "no such commit")
        info = await anyio.to_thread.run_sync(console.commit, sha)
        if info is None:
            return console.refused(request, 404, f"no commit {sha} in the controller's mirror")
        full = info["sha"]
        outcome = await console.plans.get(
            full, lambda: sources.commit_plan(ctx.mirror, full), PLAN_WAIT_S
        )
        if outcome.state == "busy":
            return console.refused(
                request, 503, "the controller is computing many plans at once: reload in a moment"
            )
        plan = outcome.value["plan"] if outcome.state == "done" else None

        def around() -> dict[str, Any]:
            return {
                "parents": [console.commit(p) or {"sha": p} for p in info["parents"]],
                "deployed": ctx.state.deployed_commit() == full,
            }

        return console.page(
            request,
            "commit.html",
            c=info,
            outcome=outcome,
            plan=plan,
            refresh=WORKING_REFRESH_S if outcome.state == "running" else None,
            **await anyio.to_thread.run_sync(around),
        )

    @guarded
    async def racks(request: Request) -> Response:
        def gather() -> dict[str, Any]:
            progress: dict[str, str] = {}
            if ctx.rollouts is not None and (rid := ctx.rollouts.latest_id()) is not None:
                try:
                    doc = ctx.rollouts.document(rid)
                except NoSuchRolloutError:
                    doc = None
                if doc is not None and doc["state"] in LIVE_STATES | {"halted"}:
                    progress = {n: p["status"] for n, p in doc["progress"].items()}
            nodes = console.index.nodes()
            sites = sorted({n.site for n in nodes if n.site and "rack" in n.labels})
            site = request.query_params.get("site") or (sites[0] if sites else "")
            by = request.query_params.get("by", "")
            by = by if by in RACK_COLOURS else next(iter(RACK_COLOURS))
            sweep = console.watch.read() if by == "health" else None
            return {
                "sites": sites,
                "site": site,
                "racks": rack_elevations(nodes, site, progress),
                "by": by,
                "colours": RACK_COLOURS,
                "seen": sweep.seen if sweep else {},
                "sweep": sweep,
            }

        return console.page(request, "racks.html", **await anyio.to_thread.run_sync(gather))

    async def login(request: Request) -> Response:
        if request.method == "GET":
            return console.page(request, "login.html")
        form = await read_form(request)
        if not console.csrf_ok(request, form):
            return console.stale_form(request)
        token = ctx.admin_token
        if token is None or not hmac.compare_digest(
            str(form.get("token", "")).strip().encode(), token
        ):
            return console.page(
                request,
                "login.html",
                401,
                error="wrong token"
                if token
                else "no admin token is configured (admin_token_file in controller.toml)",
            )
        session = request.cookies[SESSION_COOKIE]
        response = RedirectResponse("/ui/", 303, headers=SECURITY_HEADERS)
        response.set_cookie(
            ADMIN_COOKIE,
            console._mac("admin", session),
            httponly=True,
            samesite="strict",
            path="/ui",
        )
        return response

    return SecurityHeaders(
        Starlette(
            routes=[
                Route("/", overview, methods=["GET"]),
                Route("/rollouts", rollouts, methods=["GET"]),
                Route("/rollouts/{rid}", rollout, methods=["GET"]),
                Route("/rollouts/{rid}/{action}", confirm, methods=["GET"]),
                Route("/rollouts/{rid}/{action}", act, methods=["POST"]),
                Route("/nodes", nodes, methods=["GET"]),
                Route("/nodes/{node}", node, methods=["GET"]),
                Route("/racks", racks, methods=["GET"]),
                Route("/commits/{sha}", commit, methods=["GET"]),
                Route("/login", login, methods=["GET", "POST"]),
                Mount("/static", app=StaticFiles(directory=HERE / "static"), name="static"),
            ]
        )
    )
