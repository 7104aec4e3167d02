"""What a change does to each node: two renders in, per-node resource changes out.

A node's manifest is compared resource by resource (a resource is identified
by its type and path, name or key; health checks by name), plus a ``node``
pseudo-resource for the metadata a reviewer cares about (lifecycle, labels,
address). Stamps that differ on every commit (commit, generation, issued,
expires, wave) are never a change.

Each :class:`ResourceChange` carries a unified diff: file content as text
lines, every other field as one canonical-JSON line per field. The diff is
what grouping compares (see :mod:`treadle.review.group`), so it must be a
pure function of the two resources.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from treadle.fabric import RenderedNode

#: Metadata fields shown as the ``node`` pseudo-resource; the rest are stamps.
NODE_FIELDS = ("address", "cluster", "fabric", "labels", "lifecycle", "site")
#: Fields of a file resource that its content diff already covers.
_CONTENT_FIELDS = ("content", "sha256")
#: Overlay section (as in explain key paths) of each resource type.
SECTIONS = {
    "file": "files",
    "directory": "directories",
    "symlink": "symlinks",
    "package": "packages",
    "service": "services",
    "sysctl": "sysctl",
    "health": "health",
}


class Places(Protocol):
    """Where a node that did not render lives: name -> (site, cluster)."""

    def get(
        self, name: str, default: tuple[str, str] | None = None, /
    ) -> tuple[str, str] | None: ...


@dataclass(frozen=True, slots=True)
class ResourceChange:
    """One resource of one node that differs: ``change`` is ``added``, ``removed`` or ``changed``."""

    type: str
    key: str
    change: str
    fields: tuple[str, ...]
    summary: str
    diff: str

    @property
    def rid(self) -> str:
        return f"{self.type}:{self.key}"


@dataclass(frozen=True, slots=True)
class NodeChange:
    """A node present and rendered in both revisions whose manifest changed."""

    name: str
    site: str
    cluster: str
    address: str
    changes: tuple[ResourceChange, ...]


@dataclass(frozen=True, slots=True)
class NodeRef:
    """A node that was added or removed (or could not be rendered), with what locates it."""

    name: str
    site: str
    cluster: str
    lifecycle: str


@dataclass(frozen=True, slots=True)
class Transition:
    """A lifecycle change of one node between the two revisions."""

    name: str
    site: str
    cluster: str
    before: str
    after: str


@dataclass(frozen=True, slots=True)
class Changes:
    """Everything that differs between two renders, each list sorted by node name."""

    changed: tuple[NodeChange, ...]
    added: tuple[NodeRef, ...]
    removed: tuple[NodeRef, ...]
    unrendered: tuple[NodeRef, ...]
    transitions: tuple[Transition, ...]
    #: Nodes whose BASE file does not parse: no lifecycle transition is assumed for them (lifecycle: HEAD's).
    base_unreadable: tuple[NodeRef, ...] = ()


def resource_key(resource: Mapping[str, Any]) -> tuple[str, str]:
    """(type, path | name | key): what identifies a resource inside one manifest."""
    kind = resource["type"]
    ident = resource.get("path") or resource.get("name") or resource.get("key") or ""
    return kind, str(ident)


def _resources(manifest: Mapping[str, Any]) -> dict[tuple[str, str], Mapping[str, Any]]:
    found = {resource_key(r): r for r in manifest["resources"]}
    found.update((("health", h["name"]), {**h, "type": "health"}) for h in manifest["health"])
    meta = manifest["metadata"]
    node = {"type": "node", **{k: meta.get(k) for k in NODE_FIELDS if k != "labels"}}
    # One field per label, so that a changed label is named (and explained) on its own.
    node.update((f"labels.{k}", v) for k, v in (meta.get("labels") or {}).items())
    found[("node", "metadata")] = node
    return found


def diff_manifests(
    before: Mapping[str, Any], after: Mapping[str, Any]
) -> tuple[ResourceChange, ...]:
    """The resource changes from ``before`` to ``after`` (two manifests of one node): the node's
    metadata first, then resources in apply order, then health checks, then what HEAD dropped."""
    if (
        before["resources"] is after["resources"]
        and before["health"] is after["health"]
        and _same_meta(before, after)
    ):
        return ()  # a reused node: the renderer shares the unchanged lists
    old, new = _resources(before), _resources(after)
    out = []
    order = [
        ("node", "metadata"),
        *(k for k in new if k[0] != "node"),
        *(k for k in old if k not in new),
    ]
    for key in order:
        a, b = old.get(key), new.get(key)
        if a != b:
            out.append(resource_change(key[0], key[1], a, b))
    return tuple(out)


def _same_meta(before: Mapping[str, Any], after: Mapping[str, Any]) -> bool:
    return all(before["metadata"].get(k) == after["metadata"].get(k) for k in NODE_FIELDS)


def resource_change(
    kind: str, key: str, before: Mapping[str, Any] | None, after: Mapping[str, Any] | None
) -> ResourceChange:
    """The change of one resource; ``before`` None: added, ``after`` None: removed."""
    change = "added" if before is None else "removed" if after is None else "changed"
    a, b = before or {}, after or {}
    names = sorted((set(a) | set(b)) - {"type"})
    fields = tuple(f for f in names if a.get(f) != b.get(f))
    diff = _field_diff(kind, key, a, b) + (_content_diff(key, a, b) if kind == "file" else "")
    return ResourceChange(kind, key, change, fields, _summary(change, fields, a, b), diff)


def _field_lines(resource: Mapping[str, Any], skip: tuple[str, ...]) -> list[str]:
    return [
        f"{json.dumps(k)}: {json.dumps(_secret_digest(v) if k == 'secret' else v, sort_keys=True, ensure_ascii=False)}\n"
        for k, v in sorted(resource.items())
        if k not in skip and k != "type"
    ]


def _secret_digest(secret: Any) -> Any:
    """A secret file's field as a plan shows it: the ciphertext's digest, never the ciphertext (nor, of course, a plaintext)."""
    return (
        f"age ciphertext sha256 {secret['sha256']}"
        if isinstance(secret, Mapping) and "sha256" in secret
        else secret
    )


def _field_diff(kind: str, key: str, a: Mapping[str, Any], b: Mapping[str, Any]) -> str:
    skip = _CONTENT_FIELDS if kind == "file" else ()
    lines_a, lines_b = _field_lines(a, skip), _field_lines(b, skip)
    if lines_a == lines_b:
        return ""
    return "".join(
        difflib.unified_diff(
            lines_a, lines_b, f"a/{kind}:{key}", f"b/{kind}:{key}", n=len(lines_a) + len(lines_b)
        )
    )


def _content_diff(path: str, a: Mapping[str, Any], b: Mapping[str, Any]) -> str:
    old, new = a.get("content"), b.get("content")
    if old == new:
        return ""
    lines_a = (old or "").splitlines(keepends=True)
    lines_b = (new or "").splitlines(keepends=True)
    text = "".join(_terminated(difflib.unified_diff(lines_a, lines_b, f"a{path}", f"b{path}", n=3)))
    return text


def _terminated(lines: Any) -> Any:
    """Diff lines, each ending in a newline (a last line without one is marked as git marks it)."""
    for line in lines:
        if line.endswith("\n"):
            yield line
        else:
            yield line + "\n\\ No newline at end of file\n"


def _summary(
    change: str, fields: tuple[str, ...], a: Mapping[str, Any], b: Mapping[str, Any]
) -> str:
    if change != "changed":
        return change
    parts = []
    for f in fields:
        if f == "sha256":
            continue
        if f == "content":
            parts.append("content changed")
        elif f == "secret" and isinstance(b.get(f), Mapping):
            parts.append(f"secret changed (ciphertext sha256 {b[f]['sha256'][:16]})")
        elif _short(a.get(f)) and _short(b.get(f)):
            parts.append(f"{f} {_show(a.get(f))} -> {_show(b.get(f))}")
        else:
            parts.append(f"{f} changed")
    return ", ".join(parts)


def _short(value: Any) -> bool:
    return (
        value is None
        or isinstance(value, (bool, int, float))
        or (isinstance(value, str) and len(value) <= 40 and "\n" not in value)
    )


def _show(value: Any) -> str:
    return (
        "(unset)" if value is None else json.dumps(value) if not isinstance(value, str) else value
    )


def diff_renders(
    base_nodes: Mapping[str, RenderedNode],
    head_nodes: Mapping[str, RenderedNode],
    base_lifecycles: Mapping[str, str],
    head_lifecycles: Mapping[str, str],
    places: Places | None = None,
    untouched: frozenset[str] = frozenset(),
    unreadable_base: frozenset[str] = frozenset(),
    unreadable_head: frozenset[str] = frozenset(),
) -> Changes:
    """Compare two renders. A node whose file exists in HEAD but did not render is ``unrendered``, not removed.
    ``untouched`` nodes were left out of both renders (see :class:`treadle.fabric.Scope`) because no
    file they read changed, so they are not compared.

    ``*_lifecycles`` are every node file's lifecycle (``RenderResult.lifecycles``), which also tells
    which nodes exist in a revision whether or not they rendered; ``places`` gives (site, cluster)
    of nodes that did not render in either. ``unreadable_base`` are the nodes whose BASE file does not
    parse: their BASE lifecycle is unknown, so they are listed apart and never as a transition;
    ``unreadable_head`` the same in HEAD (an error of HEAD, reported as such).
    """
    changed, added, removed, unrendered, transitions, unreadable = [], [], [], [], [], []
    for name in sorted(
        set(head_lifecycles) | set(base_lifecycles) | set(head_nodes) | set(base_nodes)
    ):
        if name in untouched:
            continue
        old, new = base_nodes.get(name), head_nodes.get(name)
        in_base, in_head = (
            name in base_lifecycles or old is not None,
            name in head_lifecycles or new is not None,
        )
        site, cluster = _place(name, new, old, places)
        if in_head and new is None:
            unrendered.append(NodeRef(name, site, cluster, head_lifecycles.get(name, "production")))
        elif in_head and not in_base:
            added.append(NodeRef(name, site, cluster, new.lifecycle))  # type: ignore[union-attr]
        elif in_base and not in_head:
            removed.append(NodeRef(name, site, cluster, base_lifecycles.get(name) or old.lifecycle))  # type: ignore[union-attr]
        elif old is not None and new is not None:
            diffs = diff_manifests(old.manifest, new.manifest)
            if diffs:
                changed.append(NodeChange(name, site, cluster, new.address, diffs))
        before, after = base_lifecycles.get(name), head_lifecycles.get(name)
        if name in unreadable_base:
            unreadable.append(NodeRef(name, site, cluster, after or "production"))
        elif (
            before is not None
            and after is not None
            and before != after
            and name not in unreadable_head
        ):
            transitions.append(Transition(name, site, cluster, before, after))
    return Changes(
        tuple(changed),
        tuple(added),
        tuple(removed),
        tuple(unrendered),
        tuple(transitions),
        tuple(unreadable),
    )


def _place(
    name: str, new: RenderedNode | None, old: RenderedNode | None, places: Places | None
) -> tuple[str, str]:
    for node in (new, old):
        if node is not None:
            return node.site, node.cluster
    return (places.get(name) if places is not None else None) or ("?", "?")
