"""Daemons as child processes: started with their output in a log file, stopped, and waited on."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen  # type: ignore[type-arg]
    log: Path

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Send ``sig`` and wait (SIGKILL after 15 s)."""
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


def spawn(
    name: str, argv: list[str], log: Path, cwd: Path, env: dict[str, str] | None = None
) -> Proc:
    """Start ``argv`` with stdout and stderr appended to ``log``."""
    with log.open("ab") as out:
        p = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=cwd, env=env
        )
    return Proc(name, p, log)


def spawn_controller(config: Path, log: Path, cwd: Path, env: dict[str, str] | None = None) -> Proc:
    """`treadle controller run` on ``config``, logging JSON to ``log`` (what :func:`listening_port` reads)."""
    argv = [sys.executable, "-m", "treadle.cli", "controller", "run", "--config", str(config)]
    return spawn("controller", [*argv, "--log-format", "json"], log, cwd, env)


def agent_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """``treadle-agent args`` run to its end (at most 60 s), its output captured as text; no check of its exit.

    Unbuffered, so that an agent that dies mid-run still leaves all it printed.
    """
    return subprocess.run(
        [sys.executable, "-m", "treadle_agent.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        check=False,
    )


def wait_until(
    condition: Callable[[], bool],
    timeout_s: float,
    what: str,
    *,
    check: Callable[[], None] = lambda: None,
    ignore: tuple[type[BaseException], ...] = (),
    interval_s: float = 0.05,
    describe: Callable[[], str] = lambda: "",
) -> None:
    """Poll ``condition`` until it holds; ``check`` raises when waiting is pointless (a daemon died), and
    exceptions of the ``ignore`` types count as false.

    Raises:
        AssertionError: ``condition`` stayed false for ``timeout_s`` (with ``describe()`` appended).
    """
    deadline = time.monotonic() + timeout_s
    while True:
        check()
        try:
            if condition():
                return
        except ignore:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}\n{describe()}")
        time.sleep(interval_s)


def listening_port(proc: Proc, timeout_s: float = 60) -> int:
    """The port a controller started with ``--log-format json`` serves its API on (its ``api.listening`` event).

    Raises:
        AssertionError: the controller exited or did not listen in time (its log's tail is in the message).
    """
    found: list[int] = []

    def listening() -> bool:
        for line in proc.log.read_text().splitlines():
            if '"api.listening"' in line:
                found.append(int(json.loads(line)["port"]))
                return True
        return False

    def alive() -> None:
        if not proc.alive():
            raise AssertionError(
                f"{proc.name} exited ({proc.popen.returncode}): {proc.log.read_text()[-3000:]}"
            )

    wait_until(
        listening,
        timeout_s,
        f"{proc.name} to listen",
        check=alive,
        interval_s=0.02,
        describe=lambda: proc.log.read_text()[-3000:],
    )
    return found[0]
