"""The errors the contract raises, on both sides: the root of the agent's tree (drawn in treadle_agent.errors).

    AgentError
    ├── ConfigError          a trust root, signing key or setting is unusable
    ├── VerifyError          an envelope or manifest was refused (``reason`` is a metric label)
    ├── StateError           a file could not be written or read back
    └── ManifestFormatError  bytes that are not strict canonical-compatible JSON (also a ValueError)

The controller catches these where it calls the contract and wraps them into
its own tree (treadle.errors); the agent adds its other errors below AgentError.
"""

from __future__ import annotations


class AgentError(Exception):
    """Base of every error the agent, or the contract it shares with the controller, raises on purpose."""


class ConfigError(AgentError):
    """A bad setting in agent.toml or an unusable trust root or key; the message names the file, key and fix."""


class VerifyError(AgentError):
    """A fetched manifest was refused. ``reason`` is a metric label value.

    Reasons: envelope, payload_type, signature, threshold, schema, node,
    rollback, equivocation, expired, internal (verify.py's REASONS).
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class StateError(AgentError):
    """A state file is corrupt or unreadable, or could not be written."""


class ManifestFormatError(AgentError, ValueError):
    """Bytes that are not strict canonical-compatible JSON (bad UTF-8, duplicate keys, floats, NaN, over a limit).

    Also a ValueError: callers that decode a stored envelope catch ValueError
    for every way its bytes can be wrong (base64, JSON, this).
    """
