"""The trusted state: what the agent has accepted so far (the trust root itself is contract.trustroot).

:class:`TrustedState` holds the last accepted manifest, the highest accepted
generation and the digest of the manifest accepted under it. It does no I/O
(state.py persists it) and it is the only place the rollback and equivocation
rules live.
"""

from __future__ import annotations

from treadle_agent.contract.manifest import Manifest
from treadle_agent.errors import VerifyError


class TrustedState:
    """The last accepted envelope and manifest, and the highest accepted generation. No I/O.

    The generation only grows; it is kept apart from the manifest so that
    losing the stored envelope never reopens the door to a replay of an older one.
    """

    def __init__(self, highest_generation: int = 0, highest_digest: str | None = None) -> None:
        self.envelope: bytes | None = None
        self.manifest: Manifest | None = None
        self.highest_generation = highest_generation
        #: sha256 of the manifest accepted at ``highest_generation`` (None: not known, e.g. an older state dir).
        self.highest_digest = highest_digest

    def is_current(self, envelope: bytes) -> bool:
        """True when ``envelope`` is byte for byte the one already accepted."""
        return self.envelope is not None and envelope == self.envelope

    def check_generation(self, manifest: Manifest) -> None:
        """Refuse a replay of an older manifest, or a different one under the same generation.

        Raises:
            VerifyError: ``rollback`` or ``equivocation``.
        """
        generation = manifest.generation
        if generation < self.highest_generation:
            raise VerifyError(
                "rollback",
                f"generation {generation} is below the highest accepted generation {self.highest_generation}",
            )
        current = self.manifest
        if current is not None and generation == current.generation and manifest.raw != current.raw:
            raise VerifyError(
                "equivocation", f"generation {generation} was already accepted with other content"
            )
        # Held even when the stored envelope is lost or damaged: the digest is one of the trusted facts.
        if generation == self.highest_generation and self.highest_digest not in (
            None,
            manifest.digest,
        ):
            raise VerifyError(
                "equivocation",
                f"generation {generation} was already accepted with other content "
                f"(sha256 {self.highest_digest})",
            )

    def accept(self, envelope: bytes, manifest: Manifest) -> None:
        """Record a manifest that passed every check (verify.py decides that, in order)."""
        self.envelope = envelope
        self.manifest = manifest
        if manifest.generation >= self.highest_generation:
            self.highest_generation = manifest.generation
            self.highest_digest = manifest.digest
