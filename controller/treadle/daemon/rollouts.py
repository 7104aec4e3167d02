"""advance: the pipeline's side of staged rollouts, the :class:`treadle.rollout.service.Executor`.

:mod:`treadle.rollout` decides (a pure state machine, persisted by its
service); this module carries out what it decides, on the controller's
parts: it begins the rollout of a deployed commit's staged nodes, tells the
service where their agents report and which generations they should run, and
publishes a wave or a rollback through the one sign → publish → confirm path
(:mod:`.release`). It also writes the revert branch of a rolled-back commit.

A rollout may move a commit that is not the last good render (after a
restart): that commit is rendered here, once, and kept.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from operator import is_
from typing import Any, Protocol

from treadle import log
from treadle.daemon.fetch import GitSource
from treadle.daemon.generation import clock_floor, next_generation
from treadle.daemon.publish import PublishStore
from treadle.daemon.release import Release
from treadle.daemon.render import Rendered, Renderer, policy_of
from treadle.daemon.sign import DigestCache, ToSign, content_digest, payload_from_envelope
from treadle.daemon.state import StateDB
from treadle.errors import FabricError
from treadle.rollout import policy as rollout_policy
from treadle.rollout.observe import Target
from treadle.rollout.revert import write_revert_branch
from treadle.rollout.service import RolloutService
from treadle.rollout.waves import Candidate
from treadle_agent.contract.names import DEFAULT_METRICS_PORT


class Renders(Protocol):
    """What the executor reads of the pipeline: its renderer and its last good render (both replaced as it runs)."""

    renderer: Renderer | None
    last_good: Rendered | None


class RolloutExecutor:
    """Carries out a rollout's actions; run from the pipeline's thread (:meth:`target_of` also from the API's)."""

    def __init__(
        self,
        source: GitSource,
        state: StateDB,
        store: PublishStore,
        release: Release,
        renders: Renders,
        digests: DigestCache,
    ) -> None:
        self.source, self.state, self.store, self.release = source, state, store, release
        self._renders, self._digests = renders, digests
        #: The nodes of the last good render that differ from their records because a rollout holds them:
        #: staged in its waves, or rolled back since (the pipeline plans them again; see ``Pipeline._candidates``).
        self.pending: frozenset[str] = frozenset()
        #: A render of the commit a rollout is moving, when that is not the last good one (after a restart).
        self._rollout_rendered: Rendered | None = None
        #: Node-file settings (pinned wave, metrics port) of the commit a rollout moves, read as needed.
        self._node_settings: tuple[str, dict[str, Any]] = ("", {})
        #: The generations last handed out for a wave: its nodes, the records' change count and the
        #: records read then, and the answer.
        self._expected: tuple[Sequence[str], int, list[Any], dict[str, int]] | None = None

    def begin(self, rollouts: RolloutService, rendered: Rendered, staged: Sequence[ToSign]) -> None:
        """Begin the rollout of ``rendered`` over its ``staged`` nodes, unless that commit has one already."""
        if rollouts.has_rollout(rendered.commit):
            return
        nodes = rendered.result.nodes
        settings = self._settings_for(rendered, [t.node for t in staged])
        candidates = [
            Candidate(
                t.node,
                nodes[t.node].site,
                nodes[t.node].cluster,
                dict(nodes[t.node].labels),
                settings[t.node].pinned_wave,
            )
            for t in staged
        ]
        rollouts.begin(
            rendered.commit,
            policy_of(rendered.result),
            candidates,
            immediate=rollout_policy.commit_is_immediate(self.source.repo, rendered.commit),
            current=self.current_manifests([t.node for t in staged]),
        )

    # -- the Executor protocol -------------------------------------------------

    def rollout_policy(self, commit: str) -> rollout_policy.RolloutPolicy | None:
        return policy_of(self._rendered(commit).result)

    def targets(self, commit: str, nodes: Sequence[str]) -> list[Target]:
        rendered = self._rendered(commit)
        present = [n for n in nodes if n in rendered.result.nodes]
        settings = self._settings_for(rendered, present)
        return [
            Target(
                n,
                rendered.result.nodes[n].address,
                settings[n].metrics_port or DEFAULT_METRICS_PORT,
            )
            for n in present
        ]

    def expected(self, nodes: Sequence[str]) -> dict[str, int]:
        """The generations published for ``nodes``: the last answer itself while their records are the same objects.

        While no record changed at all (the state's change count), that is known without a look at the
        wave. Otherwise, records are replaced, never changed, on every write, so comparing the wave's by
        identity (in C) tells whether one of them changed without building 100,000 entries; the rollout
        service also compares the answer with the last by identity first.
        """
        changes, last = self.state.changes(), self._expected
        if last is not None and last[0] is nodes and last[1] == changes:
            return last[3]  # no record changed since: no pass over the wave (the usual tick)
        held = list(map(self.state.records().get, nodes))
        if (
            last is not None
            and (last[0] is nodes or last[0] == nodes)
            and all(map(is_, held, last[2]))
        ):
            self._expected = (nodes, changes, held, last[3])
            return last[3]
        out = {n: r.generation for n, r in zip(nodes, held, strict=False) if r is not None}
        self._expected = (nodes, changes, held, out)
        return out

    def current_manifests(self, nodes: Sequence[str]) -> dict[str, bytes]:
        """What is published for these nodes now (the manifest bytes inside their envelopes): a rollback's target."""
        out = {}
        for n in nodes:
            data = self.store.read(n)
            if data is not None:
                out[n] = payload_from_envelope(data)
        return out

    def publish_content(self, commit: str, nodes: Sequence[str]) -> None:
        rendered = self._rendered(commit)
        records = self.state.records()
        floor = clock_floor(self.release.clock())
        items = []
        for n in nodes:
            node = rendered.result.nodes.get(n)
            if node is None:
                continue  # removed from the fabric since the rollout began
            d = self._digests(node)
            rec = records.get(n)
            if rec is not None and rec.present and not rec.dirty and rec.content_digest == d:
                continue  # already carries this content: a publish retried after a restart
            items.append(
                ToSign(
                    n,
                    node.manifest,
                    d,
                    next_generation(rec.generation if rec else None, floor),
                    commit,
                    node.lifecycle,
                    node.canonical,
                )
            )
        self.release(items, lambda _n: "rollout")

    def publish_manifests(self, manifests: Mapping[str, Mapping[str, Any]]) -> None:
        self.pending |= frozenset(
            manifests
        )  # rolled back: their records no longer match the last good render
        records = self.state.records()
        floor = clock_floor(self.release.clock())
        items = [
            ToSign(
                n,
                m,
                content_digest(m),
                next_generation(records[n].generation if n in records else None, floor),
                m["metadata"].get("commit"),
                m["metadata"]["lifecycle"],
            )
            for n, m in sorted(manifests.items())
        ]
        self.release(items, lambda _n: "rollback")

    def write_revert(self, commit: str, reason: str) -> str:
        head = self.source.head()
        return write_revert_branch(
            self.source.path, self.source.url, commit, head, reason, self.source.credentials
        ).name

    # -- for the API -------------------------------------------------------------

    def target_of(self, node: str) -> Target | None:
        """Where ``node``'s agent serves its metrics, by the last good render; None when unknown.

        Called from the API's threads: reads only the immutable last render and
        opens its own handle on the mirror (a pygit2 repository is not shared
        between threads).
        """
        rendered = self._renders.last_good
        if rendered is None or node not in rendered.result.nodes:
            return None
        from treadle.fabric import GitRevisionSource
        from treadle.fabric.cache import ParseCache
        from treadle.fabric.nodefile import node_settings

        n = rendered.result.nodes[node]
        try:
            settings = node_settings(
                GitRevisionSource(str(self.source.path), rendered.commit),
                ParseCache(),
                rendered.result.fabric,
                [n],
            )[node]
            port = settings.metrics_port or DEFAULT_METRICS_PORT
        except Exception as e:  # an unreadable node file: the default port is the best guess
            log.warning("node.settings_unreadable", node=node, error=str(e))
            port = DEFAULT_METRICS_PORT
        return Target(node, n.address, port)

    # -- renders of the commit a rollout moves -----------------------------------

    def _rendered(self, commit: str) -> Rendered:
        """The render of ``commit``: the last good one, or (after a restart) a render made for the rollout."""
        last_good = self._renders.last_good
        if last_good is not None and last_good.commit == commit:
            return last_good
        if self._rollout_rendered is None or self._rollout_rendered.commit != commit:
            renderer = self._renders.renderer
            assert renderer is not None
            started = time.perf_counter()
            result = renderer(self.source.repo, commit, None, None, None)
            if not result.ok:
                raise FabricError(list(result.diagnostics))
            self._rollout_rendered = Rendered(commit, result, time.perf_counter() - started)
        return self._rollout_rendered

    def _settings_for(self, rendered: Rendered, names: list[str]) -> dict[str, Any]:
        from treadle.fabric.nodefile import node_settings
        from treadle.fabric.source import GitRevisionSource

        if self._node_settings[0] != rendered.commit:
            self._node_settings = (rendered.commit, {})
        known = self._node_settings[1]
        missing = [
            rendered.result.nodes[n] for n in names if n not in known and n in rendered.result.nodes
        ]
        if missing:
            renderer = self._renders.renderer
            cache = getattr(renderer, "cache", None)
            if cache is None:
                from treadle.fabric.cache import ParseCache

                cache = ParseCache()
            source_of = getattr(renderer, "source", None)
            src = (
                source_of(self.source.repo, rendered.commit)
                if source_of
                else GitRevisionSource(self.source.repo, rendered.commit)
            )
            known.update(node_settings(src, cache, rendered.result.fabric, missing))
        return known
