"""A time limit on template rendering: a watchdog interrupts a render that runs too long.

A template is code from the fabric repository. The sandbox bounds what it may
touch and build, but not how long it may loop: two nested loops over large
ranges or lists would keep a render going for hours, and with it the
controller's pipeline (every later commit waits) or a pull request's
``treadle validate``. So each render runs under :func:`time_limit`.

How: one watchdog thread per process (started on first use, and again in a
forked child) looks at the renders in flight every ``_TICK_S`` and raises
:class:`RenderTimeout` inside any that has run past its deadline, with
CPython's ``PyThreadState_SetAsyncExc``: the exception is raised at the
render thread's next bytecode boundary, so template code (compiled to Python)
stops wherever it is. A lock makes the hand-over exact: the exception is only
sent while the render is registered as in flight, and a render that ends
unregisters under the same lock and cancels an exception sent but not yet
raised, so it can only ever surface inside the guarded block.
"""

from __future__ import annotations

import ctypes
import os
import threading
import time

_TICK_S = 0.05


class RenderTimeout(BaseException):
    """A render ran past its deadline. A BaseException, so that no ``except Exception`` on the way swallows it."""


class _Watchdog:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.deadlines: dict[
            int, float
        ] = {}  # thread id -> monotonic deadline of its render in flight
        self.thread: threading.Thread | None = None

    def ensure_running(self) -> None:
        if self.thread is None or not self.thread.is_alive():
            self.thread = threading.Thread(
                target=self._watch, name="treadle-render-watchdog", daemon=True
            )
            self.thread.start()

    def _watch(self) -> None:
        while True:
            time.sleep(_TICK_S)
            now = time.monotonic()
            with self.lock:
                for tid, deadline in list(self.deadlines.items()):
                    if now >= deadline:
                        del self.deadlines[
                            tid
                        ]  # sent once; the render raises it or cancels it on its way out
                        _set_async_exc(tid, RenderTimeout)


def _set_async_exc(tid: int, exc: type[BaseException] | None) -> None:
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(tid), ctypes.py_object(exc) if exc is not None else None
    )


_watchdog = _Watchdog()


def _after_fork_in_child() -> None:
    """A forked child has no watchdog thread, and may have copied the lock while it was held."""
    global _watchdog
    _watchdog = _Watchdog()


os.register_at_fork(after_in_child=_after_fork_in_child)


class time_limit:  # noqa: N801 (used as a function: ``with time_limit(2.0):``)
    """Run the block under a deadline of ``seconds``; past it, :class:`RenderTimeout` is raised inside the block.

    Not re-entrant within one thread: a nested limit replaces the outer one, which then ends with it (template
    renders never nest). A class rather than a generator: it guards every template render, so entering and
    leaving must cost little.
    """

    __slots__ = ("_dog", "_seconds", "_tid")

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds

    def __enter__(self) -> None:
        dog = self._dog = _watchdog
        if dog.thread is None:
            with dog.lock:
                dog.ensure_running()
        self._tid = threading.get_ident()
        dog.deadlines[self._tid] = (
            time.monotonic() + self._seconds
        )  # one dict store: atomic for the watchdog

    def __exit__(self, *exc: object) -> None:
        dog = self._dog
        with dog.lock:
            if dog.deadlines.pop(self._tid, None) is None:
                # The watchdog sent the exception (or is about to have it raised): cancel it if it is still pending.
                _set_async_exc(self._tid, None)
