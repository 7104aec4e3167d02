"""``treadle-agent`` as a real process against a real HTTP server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

#: DESIGN.md's agent metrics: family name -> (type, label names). Counters are
#: named without ``_total`` by the parser; their samples carry it.
CONTRACT = {
    "treadle_agent_info": ("gauge", {"node", "site", "cluster", "version"}),
    "treadle_agent_manifest_generation": ("gauge", set()),
    "treadle_agent_applied_generation": ("gauge", set()),
    "treadle_agent_last_apply_success": ("gauge", set()),
    "treadle_agent_last_apply_timestamp_seconds": ("gauge", set()),
    "treadle_agent_apply_duration_seconds": ("histogram", {"le"}),
    "treadle_agent_resources": ("gauge", {"type", "status"}),
    "treadle_agent_health_check_up": ("gauge", {"check"}),
    "treadle_agent_healthy": ("gauge", set()),
    "treadle_agent_verify_failures": ("counter", {"reason"}),
    "treadle_agent_fetch_failures": ("counter", {"reason"}),
    "treadle_agent_manifest_expiry_timestamp_seconds": ("gauge", set()),
    "treadle_agent_lifecycle": ("gauge", {"state"}),
}


def _agent(*args: str, **kw) -> subprocess.Popen:  # type: ignore[no-untyped-def]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "treadle_agent.cli", *args],
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **kw,
    )


def _wait_for(predicate, timeout_s: float = 20.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not reached")


def test_once_as_a_process_applies_the_served_manifest_and_logs_json(tmp_path, server, keys, kit):
    doc = kit.manifest_doc(generation=2, files={"/etc/motd": "from the controller\n"})
    server.serve(kit.signed(doc, keys.signers))
    config = kit.write_config(tmp_path, keys.trust_root, [server.url()])
    p = _agent("once", "--config", str(config), "--log-format", "json")
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    assert (tmp_path / "root/etc/motd").read_text() == "from the controller\n"
    events = [json.loads(line) for line in err.splitlines()]
    assert {"manifest.accepted", "cycle.done"} <= {e["event"] for e in events}
    done = next(e for e in events if e["event"] == "cycle.done")
    assert done["generation"] == 2 and done["ok"] is True


def test_once_exits_1_when_the_manifest_is_refused(tmp_path, server, keys, make_keys, kit):
    server.serve(kit.signed(kit.manifest_doc(), make_keys().signers))
    config = kit.write_config(tmp_path, keys.trust_root, [server.url()])
    p = _agent("once", "--config", str(config))
    _, err = p.communicate(timeout=60)
    assert p.returncode == 1 and "verify.refused" in err and "reason=signature" in err


@pytest.fixture
def running(tmp_path, server, keys, kit):
    doc = kit.manifest_doc(generation=3)
    doc["health"] = [{"name": "motd", "type": "file", "path": "/etc/motd", "timeout_s": 1}]
    server.serve(kit.signed(doc, keys.signers))
    config = kit.write_config(tmp_path, keys.trust_root, [server.url()])
    port_file = tmp_path / "metrics.port"
    p = _agent("run", "--config", str(config), "--metrics-port-file", str(port_file))
    try:
        port = int(_wait_for(lambda: port_file.exists() and port_file.read_text().strip()))
        yield p, f"http://127.0.0.1:{port}/metrics"
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()


def _sample(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return s.value
    raise AssertionError(f"{name}{labels} not exposed")


def _scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.read().decode()


def test_metrics_of_a_running_agent_match_the_contract_names_and_labels(running):
    p, url = running
    text = _wait_for(
        lambda: (t := _scrape(url)) and "treadle_agent_applied_generation 3.0" in t and t
    )
    families = {
        f.name: f
        for f in text_string_to_metric_families(text)
        if f.name.startswith("treadle_agent_")
    }
    seen = {
        name: (f.type, {k for s in f.samples for k in s.labels}) for name, f in families.items()
    }
    assert seen == CONTRACT
    reasons = {s.labels["reason"] for s in families["treadle_agent_verify_failures"].samples}
    assert reasons == {
        "envelope",
        "payload_type",
        "signature",
        "threshold",
        "schema",
        "node",
        "rollback",
        "equivocation",
        "expired",
        "internal",
    }
    fetch = {s.labels["reason"] for s in families["treadle_agent_fetch_failures"].samples}
    assert fetch == {"connect", "timeout", "http_status", "too_large", "deadline", "other"}
    info = families["treadle_agent_info"].samples[0].labels
    assert info["node"] == "node-1" and info["site"] == "site-a" and info["cluster"] == "c1"


def test_sigterm_stops_the_daemon_cleanly(running):
    p, url = running
    _wait_for(lambda: "treadle_agent_applied_generation 3.0" in _scrape(url))
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=20)
    assert p.returncode == 0 and "agent.stopping signal=SIGTERM" in err and "agent.stopped" in err


def test_daemon_refuses_an_untrusted_manifest_in_its_verifier_process_and_counts_it(
    tmp_path, server, keys, make_keys, kit
):
    server.serve(kit.signed(kit.manifest_doc(generation=3), make_keys().signers))
    config = kit.write_config(tmp_path, keys.trust_root, [server.url()])
    port_file = tmp_path / "metrics.port"
    p = _agent("run", "--config", str(config), "--metrics-port-file", str(port_file))
    try:
        port = int(_wait_for(lambda: port_file.exists() and port_file.read_text().strip()))
        url = f"http://127.0.0.1:{port}/metrics"
        _wait_for(
            lambda: (
                _sample(_scrape(url), "treadle_agent_verify_failures_total", reason="signature")
                >= 1
            )
        )
        assert not (tmp_path / "root/etc/motd").exists()
    finally:
        p.send_signal(signal.SIGTERM)
        p.communicate(timeout=20)
    assert p.returncode == 0


def test_sigterm_cancels_a_fetch_in_flight_instead_of_waiting_for_its_deadline(
    tmp_path, server, keys, kit
):
    server.serve(b"", mode="trickle")
    config = kit.write_config(
        tmp_path, keys.trust_root, [server.url()], fetch_deadline_s=120, read_timeout_s=120
    )
    port_file = tmp_path / "metrics.port"
    p = _agent("run", "--config", str(config), "--metrics-port-file", str(port_file))
    _wait_for(lambda: port_file.exists() and len(server.requests) >= 1)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=30)  # far below the 120 s fetch deadline
    assert p.returncode == 0 and "agent.stopped" in err and "fetch.failed" not in err


def test_daemon_keeps_running_through_hostile_responses_and_counts_each(running, server, keys, kit):
    """Responses that crashed the agent before (a 5,000-digit integer, an ETag that is not ASCII) and a
    signature flood: each refused and counted by the daemon, which goes on enforcing generation 3."""
    p, url = running
    _wait_for(lambda: "treadle_agent_applied_generation 3.0" in _scrape(url))
    good = server.routes[kit.MANIFEST_PATH].body
    envelope = json.loads(good)
    server.serve(json.dumps(envelope)[:-1].encode() + b', "n": ' + b"9" * 5000 + b"}")
    _wait_for(
        lambda: _sample(_scrape(url), "treadle_agent_verify_failures_total", reason="envelope") >= 1
    )
    envelope["signatures"] = envelope["signatures"] * 5_000
    server.serve(json.dumps(envelope).encode())
    _wait_for(
        lambda: _sample(_scrape(url), "treadle_agent_verify_failures_total", reason="envelope") >= 2
    )
    server.serve(good)
    server.routes[kit.MANIFEST_PATH].etag = '"caf\xe9"'
    _wait_for(lambda: len(server.requests) > 3 and server.requests[-1][1] is None)
    n = len(server.requests)
    _wait_for(
        lambda: len(server.requests) > n + 1
    )  # later requests went out, without the poisoned ETag
    assert all(inm is None or inm.isascii() for _, inm in server.requests)
    assert p.poll() is None
    text = _scrape(url)
    assert (
        _sample(text, "treadle_agent_applied_generation") == 3
        and _sample(text, "treadle_agent_last_apply_success") == 1
    )
