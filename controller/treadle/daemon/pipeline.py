"""The controller's cycle, as DESIGN.md names its steps:

    source -> gate -> load/render/check -> plan -> sign -> publish -> observe -> advance

Each step is a small function over immutable values (a head commit, a gate
decision, a render result, a plan, signed envelopes). :meth:`Pipeline.run_once`
strings them together; what the cycle did is one :class:`Outcome`, and
:meth:`Pipeline.record` is the one place that turns an outcome into metrics,
refusal rows and a log line. (Generations and deployments are written by the
publish and advance steps themselves: their order around the store writes is
what makes a crash safe.)

Rules this module keeps:

- One diagnostic refuses the whole commit: nothing is signed or published and
  the last good manifests stay (``reason=invalid``).
- Any other exception raised while the commit is read, gated, loaded,
  rendered, checked or planned refuses it too (``reason=internal``, the
  traceback in the log): a bug of ours met by one commit is a recorded,
  counted refusal, not a cycle that crashes on every poll. Past that point
  (sign, publish, advance) an unexpected exception is a failed cycle, retried:
  the commit was found good, and the store's writes are crash-safe.
- A refused head is recorded once, not once per poll; it is looked at again
  only when the head moves or its history rewrite is accepted.
- Each cycle fetches the newest head, so commits arriving during a cycle are
  coalesced into the next one.
- Generations are reserved in the state database before publishing and
  confirmed after (see :mod:`treadle.daemon.state`): a crash anywhere leaves a store
  of whole, verifiable envelopes, and the next cycle converges.
- Manifests near expiry are re-signed every cycle, refused head or not: a bad
  commit must not let the fabric's manifests run out.
- ``plan`` splits the changed nodes: a node that has never been published,
  or whose published content is being recovered after a crash, gets its
  manifest at once (there is nothing to protect on it); every other changed
  node goes into a rollout (:mod:`treadle.rollout`), which a newer commit
  supersedes. No commit gets a second rollout, so a restart resumes the one
  in flight instead of starting over.
- ``observe`` and ``advance`` run every cycle, also when the head did not
  move: :meth:`Pipeline.tick` asks the agents of the wave in flight how they
  are and steps the rollout, publishing waves and rolling back through this
  class's :class:`treadle.rollout.service.Executor` methods.
"""

from __future__ import annotations

import contextlib
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from treadle.daemon import gate as gate_mod
from treadle import log
from treadle.errors import FabricError, GateError, SigningKeyError, SourceError, StoreError, TreadleError
from treadle.fabric.source import changed_paths
from treadle.daemon.generation import clock_floor, next_generation
from treadle.daemon.metrics import ControllerMetrics
from treadle.daemon.publish import PublishStore
from treadle.rollout import policy as rollout_policy
from treadle.rollout.observe import Target
from treadle.rollout.revert import write_revert_branch
from treadle.rollout.service import RolloutService
from treadle.rollout.waves import Candidate
from treadle.daemon.sign import DigestCache, ManifestSigner, SignedManifest, ToSign, content_digest, envelope_keyids, manifest_from_envelope, node_digest, payload_from_envelope
from treadle.daemon.fetch import GitSource
from treadle.daemon.state import NodeRecord, StateDB


class Renderer(Protocol):
    """Renders one commit of the fabric, reusing ``previous`` for paths outside ``changed``.

    ``base`` is the deployed revision (its render result, or its commit id)
    against which lifecycle transitions are checked; None skips that check.
    """

    def __call__(self, repo: Any, commit: str, previous: Any | None, changed: set[str] | None, base: Any | None) -> Any: ...


