"""The controller's HTTP API (console included) served from a test's own ApiContext, on 127.0.0.1."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn

from treadle.daemon.api import ApiContext, build_app


@contextmanager
def serving(ctx: ApiContext) -> Iterator[str]:
    """The API (console included) on 127.0.0.1, port 0; its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(build_app(ctx), log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    if not server.started:  # a URL nobody answers would fail the test far from its cause
        server.should_exit = True
        thread.join(timeout=10)
        raise AssertionError("the API server did not start (see its log above)")
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
