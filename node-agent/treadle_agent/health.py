"""Health checks from the manifest: tcp, http, service, file, command.

Each check runs in its own thread under its own deadline (``timeout_s``), all
of them at once, so one hung check costs its timeout, not the sum. A check is
up only when it positively succeeds: a check that raises, overruns its
deadline or cannot be judged is down, never up.

- tcp: a TCP connection to ``host:port`` opens;
- http: ``GET url`` answers exactly ``status`` (redirects are not followed,
  so a 301 can be checked too);
- service: the service manager reports the unit active;
- file: the path exists below the managed root (never through a symlink
  leaving it);
- command: ``argv`` (no shell) exits 0.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from treadle_agent.contract.log import get_logger
from treadle_agent.host import Host
from treadle_agent.providers.paths import RootFS

log = get_logger("health")

#: Extra time a check's thread gets beyond its timeout before it counts as hung.
GRACE_S = 0.5


def _tcp(check: Mapping[str, Any], host: Host, root: Path) -> bool:
    with socket.create_connection((check["host"], check["port"]), timeout=check["timeout_s"]):
        return True


def _http(check: Mapping[str, Any], host: Host, root: Path) -> bool:
    import http.client  # 30 ms of imports (email parsing); only nodes with http checks pay for it
    import urllib.parse

    url = urllib.parse.urlsplit(check["url"])
    cls = http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection
    conn = cls(url.hostname or "", url.port, timeout=check["timeout_s"])
    try:
        target = (url.path or "/") + (f"?{url.query}" if url.query else "")
        conn.request("GET", target, headers={"User-Agent": "treadle-agent health check"})
        return conn.getresponse().status == check["status"]
    finally:
        conn.close()


def _service(check: Mapping[str, Any], host: Host, root: Path) -> bool:
    return host.services.is_active(check["service"])


def _file(check: Mapping[str, Any], host: Host, root: Path) -> bool:
    with RootFS(root) as fs:
        return fs.lstat(check["path"]) is not None


def _command(check: Mapping[str, Any], host: Host, root: Path) -> bool:
    return host.run(check["argv"], timeout_s=check["timeout_s"]).returncode == 0


CHECKS: Mapping[str, Callable[[Mapping[str, Any], Host, Path], bool]] = {
    "tcp": _tcp,
    "http": _http,
    "service": _service,
    "file": _file,
    "command": _command,
}


def run_check(check: Mapping[str, Any], host: Host, root: Path) -> bool:
    """One check, in the calling thread; any exception is down (and logged)."""
    try:
        return bool(CHECKS[check["type"]](check, host, Path(root)))
    except Exception as e:  # noqa: BLE001 - a check that cannot be judged is down, whatever the reason
        log.info("health.check_error", check=check.get("name"), error=f"{type(e).__name__}: {e}")
        return False


def run_checks(
    checks: Sequence[Mapping[str, Any]],
    host: Host,
    root: Path,
    running: dict[str, threading.Thread] | None = None,
) -> dict[str, bool]:
    """name -> up, for every check; all run concurrently, each within its own timeout.

    ``running``, kept by the caller from one run to the next, holds each
    check's last thread: a check whose thread from an earlier run is still
    going (an http server that trickles its headers keeps a read alive past
    any timeout) is not started again and counts as down, so a hung check
    costs one thread, not one per cycle (tests/providers/test_health.py).
    """
    results: dict[str, bool] = {c["name"]: False for c in checks}
    threads = []
    for c in checks:
        earlier = running.get(c["name"]) if running is not None else None
        if earlier is not None and earlier.is_alive():
            log.info(
                "health.check_error",
                check=c["name"],
                error="its check from an earlier cycle is still running",
            )
            continue

        def work(c: Mapping[str, Any] = c) -> None:
            results[c["name"]] = run_check(c, host, root)

        t = threading.Thread(target=work, name=f"health-{c['name']}", daemon=True)
        t.start()
        threads.append((c, t, time.monotonic() + c["timeout_s"] + GRACE_S))
        if running is not None:
            running[c["name"]] = t
    if running is not None:
        for name in [n for n, t in running.items() if not t.is_alive()]:
            del running[name]
    for c, t, deadline in threads:
        t.join(max(0.0, deadline - time.monotonic()))
        if t.is_alive():
            log.info(
                "health.check_error", check=c["name"], error=f"no answer within {c['timeout_s']} s"
            )
    # A hung thread may still write its result later; the copy taken now is what counts.
    up = {c["name"]: (results[c["name"]] and not t.is_alive()) for c, t, _ in threads}
    return {c["name"]: up.get(c["name"], False) for c in checks}
