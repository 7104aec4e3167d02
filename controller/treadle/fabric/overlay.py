"""A node's overlay chain: which files, in which order, merge into its body.

Order (DESIGN.md): fabric.yaml ``defaults``; the site's profiles (recursively,
each profile's own profiles first) then site.yaml; the cluster's profiles then
cluster.yaml; the node's profiles then the node file; then, when
``profiles/lifecycle/<state>.yaml`` exists, the profile of the node's
lifecycle state (so ``draining`` can stop a service). A profile is applied at
most once per node, at its first mention; a profile that includes itself,
directly or not, is a cycle and is reported with its chain.

Everything up to and including cluster.yaml is the same for all nodes of a
cluster, so it is expanded and merged once per cluster (:class:`Prefix`) and
shared.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from treadle.fabric.checks import DEFAULT_LIFECYCLE, Finding
from treadle.fabric.layout import FABRIC_FILE, SITE_DIR, Layout, NodeRef, profile_path
from treadle.fabric.merge import Layer, merge
from treadle.fabric.yamlload import DELETE

#: The overlay fields that merge into a node's body (``profiles`` is a directive, not data).
BODY_KEYS = (
    "data",
    "labels",
    "files",
    "directories",
    "symlinks",
    "packages",
    "services",
    "sysctl",
    "health",
)


def apply_layer(merged: dict[str, Any], layer: Layer) -> dict[str, Any]:
    """``merged`` with one overlay's body fields merged on top (a new dict; inputs untouched)."""
    body = layer.body
    if not isinstance(body, dict):
        return merged
    out = merged
    for key in BODY_KEYS:
        if key in body:
            if out is merged:
                out = dict(merged)
            value = body[key]
            if value is DELETE:
                out.pop(key, None)
            else:
                out[key] = merge(out.get(key), value, layer.tagged)
    return out


@dataclass(frozen=True, slots=True)
class Prefix:
    """The part of the chain shared by every node of one cluster, already merged."""

    layers: tuple[Layer, ...]
    merged: dict[str, Any]
    applied: frozenset[str]
    wanted: frozenset[
        str
    ]  # every file this prefix reads or looked for (missing profiles too): dependency index
    ok: bool


@dataclass(frozen=True, slots=True)
class Chain:
    """One node's full chain and merged body."""

    layers: tuple[Layer, ...]
    merged: dict[str, Any]
    wanted: frozenset[str]
    lifecycle: str
    ok: bool


#: Returns (document, tagged) of a fabric file, or None when it is missing or invalid (already reported).
DocLookup = Callable[[str], "tuple[Any, bool] | None"]


class Overlays:
    """Builds chains for the nodes of one source; collects unknown-profile and cycle findings."""

    def __init__(self, layout: Layout, fabric: Any, fabric_tagged: bool, lookup: DocLookup) -> None:
        self.layout, self.lookup = layout, lookup
        defaults = fabric.get("defaults") if isinstance(fabric, dict) else None
        self.defaults = Layer(
            FABRIC_FILE,
            ("defaults",),
            defaults if isinstance(defaults, dict) else {},
            fabric_tagged,
        )
        self.findings: set[Finding] = set()
        self._prefixes: dict[tuple[str, str], Prefix] = {}

    def prefix(self, site: str, cluster: str) -> Prefix:
        """The merged chain up to cluster.yaml, computed once per cluster."""
        key = (site, cluster)
        if key not in self._prefixes:
            layers: list[Layer] = []
            applied: set[str] = set()
            wanted: set[str] = {FABRIC_FILE}
            ok = self._level(self.defaults, applied, layers, wanted)
            layers.append(self.defaults)
            # The site and cluster files are wanted where they belong even when missing (a layout
            # error), so that creating one invalidates its nodes in the dependency index.
            wanted |= {f"{SITE_DIR}{site}/site.yaml", f"{SITE_DIR}{site}/{cluster}/cluster.yaml"}
            for path in (self.layout.sites.get(site), self.layout.clusters.get(key)):
                if path:
                    ok = self._file_level(path, applied, layers, wanted) and ok
            merged: dict[str, Any] = {}
            for layer in layers:
                merged = apply_layer(merged, layer)
            self._prefixes[key] = Prefix(
                tuple(layers), merged, frozenset(applied), frozenset(wanted), ok
            )
        return self._prefixes[key]

    def chain(self, node: NodeRef) -> Chain:
        """The node's chain: its cluster's prefix, its profiles, its file, its lifecycle profile."""
        prefix = self.prefix(node.site, node.cluster)
        layers: list[Layer] = []
        applied, wanted = set(prefix.applied), set(prefix.wanted)
        ok = self._file_level(node.path, applied, layers, wanted)
        entry = self.lookup(node.path)
        doc = entry[0] if entry else None
        lifecycle = (
            doc.get("lifecycle", DEFAULT_LIFECYCLE) if isinstance(doc, dict) else DEFAULT_LIFECYCLE
        )
        name = f"lifecycle/{lifecycle}"
        wanted.add(profile_path(name))
        if name in self.layout.profiles:
            ok = (
                self._level(
                    Layer(node.path, ("lifecycle",), {"profiles": [name]}, False),
                    applied,
                    layers,
                    wanted,
                )
                and ok
            )
        merged = prefix.merged
        for layer in layers:
            merged = apply_layer(merged, layer)
        return Chain(
            prefix.layers + tuple(layers), merged, frozenset(wanted), lifecycle, ok and prefix.ok
        )

    def _file_level(
        self, path: str, applied: set[str], layers: list[Layer], wanted: set[str]
    ) -> bool:
        """A site, cluster or node file: its profiles, then itself."""
        wanted.add(path)
        entry = self.lookup(path)
        if entry is None:
            return False
        layer = Layer(path, (), entry[0], entry[1])
        ok = self._level(layer, applied, layers, wanted)
        layers.append(layer)
        return ok

    def _level(
        self,
        owner: Layer,
        applied: set[str],
        layers: list[Layer],
        wanted: set[str],
        stack: tuple[str, ...] = (),
    ) -> bool:
        """Expand ``owner``'s ``profiles:`` (recursively, each once) into ``layers``."""
        names = owner.body.get("profiles") if isinstance(owner.body, dict) else None
        ok = True
        for index, name in enumerate(names if isinstance(names, list) else ()):
            if not isinstance(name, str):
                continue  # the schema reports it
            path = profile_path(name)
            wanted.add(path)
            where = (*owner.prefix, "profiles", index)
            if name in stack:
                cycle = " -> ".join((*stack[stack.index(name) :], name))
                self.findings.add(
                    Finding(
                        owner.path,
                        where,
                        "profile-cycle",
                        f"profile cycle: {cycle}",
                        f"remove {name!r} from the profiles of {owner.path}",
                    )
                )
                ok = False
            elif name in applied:
                continue
            elif name not in self.layout.profiles:
                self.findings.add(
                    Finding(
                        owner.path,
                        where,
                        "unknown-profile",
                        f"unknown profile {name!r}",
                        f"create {path} or fix the name; known: {', '.join(sorted(self.layout.profiles)) or 'none'}",
                    )
                )
                ok = False
            elif (entry := self.lookup(path)) is None:
                ok = False
            else:
                layer = Layer(path, (), entry[0], entry[1])
                ok = self._level(layer, applied, layers, wanted, (*stack, name)) and ok
                layers.append(layer)
                applied.add(name)
        return ok
