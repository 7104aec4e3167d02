"""fork_map: a list of independent jobs shared between this process and one forked helper.

Why a forked helper: the jobs (rendering batches of nodes) read the render's
state — parsed documents, merged overlays, compiled templates. A helper forked
at the start of the map already has all of it, copy-on-write, so nothing
goes out and only results come back (pickled).

Sharing: both processes take jobs from one pair of counters in shared memory,
the helper from the front, this process from the back, until they meet. A
helper that gets little CPU on a busy machine therefore just does fewer jobs
instead of holding up the map. Results are put back in job order, so the
outcome is the same bytes as running every job here; a job that failed or
was lost in the helper (it raised, or the helper died) is run again here, so
its error surfaces exactly as without the helper.

No thread in this process serves the helper: it claims its jobs itself and
writes its results, length-prefixed, to a pipe (enlarged to hold a couple of
results) that this process drains between its own jobs. With a process pool's
feeder and result threads instead, each hand-over waited for this process's
interpreter lock while it rendered, and a helper blocked on a full pipe did
a third of the jobs it could (measured on a 100,000-node render).

Forking is skipped when it is unsafe or pointless: without ``fork``, on one
CPU, with other threads running (a fork copies only the calling thread, and
a lock another thread holds would never be released in the child: the
controller daemon therefore always renders serially), or for one job.
"""

from __future__ import annotations

import contextlib
import fcntl
import multiprocessing
import os
import pickle
import signal
import struct
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

J = TypeVar("J")
R = TypeVar("R")

#: Bytes of the pipe from the helper: a couple of results of a 100-node render job (about 0.5 MB each).
_PIPE_BYTES = 1 << 20
_HEADER = struct.Struct("<Q")
_FAILED = b""  # the helper's record for a job it could not do: run again here


def usable_cpus() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def can_fork() -> bool:
    """Whether forking a helper is safe and could help here."""
    return (
        "fork" in multiprocessing.get_all_start_methods()
        and threading.active_count() == 1
        and usable_cpus() > 1
    )


def fork_map(jobs: Sequence[J], run: Callable[[J], R], parallel: bool = True) -> list[R]:
    """``[run(job) for job in jobs]``, shared with one forked helper when ``parallel`` and possible.

    ``run`` must be deterministic and its results picklable.

    Raises:
        Whatever ``run`` raises for a job (run again here when it failed in the helper).
    """
    if not parallel or len(jobs) < 2 or not can_fork():
        return [run(job) for job in jobs]
    claims = multiprocessing.get_context("fork").Array(
        "q", [0, len(jobs)]
    )  # [next from the front, end of the front]
    read_end, write_end = os.pipe()
    with contextlib.suppress(OSError):
        fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, _PIPE_BYTES)
    pid = os.fork()
    if pid == 0:  # the helper: never returns
        os.close(read_end)
        _helper(jobs, run, claims, write_end)
    os.close(write_end)
    results: dict[int, R] = {}
    inbox = _Inbox(read_end)
    try:
        while (index := _claim_back(claims)) is not None:
            results[index] = run(jobs[index])
            inbox.drain(results)
        inbox.drain(results, until_closed=True)
    finally:
        inbox.close()
        if len(results) < len(jobs):  # this process failed: the helper must not outlive the map
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    return [results[i] if i in results else run(jobs[i]) for i in range(len(jobs))]


def _claim_front(claims: Any) -> int | None:
    with claims.get_lock():
        index = claims[0]
        if index >= claims[1]:
            return None
        claims[0] = index + 1
        return int(index)


def _claim_back(claims: Any) -> int | None:
    with claims.get_lock():
        index = claims[1] - 1
        if index < claims[0]:
            return None
        claims[1] = index
        return int(index)


def _helper(jobs: Sequence[Any], run: Callable[[Any], Any], claims: Any, out: int) -> None:
    """Run jobs from the front and write ``(index, pickled result)`` records to ``out``; exit without cleanup."""
    try:
        while (index := _claim_front(claims)) is not None:
            try:
                data = pickle.dumps(run(jobs[index]), pickle.HIGHEST_PROTOCOL)
            except Exception:  # noqa: BLE001  run again here, where its error is raised
                data = _FAILED
            _write_all(out, _HEADER.pack(index) + _HEADER.pack(len(data)) + data)
    finally:
        os._exit(0)  # the parent's atexit handlers and buffered output are not the helper's


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class _Inbox:
    """The helper's results as they arrive on the pipe, read without blocking between this process's jobs."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buffer = bytearray()
        os.set_blocking(fd, False)

    def drain(self, results: dict[int, Any], until_closed: bool = False) -> None:
        """Read what the pipe holds (everything up to the helper's exit when ``until_closed``) into ``results``."""
        if until_closed:
            os.set_blocking(self.fd, True)
        while True:
            try:
                chunk = os.read(self.fd, _PIPE_BYTES)
            except BlockingIOError:
                break
            if not chunk:
                break
            self.buffer += chunk
            self._parse(results)

    def _parse(self, results: dict[int, Any]) -> None:
        """Move each complete record of the buffer into ``results`` (a failed job's record is left out)."""
        offset, size = 0, 2 * _HEADER.size
        buffer = self.buffer
        while len(buffer) - offset >= size:
            (index,) = _HEADER.unpack_from(buffer, offset)
            (length,) = _HEADER.unpack_from(buffer, offset + _HEADER.size)
            end = offset + size + length
            if len(buffer) < end:
                break
            if length:
                results[index] = pickle.loads(buffer[offset + size : end])
            offset = end
        del buffer[:offset]

    def close(self) -> None:
        os.close(self.fd)
