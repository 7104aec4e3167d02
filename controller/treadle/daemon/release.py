"""sign → publish → confirm: the one path by which manifests reach the nodes.

Every publication takes it: a commit's changed nodes (the cycle), manifests
re-signed before they expire, a rollout's wave and its rollback
(:mod:`.rollouts`). In order:

1. **sign** the items (:mod:`.sign`);
2. **publish**: reserve their generations in the state database, then write
   the envelopes atomically (:mod:`.publish`), and note each node's history;
3. **confirm**: mark the reserved generations published (for a commit, also
   move the deployed commit).

A crash between 2 and 3 leaves reserved, unconfirmed ("dirty") nodes whose
store holds whole envelopes, old or new: after a start
:func:`confirm_published` confirms those carrying their reserved generation
and the next cycle republishes the rest (:mod:`treadle.daemon.state`).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from treadle import log
from treadle.daemon.fetch import GitSource
from treadle.daemon.gate import GateDecision
from treadle.daemon.generation import clock_floor, next_generation
from treadle.daemon.publish import PublishStore
from treadle.daemon.sign import (
    ManifestSigner,
    SignedManifest,
    ToSign,
    envelope_keyids,
    manifest_from_envelope,
)
from treadle.daemon.state import NodeRecord, StateDB
from treadle.errors import StoreError, TreadleError


class Release:
    """sign → publish → confirm over the pipeline's signer, state and store, and the re-signing that keeps them valid.

    It also knows when a published manifest next needs re-signing (see
    :meth:`resign_due`), from what it signed: every signature passes here.
    """

    def __init__(
        self,
        source: GitSource,
        state: StateDB,
        store: PublishStore,
        signer: ManifestSigner,
        clock: Callable[[], float],
        resign_before_s: int,
    ) -> None:
        self.source, self.state, self.store, self.signer = source, state, store, signer
        self.clock, self.resign_before_s = clock, resign_before_s
        #: The published envelopes were compared against the signer's keys (once per process).
        self._keys_checked = False
        #: No published manifest needs re-signing before this time.
        self._resign_at = float("-inf")
        #: Nodes published by this process before the first key check: their envelopes need not be read for it.
        self._signed_here: set[str] = set()

    def __call__(
        self,
        items: Sequence[ToSign],
        why: Callable[[str], str],
        *,
        removed: tuple[str, ...] = (),
        decision: GateDecision | None = None,
        before_confirm: Callable[[], None] | None = None,
        steps: dict[str, float] | None = None,
    ) -> list[SignedManifest]:
        """Sign ``items``, publish them (and remove ``removed``), then confirm; what was signed.

        ``why`` names, per node, why it was published (its history row).
        ``decision``: the gate's decision on the commit deployed (the cycle),
        recorded as the deployed commit at the confirm; None for a publication
        outside a deploy. ``before_confirm`` runs between publish and confirm
        (the cycle begins its rollout there: whoever sees the new deployed
        commit also sees its rollout). ``steps`` receives the wall time of
        sign, publish and advance (the confirm), as the cycle logs them.

        Raises:
            SigningKeyError: signing failed; nothing was published.
            StoreError: the database or the store failed; the reservation keeps the next attempt's generations above.
        """
        if not items and not removed and decision is None:
            return []
        steps = {} if steps is None else steps
        with timed(steps, "sign"):
            signed = self.signer.sign(items, now=self.clock())
        with timed(steps, "publish"):
            publish(self.state, self.store, signed, removed)
            self._note(signed)
            self._record_history(signed, why)
        with timed(steps, "advance"):
            if before_confirm is not None:
                before_confirm()
            confirm(self.state, signed, removed, decision)
        return signed

    def resign_due(self) -> tuple[str, ...]:
        """Re-sign, from the store's own bytes, every published manifest that expires within ``resign_before_s``.

        At the first cycle of a process also every manifest signed by another set
        of keys than the signer's: the signing keys change only with a restart, and
        a key rotation must reach every node (tests/controller/test_signers.py).
        A failure is logged and retried at the next cycle.
        """
        now = self.clock()
        check_keys = not self._keys_checked
        if not check_keys and now < self._resign_at:
            return ()  # nothing signed expires before then: no need to look at every record
        records = self.state.records()
        before_s = self.resign_before_s
        mine = self._signed_here  # signed with this signer's keys: only expiry can make them due
        due = [
            r
            for r in records.values()
            if r.present
            and not r.dirty
            and ((check_keys and r.name not in mine) or r.expires - now <= before_s)
        ]
        # The next time a record falls due, unless one due now cannot be re-signed (then: every cycle, as before).
        next_at = min(
            (
                r.expires - before_s
                for r in records.values()
                if r.present and not r.dirty and r.expires - now > before_s
            ),
            default=float("inf"),
        )
        items, unreadable = self._resign_items(due, now, check_keys)
        if unreadable:
            next_at = float("-inf")
        try:
            signed = self(items, lambda _n: "re-signed")
        except TreadleError as e:
            log.error("resign.failed", error=str(e))
            return ()
        self._keys_checked, self._resign_at, self._signed_here = True, next_at, set()
        self._note(signed)
        return tuple(s.node for s in signed)

    def _resign_items(
        self, due: list[NodeRecord], now: float, check_keys: bool
    ) -> tuple[list[ToSign], bool]:
        """What to re-sign of the ``due`` records, read from the store; and whether one could not be read."""
        items, unreadable = [], False
        for r in due:
            data = self.store.read(r.name)
            if data is None:
                unreadable = True
                continue  # the next deploy cycle republishes it
            try:
                manifest = manifest_from_envelope(data)
                if (
                    r.expires - now > self.resign_before_s
                    and envelope_keyids(data) == self.signer.keyids
                ):
                    continue
            except (ValueError, KeyError) as e:
                log.error("resign.unreadable", node=r.name, error=str(e))
                unreadable = True
                continue
            items.append(
                ToSign(
                    r.name,
                    manifest,
                    r.content_digest,
                    next_generation(r.generation, clock_floor(now)),
                    manifest["metadata"]["commit"],
                    r.lifecycle,
                )
            )
        return items, unreadable

    def _note(self, signed: list[SignedManifest]) -> None:
        """Note the earliest expiry published, so that :meth:`resign_due` knows when to look again."""
        if signed:
            self._resign_at = min(
                self._resign_at, min(s.expires for s in signed) - self.resign_before_s
            )
            if not self._keys_checked:
                self._signed_here.update(s.node for s in signed)

    def _record_history(self, signed: list[SignedManifest], why: Callable[[str], str]) -> None:
        """Per node: the generation published, its commit and author, and why (``GET /v1/nodes/<node>/history``)."""
        if not signed:
            return
        authors = {c: self._author(c) for c in {s.commit for s in signed} if c}
        try:
            self.state.record_history(
                (s.node, s.generation, s.commit, authors.get(s.commit or ""), why(s.node))
                for s in signed
            )
        except StoreError as e:  # the history is for people; publishing went through
            log.error("history.write_failed", error=str(e))

    def _author(self, commit: str) -> str | None:
        try:
            author = self.source.repo[commit].author
            return f"{author.name} <{author.email}>"
        except (KeyError, ValueError, AttributeError):
            return None


def publish(
    state: StateDB, store: PublishStore, signed: list[SignedManifest], removed: tuple[str, ...]
) -> None:
    """publish: reserve the generations, then write the envelopes atomically.

    Raises:
        StoreError: the database or the store failed; the reservation keeps the next attempt's generations above.
    """
    if not signed and not removed:
        return
    state.reserve(
        NodeRecord(s.node, s.generation, 0, s.content_digest, s.commit, s.expires, s.lifecycle)
        for s in signed
    )
    store.publish({s.node: s.envelope for s in signed}, removed)


def confirm(
    state: StateDB,
    signed: list[SignedManifest],
    removed: tuple[str, ...],
    decision: GateDecision | None,
) -> None:
    """confirm: the reserved generations are published; with a ``decision``, its commit is the deployed one.

    (The rollout's waves follow in :meth:`treadle.daemon.pipeline.Pipeline.tick`.)
    """
    if decision is None:
        if signed or removed:
            state.record_deployment(None, None, [s.node for s in signed], removed)
        return
    if decision.kind == "unchanged" and not signed and not removed:
        return  # a restart that found the store as the state says: nothing to record
    state.record_deployment(
        decision.commit, decision.previous, [s.node for s in signed], removed, kind=decision.kind
    )


def confirm_published(state: StateDB, store: PublishStore) -> None:
    """After a start: confirm each dirty node whose reserved generation is in the store, so only the rest is republished.

    A crash between reserving and confirming leaves the reserved nodes
    dirty, though the store may hold the new envelope of many of them (a
    batch is renamed into place file by file). A generation is reserved
    for one content and never reused, so an envelope carrying the
    reserved generation is that publication, whole (renamed, never
    written in place): recording it as published is the truth, and
    republishing it would only re-sign the same content under another
    generation. The nodes whose envelope is older are republished as
    before (tests/controller/test_crash.py counts both).
    """
    records = state.records()
    done = []
    for name in sorted(state.dirty()):
        record = records[name]
        try:
            data = store.read(name) if record.present else None
            if (
                data is not None
                and int(manifest_from_envelope(data)["metadata"]["generation"]) == record.generation
            ):
                done.append(name)
        except (StoreError, ValueError, KeyError, TypeError) as e:
            log.warning("store.unreadable_envelope", node=name, error=str(e))
    if done:
        state.record_deployment(None, None, done, ())
        try:  # the crashed cycle may not have written their history rows
            state.record_history(
                (n, records[n].generation, records[n].commit, None, "recovered") for n in done
            )
        except StoreError as e:
            log.error("history.write_failed", error=str(e))
        log.event("recovery.confirmed", nodes=len(done), dirty=len(state.dirty()) + len(done))


def stored_generations(
    store: PublishStore,
    records: Mapping[str, NodeRecord],
    nodes: Mapping[str, Any],
    published: frozenset[str],
) -> dict[str, int]:
    """The generations in the store's envelopes of nodes the state has no record of (read once, after a start).

    A state directory lost while the publish store was kept: the next generation goes above those.
    Only nodes in the store's listing (``published``) are read: on a cold start that is none of them.
    """
    out = {}
    for name in nodes:
        if name in records or name not in published:
            continue
        try:
            data = store.read(name)
            if data is not None:
                out[name] = int(manifest_from_envelope(data)["metadata"]["generation"])
        except (StoreError, ValueError, KeyError, TypeError) as e:
            log.warning("store.unreadable_envelope", node=name, error=str(e))
    return out


@contextlib.contextmanager
def timed(steps: dict[str, float], name: str) -> Iterator[None]:
    """Record the wall time of the block as step ``name`` (also when it raises: the last step named is the one that did)."""
    started = time.perf_counter()
    try:
        yield
    finally:
        steps[name] = time.perf_counter() - started
