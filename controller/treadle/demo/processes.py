"""The demo's processes: one controller and N agents, started and always stopped.

:class:`Fleet` is a context manager: leaving it (normally, on an error, on
Ctrl-C, or on SIGTERM, which :func:`sigterm_as_interrupt` turns into
KeyboardInterrupt) sends SIGTERM to every process it started, waits for them
and kills those that do not stop in time. Each child is also started under
``setpriv --pdeathsig KILL`` (util-linux), so that even a demo killed with
SIGKILL leaves nothing behind. setpriv sets the signal a moment after the
demo's ``Popen`` returned: a demo killed within that moment (a loaded machine
makes it long) would leave the child to a new parent, whose death never comes.
So a shell between setpriv and the program checks, once the signal is set,
that its parent is still the demo, and runs nothing otherwise
(:func:`_dying_with_parent`). Not with a ``preexec_fn``: that makes the
interpreter run its at-fork hooks, and a Ctrl-C or SIGTERM handled inside
them is swallowed — and can leave the logging module's lock held, which
deadlocks every thread that logs (the demo's observer threads did). :class:`MemoryMeter` samples the resident memory of the demo and all
its descendants (the agents' short-lived verification children included).

Raises:
    UsageError: a process cannot be started, or exits while the demo needs it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from treadle.errors import UsageError

#: How long processes get to stop after SIGTERM before they are killed.
STOP_GRACE_S = 10.0
#: A child's log file is rotated (copied to ``<name>.log.1``, then truncated) once it passes this size.
LOG_MAX_BYTES = 8 * 2**20
#: Starts a program with the parent-death signal set (util-linux; None where it is missing: Fleet.stop still applies).
_SETPRIV = shutil.which("setpriv") if sys.platform == "linux" else None


#: Run by ``sh`` once setpriv has set the signal: ``$PPID`` is its parent then, the demo only if it is still alive.
_STILL_MY_PARENT = 'test "$PPID" = "$1" || exit 0; shift; exec "$@"'


def _dying_with_parent(argv: list[str], parent: int | None = None) -> list[str]:
    """``argv`` run so that it dies with ``parent`` (this process), also if that died before the signal was set."""
    if not _SETPRIV:
        return argv
    expected = str(os.getpid() if parent is None else parent)
    return [
        _SETPRIV,
        "--pdeathsig",
        "KILL",
        "--",
        "/bin/sh",
        "-c",
        _STILL_MY_PARENT,
        "sh",
        expected,
        *argv,
    ]


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    log: Path
    _log_file: IO[bytes]

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class Fleet:
    """Every process the demo started, by name."""

    logs: Path
    children: dict[str, Child] = field(default_factory=dict)

    def start(self, name: str, argv: list[str], cwd: Path) -> Child:
        """Start ``argv`` with its output in ``logs/<name>.log``.

        Raises:
            UsageError: the program cannot be started.
        """
        log_path = self.logs / f"{name}.log"
        log_file = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        try:
            process = subprocess.Popen(
                _dying_with_parent(argv),
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        except OSError as e:
            log_file.close()
            raise UsageError(f"cannot start {name} ({argv[0]}): {e.strerror}") from e
        child = Child(name, process, log_path, log_file)
        self.children[name] = child
        return child

    def check_alive(self) -> None:
        """Raises UsageError naming the first process that exited, with the end of its log."""
        for child in self.children.values():
            code = child.process.poll()
            if code is not None:
                raise UsageError(
                    f"{child.name} exited with code {code}; the end of {child.log}:\n{child.tail()}"
                )

    def rotate_logs(self, max_bytes: int = LOG_MAX_BYTES) -> list[str]:
        """Copy each log above ``max_bytes`` to ``<name>.log.1`` and truncate it; the names rotated.

        Copy and truncate, as logrotate's ``copytruncate``: the children keep
        writing to their descriptor, opened for appending, so their next line
        lands at the start of the emptied file. At most twice ``max_bytes``
        per process stays on disk, however long the fleet runs.
        """
        rotated = []
        for child in self.children.values():
            try:
                if child.log.stat().st_size <= max_bytes:
                    continue
                shutil.copyfile(child.log, child.log.with_name(child.log.name + ".1"))
                os.truncate(child.log, 0)
            except OSError:
                continue  # a full disk: the next call tries again
            rotated.append(child.name)
        return rotated

    def pids(self) -> list[int]:
        return [c.process.pid for c in self.children.values() if c.process.poll() is None]

    def stop(self) -> list[str]:
        """SIGTERM to all, then SIGKILL to those still running after STOP_GRACE_S; returns the names killed."""
        for child in self.children.values():
            if child.process.poll() is None:
                child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        killed = []
        for child in self.children.values():
            try:
                child.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.process.kill()
                child.process.wait()
                killed.append(child.name)
            child._log_file.close()
        return killed

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def controller_argv(config: Path) -> list[str]:
    return [sys.executable, "-m", "treadle.cli", "controller", "run", "--config", str(config)]


def agent_argv(config: Path) -> list[str]:
    return [sys.executable, "-m", "treadle_agent.cli", "run", "--config", str(config)]


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises KeyboardInterrupt like Ctrl-C, so every ``finally`` runs."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _children_map() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name may contain spaces and parentheses: the ppid follows the last ")".
        ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def tree_rss_bytes(root_pid: int) -> int:
    """Resident memory of ``root_pid`` and all its descendants (0 where /proc is unreadable)."""
    if not os.path.isdir("/proc"):
        return 0
    tree, total, todo = _children_map(), 0, [root_pid]
    while todo:
        pid = todo.pop()
        total += _rss_bytes(pid)
        todo.extend(tree.get(pid, ()))
    return total


class MemoryMeter:
    """Samples :func:`tree_rss_bytes` of this process in a thread; ``peak_bytes`` is the highest sum seen."""

    def __init__(self, interval_s: float = 0.5, sample: Callable[[], int] | None = None) -> None:
        self.interval_s = interval_s
        self.peak_bytes = 0
        self._sample = sample or (lambda: tree_rss_bytes(os.getpid()))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memory-meter", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, self._sample())
            self._stop.wait(self.interval_s)

    def __enter__(self) -> MemoryMeter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
