"""Loopback peers for the health tests: agents that answer, refuse, or accept and never answer.

Each peer is a real socket on its own 127.x.y.z address, served by one asyncio
loop in a background thread:

- ``agent(node, text)``: answers GET with ``text`` (an exposition);
- ``hung()``: accepts, reads the request and never answers; it counts the
  connections open at once (the highest count is ``max_open``) and sets
  ``first_accepted`` when one arrives. A connection counts as open until its
  client closed it: at each accept, the other connections are checked for an
  end of stream already received, so a close the loop has not handled yet
  never inflates the count;
- ``refusing()``: a bound socket that never listens, so a connection is
  refused at once.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class Peers:
    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._servers: list[asyncio.base_events.Server] = []
        self._closed: list[socket.socket] = []
        self._net = f"127.{random.randint(20, 250)}.{random.randint(0, 250)}"
        self._next = 2
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._open_fds: dict[
            int, int
        ] = {}  # id -> fd of each hung connection its client has not closed
        self.open = 0
        self.max_open = 0
        self.accepted = 0
        self.first_accepted = threading.Event()
        self.closed_by_client = 0

    def address(self) -> str:
        with self._lock:
            self._next += 1
            return f"{self._net}.{self._next}"

    def _serve(self, handler, address: str, port: int = 0) -> int:  # type: ignore[no-untyped-def]
        async def start() -> asyncio.base_events.Server:
            return await asyncio.start_server(handler, address, port, backlog=512)

        server = asyncio.run_coroutine_threadsafe(start(), self._loop).result(10)
        self._servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    def agent(self, text: str) -> tuple[str, int]:
        body = text.encode()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nConnection: close\r\n"
                b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
            )
            await writer.drain()
            writer.close()

        address = self.address()
        return address, self._serve(handle, address)

    def hung(self, address: str | None = None, port: int = 0) -> tuple[str, int]:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            key = id(writer)
            with self._lock:
                self._forget_closed()
                self._open_fds[key] = writer.get_extra_info("socket").fileno()
                self.accepted += 1
                self.open = len(self._open_fds)
                self.max_open = max(self.max_open, self.open)
            self.first_accepted.set()
            try:
                while await reader.read(4096):  # never answer; b"" when the client gives up
                    pass
            finally:
                with self._changed:
                    self._open_fds.pop(key, None)
                    self.open = len(self._open_fds)
                    self.closed_by_client += 1
                    self._changed.notify_all()
                writer.close()

        address = address or self.address()
        return address, self._serve(handle, address, port)

    def _forget_closed(self) -> None:
        """Drop connections whose client's close is already received (the loop may not have handled it yet)."""
        for key, fd in list(self._open_fds.items()):
            peek = socket.socket(fileno=os.dup(fd))
            try:
                if peek.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b"":
                    del self._open_fds[key]
            except BlockingIOError:
                pass
            except OSError:
                del self._open_fds[key]
            finally:
                peek.close()

    def wait_closed(self, count: int, timeout_s: float = 30) -> bool:
        """Wait until clients have closed ``count`` hung connections in all."""
        with self._changed:
            return self._changed.wait_for(lambda: self.closed_by_client >= count, timeout_s)

    def refusing(self) -> tuple[str, int]:
        address = self.address()
        s = socket.socket()
        s.bind((address, 0))  # bound, never listening: connections are refused
        self._closed.append(s)
        return address, int(s.getsockname()[1])

    def close(self) -> None:
        async def stop() -> None:
            for server in self._servers:
                server.close()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        for s in self._closed:
            s.close()


@contextmanager
def peers() -> Iterator[Peers]:
    p = Peers()
    try:
        yield p
    finally:
        p.close()
