"""One pass over a source: its files classified, parsed, validated, and its findings collected.

:class:`FabricRun` is the state :func:`~treadle.fabric.render.render_fabric`
and :func:`~treadle.fabric.explain.explain` share: the listing, the parse
cache, the documents loaded so far and every problem found, turned into
located diagnostics at the end (round-trip parsing only the files that have
problems).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from treadle.errors import Diagnostic
from treadle.fabric.cache import ParseCache
from treadle.fabric.checks import (
    DEFAULT_LIFECYCLE,
    PATH_SECTIONS,
    Finding,
    NodeFacts,
    schema_finding,
)
from treadle.fabric.layout import FABRIC_FILE, Layout, NodeRef, classify
from treadle.fabric.locate import locate_in
from treadle.fabric.merge import get_path
from treadle.fabric.nodemanifest import Memo
from treadle.fabric.source import Source
from treadle.fabric.yamlload import Limits, plain

_SCHEMAS = {
    "fabric": "fabric.json",
    "rollout": "rollout.json",
    "profile": "profile.json",
    "site": "site.json",
    "cluster": "cluster.json",
    "node": "node.json",
}
_PLACES = {
    "Node": "sites/<site>/<cluster>/nodes/<node>.yaml",
    "Cluster": "sites/<site>/<cluster>/cluster.yaml",
    "Site": "sites/<site>/site.yaml",
    "Profile": "profiles/<name>.yaml",
    "Fabric": "fabric.yaml",
    "RolloutPolicy": "rollout.yaml",
}
_UNEXPECTED = re.compile(r"\('([^']+)' (?:was|were) unexpected\)")


@dataclass(frozen=True)
class Listing:
    """A source's files and their roles; shared by every run on the same source object, so read-only."""

    entries: Mapping[str, str]
    layout: Layout
    roles: Mapping[str, str]
    nodes: Mapping[str, NodeRef]  # by name, the first file of a duplicated name

    @classmethod
    def of(cls, src: Source) -> Listing:
        entries = src.entries()
        layout = classify(entries)
        nodes: dict[str, NodeRef] = {}
        for ref in layout.nodes:
            nodes.setdefault(ref.name, ref)
        return cls(entries, layout, dict(roles(layout)), nodes)


