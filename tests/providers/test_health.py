"""Health checks against real sockets, a real HTTP server and real processes."""

from __future__ import annotations

import http.server
import socket
import sys
import threading

import pytest

from treadle_agent.health import run_checks
from treadle_agent.host_sim import SimulatedHost, Unit


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        code = {"/ok": 200, "/moved": 301}.get(self.path, 404)
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http_url():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    t = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def silent_port():
    """A listener that accepts and never answers."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    yield s.getsockname()[1]
    s.close()


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture
def host(tmp_path):
    return SimulatedHost(
        proc_sys=tmp_path, units={"sshd": Unit(active=True), "cron": Unit(active=False)}
    )


def check(name: str, type_: str, timeout_s: int = 2, **kw) -> dict:
    return {"name": name, "type": type_, "timeout_s": timeout_s, **kw}


def test_tcp_check_is_up_on_a_listening_port_and_down_on_a_closed_one(host, tmp_path, silent_port):
    checks = [
        check("up", "tcp", host="127.0.0.1", port=silent_port),
        check("down", "tcp", host="127.0.0.1", port=closed_port()),
    ]
    assert run_checks(checks, host, tmp_path) == {"up": True, "down": False}


def test_http_check_requires_the_exact_status(host, tmp_path, http_url):
    checks = [
        check("ok", "http", url=f"{http_url}/ok", status=200),
        check("redirect", "http", url=f"{http_url}/moved", status=301),
        check("wrong", "http", url=f"{http_url}/missing", status=200),
        check("refused", "http", url=f"http://127.0.0.1:{closed_port()}/", status=200),
    ]
    assert run_checks(checks, host, tmp_path) == {
        "ok": True,
        "redirect": True,
        "wrong": False,
        "refused": False,
    }


def test_http_check_against_a_server_that_never_answers_is_down_within_its_timeout(
    host, tmp_path, silent_port
):
    result = run_checks(
        [check("hung", "http", timeout_s=1, url=f"http://127.0.0.1:{silent_port}/", status=200)],
        host,
        tmp_path,
    )
    assert result == {"hung": False}


def test_service_check_asks_the_service_manager(host, tmp_path):
    checks = [
        check("ssh", "service", service="sshd"),
        check("cron", "service", service="cron"),
        check("ghost", "service", service="ghost"),
    ]
    assert run_checks(checks, host, tmp_path) == {"ssh": True, "cron": False, "ghost": False}
    assert ("systemctl", "is-active", "sshd") in host.commands


def test_file_check_looks_below_the_root_and_not_through_an_escaping_symlink(host, tmp_path):
    root = tmp_path / "root"
    (root / "run").mkdir(parents=True)
    (root / "run/app.ready").write_text("")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside/flag").write_text("")
    (root / "escape").symlink_to(tmp_path / "outside")
    checks = [
        check("ready", "file", path="/run/app.ready"),
        check("missing", "file", path="/run/nope"),
        check("escape", "file", path="/escape/flag"),
        check("dotdot", "file", path="/../outside/flag"),
    ]
    assert run_checks(checks, host, root) == {
        "ready": True,
        "missing": False,
        "escape": False,
        "dotdot": False,
    }


def test_command_check_runs_argv_without_a_shell_and_honours_its_timeout(host, tmp_path):
    py = sys.executable
    checks = [
        check("true", "command", argv=[py, "-c", "pass"]),
        check("false", "command", argv=[py, "-c", "raise SystemExit(3)"]),
        check("no-shell", "command", argv=["exit 0"]),
        check("slow", "command", timeout_s=1, argv=[py, "-c", "import time; time.sleep(30)"]),
        check("missing", "command", argv=["/nonexistent/treadle-check"]),
    ]
    assert run_checks(checks, host, tmp_path) == {
        "true": True,
        "false": False,
        "no-shell": False,
        "slow": False,
        "missing": False,
    }


def test_no_checks_is_an_empty_result(host, tmp_path):
    assert run_checks([], host, tmp_path) == {}


def test_a_check_hung_past_its_timeout_is_not_started_again_each_cycle(host, tmp_path):
    """A server that trickles its headers keeps http.client reading past any timeout: one thread, not one per cycle."""
    (tmp_path / "ready").write_text("")
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    stop = threading.Event()
    clients: list[socket.socket] = []

    def trickle() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            clients.append(conn)
            conn.sendall(b"HTTP/1.1 200 OK\r\n")

    def drip() -> None:
        while not stop.wait(0.2):
            for conn in list(clients):
                try:
                    conn.sendall(b"X-Slow: y\r\n")
                except OSError:
                    pass

    threading.Thread(target=trickle, daemon=True).start()
    threading.Thread(target=drip, daemon=True).start()
    hung = check(
        "trickle",
        "http",
        timeout_s=1,
        url=f"http://127.0.0.1:{server.getsockname()[1]}/",
        status=200,
    )
    running: dict = {}
    try:
        for _ in range(4):
            assert run_checks(
                [hung, check("sure", "file", path="/ready")], host, tmp_path, running
            ) == {"trickle": False, "sure": True}
        alive = [t for t in threading.enumerate() if t.name == "health-trickle"]
        assert len(alive) == 1 and len(clients) == 1
    finally:
        stop.set()
        for conn in clients:
            conn.close()
        server.close()
    alive[0].join(10)
    assert run_checks([check("sure", "file", path="/ready")], host, tmp_path, running) == {
        "sure": True
    }
    assert "trickle" not in running  # finished threads are forgotten
