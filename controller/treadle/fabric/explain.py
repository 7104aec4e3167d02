"""explain: why a node has the value it has, and who wrote it.

For one node and one key path (``files./etc/chrony.conf.mode``,
``data.ntp.servers``, ``lifecycle``) it replays the node's overlay chain and
lists every overlay that set the value, the winner first, each located
(file:line:col, through the round-trip loader) and, when the fabric is in
git, blamed: the commit, author and date that last changed that line.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import pygit2

from treadle.errors import FabricError, UsageError
from treadle.fabric.cache import ParseCache
from treadle.fabric.locate import locate_in
from treadle.fabric.merge import Layer, trace
from treadle.fabric.overlay import BODY_KEYS, Overlays
from treadle.fabric.run import FabricRun, load_fabric
from treadle.fabric.source import GitRevisionSource, Source, WorkTreeSource
from treadle.fabric.yamlload import plain

#: Top-level node fields that are the node file's alone (not merged).
NODE_FIELDS = ("address", "identity", "lifecycle", "rollout", "agent", "description")


@dataclass(frozen=True, slots=True)
class Blame:
    """Who last changed a line: ``commit`` is None for a change not committed yet."""

    commit: str | None
    author: str
    date: str | None


class Provenance(NamedTuple):
    """One overlay that set the value: the value it wrote, where, (in git) who, and how it combined."""

    value: Any
    file: str
    line: int
    col: int
    blame: Blame | None
    how: str = "set"  # "set", "append" (!append), "merge" (map merged into the inherited one), "replace" (!replace)


def explain(
    src: Source, node: str, keypath: str, cache: ParseCache | None = None
) -> list[Provenance]:
    """The overlays that set ``keypath`` for ``node``, the winner first; [] when nothing sets it.

    Raises:
        UsageError: no such node.
        FabricError: the node's files are invalid (their diagnostics).
    """
    run, ref, chain = _node_chain(src, node, cache)
    head = keypath.split(".", 1)[0]
    if head in NODE_FIELDS:
        layers: Sequence[Layer] = [_node_layer(run, ref)]
        root: Any = layers[0].body
    elif head in BODY_KEYS:
        layers, root = chain.layers, chain.merged
    else:
        raise UsageError(
            f"{keypath!r}: a key path starts with one of {', '.join((*BODY_KEYS, *NODE_FIELDS))}"
        )
    parts = resolve_keypath(root, keypath) or _resolve_in_layers(layers, keypath)
    if parts is None:
        return []
    return _located(run, src, layers, parts, _Blamer.for_source(src))


def explain_node(
    src: Source, node: str, cache: ParseCache | None = None, max_values: int = 2000
) -> tuple[list[tuple[str, list[Provenance]]], bool]:
    """Every value of ``node`` with the overlays that set it (what ``explain`` gives for each key path), and
    whether the list is complete (False: more than ``max_values`` values, the rest left out).

    The fabric is loaded and the node's chain built once, and each file is
    blamed once, so one node costs about what one ``explain`` costs. The key
    paths are the node file's own fields, then every leaf of the merged body
    (a list is one value), in the body's order.

    Raises:
        UsageError: no such node.
        FabricError: the node's files are invalid (their diagnostics).
    """
    run, ref, chain = _node_chain(src, node, cache)
    blamer = _Blamer.for_source(src)
    own = _node_layer(run, ref)
    wanted: list[tuple[tuple[Any, ...], Sequence[Layer]]] = []
    if isinstance(own.body, dict):
        wanted += [((f,), [own]) for f in NODE_FIELDS if f in own.body]
    for key in BODY_KEYS:
        if key in chain.merged:
            wanted += [(parts, chain.layers) for parts in _leaves(chain.merged[key], (key,))]
    out = [
        (".".join(str(p) for p in parts), _located(run, src, layers, parts, blamer))
        for parts, layers in wanted[:max_values]
    ]
    return out, len(wanted) <= max_values


def _node_chain(src: Source, node: str, cache: ParseCache | None) -> tuple[FabricRun, Any, Any]:
    """The fabric loaded, the node's reference and its overlay chain; raises as :func:`explain` says."""
    run = FabricRun(src, cache if cache is not None else ParseCache())
    fabric, tagged = load_fabric(run)
    ref = run.listing.nodes.get(node)
    if ref is None:
        known = ", ".join(sorted(n.name for n in run.layout.nodes)[:20])
        raise UsageError(f"no node {node!r} in {src.label} (nodes: {known or 'none'})")
    overlays = Overlays(run.layout, fabric, tagged, run.lookup)
    chain = overlays.chain(ref)
    run.findings += overlays.findings
    if not chain.ok:
        raise FabricError(run.diagnose())
    return run, ref, chain


