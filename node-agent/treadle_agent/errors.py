"""The agent's errors, split by whose fault they are; the type decides what the loop does.

    AgentError                 (contract.errors: the contract raises these on both sides)
    ├── ConfigError            agent.toml or the trust root is wrong: exit 2, fix and restart
    │   └── EnrolledError      (identity.py) ``enroll`` on a node that has an identity: nothing changed
    ├── VerifyError            trust (envelope, signature, schema, node, rollback,
    │                          equivocation, expired): refuse, count the reason, keep the last good
    ├── StateError             the state dir is corrupt or unreadable: set the file aside, refetch
    ├── ManifestFormatError    bytes that are not strict JSON (also a ValueError): wrapped into
    │                          VerifyError or StateError by whoever read the bytes
    ├── FetchError             the source (network, HTTP status, size cap, deadline):
    │                          keep enforcing the last good manifest, retry with backoff
    └── HostError              the host refused a change (a command failed, a write failed):
        │                      that resource fails, unrelated resources go on
        └── PathEscapeError    a path would leave the managed root (symlink, ``..``)

The first five live in :mod:`treadle_agent.contract.errors` because contract
code (parsing, the envelope, the trust root, atomic writes) raises them in the
controller too; this module is the agent's one place to import any of them.
Foreign errors (httpx, OSError, securesystemslib, json) are wrapped at the
boundary with ``raise ... from e``; nothing else escapes the agent's layers.
"""

from __future__ import annotations

from treadle_agent.contract.errors import (
    AgentError,
    ConfigError,
    ManifestFormatError,
    StateError,
    VerifyError,
)

__all__ = [
    "AgentError",
    "ConfigError",
    "FetchError",
    "HostError",
    "ManifestFormatError",
    "PathEscapeError",
    "StateError",
    "VerifyError",
]


class FetchError(AgentError):
    """The manifest could not be fetched. ``reason`` is a metric label value."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class HostError(AgentError):
    """The host could not be brought to the desired state for one resource."""


class PathEscapeError(HostError):
    """A resource path would resolve outside the managed root."""
