"""The controller's cycle, one call per step::

    fetch ─► gate ─► render ─► plan ─► sign ─► publish ─► confirm ─► advance

:meth:`Pipeline.run_once` strings them together over immutable values (a
head commit, a gate decision, a :class:`~treadle.daemon.render.Rendered`
commit, a :class:`PublishPlan`, signed envelopes): fetch is
:mod:`.fetch`'s, gate :mod:`.gate`'s, render :mod:`.render`'s, plan is
here (:func:`plan_changes`, :func:`split_plan`), sign → publish → confirm is
:mod:`.release`'s one path, and advance (the rollout's waves) is
:mod:`.rollouts`', driven by :meth:`Pipeline.tick`. What the cycle did is one
:class:`Outcome`, and :meth:`Pipeline.record` is the one place that turns an
outcome into metrics, refusal rows and a log line. (Generations and
deployments are written by the publish and confirm steps themselves: their
order around the store writes is what makes a crash safe.)

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
- ``advance`` runs every cycle, also when the head did not move:
  :meth:`Pipeline.tick` lets the rollout service observe the agents of the
  wave in flight and step the rollout, publishing waves and rolling back
  through the :class:`~treadle.daemon.rollouts.RolloutExecutor`.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from treadle import log
from treadle.daemon import gate as gate_mod
from treadle.daemon.fetch import GitSource
from treadle.daemon.generation import clock_floor, next_generation
from treadle.daemon.metrics import ControllerMetrics
from treadle.daemon.publish import PublishStore
from treadle.daemon.release import Release, confirm_published, stored_generations, timed
from treadle.daemon.render import FabricRenderer, Rendered, Renderer, prepare_store, render
from treadle.daemon.rollouts import RolloutExecutor
from treadle.daemon.sign import DigestCache, ManifestSigner, ToSign, node_digest
from treadle.daemon.state import NodeRecord, StateDB
from treadle.errors import FabricError, GateError, SigningKeyError, SourceError, StoreError
from treadle.rollout.service import RolloutService


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
    #: sign → publish → confirm, for the cycle, re-signing and the rollouts alike.
    release: Release = field(init=False)
    #: The rollout service's :class:`~treadle.rollout.service.Executor`.
    executor: RolloutExecutor = field(init=False)
    _digests: DigestCache = field(default_factory=DigestCache)

    def __post_init__(self) -> None:
        if self.renderer is None:
            self.renderer = FabricRenderer()
        self.release = Release(
            self.source,
            self.state,
            self.store,
            self.signer,
            self.clock,
            self.settings.resign_before_s,
        )
        self.executor = RolloutExecutor(
            self.source, self.state, self.store, self.release, self, self._digests
        )

    # -- the cycle -----------------------------------------------------------

    def run_once(self) -> Outcome:
        """One cycle: deploy the newest head if allowed and valid, then re-sign what is near expiry; recorded."""
        outcome = self._deploy()
        resigned = self.release.resign_due()
        if resigned:
            outcome = replace(outcome, resigned=resigned)
        self.record(outcome)
        self.tick()
        return outcome

    def tick(self) -> None:
        """advance: observe and step the rollout in flight (also between commits, on the health interval)."""
        if self.rollouts is None:
            return
        try:
            self.rollouts.tick(self.executor)
        except (FabricError, SourceError, StoreError, SigningKeyError) as e:
            log.error("rollout.tick_failed", error_type=type(e).__name__, error=str(e))

    def _deploy(self) -> Outcome:
        deployed = self.state.deployed_commit()
        steps: dict[str, float] = {}
        try:
            return self._deploy_steps(deployed, steps)
        except (
            Exception
        ) as e:  # a bug of ours (DESIGN.md, hostile input): refuse the commit, keep running
            return self._internal(e, deployed, steps)

    def _deploy_steps(self, deployed: str | None, steps: dict[str, float]) -> Outcome:
        """fetch → gate → render → plan → sign → publish → confirm, each step timed in ``steps``."""
        try:
            with timed(steps, "source"):
                head = self.source.fetch()
            if self._already_refused(head):
                return Outcome("unchanged", head, deployed, kind="refused-before")
            with timed(steps, "gate"):
                decision = gate_mod.check(
                    self.source.repo,
                    deployed,
                    head,
                    policy=self.policy,
                    history_accepted=self.state.history_accepted(head),
                )
            if (
                decision.kind == "unchanged"
                and self.last_good is not None
                and not self.state.dirty()
            ):
                return Outcome("unchanged", head, deployed, kind="unchanged")
            rendered = self._render(head, deployed, steps)
            with timed(steps, "plan"):
                plan, now_items, staged, why = self._plan(rendered)
            signed = self.release(
                now_items,
                why.__getitem__,
                removed=plan.removed,
                decision=decision,
                steps=steps,
                before_confirm=lambda: self._begin_rollout(rendered, staged),
            )
        except GateError as e:
            return Outcome(
                "refused", _head_or_none(self.source), deployed, e.reason, str(e), step_s=steps
            )
        except FabricError as e:
            return Outcome(
                "refused",
                _head_or_none(self.source),
                deployed,
                "invalid",
                "the fabric has errors",
                tuple(str(d) for d in e.diagnostics),
                step_s=steps,
            )
        except (SourceError, StoreError, SigningKeyError) as e:
            return Outcome("failed", None, deployed, type(e).__name__, str(e), step_s=steps)
        self.last_good = rendered
        self.executor.pending = frozenset(
            i.node for i in staged
        )  # the rest was published: equal to its record now
        return Outcome(
            "deployed" if signed or plan.removed or decision.kind != "unchanged" else "unchanged",
            head,
            deployed,
            published=tuple(s.node for s in signed),
            removed=plan.removed,
            render_s=rendered.duration_s,
            kind=decision.kind,
            step_s=steps,
        )

    def _internal(self, e: Exception, deployed: str | None, steps: dict[str, float]) -> Outcome:
        """The outcome of an unexpected exception: the head is refused while it was being read or checked."""
        # The step that raised: timed() records it on the way out (prepare_wait runs after a failed render).
        step = next((s for s in reversed(steps) if s != "prepare_wait"), "source")
        log.error(
            "cycle.internal_error",
            step=step,
            error_type=type(e).__name__,
            error=str(e)[:2000],
            traceback=traceback.format_exc(limit=30)[-8000:],
        )
        message = f"internal error in step {step}: {type(e).__name__}: {str(e)[:500]}"
        if step in ("sign", "publish", "advance"):
            return Outcome("failed", None, deployed, "internal", message, step_s=steps)
        head = _head_or_none(self.source)
        if head is not None and self._already_refused(
            head
        ):  # e.g. the fetch of that head fails every poll
            return Outcome("unchanged", head, deployed, kind="refused-before")
        return Outcome(
            "refused",
            head,
            deployed,
            "internal",
            message + " (a bug in Treadle: the traceback is in the controller's log)",
            step_s=steps,
        )

    def _already_refused(self, head: str) -> bool:
        last = self.state.last_refusal()
        if last is None or last.commit != head or head == self.state.deployed_commit():
            return False
        return not (last.reason == "non_fast_forward" and self.state.history_accepted(head))

    # -- render and plan -------------------------------------------------------

    def _render(self, head: str, deployed: str | None, steps: dict[str, float]) -> Rendered:
        """render (see :func:`treadle.daemon.render.render`), the store made ready meanwhile on a cold cycle."""
        preparing = (
            prepare_store(self.store, self.source.path, head) if self.last_good is None else None
        )
        rendered: Rendered | None = None
        try:
            with timed(steps, "render"):
                assert self.renderer is not None
                rendered = render(self.renderer, self.source.repo, head, deployed, self.last_good)
            return rendered
        finally:
            if preparing is not None:
                with timed(
                    steps, "prepare_wait"
                ):  # what the store's preparation took beyond the render
                    preparing.join()
                if rendered is None:  # refused or failed: drop the prepared temp files
                    self.store.remove_temp_files()

    def _plan(
        self, rendered: Rendered
    ) -> tuple[PublishPlan, tuple[ToSign, ...], tuple[ToSign, ...], dict[str, str]]:
        """plan: the changes, split into (plan, publish now, roll out in waves, why each published now)."""
        cold = self.last_good is None
        if cold:  # after a (re)start the store is checked once against the state
            confirm_published(self.state, self.store)
        records = self.state.records()
        nodes = rendered.result.nodes
        published = (
            frozenset(self.store.nodes()) if cold else None
        )  # a deleted or never-renamed file is published again
        plan = plan_changes(
            records,
            nodes,
            rendered.commit,
            published=published,
            digest_of=self._digests,
            floor=clock_floor(self.clock()),
            stored=stored_generations(self.store, records, nodes, published)
            if published is not None
            else {},
            only=self._candidates(rendered),
        )
        now_items, staged = split_plan(plan, records, staged=self.rollouts is not None)
        why = {
            i.node: _why_now(records.get(i.node), i.content_digest) for i in now_items
        }  # before publish writes
        return plan, now_items, staged, why

    def _candidates(self, rendered: Rendered) -> frozenset[str] | None:
        """The nodes whose content may differ from what is published; None: every node.

        After an incremental render that names the nodes it rendered anew
        (``fresh``; every other node is the last good render's, re-stamped),
        only these can differ: the fresh ones, those that differed at the last
        plan (the executor's ``pending``: staged in a rollout, or rolled back
        since), and the dirty ones. Everything else was equal to its record at
        the last plan and neither changed since. So a one-node push plans one
        node, not the fabric (tests/controller/test_pipeline.py pins both plans equal).
        """
        fresh = getattr(rendered.result, "fresh", None)
        if fresh is None or self.last_good is None:
            return None
        return fresh | self.executor.pending | self.state.dirty()

    def _begin_rollout(self, rendered: Rendered, staged: tuple[ToSign, ...]) -> None:
        if self.rollouts is not None:
            self.executor.begin(self.rollouts, rendered, staged)

    # -- the one place a cycle is recorded -------------------------------------

    def record(self, o: Outcome) -> None:
        """Metrics, refusal rows and the log line of one cycle (deployments are recorded by the confirm step)."""
        m = self.metrics
        if o.result in (
            "deployed",
            "refused",
        ):  # a poll that found nothing new, or git unreachable, is no commit
            m.commits_total.labels(result=o.result).inc()
        if o.render_s is not None:
            m.render_duration_seconds.observe(o.render_s)
        if o.result == "refused":
            m.rejected_commits_total.labels(reason=o.reason).inc()
            try:
                self.state.record_refusal(
                    o.commit or "unknown", o.reason or "unknown", o.message, o.diagnostics
                )
            except StoreError as e:
                log.error("state.write_failed", error=str(e))
            log.warning(
                "commit.refused",
                commit=o.commit,
                reason=o.reason,
                message=o.message,
                diagnostics=list(o.diagnostics),
            )
        elif o.result == "failed":
            log.error("cycle.failed", error_type=o.reason, error=o.message)
        elif o.result == "deployed":
            steps: dict[str, Any] = {f"{k}_s": round(v, 4) for k, v in o.step_s.items()}
            log.event(
                "commit.deployed",
                commit=o.commit,
                previous=o.previous,
                kind=o.kind,
                published=len(o.published),
                removed=len(o.removed),
                **steps,
            )
        if o.resigned:
            log.event("manifests.resigned", count=len(o.resigned))
        m.set_deployed_commit(self.state.deployed_commit())
        m.set_lifecycle_counts(self.state.lifecycle_counts())


def _head_or_none(source: GitSource) -> str | None:
    try:
        return source.head()
    except SourceError:
        return None


# -- the steps as functions ----------------------------------------------------


def plan_changes(
    records: Mapping[str, NodeRecord],
    nodes: Mapping[str, Any],
    commit: str,
    published: frozenset[str] | None = None,
    digest_of: Callable[[Any], str] = node_digest,
    floor: int = 0,
    stored: Mapping[str, int] | None = None,
    only: frozenset[str] | None = None,
) -> PublishPlan:
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
        same = (
            rec is not None
            and rec.present
            and not rec.dirty
            and rec.content_digest == d
            and (published is None or name in published)
        )
        if same:
            unchanged += 1
            continue
        last = rec.generation if rec is not None else (stored or {}).get(name)
        generation = next_generation(last, floor)
        to_sign.append(
            ToSign(name, node.manifest, d, generation, commit, node.lifecycle, node.canonical)
        )
    removed = tuple(sorted(n for n, r in records.items() if r.present and n not in nodes))
    return PublishPlan(commit, tuple(to_sign), removed, unchanged)


def _plan_of(
    records: Mapping[str, NodeRecord],
    nodes: Mapping[str, Any],
    commit: str,
    only: frozenset[str],
    digest_of: Callable[[Any], str],
    floor: int,
    stored: Mapping[str, int] | None,
) -> PublishPlan:
    """:func:`plan_changes` over the names of ``only``: what is in ``nodes`` is planned, what is not is removed."""
    present = {n: nodes[n] for n in only if n in nodes}
    plan = plan_changes(
        {n: records[n] for n in only if n in records},
        present,
        commit,
        None,
        digest_of,
        floor,
        stored,
    )
    return replace(plan, unchanged=len(nodes) - len(plan.to_sign))


def _why_now(record: NodeRecord | None, digest: str) -> str:
    """Why a node was published at once, outside any rollout."""
    if record is None or not record.present:
        return "new node"
    if digest == record.content_digest:
        return "republished"  # same content: a reservation never confirmed, or a file missing from the store
    return "deploy"


def split_plan(
    plan: PublishPlan, records: Mapping[str, NodeRecord], *, staged: bool
) -> tuple[tuple[ToSign, ...], tuple[ToSign, ...]]:
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
