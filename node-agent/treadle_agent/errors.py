"""The agent's errors, split by whose fault they are; the type decides what the loop does.

    AgentError
    ├── ConfigError        agent.toml or the trust root is wrong: exit 2, fix and restart
    ├── FetchError         the source (network, HTTP status, size cap, deadline):
    │                      keep enforcing the last good manifest, retry with backoff
    ├── VerifyError        trust (envelope, signature, schema, node, rollback,
    │                      equivocation, expired): refuse, count the reason, keep the last good
    ├── StateError         the state dir is corrupt or unreadable: set the file aside, refetch
    └── HostError          the host refused a change (a command failed, a write failed):
        │                  that resource fails, unrelated resources go on
        └── PathEscapeError  a path would leave the managed root (symlink, ``..``)

Foreign errors (httpx, OSError, securesystemslib, json) are wrapped at the
boundary with ``raise ... from e``; nothing else escapes the agent's layers.
"""

from __future__ import annotations


class AgentError(Exception):
    """Base of every error the agent raises on purpose."""


class ConfigError(AgentError):
    """A bad setting in agent.toml or an unusable trust root; the message names the file, key and fix."""


class FetchError(AgentError):
    """The manifest could not be fetched. ``reason`` is a metric label value."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class VerifyError(AgentError):
    """A fetched manifest was refused. ``reason`` is a metric label value.

    Reasons: envelope, payload_type, signature, threshold, schema, node,
    rollback, equivocation, expired, internal (verify.py's REASONS).
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class StateError(AgentError):
    """A state file is corrupt or unreadable."""


class HostError(AgentError):
    """The host could not be brought to the desired state for one resource."""


class PathEscapeError(HostError):
    """A resource path would resolve outside the managed root."""
