"""Ports on loopback addresses (all of 127/8 is loopback)."""

from __future__ import annotations

import socket


def free_port(address: str = "127.0.0.1") -> int:
    """A port free on ``address`` right now (the daemon that is given it binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((address, 0))
        return int(s.getsockname()[1])
