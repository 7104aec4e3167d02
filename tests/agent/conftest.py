"""Real parts for the agent's tests: keys generated in tmp dirs, signed manifests, and an
HTTP server on 127.0.0.1 that serves them and can misbehave (trickle, oversize, 304).
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from treadle.keygen import generate
from treadle_agent import config as agent_config
from treadle_agent.contract.envelope import load_signer, sign_payload
from treadle_agent.contract.manifest import canonical_json, format_time

NODE = "node-1"
MANIFEST_PATH = f"/v1/nodes/{NODE}/manifest"
NOW = 1_800_000_000.0  # the fake clock's "now"


@dataclass
class Route:
    """What the server answers on one path. ``mode``: normal | unsized | trickle | flood."""

    body: bytes = b""
    status: int = 200
    etag: str | None = None
    mode: str = "normal"
    content_length: str | None = None  # sent instead of the body's length
    headers: list[tuple[str, str]] = field(default_factory=list)  # extra headers, sent as they are


@dataclass
class ManifestServer:
    routes: dict[str, Route] = field(default_factory=dict)
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (path, If-None-Match)
    stopping: threading.Event = field(default_factory=threading.Event)
    port: int = 0

    def url(self, path: str = MANIFEST_PATH) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def serve(
        self, body: bytes, path: str = MANIFEST_PATH, *, etag: bool = True, **kw: Any
    ) -> None:
        tag = f'"{hashlib.sha256(body).hexdigest()}"' if etag else None
        self.routes[path] = Route(body=body, etag=tag, **kw)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Any

    def log_message(self, *args: Any) -> None:  # keep test output quiet
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        srv: ManifestServer = self.server.owner
        srv.requests.append((self.path, self.headers.get("If-None-Match")))
        route = srv.routes.get(self.path)
        if route is None:
            self._answer(404, b"not found")
        elif route.etag and self.headers.get("If-None-Match") == route.etag:
            self._answer(304, b"", etag=route.etag)
        elif route.mode == "normal":
            self._answer(route.status, route.body, etag=route.etag, route=route)
        else:
            self._stream(srv, route)

    def _answer(
        self, status: int, body: bytes, etag: str | None = None, route: Route | None = None
    ) -> None:
        self.send_response(status)
        if etag:
            self.send_header("ETag", etag)
        for name, value in route.headers if route else ():
            self.send_header(name, value)
        if route is not None and route.content_length is not None:
            self.send_header("Content-Length", route.content_length)
            self.close_connection = True
        elif status != 304:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _stream(self, srv: ManifestServer, route: Route) -> None:
        """No Content-Length: the body ends when the connection closes (or never)."""
        self.send_response(200)
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        try:
            if route.mode == "unsized":
                self.wfile.write(route.body)
            elif route.mode == "trickle":  # one byte at a time, forever: defeats a per-read timeout
                while not srv.stopping.is_set():
                    self.wfile.write(b" ")
                    self.wfile.flush()
                    time.sleep(0.02)
            elif route.mode == "flood":  # endless and fast: only a byte cap stops it
                chunk = b"x" * 65536
                while not srv.stopping.is_set():
                    self.wfile.write(chunk)
        except OSError:  # the client hung up, as it should
            pass


@pytest.fixture
def server() -> Iterator[ManifestServer]:
    owner = ManifestServer()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    httpd.owner = owner  # type: ignore[attr-defined]
    owner.port = httpd.server_address[1]
    thread = threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    yield owner
    owner.stopping.set()
    httpd.shutdown()
    httpd.server_close()


@dataclass
class Keys:
    dir: Path
    trust_root: Path
    signers: list[Any]


@pytest.fixture
def make_keys(tmp_path: Path) -> Callable[..., Keys]:
    counter = iter(range(1000))

    def make(threshold: int = 1) -> Keys:
        d = tmp_path / f"keys-{next(counter)}"
        generate(d, threshold=threshold)
        return Keys(
            d, d / "trust-root.json", [load_signer(str(p)) for p in sorted(d.glob("*.key"))]
        )

    return make


@pytest.fixture(scope="session")
def shared_keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    """One key pair for property tests (hypothesis reruns a test body many times within one fixture)."""
    d = tmp_path_factory.mktemp("shared-keys")
    generate(d)
    return Keys(d, d / "trust-root.json", [load_signer(str(d / "treadle.key"))])


@pytest.fixture
def keys(make_keys: Callable[..., Keys]) -> Keys:
    return make_keys()


def manifest_doc(
    *,
    node: str = NODE,
    generation: int = 1,
    expires: float | None = NOW + 86400,
    files: dict[str, str] | None = None,
    lifecycle: str = "production",
) -> dict[str, Any]:
    """A schema-valid manifest managing ``files`` (path -> content)."""
    resources = [
        {
            "type": "file",
            "path": path,
            "ensure": "present",
            "content": text,
            "sha256": hashlib.sha256(text.encode()).hexdigest(),
            "mode": "0644",
            "owner": None,
            "group": None,
            "notify": [],
            "requires": [],
        }
        for path, text in sorted(
            (files if files is not None else {"/etc/motd": f"generation {generation}\n"}).items()
        )
    ]
    return {
        "apiVersion": "treadle.dev/v1",
        "kind": "NodeManifest",
        "metadata": {
            "node": node,
            "site": "site-a",
            "cluster": "c1",
            "address": "10.0.0.1",
            "fabric": "demo",
            "generation": generation,
            "commit": None,
            "issued": format_time(NOW - 60),
            "expires": None if expires is None else format_time(expires),
            "lifecycle": lifecycle,
            "labels": {},
        },
        "resources": resources,
        "health": [],
    }


def signed(doc: dict[str, Any] | bytes, signers: Sequence[Any]) -> bytes:
    payload = doc if isinstance(doc, bytes) else canonical_json(doc)
    return sign_payload(payload, signers)


def write_config(tmp_path: Path, trust_root: Path, urls: Sequence[str], **extra: Any) -> Path:
    """An agent.toml applying into tmp_path/root, fast timeouts, no real package or service manager."""
    settings: dict[str, Any] = {
        "node": NODE,
        "manifest_urls": list(urls),
        "trust_root": str(trust_root),
        "state_dir": str(tmp_path / "state"),
        "root": str(tmp_path / "root"),
        "interval_s": 0.2,
        "jitter_s": 0,
        "metrics_listen": "127.0.0.1:0",
        "connect_timeout_s": 1,
        "read_timeout_s": 1,
        "fetch_deadline_s": 2,
        "retries": 0,
        "backoff_base_s": 0,
        "package_manager": "none",
        "service_manager": "none",
        "proc_sys": str(tmp_path / "proc-sys"),
    }
    settings.update(extra)
    (tmp_path / "root").mkdir(exist_ok=True)
    (tmp_path / "proc-sys").mkdir(exist_ok=True)
    lines = []
    for key, value in settings.items():
        if isinstance(value, str):
            lines.append(f"{key} = {value!r}".replace("'", '"'))
        elif isinstance(value, list):
            lines.append(f"{key} = [{', '.join(repr(v).replace(chr(39), chr(34)) for v in value)}]")
        else:
            lines.append(f"{key} = {value}")
    path = tmp_path / "agent.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def load_config(path: Path) -> agent_config.AgentConfig:
    return agent_config.load(path)


class Kit:
    """The helpers above, as one fixture (test modules cannot import conftest under importlib mode)."""

    NODE = NODE
    NOW = NOW
    MANIFEST_PATH = MANIFEST_PATH
    manifest_doc = staticmethod(manifest_doc)
    signed = staticmethod(signed)
    write_config = staticmethod(write_config)
    load_config = staticmethod(load_config)


@pytest.fixture(scope="session")
def kit() -> type[Kit]:
    return Kit


@dataclass
class Node:
    """One agent in-process over a temp root, fed by the real HTTP server; the clock is fake."""

    tmp: Path
    server: ManifestServer
    keys: Keys
    clock: list[float]
    config_path: Path
    agent: Any = None

    def start(self, **overrides: Any) -> Any:
        from treadle_agent.agent import Agent
        from treadle_agent.host_sim import SimulatedHost

        if overrides:
            trust_root = overrides.pop("trust_root", self.keys.trust_root)
            self.config_path = write_config(self.tmp, trust_root, [self.server.url()], **overrides)
        config = load_config(self.config_path)
        host = SimulatedHost(
            proc_sys=self.tmp / "proc-sys", package_manager="none", service_manager="none"
        )
        self.agent = Agent.from_config(config, host=host, clock=lambda: self.clock[0])
        self.agent.start()
        return self.agent

    def cycle(self) -> Any:
        import anyio

        async def one() -> Any:
            try:
                return await self.agent.cycle()
            finally:
                await self.agent.fetcher.aclose()

        return anyio.run(one)

    def serve(
        self, doc: dict[str, Any] | bytes, signers: Sequence[Any] | None = None, **kw: Any
    ) -> bytes:
        envelope = signed(doc, self.keys.signers if signers is None else signers)
        self.server.serve(envelope, **kw)
        return envelope

    def sample(self, name: str, **labels: str) -> float | None:
        return self.agent.metrics.sample(name, **labels)

    def snapshot(self) -> dict[str, bytes]:
        """Every file and symlink under the root and the state dir, with its content (or link target).

        Leaves out the record of agent.toml's validation: a restart with other
        settings rewrites it, and it is no part of what the node enforces.
        """
        out: dict[str, bytes] = {}
        for top in (self.tmp / "root", self.tmp / "state"):
            for p in sorted(top.rglob("*")):
                if p == self.tmp / "state" / agent_config.RECORD:
                    continue
                key = str(p.relative_to(self.tmp))
                if p.is_symlink():
                    out[key] = b"-> " + str(p.readlink()).encode()
                elif p.is_file():
                    out[key] = p.read_bytes()
        return out


@pytest.fixture
def node(tmp_path: Path, server: ManifestServer, keys: Keys) -> Node:
    config_path = write_config(tmp_path, keys.trust_root, [server.url()])
    return Node(tmp_path, server, keys, [NOW], config_path)
