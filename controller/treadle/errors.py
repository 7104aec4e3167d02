"""The controller's errors, split by whose fault they are; the type decides what happens next.

    TreadleError
    ├── UsageError             bad command line or configuration: exit 2
    ├── FabricError            the repository's content is invalid (carries every
    │                          Diagnostic found in one run): exit 1, the commit is
    │                          refused, the last good manifests stay published
    ├── PolicyError            rollout.yaml is schema-valid but meaningless (an unknown
    │                          time zone, an empty window): becomes a FabricError of the commit
    ├── SourceError            git could not be reached or read: retry later
    ├── GateError              a commit is not allowed to deploy (history rewritten,
    │                          unsigned, unknown signer): refused and recorded, waits for a human
    ├── SigningKeyError        a signing key or trust root cannot be used: exit 2
    ├── StoreError             the state database, the rollout tables or the publish store
    │                          failed (every sqlite3.Error is wrapped into it): retry, never half-publish
    └── RolloutError           an operator's action on a rollout cannot be done
        ├── NoSuchRolloutError   no rollout has that id: HTTP 404
        └── TransitionError      the action does not apply in the rollout's state: HTTP 409

Inside the fabric package, YamlProblem, TemplateProblem and SecretFileError
carry one located problem each; they never leave it except as Diagnostics of
a FabricError (the demo's SceneFailed likewise stays in the demo).

Foreign errors (ruamel.yaml, jsonschema, pygit2, jinja2, httpx, sqlite3,
OSError) are wrapped at the boundary with ``raise ... from e``. The agent's
errors that the contract raises (treadle_agent.contract.errors: ConfigError,
StateError, ManifestFormatError) are foreign here too, and wrapped the same way.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True, order=True)
class Diagnostic:
    """One problem in the fabric, located: printed as ``file:line:col: message (hint)``.

    ``line`` and ``col`` are 1-based; a problem of the whole file is at 1:1
    (a 0 given by a caller is raised to 1: editors and ``file:line`` links
    have no line 0). ``code`` is a
    stable identifier for tools (``yaml``, ``duplicate-key``, ``schema``,
    ``unknown-profile``, ``profile-cycle``, ``template``, ``duplicate-node``,
    ``duplicate-address``, ``path-policy``, ``integer-mode``, ``lifecycle``,
    ``symlink``, ``submodule``, ``too-large``, ``aliases``...).
    """

    file: str
    line: int
    col: int
    code: str
    message: str
    hint: str = ""

    def __post_init__(self) -> None:
        if self.line < 1:
            object.__setattr__(self, "line", 1)
        if self.col < 1:
            object.__setattr__(self, "col", 1)

    def __str__(self) -> str:
        text = f"{self.file}:{self.line}:{self.col}: {self.message}"
        return f"{text} (hint: {self.hint})" if self.hint else text

    def as_dict(self) -> dict[str, object]:
        return {
            "file": self.file,
            "line": self.line,
            "col": self.col,
            "code": self.code,
            "message": self.message,
            "hint": self.hint,
        }


class TreadleError(Exception):
    """Base of every error the controller raises on purpose."""


class UsageError(TreadleError):
    """Bad command line or configuration; exit code 2."""


class FabricError(TreadleError):
    """The fabric repository's content is invalid; carries all diagnostics of the run."""

    def __init__(self, diagnostics: list[Diagnostic]) -> None:
        self.diagnostics = sorted(diagnostics)
        super().__init__("\n".join(str(d) for d in self.diagnostics) or "invalid fabric")


class SourceError(TreadleError):
    """The git source could not be cloned, fetched or read."""


#: Why a commit is refused: the ``reason`` label values of treadle_controller_rejected_commits_total,
#: all created at 0 when the controller starts (so that ``increase()`` sees a refusal's first count).
#: ``internal``: Treadle's own code failed on the commit (a bug, logged with its traceback); the commit is
#: refused all the same, so that one bad commit never stops the controller or makes it retry in a loop.
REFUSAL_REASONS = ("invalid", "non_fast_forward", "unsigned", "untrusted_signer", "internal")


class GateError(TreadleError):
    """A commit is refused by the gate. ``reason`` is one of :data:`REFUSAL_REASONS` other than ``invalid``."""

    def __init__(self, reason: str, message: str) -> None:
        if reason not in REFUSAL_REASONS:
            raise ValueError(f"unknown refusal reason {reason!r}; add it to REFUSAL_REASONS")
        super().__init__(message)
        self.reason = reason


class SigningKeyError(TreadleError):
    """A signing key or trust root cannot be loaded or used."""


class StoreError(TreadleError):
    """The state database, the rollout tables or the publish store failed."""


class PolicyError(TreadleError):
    """rollout.yaml is schema-valid but not meaningful (unknown time zone, empty window)."""


class RolloutError(TreadleError):
    """An operator's action on a rollout cannot be done."""


class NoSuchRolloutError(RolloutError):
    """No rollout has the id asked for."""

    def __init__(self, rid: int) -> None:
        super().__init__(f"no rollout {rid}; `treadle rollout list` shows the rollouts kept")
        self.rid = rid


class TransitionError(RolloutError):
    """An operator action that does not apply to the rollout's state (e.g. approve a finished rollout)."""