def _node_layer(run: FabricRun, ref: Any) -> Layer:
    """The node file alone: where its own fields (address, lifecycle...) are set."""
    return Layer(ref.path, (), run.lookup(ref.path)[0], False)  # type: ignore[index]


def _located(
    run: FabricRun,
    src: Source,
    layers: Sequence[Layer],
    parts: tuple[Any, ...],
    blamer: _Blamer | None,
) -> list[Provenance]:
    out = []
    for setting in trace(layers, parts):
        path = setting.layer.path
        doc = run.cache.round_trip(run.entries[path], lambda p=path: src.read(p))  # type: ignore[misc]
        line, col = locate_in(doc, setting.keypath)
        blame = blamer.blame(path, line) if blamer else None
        out.append(Provenance(setting.value, path, line, col, blame, setting.how))
    return out


def _leaves(value: Any, prefix: tuple[Any, ...], depth: int = 0) -> list[tuple[Any, ...]]:
    """The key paths of the scalars and lists under a merged map (a map's own path when it is empty)."""
    if not isinstance(value, dict) or not value or depth > 32:
        return [prefix]
    return [leaf for k, v in value.items() for leaf in _leaves(v, (*prefix, k), depth + 1)]


def resolve_keypath(root: Any, text: str) -> tuple[Any, ...] | None:
    """Split a dotted key path against the keys that exist (keys may contain dots: ``files./etc/a.conf.mode``)."""
    parts: list[Any] = []
    node, rest = root, text
    while rest:
        if isinstance(node, dict):
            best = max(
                (k for k in node if isinstance(k, str) and (rest == k or rest.startswith(k + "."))),
                key=len,
                default=None,
            )
            if best is None:
                return None
            parts.append(best)
            node, rest = node[best], rest[len(best) + 1 :]
        elif isinstance(node, list):
            head, _, tail = rest.partition(".")
            if not head.isdigit() or int(head) >= len(node):
                return None
            parts.append(int(head))
            node, rest = node[int(head)], tail
        else:
            return None
    return tuple(parts)


def _resolve_in_layers(layers: Sequence[Layer], text: str) -> tuple[Any, ...] | None:
    """A key path that is not in the merged value (deleted): resolve it in the overlay that mentions it last."""
    for layer in reversed(layers):
        found = resolve_keypath(plain(layer.body), text)
        if found is not None:
            return found
    return None


class _Blamer:
    """pygit2 blame of fabric files at one commit (or of HEAD for an unmodified work tree file)."""

    def __init__(
        self, repo: pygit2.Repository, commit: str, prefix: str, entries: dict[str, str] | None
    ) -> None:
        self.repo, self.commit, self.prefix, self.entries = repo, commit, prefix, entries
        self._blames: dict[
            str, pygit2.Blame | None
        ] = {}  # one blame per file, however many of its lines are asked

    @classmethod
    def for_source(cls, src: Source) -> _Blamer | None:
        if isinstance(src, GitRevisionSource) and src.commit:
            return cls(src.repo, src.commit, src.prefix, None)
        if isinstance(src, WorkTreeSource):
            found = pygit2.discover_repository(str(src.root))
            if found is None:
                return None
            repo = pygit2.Repository(found)
            if repo.is_bare or repo.head_is_unborn:
                return None
            prefix = os.path.relpath(
                os.path.realpath(src.root), os.path.realpath(repo.workdir)
            ).replace(os.sep, "/")
            return cls(
                repo, str(repo.head.target), "" if prefix == "." else prefix + "/", src.entries()
            )
        return None

    def blame(self, path: str, line: int) -> Blame:
        repo_path = self.prefix + path
        if self.entries is not None and not self._committed(repo_path, self.entries.get(path)):
            return Blame(None, "not committed yet", None)
        blame = self._blame_of(repo_path)
        try:
            if blame is None:
                raise KeyError(repo_path)
            hunk = blame.for_line(max(line, 1))
        except (KeyError, ValueError, IndexError, pygit2.GitError):
            return Blame(None, "unknown", None)
        commit = self.repo[hunk.final_commit_id]
        author = commit.author
        when = dt.datetime.fromtimestamp(author.time, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return Blame(str(commit.id), f"{author.name} <{author.email}>", when)

    def _blame_of(self, repo_path: str) -> pygit2.Blame | None:
        if repo_path not in self._blames:
            try:
                self._blames[repo_path] = self.repo.blame(repo_path, newest_commit=self.commit)
            except (KeyError, ValueError, pygit2.GitError):
                self._blames[repo_path] = None
        return self._blames[repo_path]

    def _committed(self, repo_path: str, blob: str | None) -> bool:
        try:
            return (
                blob is not None
                and str(self.repo[self.commit].peel(pygit2.Commit).tree[repo_path].id) == blob
            )
        except KeyError:
            return False