class FabricRun:
    """The state of one render: the source listing, the cache, and the findings so far."""

    def __init__(self, src: Source, cache: ParseCache) -> None:
        self.src, self.cache = src, cache
        self.listing = cache.listing(src, lambda: Listing.of(src))
        self.entries = self.listing.entries
        self.layout: Layout = self.listing.layout
        self.findings: list[Finding] = []
        self.diagnostics: list[Diagnostic] = list(self.layout.problems)
        self.diagnostics += (
            Diagnostic(
                p.path,
                0,
                0,
                p.kind,
                f"{p.kind} in the fabric repository: {p.detail}",
                _PROBLEM_HINT[p.kind],
            )
            for p in src.problems()
        )
        self.limits = Limits()
        self.docs: dict[str, tuple[Any, bool] | None] = {}  # usable (valid) documents
        self.parsed: dict[str, Any] = {}  # every document that parsed, valid or not
        self.invalid: dict[
            str, tuple[Any, bool]
        ] = {}  # documents that parsed but break their schema
        self.roles = self.listing.roles
        self.memo = Memo()

    def load(self, path: str, role: str) -> tuple[Any, bool] | None:
        """Parse and validate one file; None (and its problems recorded) when unusable."""
        blob = self.entries[path]
        parsed = self.cache.parse(blob, lambda: self.src.read(path), self.limits)
        if parsed.problem is not None:
            p = parsed.problem
            self.diagnostics.append(Diagnostic(path, p.line, p.col, p.code, p.message, p.hint))
            self.docs[path] = None
            return None
        self.parsed[path] = parsed.doc
        errors = self.cache.schema_errors(blob, _SCHEMAS[role], parsed)
        for keypath, message in errors:
            if keypath and keypath[-1] in PATH_SECTIONS and 'does not match "^/"' in message:
                continue  # a relative resource path: the path policy check says it better
            self.findings.append(self._schema_finding(path, keypath, message, parsed.doc))
        self.docs[path] = None if errors else (parsed.doc, parsed.tagged)
        if errors:
            self.invalid[path] = (parsed.doc, parsed.tagged)
        return self.docs[path]

    def _schema_finding(
        self, path: str, keypath: tuple[Any, ...], message: str, doc: Any
    ) -> Finding:
        value, _ = get_path(plain(doc), keypath)
        if (
            isinstance(value, dict)
            and "template" in value
            and "content" in value
            and len(keypath) >= 2
            and keypath[-2] == "files"
        ):
            return Finding(
                path,
                keypath,
                "file-content",
                f"file {keypath[-1]} has both template and content",
                "keep one of them",
            )
        extra = _UNEXPECTED.search(message)
        finding = schema_finding(path, keypath, message, value)
        return replace(finding, keypath=(*keypath, extra.group(1))) if extra else finding

    def check_stray(self) -> None:
        """Report top-level YAML files that are fabric documents in the wrong place."""
        for path in self.layout.stray:
            doc = self.cache.parse(
                self.entries[path],
                functools.partial(self.src.read, path),
                self.limits,
            ).doc
            kind = doc.get("kind") if isinstance(doc, dict) else None
            if kind in _PLACES:
                self.diagnostics.append(
                    Diagnostic(
                        path,
                        0,
                        0,
                        "misplaced",
                        f"a {kind} file at the top level is not part of the fabric",
                        f"move it to {_PLACES[kind]}",
                    )
                )

    def facts(self) -> list[NodeFacts]:
        """What the fleet checks need of every node file, usable or not (address, lifecycle state)."""
        return [self.fact(ref) for ref in self.layout.nodes]

    def fact(self, ref: NodeRef) -> NodeFacts:
        """What the fleet checks need of one node file."""
        entry = self.lookup(ref.path)
        readable = True
        if entry is None:
            parsed = self.cache.parse(
                self.entries[ref.path],
                functools.partial(self.src.read, ref.path),
                self.limits,
            )
            readable = isinstance(parsed.doc, dict)
            doc = parsed.doc if readable else {}
        else:
            doc = entry[0]
        address = doc.get("address") if isinstance(doc.get("address"), str) else None
        lifecycle = doc.get("lifecycle", DEFAULT_LIFECYCLE)
        known = readable and isinstance(lifecycle, str)
        state = lifecycle if known else DEFAULT_LIFECYCLE
        node_identity = doc.get("identity") if isinstance(doc.get("identity"), str) else None
        return NodeFacts(
            ref.name, ref.site, ref.cluster, ref.path, address, state, known, node_identity
        )

    def lookup(self, path: str) -> tuple[Any, bool] | None:
        """The loaded document of a fabric file (loaded now if it was not yet), None when unusable."""
        if path not in self.docs and path in self.roles:
            return self.load(path, self.roles[path])
        return self.docs.get(path)

    def lookup_lenient(self, path: str) -> tuple[Any, bool] | None:
        """As :meth:`lookup`, but also a document that breaks its schema: only to look for more errors."""
        return self.lookup(path) or self.invalid.get(path)

    def diagnose(self) -> list[Diagnostic]:
        """Every finding located (round-trip parsing only the files that have findings), sorted, without repeats."""
        located = {self.locate(f) for f in self.findings}
        return sorted(located | set(self.diagnostics))

    def locate(self, f: Finding) -> Diagnostic:
        line, col = 0, 0
        if f.keypath and f.path in self.entries:
            doc = self.cache.round_trip(self.entries[f.path], lambda: self.src.read(f.path))
            line, col = locate_in(doc, f.keypath)
        return Diagnostic(f.path, line, col, f.code, f.message, f.hint)


_PROBLEM_HINT = {
    "symlink": "replace the symlink with the file itself (a fabric holds regular files only)",
    "submodule": "copy the content into the repository; a fabric holds no submodules",
    "too-large": "remove the file from the fabric repository",
}


def load_fabric(run: FabricRun) -> tuple[dict[str, Any], bool]:
    """Load fabric.yaml first (its limits apply to every other file): (document or {}, tagged)."""
    if run.layout.fabric is None:
        run.diagnostics.append(
            Diagnostic(
                FABRIC_FILE,
                0,
                0,
                "missing-fabric",
                "fabric.yaml is missing",
                "run `treadle init DIR` for a new fabric, or create fabric.yaml with kind: Fabric and name",
            )
        )
        return {}, False
    entry = run.load(FABRIC_FILE, "fabric")
    if entry is None or not isinstance(entry[0], dict):
        return {}, False
    run.limits = Limits.from_fabric(entry[0])
    return entry[0], entry[1]


def roles(layout: Layout) -> list[tuple[str, str]]:
    roles = [(p, "profile") for p in layout.profiles.values()]
    roles += [(p, "site") for p in layout.sites.values()]
    roles += [(p, "cluster") for p in layout.clusters.values()]
    roles += [(n.path, "node") for n in layout.nodes]
    return roles


def lifecycles(src: Source, cache: ParseCache) -> dict[str, str]:
    """Each node's lifecycle state in ``src``, from its node file alone (nothing is rendered).

    A node whose file does not parse (or names no readable state) is left out: its state is unknown,
    and no transition may be assumed from it (the default would invent one).
    """
    listing = cache.listing(src, lambda: Listing.of(src))
    states = {}
    for ref in listing.layout.nodes:
        doc = cache.parse(listing.entries[ref.path], lambda p=ref.path: src.read(p), Limits()).doc  # type: ignore[misc]
        state = doc.get("lifecycle", DEFAULT_LIFECYCLE) if isinstance(doc, dict) else None
        if isinstance(state, str):
            states[ref.name] = state
    return states
