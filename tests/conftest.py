"""Settings every suite shares: a git identity, so tests that commit work on a fresh machine; and, in CI,
fuzz tests that draw the same examples on every run.

With ``CI`` set (as the CI runner does), Hypothesis is derandomized: a landing is judged on a known set of
examples, and a failure reproduces exactly. Elsewhere every run draws new examples, which is how the fuzz
tests keep finding things (each find goes into the test's regression corpus); `TREADLE_FUZZ_EXAMPLES` and
`bench/differential.py` run longer searches.
"""

from __future__ import annotations

import io
import logging
import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from hypothesis import settings

settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

for key, value in {
    "GIT_AUTHOR_NAME": "Treadle Test",
    "GIT_AUTHOR_EMAIL": "test@treadle.invalid",
    "GIT_COMMITTER_NAME": "Treadle Test",
    "GIT_COMMITTER_EMAIL": "test@treadle.invalid",
}.items():
    os.environ.setdefault(key, value)


#: Tests that share a heavy or machine-wide resource run on one worker under `pytest -n N --dist loadgroup`
#: (the Makefile's test target), by node-id prefix: the real-node tests boot network namespaces from one cached
#: tree and, like the install tests, build the checkout's wheel (setuptools writes its egg-info and sdist tree
#: inside the checkout, so two builds at once break each other); the live observability tests share one fleet
#: and one Prometheus (session fixtures), the Prometheus health tests one large Prometheus (a module fixture).
XDIST_GROUPS = {
    "tests/realnode/": "checkout",
    "tests/install/": "checkout",
    "tests/observability/test_prometheus_live.py": "prometheus-fleet",
    "tests/observability/test_scenarios_live.py": "prometheus-fleet",
    "tests/observability/test_prometheus_health.py": "prometheus-health",
}


@pytest.hookimpl(optionalhook=True, tryfirst=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    """``--dist loadgroup`` with the groups above, read from each test's node id.

    xdist's own loadgroup reads ``xdist_group`` marks through a node-id suffix that pytest 9.2 no longer lets it
    write (pytest-xdist issue 1386), so its groups would silently split; this scheduler needs no marks.
    """
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadGroupScheduling

    class PathGroups(LoadGroupScheduling):
        def _split_scope(self, nodeid: str) -> str:
            for prefix, group in XDIST_GROUPS.items():
                if nodeid.startswith(prefix):
                    return group
            return super()._split_scope(nodeid)

    return PathGroups(config, log)  # type: ignore[arg-type]


@pytest.fixture
def stream():
    """A stream to log into (the log tests of both programs); the loggers' set-up is put back afterwards
    (caplog elsewhere relies on propagation)."""
    loggers = [logging.getLogger(n) for n in ("", "treadle_agent", "treadle", "httpx", "httpcore")]
    saved = [(list(lg.handlers), lg.propagate, lg.level) for lg in loggers]
    yield io.StringIO()
    for lg, (handlers, propagate, level) in zip(loggers, saved, strict=True):
        lg.handlers[:] = handlers
        lg.propagate = propagate
        lg.setLevel(level)


@pytest.fixture(scope="session")
def fleet_keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`treadle keys generate` once per session: the fleets' signing key and their agents' trust root (generating
    them is not what the fleet tests are about, and every fleet has its own state, publish dir and agents)."""
    from support.fleet import generate_keys

    return generate_keys(tmp_path_factory.mktemp("keys") / "keys")


@pytest.fixture
def agent_pages() -> Iterator[tuple[int, dict[str, str]]]:
    """One HTTP server on 127.0.0.1 playing many agents: GET /<node>/... answers pages[node], 503 when absent."""
    pages: dict[str, str] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = pages.get(self.path.strip("/").split("/")[0])
            if body is None:
                self.send_response(503)
                self.end_headers()
                return
            data = body.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1], pages
    server.shutdown()
    server.server_close()
