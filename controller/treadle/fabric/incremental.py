"""The render of a commit that changed only node files: work in proportion to the change, not to the fabric.

A full render, even one that reuses every unchanged node, still lists the
tree, loads and checks every file, re-stamps every node and runs the fleet
checks over every node: at 100,000 nodes that is seconds for a one-node
push. When the previous render was clean and the change only modifies node
files, everything else is known to be as it was:

- the listing is the previous one with the changed blobs swapped in (no file
  added or removed, so the layout and the roles are the same);
- every other file parsed and passed its checks (the previous render had no
  diagnostic), and its content is the same;
- every other node renders to the same manifest, but for the commit, which
  :class:`Stamped` writes in when a node is looked up, not before;
- the fleet checks can only newly fail through the changed nodes: their
  addresses and identities against an index of everyone else's, their
  clusters' out-of-production share from kept counts, their own lifecycle
  transitions.

So only the changed node files are loaded, checked and rendered. Whenever
anything is found (a problem of any kind, a doubt about the shortcut), it
returns None and the caller renders in full, which reports exactly what a
full render reports. The differential tests (tests/differential/) compare
this path's results with full renders over random commit sequences.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from treadle.fabric.cache import ParseCache
from treadle.fabric.checks import (
    DEFAULT_ALLOWED_ROOTS,
    NodeFacts,
    check_paths,
    check_transitions,
    out_of_production_limit,
)
from treadle.fabric.layout import NodeRef
from treadle.fabric.overlay import Overlays
from treadle.fabric.patched import Patched
from treadle.fabric.run import FabricRun, Listing, load_fabric
from treadle.fabric.source import Source, entries_of
from treadle.fabric.templates import Templates
from treadle.fabric.yamlload import plain

if TYPE_CHECKING:
    from treadle.fabric.render import RenderedNode, RenderResult

#: (site, cluster) -> (non-retired members, of them outside production).
ClusterCounts = dict[tuple[str, str], tuple[int, int]]


@dataclass(frozen=True)
class NodeIndex:
    """What a clean render knows of every node, kept for the next incremental render.

    ``nodes`` are the rendered nodes as rendered (each with the commit it was
    rendered from); the result's ``nodes`` re-stamps them on access.
    """

    listing: Listing
    by_path: Mapping[str, NodeRef]
    facts: Mapping[str, NodeFacts]
    by_address: Mapping[str, str]
    by_identity: Mapping[str, str]
    clusters: ClusterCounts
    nodes: Mapping[str, RenderedNode]


def index_of(
    listing: Listing, facts: Iterable[NodeFacts], nodes: Mapping[str, RenderedNode]
) -> NodeIndex:
    """The index of a clean full render (its listing, its nodes' facts and rendered nodes)."""
    by_name = {f.name: f for f in facts}
    by_address = {f.address: f.name for f in by_name.values() if f.address is not None}
    by_identity = {f.identity: f.name for f in by_name.values() if f.identity is not None}
    clusters: ClusterCounts = {}
    for f in by_name.values():
        _count(clusters, f, 1)
    raw = nodes.raw if isinstance(nodes, Stamped) else nodes
    return NodeIndex(
        listing,
        {ref.path: ref for ref in listing.layout.nodes},
        by_name,
        by_address,
        by_identity,
        clusters,
        raw,
    )


def _count(clusters: ClusterCounts, f: NodeFacts, delta: int) -> None:
    if f.lifecycle == "retired":
        return
    key = (f.site, f.cluster)
    members, out = clusters.get(key, (0, 0))
    clusters[key] = (members + delta, out + (delta if f.lifecycle != "production" else 0))


class Stamped(Mapping[str, "RenderedNode"]):
    """Rendered nodes carrying ``commit``: each re-stamped when first looked up (a splice and a digest).

    An incremental render hands on the previous nodes unchanged; the plan
    then looks up only the nodes that can have changed, so a push re-stamps
    a handful of nodes instead of the whole fabric. Iterating over every
    value re-stamps every node, as a full render would have.
    """

    __slots__ = ("raw", "commit", "_done")

    def __init__(self, raw: Mapping[str, RenderedNode], commit: str | None) -> None:
        self.raw, self.commit = raw, commit
        self._done: dict[str, RenderedNode] = {}

    def __getitem__(self, name: str) -> RenderedNode:
        hit = self._done.get(name)
        if hit is None:
            from treadle.fabric.render import restamp

            hit = self._done[name] = restamp(self.raw[name], self.commit)
        return hit

    def __contains__(self, name: object) -> bool:
        return name in self.raw

    def __iter__(self) -> Iterator[str]:
        return iter(self.raw)

    def __len__(self) -> int:
        return len(self.raw)


def render_changed(
    src: Source, cache: ParseCache, previous: RenderResult, changed: Iterable[str], base: Any
) -> RenderResult | None:
    """The render of ``src`` from the clean ``previous`` when only node files were modified; None otherwise.

    ``base`` must be None or ``previous`` itself (the lifecycle transitions of
    the unchanged nodes are then known to be none).
    """
    index = previous.index
    if (
        not isinstance(index, NodeIndex)
        or not previous.ok
        or previous.skipped
        or (base is not None and base is not previous)
    ):
        return None
    changed = set(changed)
    refs = [index.by_path.get(path) for path in sorted(changed)]
    entries = entries_of(src)
    if (
        any(ref is None for ref in refs)
        or not all(path in entries for path in changed)
        or src.problems()
    ):
        return (
            None  # a file other than a node file, or a node added or removed: the layout may change
        )
    listing = Listing(entries, index.listing.layout, index.listing.roles, index.listing.nodes)
    cache.listing(src, lambda: listing)
    run = FabricRun(src, cache)
    if run.listing is not listing:
        return None
    return _render_refs(
        run, previous, index, [ref for ref in refs if ref is not None], base is not None
    )


def _render_refs(
    run: FabricRun, previous: RenderResult, index: NodeIndex, refs: list[NodeRef], with_base: bool
) -> RenderResult | None:
    from treadle.fabric.render import RenderResult, _render_batch

    fabric, fabric_tagged = load_fabric(run)
    allowed = (fabric.get("policy") or {}).get("allowed_roots") or DEFAULT_ALLOWED_ROOTS
    for ref in refs:
        run.load(ref.path, "node")
        run.findings += check_paths(ref.path, (), run.parsed.get(ref.path), allowed)
    overlays = Overlays(run.layout, fabric, fabric_tagged, run.lookup)
    batch = _render_batch(
        run, overlays, Templates(run.src, run.entries, run.cache, run.limits), fabric, refs, {}
    )
    fresh = {ref.name: node for ref, node in batch.nodes if node is not None}
    if (
        run.findings
        or run.diagnostics
        or batch.findings
        or batch.overlay_findings
        or batch.template_errors
        or len(fresh) != len(refs)
    ):
        return None
    facts = [run.fact(ref) for ref in refs]
    updated = _fleet(index, facts, fabric)
    if updated is None or (
        with_base and check_transitions(facts, fabric, _base_states(previous, facts))
    ):
        return None
    for ref in refs:
        run.cache.store_rendered(ref.name, fresh[ref.name].sources, run.entries, fresh[ref.name])
    raw = Patched.of(index.nodes, fresh)
    return RenderResult(
        commit=run.src.commit,
        nodes=Stamped(raw, run.src.commit),
        diagnostics=[],
        deps=_deps(previous.deps, index.nodes, fresh),
        fabric=plain(fabric),
        rollout=previous.rollout,
        lifecycles=_lifecycles(previous.lifecycles, facts),
        fresh=frozenset(fresh),
        index=replace(updated, listing=run.listing, nodes=raw),
    )


def _base_states(previous: RenderResult, facts: list[NodeFacts]) -> dict[str, str]:
    """The changed nodes' lifecycle states in the base revision (``previous``, which is the base here)."""
    return {
        f.name: previous.lifecycles[f.name]
        for f in facts
        if f.name in previous.lifecycles and f.name not in previous.unreadable
    }


def _fleet(index: NodeIndex, facts: list[NodeFacts], fabric: Mapping[str, Any]) -> NodeIndex | None:
    """The index with the changed nodes' facts, or None when a fleet check might fail (the full render says which)."""
    if all(index.facts.get(f.name) == f for f in facts):
        return index  # addresses, identities and lifecycles as they were: the fleet checks passed with them
    by_name, by_address, by_identity, clusters = (
        dict(index.facts),
        dict(index.by_address),
        dict(index.by_identity),
        dict(index.clusters),
    )
    for f in facts:
        old = by_name[f.name]
        for table, before, _after in (
            (by_address, old.address, f.address),
            (by_identity, old.identity, f.identity),
        ):
            if before is not None and table.get(before) == f.name:
                del table[before]
        _count(clusters, old, -1)
        by_name[f.name] = f
    for f in facts:
        for table, value in ((by_address, f.address), (by_identity, f.identity)):
            if value is not None:
                if table.get(value, f.name) != f.name:
                    return None
                table[value] = f.name
        _count(clusters, f, 1)
    limit = out_of_production_limit(fabric)
    if limit is not None:
        for f in facts:
            members, out = clusters.get((f.site, f.cluster), (0, 0))
            if out > limit * members:
                return None
    return NodeIndex(
        index.listing, index.by_path, by_name, by_address, by_identity, clusters, index.nodes
    )


def _deps(
    deps: Mapping[str, frozenset[str]],
    old: Mapping[str, RenderedNode],
    fresh: Mapping[str, RenderedNode],
) -> Mapping[str, frozenset[str]]:
    """The dependency index with the fresh nodes' sources (the same object when they read the same files)."""
    if all(name in old and old[name].sources == node.sources for name, node in fresh.items()):
        return deps
    out = dict(deps)
    for name, node in fresh.items():
        before = set(old[name].sources) if name in old else set()
        for path in before - set(node.sources):
            rest = out[path] - {name}
            if rest:
                out[path] = rest
            else:
                del out[path]
        for path in set(node.sources) - before:
            out[path] = out.get(path, frozenset()) | {name}
    return out


def _lifecycles(lifecycles: Mapping[str, str], facts: list[NodeFacts]) -> Mapping[str, str]:
    if all(lifecycles.get(f.name) == f.lifecycle for f in facts):
        return lifecycles
    return {**lifecycles, **{f.name: f.lifecycle for f in facts}}