class FabricRenderer:
    """The real renderer (:mod:`treadle.fabric`), with a parse cache kept across cycles.

    It keeps the source of its last render: the next commit's source is made
    from it and the changed paths (:meth:`GitRevisionSource.derived`) instead
    of walking the whole tree, and the cache forgets only the blobs those
    paths replaced. A push's cost then follows the change, not the fabric.
    """

    def __init__(self) -> None:
        from treadle.fabric import ParseCache

        self.cache = ParseCache()
        self._last: Any = None  # the GitRevisionSource of the last render

    def __call__(self, repo: Any, commit: str, previous: Any | None, changed: set[str] | None, base: Any | None) -> Any:
        from treadle.fabric import render_fabric

        if isinstance(base, str):
            base = self.source(repo, base)
        src = self._derived(repo, commit, previous, changed) or self.source(repo, commit)
        result = render_fabric(src, cache=self.cache, previous=previous, changed_paths=changed, base=base)
        if result.fresh is not None and self._last is not None and changed is not None:
            old = self._last.entries_view()
            new = src.entries_view()
            self.cache.forget(old[p] for p in changed if p in old and old[p] != new.get(p))
        else:
            self.cache.retain(src.entries_view().values())  # the cache keeps one revision's files, not every version seen
        self._last = src
        return result

    def source(self, repo: Any, commit: str) -> Any:
        """The source of ``commit``: the last render's when it is that commit (no second walk of the tree)."""
        from treadle.fabric import GitRevisionSource

        if self._last is not None and self._last.commit == commit and self._last.repo is repo:
            return self._last
        return GitRevisionSource(repo, commit)

    def _derived(self, repo: Any, commit: str, previous: Any | None, changed: set[str] | None) -> Any:
        from treadle.fabric import GitRevisionSource

        last = self._last
        if previous is None or changed is None or last is None or last.repo is not repo or last.commit != previous.commit:
            return None
        return GitRevisionSource.derived(last, commit, changed)


@dataclass(frozen=True, slots=True)
class Rendered:
    """A commit that passed every check, with its render result (the base of the next incremental render)."""

    commit: str
    result: Any
    duration_s: float


