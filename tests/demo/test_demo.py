"""`treadle demo`: the workspace it builds, the processes it always stops, and the whole story for real."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from treadle.cli import main
from treadle.demo import processes, workspace
from treadle.demo.processes import MemoryMeter, tree_rss_bytes
from treadle.errors import UsageError


def _demo(*args: str) -> list[str]:
    return [sys.executable, "-m", "treadle.cli", "demo", *args]


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if text.encode() in cmdline:
                found.append(int(entry))
    return found


@given(st.integers(workspace.MIN_NODES, workspace.MAX_NODES))
def test_every_size_gives_each_cluster_a_node_and_batch_a_partial_wave(total: int) -> None:
    sizes = workspace.cluster_sizes(total)
    assert sum(sizes.values()) == total and min(sizes.values()) >= 1
    # The batch canary is in the first wave; a quarter of the other batch nodes must be at least one.
    assert int(0.25 * (sizes[("meyrin", "batch")] - 1)) >= 1


@pytest.mark.parametrize("total", [0, workspace.MIN_NODES - 1, workspace.MAX_NODES + 1])
def test_a_size_outside_the_range_is_refused_with_the_range(total: int) -> None:
    with pytest.raises(
        UsageError, match=f"between {workspace.MIN_NODES} and {workspace.MAX_NODES}"
    ):
        workspace.cluster_sizes(total)


def test_the_grown_fabric_is_valid_with_unique_loopback_addresses_and_ports(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ws = workspace.build(tmp_path / "ws", 9, workspace.Timing.fast())
    assert len({n.address for n in ws.nodes}) == 9 and all(
        n.address.startswith("127.0.0.") for n in ws.nodes
    )
    assert len({n.metrics_port for n in ws.nodes} | {ws.controller_port}) == 10
    assert sorted(n.name for n in ws.nodes if n.canary) == ["batch-001", "login-001", "storage-001"]
    assert main(["validate", str(ws.bare), "--rev", "main"]) == 0
    out = tmp_path / "targets.json"
    assert main(["targets", str(ws.bare), "--rev", "main", "--out", str(out)]) == 0
    expected = sorted(f"{n.address}:{n.metrics_port}" for n in ws.nodes)
    assert (
        sorted(t for e in json.loads(ws.targets_file.read_text()) for t in e["targets"]) == expected
    )
    assert sorted(t for e in json.loads(out.read_text()) for t in e["targets"]) == expected
    manifest = subprocess.run(
        [sys.executable, "-m", "treadle.cli", "render", str(ws.admin), "--node", "batch-002"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    resources = json.loads(manifest)["resources"]
    assert {("package", "slurmd"), ("service", "slurmd"), ("service", "chrony")} <= {
        (r["type"], r.get("name")) for r in resources
    }
    config = ws.agent_config("batch-002").read_text()
    assert 'package_manager = "simulated"' in config and 'service_manager = "simulated"' in config
    assert (ws.node_dir("batch-002") / "proc/sys/vm/swappiness").is_file()


def test_a_non_empty_workspace_is_refused_and_left_as_it_was(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    done = subprocess.run(
        _demo("--workspace", str(tmp_path), "--fast", "--nodes", "8"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert f"--workspace {tmp_path}: not empty" in done.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["precious.txt"]


def test_a_bad_node_count_is_a_usage_error_before_anything_is_created(tmp_path: Path) -> None:
    done = subprocess.run(
        _demo("--workspace", str(tmp_path / "ws"), "--nodes", "3"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "--nodes 3" in done.stderr
    assert not (tmp_path / "ws").exists()


def test_the_memory_meter_counts_this_process_and_its_children() -> None:
    alone = tree_rss_bytes(os.getpid())
    child = subprocess.Popen(
        [sys.executable, "-c", "import time; x = bytearray(64 << 20); time.sleep(30)"]
    )
    try:
        with MemoryMeter(interval_s=0.05) as meter:
            deadline = time.monotonic() + 20
            while meter.peak_bytes < alone + (60 << 20) and time.monotonic() < deadline:
                time.sleep(0.05)
        assert meter.peak_bytes >= alone + (60 << 20)
    finally:
        child.kill()
        child.wait()


def test_sigterm_stops_the_controller_and_every_agent(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    err = (
        tmp_path / "demo.err"
    )  # a file, not a pipe nobody reads until the end (a full pipe would block the demo)
    with open(err, "w") as stderr:
        demo = subprocess.Popen(
            _demo("--workspace", str(ws), "--fast", "--nodes", "8"),
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            text=True,
        )
    try:
        deadline = time.monotonic() + 60
        while len(_processes_mentioning(str(ws))) < 9 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(_processes_mentioning(str(ws))) >= 9, "the controller and 8 agents never ran"
        demo.send_signal(signal.SIGTERM)
        try:
            assert demo.wait(timeout=60) != 0
        except subprocess.TimeoutExpired:
            demo.send_signal(signal.SIGUSR1)  # the demo writes every thread's stack to stderr
            time.sleep(2)
            raise AssertionError(
                f"the demo did not stop within 60 s of SIGTERM; its stacks:\n{err.read_text()[-6000:]}"
            ) from None
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    left = _processes_mentioning(str(ws))
    deadline = time.monotonic() + 10
    while left and time.monotonic() < deadline:  # a child may still be in its last instructions
        time.sleep(0.1)
        left = _processes_mentioning(str(ws))
    assert left == [], [
        Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ") for pid in left
    ]


@pytest.mark.timeout(420)
def test_the_demo_story_passes_every_scene_and_keeps_running_until_interrupted(
    tmp_path: Path,
) -> None:
    ws = tmp_path / "ws"
    out = tmp_path / "demo.out"
    with open(out, "w") as stdout:
        demo = subprocess.Popen(
            _demo("--workspace", str(ws), "--fast", "--nodes", "8", "--keep-running"),
            stdout=stdout,
            stderr=subprocess.STDOUT,
            text=True,
        )
    try:
        deadline = time.monotonic() + 360
        while (
            not (ws / "summary.json").exists()
            and demo.poll() is None
            and time.monotonic() < deadline
        ):
            time.sleep(0.5)
        assert demo.poll() is None, out.read_text()[-4000:]
        summary = json.loads((ws / "summary.json").read_text())
        status = httpx.get(f"{summary['controller_url']}/v1/status", timeout=10).json()
        assert status["nodes"]["total"] == 8
        demo.send_signal(signal.SIGINT)
        returncode = demo.wait(timeout=60)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    printed = out.read_text()
    failed = [s for s in summary["scenes"] if not s["passed"]]
    assert returncode == 0, f"{failed}\n{printed[-4000:]}"
    assert len(summary["scenes"]) == 4 and summary["scenes"][0]["title"] == "First convergence"
    nodes = {n["node"]: n for n in summary["nodes"]}
    assert len(nodes) == 8 and all(n["healthy"] and n["generation"] > 0 for n in nodes.values())
    assert nodes["batch-004"]["lifecycle"] == "maintenance"
    bad = summary["scenes"][2]["details"]
    assert any(d.startswith("no node outside the canary wave ever applied it") for d in bad)
    assert any(
        d.startswith("canaries back on the previous content under a higher generation") for d in bad
    )
    assert any(d.startswith("the controller pushed branch treadle/revert-") for d in bad)
    branches = subprocess.run(
        ["git", "branch", "--list", "treadle/revert-*"],
        cwd=ws / "fabric.git",
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert branches.strip()
    for node in nodes:
        root = ws / "nodes" / node / "root"
        conf = next(
            p for p in (root / "etc/chrony/chrony.conf", root / "etc/chrony.conf") if p.exists()
        ).read_text()
        assert "server ntp3.example.org iburst" in conf and "makestep 10" not in conf
    assert (
        "Scenes" in printed
        and f"{summary['controller_url']}/v1/status" in printed
        and "keeps running" in printed
    )
    assert _processes_mentioning(str(ws)) == []


def test_a_killed_demo_takes_its_processes_with_it(tmp_path: Path) -> None:
    # SIGKILL runs no cleanup: PR_SET_PDEATHSIG on each child is what stops them.
    ws = tmp_path / "ws"
    demo = subprocess.Popen(
        _demo("--workspace", str(ws), "--fast", "--nodes", "8"),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    launched = threading.Event()

    def watch_output() -> (
        None
    ):  # the demo says so once it has started the controller and every agent
        assert demo.stdout is not None
        for line in demo.stdout:
            if "started the controller and" in line:
                launched.set()

    threading.Thread(target=watch_output, daemon=True).start()
    try:
        assert launched.wait(180), "the demo never started its agents"
        assert len(_processes_mentioning(str(ws))) >= 9, (
            "the controller and 8 agents are not running"
        )
    finally:
        demo.kill()
        demo.wait()
    deadline = time.monotonic() + 20
    while _processes_mentioning(str(ws)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _processes_mentioning(str(ws)) == []


def test_a_child_whose_demo_died_before_its_signal_was_set_runs_nothing(tmp_path: Path) -> None:
    # A demo killed right after Popen returned: the child finds another parent than the demo's pid.
    ran, orphan = tmp_path / "ran", tmp_path / "orphan"
    subprocess.run(processes._dying_with_parent(["touch", str(ran)]), check=True)
    other = os.getppid()  # any live pid but this process's
    subprocess.run(processes._dying_with_parent(["touch", str(orphan)], parent=other), check=True)
    assert ran.exists() and not orphan.exists()


_KILLED_AFTER_START = """
import os, signal, sys
from pathlib import Path
from treadle.demo.processes import Fleet
for _ in range({tries}):
    pid = os.fork()
    if pid == 0:  # a demo that starts a child and is killed as Popen returns
        Fleet(Path(sys.argv[1])).start("sleeper", ["sleep", "600"], Path(sys.argv[2]))
        os.kill(os.getpid(), signal.SIGKILL)
    os.waitpid(pid, 0)
"""


def _running_in(cwd: Path) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if Path(os.readlink(f"/proc/{entry}/cwd")) == cwd:
                    found.append(int(entry))
            except OSError:
                continue
    return found


def test_a_demo_killed_as_it_starts_a_child_leaves_nothing_behind(tmp_path: Path) -> None:
    # Without the parent check about a third of these children outlived their demo.
    logs, cwd = tmp_path / "logs", tmp_path / "cwd"
    logs.mkdir()
    cwd.mkdir()
    script = _KILLED_AFTER_START.format(tries=20)
    try:
        subprocess.run([sys.executable, "-c", script, str(logs), str(cwd)], check=True, timeout=120)
        deadline = time.monotonic() + 20  # a child that found no demo exits once it gets a CPU
        while _running_in(cwd) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _running_in(cwd) == []
    finally:
        for pid in _running_in(cwd):
            os.kill(pid, signal.SIGKILL)
