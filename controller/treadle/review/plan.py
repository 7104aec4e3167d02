"""build_plan: two revisions in, the reviewer's plan out.

Steps, in order: open both revisions; list the paths that differ (a pygit2
tree diff); render BASE and HEAD scoped to those paths (a
:class:`~treadle.fabric.Scope`), sharing the parse cache, so both revisions
are loaded and checked in full but only the nodes the change can affect are
rendered: a one-node change renders one node twice, whatever the fabric's
size; compare the two renders; group the changed nodes; explain the changed
values in HEAD; preview the rollout.

What a scoped plan does not see is what rendering an untouched node would
find (a template that fails for it): the same in BASE and HEAD, so not this
change's doing, and ``treadle validate`` reports it. With
``PlanSettings.full_render`` BASE is rendered in full and HEAD incrementally
from it, and the plan's verdict covers every node.
Nothing here prints; :mod:`treadle.review.markdown` and
:mod:`treadle.review.jsonreport` turn the :class:`Plan` into text.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import pygit2

from treadle.errors import Diagnostic, SourceError
from treadle.fabric import GitRevisionSource, ParseCache, RenderResult, Scope, render_fabric
from treadle.fabric.layout import classify
from treadle.review.changes import Changes, diff_renders
from treadle.review.group import Group, group_changes
from treadle.review.preview import RolloutPreview, pinned_waves, preview
from treadle.review.provenance import Explainer, ProvenanceBudget, ValueSource, explain_groups
from treadle.rollout.policy import commit_is_immediate

#: Diagnostic codes that are refusals of the change as a whole (fleet invariants), not a broken file.
REFUSAL_CODES = frozenset(
    {"lifecycle-transition", "max-out-of-production", "duplicate-node", "duplicate-address"}
)


@dataclass(frozen=True, slots=True)
class Revision:
    """A revision as the user named it and the commit it resolved to."""

    rev: str
    commit: str


@dataclass(frozen=True, slots=True)
class PlanSettings:
    """Knobs of one plan: ``now_s`` (epoch seconds) decides which windows and freezes apply;
    ``full_render`` renders every node instead of those the change can affect."""

    now_s: float | None = None
    max_provenance_lookups: int = 24
    full_render: bool = False


@dataclass(frozen=True, slots=True)
class PlanStats:
    """Render figures: nodes in each revision, and how many HEAD rendered (rather than reused from BASE or
    left out as untouched by the change)."""

    base_nodes: int
    head_nodes: int
    head_rendered: int
    untouched: int = 0  # nodes that read no changed file, so were rendered in neither revision


@dataclass(frozen=True)
class Plan:
    """Everything the reports show. ``ok`` is HEAD's validity (the command's exit code)."""

    base: Revision
    head: Revision
    base_ok: bool
    changes: Changes
    groups: list[Group]
    provenance: list[dict[str, tuple[ValueSource, ...] | None]]
    provenance_skipped: int
    rollout: RolloutPreview
    errors: tuple[Diagnostic, ...]
    refusals: tuple[Diagnostic, ...]
    stats: PlanStats
    changed_paths: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return not self.errors and not self.refusals


def changed_paths(
    repo: pygit2.Repository, base: str, head: str, prefix: str = ""
) -> dict[str, frozenset[int]]:
    """Every path added, removed or modified between two commits (both sides of a rename), with
    the HEAD line numbers the change added (empty for a removed or binary file). With ``prefix``
    (a fabric in a directory of the repository) only paths below it, relative to it.

    Raises:
        SourceError: git cannot diff the two trees.
    """
    try:
        # pygit2's stubs omit diff(Tree, Tree), which it supports (Tree.diff_to_tree).
        diff = repo.diff(repo[base].peel(pygit2.Tree), repo[head].peel(pygit2.Tree))  # type: ignore[call-overload]
    except (KeyError, ValueError, pygit2.GitError) as e:
        raise SourceError(f"cannot diff {base[:12]}..{head[:12]}: {e}") from e
    paths: dict[str, frozenset[int]] = {}
    for patch in diff:
        delta = patch.delta
        old, new = delta.old_file.path, delta.new_file.path
        if old.startswith(prefix):
            paths.setdefault(old[len(prefix) :], frozenset())
        if new.startswith(prefix):
            paths[new[len(prefix) :]] = frozenset(
                line.new_lineno for hunk in patch.hunks for line in hunk.lines if line.origin == "+"
            )
    return paths


def build_plan(
    repo: str | os.PathLike[str] | pygit2.Repository,
    base_rev: str,
    head_rev: str,
    settings: PlanSettings | None = None,
) -> Plan:
    """The plan of merging ``head_rev`` onto ``base_rev`` in ``repo``.

    Raises:
        UsageError: ``repo`` is not a git repository or a revision does not exist.
        SourceError: git cannot read a revision.
    """
    settings = settings or PlanSettings()
    cache = ParseCache()
    base_src = GitRevisionSource(repo, base_rev)
    head_src = GitRevisionSource(repo, head_rev)
    base_commit, head_commit = str(base_src.commit), str(head_src.commit)
    paths = changed_paths(base_src.repo, base_commit, head_commit, getattr(head_src, "prefix", ""))
    base, head = _render_both(base_src, head_src, cache, paths, settings.full_render)
    changes = diff_renders(
        base.nodes,
        head.nodes,
        base.lifecycles,
        head.lifecycles,
        _Places(head_src, base_src),
        untouched=base.skipped | head.skipped,
        unreadable_base=base.unreadable,
        unreadable_head=head.unreadable,
    )
    groups = group_changes(changes.changed)
    budget = ProvenanceBudget(lookups=settings.max_provenance_lookups)
    provenance = explain_groups(Explainer(head_src, cache, paths, budget), groups)
    updated = [head.nodes[n.name] for n in changes.changed] + [
        head.nodes[n.name] for n in changes.added
    ]
    pinned = pinned_waves(head_src, cache, head.fabric, updated)
    now = settings.now_s if settings.now_s is not None else time.time()
    rollout = preview(
        head.rollout, updated, pinned, now, commit_is_immediate(base_src.repo, head_commit)
    )
    return Plan(
        base=Revision(base_rev, base_commit),
        head=Revision(head_rev, head_commit),
        base_ok=base.ok,
        changes=changes,
        groups=groups,
        provenance=provenance,
        provenance_skipped=budget.skipped,
        rollout=rollout,
        errors=tuple(d for d in head.diagnostics if d.code not in REFUSAL_CODES),
        refusals=tuple(d for d in head.diagnostics if d.code in REFUSAL_CODES),
        stats=_stats(base, head),
        changed_paths=tuple(sorted(paths)),
    )


def _render_both(
    base_src: GitRevisionSource,
    head_src: GitRevisionSource,
    cache: ParseCache,
    paths: Mapping[str, object],
    full: bool,
) -> tuple[RenderResult, RenderResult]:
    """BASE and HEAD rendered for the same nodes: those ``paths`` can affect (every node when ``full``).

    A node that reads no changed path reads the same files in both
    revisions, so the two selections agree; HEAD is told BASE's selection
    anyway, and BASE is rendered again in the one case where HEAD still
    selects more (a new file that reuses an existing node's name).
    """
    if full:
        base = render_fabric(base_src, cache)
        return base, render_fabric(head_src, cache, previous=base, changed_paths=paths, base=base)
    scope = Scope(frozenset(paths))
    base = render_fabric(base_src, cache, scope=scope)
    head = render_fabric(head_src, cache, base=base, scope=Scope(scope.paths, _selected(base)))
    more = _selected(head) - _selected(base)
    if more & set(base.lifecycles):
        base = render_fabric(base_src, cache, scope=Scope(scope.paths, _selected(head)))
    return base, head


def _selected(result: RenderResult) -> frozenset[str]:
    return frozenset(result.lifecycles) - result.skipped


class _Places:
    """(site, cluster) of nodes that did not render, from the layout of HEAD, else BASE; classified only when asked."""

    def __init__(self, *sources: GitRevisionSource) -> None:
        self._sources = sources
        self._found: dict[str, tuple[str, str]] | None = None

    def get(self, name: str, default: tuple[str, str] | None = None) -> tuple[str, str] | None:
        if self._found is None:
            self._found = {}
            for src in reversed(self._sources):
                self._found.update(
                    (ref.name, (ref.site, ref.cluster)) for ref in classify(src.entries()).nodes
                )
        return self._found.get(name, default)


def _stats(base: RenderResult, head: RenderResult) -> PlanStats:
    """Nodes are counted by name (rendered or not); a HEAD node reused from BASE shares BASE's resource
    list (the renderer only re-stamps it)."""
    rendered = sum(
        1
        for name, node in head.nodes.items()
        if name not in base.nodes
        or node.manifest["resources"] is not base.nodes[name].manifest["resources"]
    )
    return PlanStats(
        len(base.lifecycles), len(head.lifecycles), rendered, len(base.skipped | head.skipped)
    )