@dataclass(frozen=True, slots=True)
class PublishPlan:
    """What to publish: changed nodes with their new generations, and nodes gone from the fabric."""

    commit: str | None
    to_sign: tuple[ToSign, ...]
    removed: tuple[str, ...]
    unchanged: int


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one cycle did. ``result``: deployed, unchanged, refused, failed."""

    result: str
    commit: str | None = None
    previous: str | None = None
    reason: str | None = None
    message: str = ""
    diagnostics: tuple[str, ...] = ()
    published: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    resigned: tuple[str, ...] = ()
    render_s: float | None = None
    kind: str = ""
    step_s: Mapping[str, float] = field(default_factory=dict)  # wall time of each step that ran


@dataclass(frozen=True, slots=True)
class Settings:
    resign_before_s: int  # re-sign a manifest this long before it expires


@dataclass
class Pipeline:
    """The cycle over its I/O edges; one instance per controller, run from one thread at a time."""

    source: GitSource
    state: StateDB
    store: PublishStore
    signer: ManifestSigner
    metrics: ControllerMetrics
    settings: Settings
    policy: gate_mod.SignaturePolicy | None = None
    renderer: Renderer | None = None
    rollouts: RolloutService | None = None
    clock: Callable[[], float] = time.time
    last_good: Rendered | None = field(default=None)
    _digests: DigestCache = field(default_factory=DigestCache)
    #: A render of the commit a rollout is moving, when that is not ``last_good`` (after a restart).
    _rollout_rendered: Rendered | None = field(default=None)
    #: Node-file settings (pinned wave, metrics port) of the commit a rollout moves, read as needed.
    _node_settings: tuple[str, dict[str, Any]] = field(default_factory=lambda: ("", {}))
    #: The published envelopes were compared against the signer's keys (once per process).
    _keys_checked: bool = field(default=False)
    #: The nodes of the last good plan left differing from their records: staged in its rollout (see :meth:`_candidates`).
    _pending: frozenset[str] = field(default=frozenset())
    #: No published manifest needs re-signing before this time (see :meth:`_resign_due`).
    _resign_at: float = field(default=float("-inf"))
    #: Nodes signed by this process before the first key check: their envelopes need not be read for it.
    _signed_here: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        if self.renderer is None:
            self.renderer = FabricRenderer()

    # -- the cycle -----------------------------------------------------------

    def run_once(self) -> Outcome:
        """One cycle: deploy the newest head if allowed and valid, then re-sign what is near expiry; recorded."""
        outcome = self._deploy()
        resigned = self._resign_due()
        if resigned:
            outcome = replace(outcome, resigned=resigned)
        self.record(outcome)
        self.tick()
        return outcome

    def tick(self) -> None:
        """observe + advance: step the rollout in flight (also between commits, on the health interval)."""
        if self.rollouts is None:
            return
        try:
            self.rollouts.tick(self)
        except (FabricError, SourceError, StoreError, SigningKeyError) as e:
            log.error("rollout.tick_failed", error_type=type(e).__name__, error=str(e))

    def _deploy(self) -> Outcome:
        deployed = self.state.deployed_commit()
        steps: dict[str, float] = {}
        try:
            return self._deploy_steps(deployed, steps)
        except Exception as e:  # a bug of ours (DESIGN.md, hostile input): refuse the commit, keep running
            return self._internal(e, deployed, steps)

    def _internal(self, e: Exception, deployed: str | None, steps: dict[str, float]) -> Outcome:
        """The outcome of an unexpected exception: the head is refused while it was being read or checked."""
        # The step that raised: _timed records it on the way out (prepare_wait runs after a failed render).
        step = next((s for s in reversed(steps) if s != "prepare_wait"), "source")
        log.error("cycle.internal_error", step=step, error_type=type(e).__name__, error=str(e)[:2000],
                  traceback=traceback.format_exc(limit=30)[-8000:])
        message = f"internal error in step {step}: {type(e).__name__}: {str(e)[:500]}"
        if step in ("sign", "publish", "advance"):
            return Outcome("failed", None, deployed, "internal", message, step_s=steps)
        head = _head_or_none(self.source)
        if head is not None and self._already_refused(head):  # e.g. the fetch of that head fails every poll
            return Outcome("unchanged", head, deployed, kind="refused-before")
        return Outcome("refused", head, deployed, "internal",
                       message + " (a bug in Treadle: the traceback is in the controller's log)", step_s=steps)

    def _deploy_steps(self, deployed: str | None, steps: dict[str, float]) -> Outcome:
        try:
            with _timed(steps, "source"):
                head = self.source.fetch()
            if self._already_refused(head):
                return Outcome("unchanged", head, deployed, kind="refused-before")
            with _timed(steps, "gate"):
                decision = gate_mod.check(self.source.repo, deployed, head, policy=self.policy,
                                          history_accepted=self.state.history_accepted(head))
            if decision.kind == "unchanged" and self.last_good is not None and not self._dirty():
                return Outcome("unchanged", head, deployed, kind="unchanged")
            preparing, rendered = self._prepare_store(head), None
            try:
                with _timed(steps, "render"):
                    rendered = self._render(head, deployed)
            finally:
                if preparing is not None:
                    with _timed(steps, "prepare_wait"):  # what the store's preparation took beyond the render
                        preparing.join()
                    if rendered is None:  # refused or failed: drop the prepared temp files
                        self.store.remove_temp_files()
            with _timed(steps, "plan"):
                if self.last_good is None:
                    self._confirm_published()
                records = self.state.records()
                published = self._published_if_unknown()
                plan = plan_changes(records, rendered.result.nodes, head, published=published,
                                    digest_of=self._digests, floor=clock_floor(self.clock()),
                                    stored=self._stored_generations(records, rendered.result.nodes, published),
                                    only=self._candidates(rendered))
                now_items, staged = split_plan(plan, records, staged=self.rollouts is not None)
                why = {i.node: _why_now(records.get(i.node), i.content_digest) for i in now_items}  # before publish writes
            with _timed(steps, "sign"):
                signed = self._signed(self.signer.sign(now_items, now=self.clock()))
            with _timed(steps, "publish"):
                publish(self.state, self.store, signed, plan.removed)
                self._record_history(signed, why.__getitem__)
            with _timed(steps, "advance"):
                # The rollout exists before the deployment is recorded: whoever sees the new
                # deployed commit also sees its rollout.
                self._begin_rollout(rendered, staged)
                advance(self.state, decision, signed, plan.removed)
        except GateError as e:
            return Outcome("refused", _head_or_none(self.source), deployed, e.reason, str(e), step_s=steps)
        except FabricError as e:
            return Outcome("refused", _head_or_none(self.source), deployed, "invalid", "the fabric has errors",
                           tuple(str(d) for d in e.diagnostics), step_s=steps)
        except (SourceError, StoreError, SigningKeyError) as e:
            return Outcome("failed", None, deployed, type(e).__name__, str(e), step_s=steps)
        self.last_good = rendered
        self._pending = frozenset(i.node for i in staged)  # the rest was published: equal to its record now
        return Outcome("deployed" if signed or plan.removed or decision.kind != "unchanged" else "unchanged",
                       head, deployed, published=tuple(s.node for s in signed), removed=plan.removed,
                       render_s=rendered.duration_s, kind=decision.kind, step_s=steps)

    def _already_refused(self, head: str) -> bool:
        last = self.state.last_refusal()
        if last is None or last.commit != head or head == self.state.deployed_commit():
            return False
        return not (last.reason == "non_fast_forward" and self.state.history_accepted(head))

    def _dirty(self) -> bool:
        return bool(self.state.dirty())

    def _candidates(self, rendered: Rendered) -> frozenset[str] | None:
        """The nodes whose content may differ from what is published; None: every node.

        After an incremental render that names the nodes it rendered anew
        (``fresh``; every other node is the last good render's, re-stamped),
        only these can differ: the fresh ones, those that differed at the last
        plan (``_pending``: staged in a rollout, or rolled back since), and the
        dirty ones. Everything else was equal to its record at the last plan
        and neither changed since. So a one-node push plans one node, not the
        fabric (tests/controller/test_pipeline.py pins both plans equal).
        """
        fresh = getattr(rendered.result, "fresh", None)
        if fresh is None or self.last_good is None:
            return None
        return fresh | self._pending | self.state.dirty()

    def _signed(self, signed: list[SignedManifest]) -> list[SignedManifest]:
        """Note the earliest expiry signed, so that :meth:`_resign_due` knows when to look again."""
        if signed:
            self._resign_at = min(self._resign_at, min(s.expires for s in signed) - self.settings.resign_before_s)
            if not self._keys_checked:
                self._signed_here.update(s.node for s in signed)
        return signed

    def _confirm_published(self) -> None:
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
        records = self.state.records()
        done = []
        for name in sorted(self.state.dirty()):
            record = records[name]
            try:
                data = self.store.read(name) if record.present else None
                if data is not None and int(manifest_from_envelope(data)["metadata"]["generation"]) == record.generation:
                    done.append(name)
            except (StoreError, ValueError, KeyError, TypeError) as e:
                log.warning("store.unreadable_envelope", node=name, error=str(e))
        if done:
            self.state.record_deployment(None, None, done, ())
            try:  # the crashed cycle may not have written their history rows
                self.state.record_history((n, records[n].generation, records[n].commit, None, "recovered") for n in done)
            except StoreError as e:
                log.error("history.write_failed", error=str(e))
            log.event("recovery.confirmed", nodes=len(done), dirty=len(self.state.dirty()) + len(done))

    def _published_if_unknown(self) -> frozenset[str] | None:
        # After a (re)start the store is checked once against the state: a
        # deleted or never-renamed file is published again.
        return frozenset(self.store.nodes()) if self.last_good is None else None

    def _stored_generations(self, records: Mapping[str, NodeRecord], nodes: Mapping[str, Any],
                            published: frozenset[str] | None) -> dict[str, int]:
        """The generations in the store's envelopes of nodes the state has no record of (read once, after a start).

        A state directory lost while the publish store was kept: the next generation goes above those.
        Only nodes in the store's listing (``published``) are read: on a cold start that is none of them.
        """
        if self.last_good is not None or published is None:
            return {}
        out = {}
        for name in nodes:
            if name in records or name not in published:
                continue
            try:
                data = self.store.read(name)
                if data is not None:
                    out[name] = int(manifest_from_envelope(data)["metadata"]["generation"])
            except (StoreError, ValueError, KeyError, TypeError) as e:
                log.warning("store.unreadable_envelope", node=name, error=str(e))
        return out

    def _prepare_store(self, head: str) -> threading.Thread | None:
        """On a cold cycle, create the store's node directories and temp files while the render runs.

        See :meth:`PublishStore.prepare`. Node names come from the tree's layout alone (no parsing). The thread
        opens its own handle on the mirror: a pygit2 repository is not shared
        between threads.
        """
        if self.last_good is not None:
            return None

        def work() -> None:
            src = None
            try:
                from treadle.fabric import GitRevisionSource
                from treadle.fabric.layout import classify

                src = GitRevisionSource(str(self.source.path), head)
                self.store.prepare(n.name for n in classify(src.entries()).nodes)
            except Exception as e:  # only an optimisation: publish creates what is missing
                log.warning("store.prepare_failed", error=str(e))
            finally:
                if src is not None:
                    # libgit2 shares a pack's descriptor among every handle on the repository: this one
                    # would keep the mirror's packs open after a repack (tests/controller/test_soak.py).
                    src.repo.free()

        thread = threading.Thread(target=work, name="store-prepare", daemon=True)
        thread.start()
        return thread

    def _render(self, head: str, deployed: str | None) -> Rendered:
        """load/render/check: incremental from the last good commit when there is one.

        Lifecycle transitions are checked against the deployed revision: its
        result when in memory, else (after a restart, when the head moved) its
        commit, which the renderer reads.

        Raises:
            FabricError: any diagnostic at all.
            SourceError: the mirror cannot be read.
        """
        previous, changed, base = None, None, None
        if self.last_good is not None:
            previous = self.last_good.result
            changed = changed_paths(self.source.repo, self.last_good.commit, head)
            base = previous if self.last_good.commit == deployed else deployed
        elif deployed is not None and deployed != head:
            base = deployed
        started = time.perf_counter()
        assert self.renderer is not None
        result = self.renderer(self.source.repo, head, previous, changed, base)
        duration = time.perf_counter() - started
        if not result.ok or result.diagnostics:
            raise FabricError(list(result.diagnostics))
        _policy_of(result)  # a rollout.yaml that parses but means nothing refuses the commit too
        return Rendered(head, result, duration)

    # -- rollouts: the Executor the rollout service drives ----------------------

    def _begin_rollout(self, rendered: Rendered, staged: tuple[ToSign, ...]) -> None:
        if self.rollouts is None or self.rollouts.has_rollout(rendered.commit):
            return
        nodes = rendered.result.nodes
        settings = self._settings_for(rendered, [t.node for t in staged])
        candidates = [Candidate(t.node, nodes[t.node].site, nodes[t.node].cluster, dict(nodes[t.node].labels),
                                settings[t.node].pinned_wave) for t in staged]
        self.rollouts.begin(rendered.commit, _policy_of(rendered.result), candidates,
                            immediate=rollout_policy.commit_is_immediate(self.source.repo, rendered.commit),
                            current=self.current_manifests([t.node for t in staged]))

    def _rendered(self, commit: str) -> Rendered:
        """The render of ``commit``: the last good one, or (after a restart) a render made for the rollout."""
        if self.last_good is not None and self.last_good.commit == commit:
            return self.last_good
        if self._rollout_rendered is None or self._rollout_rendered.commit != commit:
            assert self.renderer is not None
            started = time.perf_counter()
            result = self.renderer(self.source.repo, commit, None, None, None)
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
        missing = [rendered.result.nodes[n] for n in names if n not in known and n in rendered.result.nodes]
        if missing:
            cache = getattr(self.renderer, "cache", None)
            if cache is None:
                from treadle.fabric.cache import ParseCache

                cache = ParseCache()
            source_of = getattr(self.renderer, "source", None)
            src = source_of(self.source.repo, rendered.commit) if source_of else GitRevisionSource(self.source.repo, rendered.commit)
            known.update(node_settings(src, cache, rendered.result.fabric, missing))
        return known

    def rollout_policy(self, commit: str) -> rollout_policy.RolloutPolicy | None:
        return _policy_of(self._rendered(commit).result)

    def targets(self, commit: str, nodes: Sequence[str]) -> list[Target]:
        rendered = self._rendered(commit)
        present = [n for n in nodes if n in rendered.result.nodes]
        settings = self._settings_for(rendered, present)
        from treadle.rollout.observe import DEFAULT_METRICS_PORT

        return [Target(n, rendered.result.nodes[n].address, settings[n].metrics_port or DEFAULT_METRICS_PORT)
                for n in present]

    def expected(self, nodes: Sequence[str]) -> dict[str, int]:
        records = self.state.records()
        return {n: records[n].generation for n in nodes if n in records}

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
        floor = clock_floor(self.clock())
        items = []
        for n in nodes:
            node = rendered.result.nodes.get(n)
            if node is None:
                continue  # removed from the fabric since the rollout began
            d = self._digests(node)
            rec = records.get(n)
            if rec is not None and rec.present and not rec.dirty and rec.content_digest == d:
                continue  # already carries this content: a publish retried after a restart
            items.append(ToSign(n, node.manifest, d, next_generation(rec.generation if rec else None, floor), commit,
                                node.lifecycle, node.canonical))
        self._sign_and_confirm(items, "rollout")

    def publish_manifests(self, manifests: Mapping[str, Mapping[str, Any]]) -> None:
        self._pending |= frozenset(manifests)  # rolled back: their records no longer match the last good render
        records = self.state.records()
        floor = clock_floor(self.clock())
        items = [ToSign(n, m, content_digest(m), next_generation(records[n].generation if n in records else None, floor),
                        m["metadata"].get("commit"), m["metadata"]["lifecycle"]) for n, m in sorted(manifests.items())]
        self._sign_and_confirm(items, "rollback")

    def _sign_and_confirm(self, items: list[ToSign], why: str) -> None:
        if not items:
            return
        signed = self._signed(self.signer.sign(items, now=self.clock()))
        publish(self.state, self.store, signed, ())
        self._record_history(signed, lambda _n: why)
        self.state.record_deployment(None, None, [s.node for s in signed], ())

    def _record_history(self, signed: list[SignedManifest], why: Callable[[str], str]) -> None:
        """Per node: the generation published, its commit and author, and why (``GET /v1/nodes/<node>/history``)."""
        if not signed:
            return
        authors = {c: self._author(c) for c in {s.commit for s in signed} if c}
        try:
            self.state.record_history((s.node, s.generation, s.commit, authors.get(s.commit or ""), why(s.node)) for s in signed)
        except StoreError as e:  # the history is for people; publishing went through
            log.error("history.write_failed", error=str(e))

    def _author(self, commit: str) -> str | None:
        try:
            author = self.source.repo[commit].author
            return f"{author.name} <{author.email}>"
        except (KeyError, ValueError, AttributeError):
            return None

    def target_of(self, node: str) -> Target | None:
        """Where ``node``'s agent serves its metrics, by the last good render; None when unknown.

        Called from the API's threads: reads only the immutable last render and
        opens its own handle on the mirror (a pygit2 repository is not shared
        between threads).
        """
        rendered = self.last_good
        if rendered is None or node not in rendered.result.nodes:
            return None
        from treadle.fabric import GitRevisionSource
        from treadle.fabric.cache import ParseCache
        from treadle.fabric.nodefile import node_settings
        from treadle.rollout.observe import DEFAULT_METRICS_PORT

        n = rendered.result.nodes[node]
        try:
            settings = node_settings(GitRevisionSource(str(self.source.path), rendered.commit), ParseCache(),
                                     rendered.result.fabric, [n])[node]
            port = settings.metrics_port or DEFAULT_METRICS_PORT
        except Exception as e:  # an unreadable node file: the default port is the best guess
            log.warning("node.settings_unreadable", node=node, error=str(e))
            port = DEFAULT_METRICS_PORT
        return Target(node, n.address, port)

    def write_revert(self, commit: str, reason: str) -> str:
        head = self.source.head()
        return write_revert_branch(self.source.path, self.source.url, commit, head, reason, self.source.credentials).name

    def _resign_due(self) -> tuple[str, ...]:
        """Re-sign, from the store's own bytes, every published manifest that expires within ``resign_before_s``.

        At the first cycle of a process also every manifest signed by another set
        of keys than the signer's: the signing keys change only with a restart, and
        a key rotation must reach every node (tests/controller/test_signers.py).
        """
        now = self.clock()
        check_keys = not self._keys_checked
        if not check_keys and now < self._resign_at:
            return ()  # nothing signed expires before then: no need to look at every record
        records = self.state.records()
        before_s = self.settings.resign_before_s
        mine = self._signed_here  # signed with this signer's keys: only expiry can make them due
        due = [r for r in records.values() if r.present and not r.dirty
               and ((check_keys and r.name not in mine) or r.expires - now <= before_s)]
        # The next time a record falls due, unless one due now cannot be re-signed (then: every cycle, as before).
        next_at = min((r.expires - before_s for r in records.values() if r.present and not r.dirty and r.expires - now > before_s),
                      default=float("inf"))
        if not due:
            self._keys_checked, self._resign_at = True, next_at
            self._signed_here = set()
            return ()
        items = []
        for r in due:
            data = self.store.read(r.name)
            if data is None:
                next_at = float("-inf")
                continue  # the next deploy cycle republishes it
            try:
                manifest = manifest_from_envelope(data)
                if r.expires - now > before_s and envelope_keyids(data) == self.signer.keyids:
                    continue
            except (ValueError, KeyError) as e:
                log.error("resign.unreadable", node=r.name, error=str(e))
                next_at = float("-inf")
                continue
            items.append(ToSign(r.name, manifest, r.content_digest, next_generation(r.generation, clock_floor(now)),
                                manifest["metadata"]["commit"], r.lifecycle))
        try:
            signed = self.signer.sign(items, now=now)
            publish(self.state, self.store, signed, ())
            self._record_history(signed, lambda _n: "re-signed")
            self.state.record_deployment(None, None, [s.node for s in signed], ())
        except TreadleError as e:
            log.error("resign.failed", error=str(e))
            return ()
        self._keys_checked, self._resign_at = True, next_at
        self._signed_here = set()
        self._signed(signed)
        return tuple(s.node for s in signed)

    # -- the one place a cycle is recorded -------------------------------------

    def record(self, o: Outcome) -> None:
        """Metrics, refusal rows and the log line of one cycle (deployments are recorded by :func:`advance`)."""
        m = self.metrics
        if o.result in ("deployed", "refused"):  # a poll that found nothing new, or git unreachable, is no commit
            m.commits_total.labels(result=o.result).inc()
        if o.render_s is not None:
            m.render_duration_seconds.observe(o.render_s)
        if o.result == "refused":
            m.rejected_commits_total.labels(reason=o.reason).inc()
            try:
                self.state.record_refusal(o.commit or "unknown", o.reason or "unknown", o.message, o.diagnostics)
            except StoreError as e:
                log.error("state.write_failed", error=str(e))
            log.warning("commit.refused", commit=o.commit, reason=o.reason, message=o.message, diagnostics=list(o.diagnostics))
        elif o.result == "failed":
            log.error("cycle.failed", error_type=o.reason, error=o.message)
        elif o.result == "deployed":
            log.event("commit.deployed", commit=o.commit, previous=o.previous, kind=o.kind, published=len(o.published),
                      removed=len(o.removed), **{f"{k}_s": round(v, 4) for k, v in o.step_s.items()})
        if o.resigned:
            log.event("manifests.resigned", count=len(o.resigned))
        m.set_deployed_commit(self.state.deployed_commit())
        m.set_lifecycle_counts(self.state.lifecycle_counts())


@contextlib.contextmanager
def _timed(steps: dict[str, float], name: str) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        steps[name] = time.perf_counter() - started


def _head_or_none(source: GitSource) -> str | None:
    try:
        return source.head()
    except SourceError:
        return None


# -- the steps as functions ----------------------------------------------------


def plan_changes(records: Mapping[str, NodeRecord], nodes: Mapping[str, Any], commit: str,
                 published: frozenset[str] | None = None, digest_of: Callable[[Any], str] = node_digest,
                 floor: int = 0, stored: Mapping[str, int] | None = None, only: frozenset[str] | None = None) -> PublishPlan:
    """plan: every node whose content differs from what is published gets the next generation.

    A node is republished as well when its last reservation was never confirmed
    (dirty) or, when ``published`` is given, when its file is missing from the store.
    Generations are at least ``floor`` and above ``stored`` (the store's generations
    of nodes the state does not know): see :mod:`treadle.daemon.generation`.
    ``only`` limits the plan to those names, the only ones that can differ
    (see :meth:`Pipeline._candidates`); ``unchanged`` then counts the rest as well.
    """
    if only is not None:
        return _plan_of(records, nodes, commit, only, digest_of, floor, stored)
    to_sign, unchanged = [], 0
    for name in sorted(nodes):
        node = nodes[name]
        d = digest_of(node)
        rec = records.get(name)
        same = (rec is not None and rec.present and not rec.dirty and rec.content_digest == d
                and (published is None or name in published))
        if same:
            unchanged += 1
            continue
        last = rec.generation if rec is not None else (stored or {}).get(name)
        generation = next_generation(last, floor)
        to_sign.append(ToSign(name, node.manifest, d, generation, commit, node.lifecycle, node.canonical))
    removed = tuple(sorted(n for n, r in records.items() if r.present and n not in nodes))
    return PublishPlan(commit, tuple(to_sign), removed, unchanged)


def _plan_of(records: Mapping[str, NodeRecord], nodes: Mapping[str, Any], commit: str, only: frozenset[str],
             digest_of: Callable[[Any], str], floor: int, stored: Mapping[str, int] | None) -> PublishPlan:
    """:func:`plan_changes` over the names of ``only``: what is in ``nodes`` is planned, what is not is removed."""
    present = {n: nodes[n] for n in only if n in nodes}
    plan = plan_changes({n: records[n] for n in only if n in records}, present, commit, None, digest_of, floor, stored)
    return replace(plan, unchanged=len(nodes) - len(plan.to_sign))


def _why_now(record: NodeRecord | None, digest: str) -> str:
    """Why a node was published at once, outside any rollout."""
    if record is None or not record.present:
        return "new node"
    if digest == record.content_digest:
        return "republished"  # same content: a reservation never confirmed, or a file missing from the store
    return "deploy"


def publish(state: StateDB, store: PublishStore, signed: list[SignedManifest], removed: tuple[str, ...]) -> None:
    """publish: reserve the generations, then write the envelopes atomically.

    Raises:
        StoreError: the database or the store failed; the reservation keeps the next attempt's generations above.
    """
    if not signed and not removed:
        return
    state.reserve(NodeRecord(s.node, s.generation, 0, s.content_digest, s.commit, s.expires, s.lifecycle) for s in signed)
    store.publish({s.node: s.envelope for s in signed}, removed)


def split_plan(plan: PublishPlan, records: Mapping[str, NodeRecord], *, staged: bool) -> tuple[tuple[ToSign, ...], tuple[ToSign, ...]]:
    """(publish now, roll out in waves): see the module docstring. Without rollouts everything is published now."""
    if not staged:
        return plan.to_sign, ()
    now, waves = [], []
    for item in plan.to_sign:
        rec = records.get(item.node)
        if rec is None or not rec.present or rec.content_digest == item.content_digest:
            now.append(item)
        else:
            waves.append(item)
    return tuple(now), tuple(waves)


def _policy_of(result: Any) -> rollout_policy.RolloutPolicy:
    """The rollout policy of a render. Raises FabricError when rollout.yaml is meaningless (e.g. an unknown time zone)."""
    try:
        return rollout_policy.from_doc(result.rollout)
    except rollout_policy.PolicyError as e:
        from treadle.errors import Diagnostic

        raise FabricError([Diagnostic("rollout.yaml", 0, 0, "rollout", str(e), "fix rollout.yaml")]) from e


def advance(state: StateDB, decision: gate_mod.GateDecision, signed: list[SignedManifest], removed: tuple[str, ...]) -> None:
    """advance: confirm what was published at once and move the deployed commit (the rollout's waves follow in :meth:`Pipeline.tick`)."""
    if decision.kind == "unchanged" and not signed and not removed:
        return  # a restart that found the store as the state says: nothing to record
    state.record_deployment(decision.commit, decision.previous, [s.node for s in signed], removed, kind=decision.kind)
