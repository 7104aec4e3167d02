"""What a kill -9 leaves behind is recovered from: a restart owed, temp files in the state dir.

The kill is real: ``treadle-agent once`` runs as a process whose service
manager is a ``systemctl`` script first on PATH, and that script kills the
agent with SIGKILL the moment it is asked to restart a unit (after the file
that notifies the unit was written, before the restart is done).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from treadle_agent.state import StateStore

SYSTEMCTL = """#!/bin/sh
echo "$@" >> "{log}"
case "$1" in
  restart) if [ -e "{kill}" ]; then rm -f "{kill}"; kill -9 $PPID; sleep 5; fi ;;
  is-active) echo active ;;
  is-enabled) echo enabled ;;
  show) echo "NeedDaemonReload=no" ;;
esac
exit 0
"""


def _restarts(log: Path) -> list[str]:
    """The restarts the service manager was asked for (it is also asked what it needs before each)."""
    return [line for line in log.read_text().splitlines() if line.startswith("restart ")]


def _agent(config: Path, bin_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    return subprocess.run(
        [sys.executable, "-m", "treadle_agent.cli", "once", "--config", str(config)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_restart_owed_by_a_changed_file_survives_a_kill_9_before_the_restart(
    tmp_path, server, keys, kit
):
    bin_dir, log, kill = tmp_path / "bin", tmp_path / "systemctl.log", tmp_path / "kill-on-restart"
    bin_dir.mkdir()
    (bin_dir / "systemctl").write_text(SYSTEMCTL.format(log=log, kill=kill))
    (bin_dir / "systemctl").chmod(0o755)
    config = kit.write_config(tmp_path, keys.trust_root, [server.url()], service_manager="systemd")
    doc = kit.manifest_doc(generation=1, files={"/etc/app.conf": "v = 1\n"})
    doc["resources"][0]["notify"] = ["app"]
    server.serve(kit.signed(doc, keys.signers))
    kill.touch()
    first = _agent(config, bin_dir)
    assert first.returncode == -signal.SIGKILL, first.stderr
    assert (
        tmp_path / "root/etc/app.conf"
    ).read_text() == "v = 1\n"  # changed, and the restart never happened
    assert _restarts(log) == ["restart app"]
    second = _agent(config, bin_dir)
    assert second.returncode == 0, second.stderr
    assert _restarts(log) == ["restart app", "restart app"]  # before: the restart was lost for good
    third = _agent(config, bin_dir)
    assert third.returncode == 0 and _restarts(log) == ["restart app", "restart app"]  # owed once


def test_failing_notifying_file_owes_no_restart(tmp_path, server, keys, kit):
    """The pending record is taken back when the file could not be changed: no restart every run."""
    bin_dir, log = tmp_path / "bin", tmp_path / "systemctl.log"
    bin_dir.mkdir()
    (bin_dir / "systemctl").write_text(SYSTEMCTL.format(log=log, kill=tmp_path / "never"))
    (bin_dir / "systemctl").chmod(0o755)
    config = kit.write_config(tmp_path, keys.trust_root, [server.url()], service_manager="systemd")
    (tmp_path / "root/etc/app.conf").mkdir(
        parents=True
    )  # a directory where the file should be: the write fails
    doc = kit.manifest_doc(generation=1, files={"/etc/app.conf": "v = 1\n"})
    doc["resources"][0]["notify"] = ["app"]
    server.serve(kit.signed(doc, keys.signers))
    assert _agent(config, bin_dir).returncode == 1
    assert not log.exists() or "restart" not in log.read_text()


def _dead_pid() -> int:
    pid = 4_000_000
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except PermissionError:
            pass
        pid += 1


def test_temp_files_of_a_killed_state_write_are_removed_at_start(tmp_path):
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    stale = state / f".envelope.json.tmp-{_dead_pid()}"
    stale.write_bytes(b"x" * 3_000_000)
    live = state / f".inventory.json.tmp-{os.getppid()}"  # a writer still running: left alone
    live.write_bytes(b"y")
    StateStore(state).load()
    assert not stale.exists() and live.exists()
