"""render_fabric: a source in, every node's manifest and every problem out.

Steps, in order: list the source; classify the files; parse and
schema-validate each one (cached by blob id); check resource paths; build
each cluster's shared prefix; per node, merge its chain, render its
templates and build its manifest; then the fleet checks across all nodes
(duplicates, lifecycle share, transitions from the base revision). All
problems of the run are collected and returned together; nothing raises for
bad content.

Incremental: given the previous result and the paths changed since, only the
nodes those paths feed (``deps``) are rendered again; the others are reused
(re-stamped with the new commit: the commit's bytes are spliced into the
reused canonical bytes, so re-stamping 10,000 nodes costs a copy and a
digest each, not an encoding). The whole fabric is still parsed (from the
cache) and checked, so the result equals a full render. When the change
only modifies node files and the previous render was clean, even that is
skipped: :mod:`treadle.fabric.incremental` loads, checks and renders those
nodes alone and re-stamps the others lazily (``RenderResult.fresh`` names
the nodes rendered anew), falling back to this full path on any doubt.

Scoped: given a :class:`Scope` (the paths a change touched), only the
nodes those paths can feed are rendered (see :func:`_select`); the rest are
left out and named in ``RenderResult.skipped``. Every file is still parsed,
validated and path-checked, every chain resolved and every fleet check run,
so what is not found is only what rendering an untouched node would find:
the same in both revisions of a change. ``treadle plan`` renders BASE and
HEAD this way, so a one-node change renders one node twice.

Parallel: the nodes to render are split into jobs of ``_JOB_NODES`` that a
forked helper process may share (:mod:`treadle.fabric.pool`) when there are
at least ``PARALLEL_MIN_NODES`` of them and forking is safe; results merge in
node order, so the bytes and diagnostics are the same either way.
"""

from __future__ import annotations

import contextlib
import gc
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from treadle.errors import Diagnostic
from treadle.fabric.cache import ParseCache, parse_bytes
from treadle.fabric.canonical import restamped
from treadle.fabric.checks import (
    DEFAULT_ALLOWED_ROOTS,
    Finding,
    check_fleet,
    check_paths,
    has_special_modes,
    special_mode_problems,
)
from treadle.fabric.incremental import Stamped, index_of, render_changed
from treadle.fabric.layout import FABRIC_FILE, NodeRef
from treadle.fabric.merge import trace
from treadle.fabric.nodemanifest import BuildProblem, Memo, build_manifest, canonical_manifest
from treadle.fabric.overlay import Chain, Overlays
from treadle.fabric.pool import fork_map
from treadle.fabric.run import FabricRun, lifecycles, load_fabric, roles
from treadle.fabric.secrets import SECRET_DIR, Secret, read_secret, recipients_path
from treadle.fabric.source import Source
from treadle.fabric.templates import ANY_TEMPLATE, TEMPLATE_DIR, TemplateProblem, Templates, feeds
from treadle.fabric.yamlload import plain
from treadle_agent.contract.manifest import canonical_json, digest

_EMPTY: dict[str, Any] = {}


@dataclass(frozen=True, slots=True)
class RenderedNode:
    """One node's rendered manifest: immutable, content-addressed by ``digest``.

    ``manifest`` shares its resource dicts with other nodes of the same render
    (they are built once per distinct resource): treat it as read-only, and
    copy before changing (as treadle_agent.contract.manifest.stamp does).
    ``sources`` are the paths that fed it, including the profiles and
    templates it looked for and did not find.
    """

    name: str
    site: str
    cluster: str
    address: str
    lifecycle: str
    labels: Mapping[str, str]
    manifest: dict[str, Any]
    canonical: bytes
    digest: str
    sources: tuple[str, ...]

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # Half the nodes of a large render come back pickled from the forked helper
        # (treadle.fabric.pool): a constructor call pickles in a third of the time
        # of the generic state of a slotted dataclass.
        return RenderedNode, (
            self.name,
            self.site,
            self.cluster,
            self.address,
            self.lifecycle,
            self.labels,
            self.manifest,
            self.canonical,
            self.digest,
            self.sources,
        )


@dataclass(frozen=True, slots=True)
class Scope:
    """Render only the nodes that one of ``paths`` (fabric paths a change touched) can feed, and ``names``."""

    paths: frozenset[str]
    names: frozenset[str] = frozenset()


@dataclass(frozen=True)
class RenderResult:
    """Everything one render produced. ``ok`` only when there is no diagnostic at all.

    ``skipped`` are the nodes a :class:`Scope` left out: not rendered, so
    absent from ``nodes`` and ``deps``, and not checked beyond their files,
    chains and fleet facts.
    """

    commit: str | None
    nodes: Mapping[str, RenderedNode]
    diagnostics: list[Diagnostic]
    deps: Mapping[str, frozenset[str]]
    fabric: dict[str, Any]
    rollout: dict[str, Any] | None
    lifecycles: Mapping[str, str] = field(default_factory=dict)
    skipped: frozenset[str] = frozenset()
    #: Nodes whose file does not parse: their entry in ``lifecycles`` is the default, not a known state.
    unreadable: frozenset[str] = frozenset()
    unchecked: frozenset[str] = (
        frozenset()
    )  # nodes not rendered because a file of their chain has errors
    #: When made incrementally from ``previous`` by :mod:`treadle.fabric.incremental`: the nodes rendered anew
    #: (every other node is the previous one, re-stamped). None after any other render.
    fresh: frozenset[str] | None = None
    #: What the next incremental render starts from (:class:`treadle.fabric.incremental.NodeIndex`); clean renders only.
    index: Any = field(default=None, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        return not self.diagnostics


def render_fabric(
    src: Source,
    cache: ParseCache | None = None,
    previous: RenderResult | None = None,
    changed_paths: Iterable[str] | None = None,
    base: RenderResult | Source | None = None,
    scope: Scope | None = None,
) -> RenderResult:
    """Render and check the whole fabric of ``src``.

    ``previous`` and ``changed_paths`` make it incremental (see the module
    docstring); ``base`` (the base revision's result, or its source, rendered
    here) enables the lifecycle transition checks; ``scope`` renders only the
    nodes it can affect (see the module docstring). Bad content never raises:
    it comes back in ``diagnostics``.

    Raises:
        SourceError: the source cannot be read.
    """
    cache = cache if cache is not None else ParseCache()
    if previous is not None and changed_paths is not None and scope is None:
        with _no_gc(full=False):
            found = render_changed(src, cache, previous, changed_paths, base)
        if found is not None:
            return found
    with _no_gc(full=True):
        return _render(src, cache, previous, changed_paths, base, scope)


@contextlib.contextmanager
def _no_gc(full: bool) -> Iterator[None]:
    """Pause the cyclic garbage collector: a render allocates millions of small,
    acyclic objects, and the collections they trigger cost a fifth of a warm render.

    On the way out of a ``full`` render its survivors are frozen (``gc.freeze``)
    before the collector is enabled again: otherwise its first young collection
    scans them all (about 0.4 s after a 10,000-node render) to find almost
    nothing. The next full render unfreezes what the last one froze, moving it
    to the oldest generation, so cyclic garbage among it is still collected,
    later, by an ordinary full collection. An incremental render
    (:mod:`treadle.fabric.incremental`) makes a handful of objects: it leaves
    the frozen ones frozen, so that the collection after it
    (:func:`collect_garbage`) scans what it made, not the whole fabric again.
    """
    global _frozen, _collect_all
    was_enabled = gc.isenabled()
    if full and _frozen and was_enabled:
        gc.unfreeze()
        _frozen = False
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            if full:
                gc.freeze()
                _frozen = _collect_all = True
            gc.enable()


#: Whether the objects frozen in the collector's permanent generation were frozen by a render.
_frozen = False
#: Whether a full render ran since the last :func:`collect_garbage` (which then looks at everything).
_collect_all = False


def collect_garbage() -> None:
    """After a full render, unfreeze what it froze and run a full collection, for a long-lived process between renders.

    Without it the cyclic garbage of each render (jinja environments, sources,
    listings) waits for a full collection that, with the collector paused
    through every render and the survivors frozen after it, may never come:
    the controller grew by about a megabyte per commit
    (tests/controller/test_soak.py). One full collection after the render,
    off the push-to-published path, costs what the freeze saves once, not on
    every young collection. What survives is frozen again; after incremental
    renders only, the frozen fabric stays frozen and the collection scans
    only what is not (seconds less at 100,000 nodes), and the cyclic garbage
    among the frozen waits for the next full render.
    """
    global _frozen, _collect_all
    if _frozen and _collect_all:
        gc.unfreeze()
        _frozen = False
    gc.collect()
    if _collect_all:  # what survived the full collection is the fabric: frozen again, out of later collections' way
        gc.freeze()
        _frozen, _collect_all = True, False


def _render(
    src: Source,
    cache: ParseCache,
    previous: RenderResult | None,
    changed_paths: Iterable[str] | None,
    base: RenderResult | Source | None,
    scope: Scope | None,
) -> RenderResult:
    run = FabricRun(src, cache)
    fabric, fabric_tagged = load_fabric(run)
    rollout = run.load(run.layout.rollout, "rollout") if run.layout.rollout else None
    _load_and_check_files(run, fabric)
    templates = Templates(src, run.entries, cache, run.limits)
    broken_templates = _compile_templates(run, templates)
    overlays = Overlays(run.layout, fabric, fabric_tagged, run.lookup)
    template_errors: dict[tuple[str, int, str, str], list[str]] = defaultdict(list)
    selected = _select(run, overlays, templates, scope) if scope is not None else None
    nodes = _render_nodes(
        run,
        overlays,
        templates,
        fabric,
        _reusable(previous, changed_paths),
        template_errors,
        selected,
    )
    run.findings += overlays.findings
    unchecked = _unchecked(
        run, overlays, templates, fabric, fabric_tagged, nodes, selected, template_errors
    )
    _report_template_errors(run, template_errors, broken_templates)
    facts = run.facts()
    run.findings += check_fleet(facts, fabric, _base_lifecycles(base, cache))
    diagnostics = run.diagnose()
    return RenderResult(
        commit=src.commit,
        nodes=nodes,
        diagnostics=diagnostics,
        deps=_deps(nodes.values()),
        fabric=plain(fabric),
        rollout=plain(rollout[0]) if rollout else None,
        lifecycles={f.name: f.lifecycle for f in facts},
        unreadable=frozenset(f.name for f in facts if not f.lifecycle_known),
        skipped=frozenset()
        if selected is None
        else frozenset(ref.name for ref in run.layout.nodes if ref.name not in selected),
        unchecked=unchecked,
        index=index_of(run.listing, facts, nodes) if not diagnostics and selected is None else None,
    )


def _select(
    run: FabricRun, overlays: Overlays, templates: Templates, scope: Scope
) -> frozenset[str] | None:
    """The names of the nodes ``scope`` can affect (None: every node, as when fabric.yaml changed).

    A node is affected when one of the paths is a file its chain reads or
    looks for (``Chain.wanted``: the same set the dependency index records),
    or a template, or a template's include, that one of its files names.
    Any other node reads only unchanged files, so it renders to the same
    manifest in both revisions. Resolving every chain here also reports
    every unknown profile and cycle, whether or not the node renders.
    """
    if FABRIC_FILE in scope.paths:
        return None
    templates_touched = any(path.startswith(TEMPLATE_DIR) for path in scope.paths)
    secrets_touched = any(path.startswith(SECRET_DIR) for path in scope.paths)
    selected = set(scope.names)
    for ref in run.layout.nodes:
        if ref.name in selected:
            continue
        chain = overlays.chain(ref)
        if (
            not chain.wanted.isdisjoint(scope.paths)
            or (templates_touched and _feeds(chain, templates, scope.paths))
            or (secrets_touched and _reads_secret(chain, scope.paths))
        ):
            selected.add(ref.name)
    return frozenset(selected)


def _reads_secret(chain: Chain, paths: frozenset[str]) -> bool:
    """Whether one of the chain's files is a secret whose ciphertext or recipients list is among ``paths``."""
    files = chain.merged.get("files")
    for spec in files.values() if isinstance(files, dict) else ():
        name = spec.get("secret") if isinstance(spec, dict) else None
        if isinstance(name, str) and (name in paths or recipients_path(name) in paths):
            return True
    return False


def _feeds(chain: Chain, templates: Templates, paths: frozenset[str]) -> bool:
    """Whether a template named by one of the chain's files, or one it includes, is among ``paths``."""
    files = chain.merged.get("files")
    for spec in files.values() if isinstance(files, dict) else ():
        name = spec.get("template") if isinstance(spec, dict) else None
        if isinstance(name, str) and feeds(templates.dependencies(name), paths):
            return True
    return False


def _load_and_check_files(run: FabricRun, fabric: dict[str, Any]) -> None:
    """Parse and validate every fabric file; path policy on every overlay's resources."""
    allowed = (fabric.get("policy") or {}).get("allowed_roots") or DEFAULT_ALLOWED_ROOTS
    run.findings += check_paths(FABRIC_FILE, ("defaults",), fabric.get("defaults"), allowed)
    _parse_in_parallel(run)
    for path, role in roles(run.layout):
        run.load(path, role)
        run.findings += check_paths(path, (), run.parsed.get(path), allowed)
    run.check_stray()


#: Files per job when a cold render parses in parallel: a few milliseconds of work each.
_JOB_FILES = 500


def _parse_in_parallel(run: FabricRun) -> None:
    """Parse the files the cache lacks with the forked helper too, when there are many (a cold render).

    Parsing a file is a pure function of its bytes, so the results are the
    same documents and problems either way; they go into the cache, where
    the loop that follows finds them. The worker reads the bytes itself.
    """
    paths = {blob: path for path, _ in roles(run.layout) for blob in (run.entries[path],)}
    todo = run.cache.missing(paths, run.limits)
    if len(todo) < PARALLEL_MIN_NODES:
        return
    jobs = [todo[i : i + _JOB_FILES] for i in range(0, len(todo), _JOB_FILES)]
    limits, src = run.limits, run.src
    done = fork_map(
        jobs, lambda blobs: [(b, parse_bytes(src.read(paths[b]), limits)) for b in blobs]
    )
    for batch in done:
        for blob, parsed in batch:
            run.cache.add_parsed(blob, limits, parsed)


_TemplateKey = tuple[str, int, str, str]  # template file, line, message, hint


def _compile_templates(run: FabricRun, templates: Templates) -> set[_TemplateKey]:
    """Compile every template, used or not, so that a broken one is reported once."""
    broken = set()
    for name in templates.names():
        try:
            templates.compiled(name)
        except TemplateProblem as e:
            broken.add((e.path, e.line, e.message, e.hint))
            run.diagnostics.append(
                Diagnostic(e.path, e.line, 1 if e.line else 0, "template", e.message, e.hint)
            )
    return broken


#: Below this many nodes to render, rendering stays in this process (a fork costs more than it saves).
PARALLEL_MIN_NODES = 2000
#: Nodes per job handed to :func:`~treadle.fabric.pool.fork_map`: small enough to balance two busy CPUs.
_JOB_NODES = 100


@dataclass
class _Batch:
    """What rendering a run of nodes produced, kept apart so that batches merge in node order."""

    nodes: list[tuple[NodeRef, RenderedNode | None]] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    overlay_findings: set[Finding] = field(default_factory=set)
    template_errors: dict[_TemplateKey, list[str]] = field(default_factory=dict)


def _render_nodes(
    run: FabricRun,
    overlays: Overlays,
    templates: Templates,
    fabric: dict[str, Any],
    reuse: Mapping[str, RenderedNode],
    template_errors: dict[_TemplateKey, list[str]],
    selected: frozenset[str] | None,
) -> dict[str, RenderedNode]:
    """Every node (of ``selected`` when given): reused when nothing that feeds it changed (``reuse``
    or the cache), rendered otherwise.

    The nodes to render are split into jobs that a forked helper may share
    (:func:`~treadle.fabric.pool.fork_map`); results are merged in node
    order, so the outcome is the same with or without it.
    """
    kept: dict[str, RenderedNode] = {}
    todo: list[NodeRef] = []
    later: list[
        NodeRef
    ] = []  # a name's second and further files: rendered only when the first did not render
    names: set[str] = set()
    for ref in run.layout.nodes:
        if selected is not None and ref.name not in selected:
            continue
        known = reuse.get(ref.name) or run.cache.rendered(ref.name, run.entries)
        if ref.name in names:
            later.append(ref)
        elif known is not None and ref.path in known.sources:
            kept[ref.name] = restamp(known, run.src.commit)
        else:
            todo.append(ref)
        names.add(ref.name)
    jobs = [todo[i : i + _JOB_NODES] for i in range(0, len(todo), _JOB_NODES)]
    batches = fork_map(
        jobs,
        lambda refs: _render_batch(run, overlays, templates, fabric, refs, kept),
        parallel=len(todo) >= PARALLEL_MIN_NODES,
    )
    rendered: dict[str, RenderedNode | None] = {}
    for batch in _with_duplicates(
        batches,
        later,
        kept,
        lambda refs: _render_batch(run, overlays, templates, fabric, refs, kept),
    ):
        run.findings += batch.findings
        overlays.findings |= batch.overlay_findings
        for key, failed in batch.template_errors.items():
            template_errors[key].extend(failed)
        for ref, node in batch.nodes:
            rendered[ref.path] = node
    nodes: dict[str, RenderedNode] = {}
    for ref in run.layout.nodes:
        if ref.name in nodes or (selected is not None and ref.name not in selected):
            continue  # a duplicate name; reported by the fleet checks
        node = kept.get(ref.name) if ref.path not in rendered else rendered[ref.path]
        if node is not None:
            nodes[ref.name] = node
            if ref.path in rendered:
                run.cache.store_rendered(ref.name, node.sources, run.entries, node)
    return nodes


def _with_duplicates(
    batches: list[_Batch],
    later: list[NodeRef],
    kept: Mapping[str, RenderedNode],
    render: Callable[[list[NodeRef]], _Batch],
) -> Iterator[_Batch]:
    """The batches, then each duplicate-name file whose name nothing rendered yet (in file order)."""
    done = set(kept) | {
        ref.name for batch in batches for ref, node in batch.nodes if node is not None
    }
    yield from batches
    for ref in later:
        if ref.name not in done:
            batch = render([ref])
            if any(node is not None for _, node in batch.nodes):
                done.add(ref.name)
            yield batch


def _render_batch(
    run: FabricRun,
    overlays: Overlays,
    templates: Templates,
    fabric: dict[str, Any],
    refs: list[NodeRef],
    kept: Mapping[str, RenderedNode],
) -> _Batch:
    """Render ``refs`` (the nodes not reused), collecting what they report into a batch of their own.

    A node whose name was reused is skipped (a duplicate-name file whose
    first file was not rendered; the fleet checks report the duplicate).
    """
    batch = _Batch()
    errors: dict[_TemplateKey, list[str]] = defaultdict(list)
    saved = run.findings, overlays.findings
    run.findings, overlays.findings = batch.findings, batch.overlay_findings
    try:
        for ref in refs:
            if ref.name not in kept:
                batch.nodes.append(
                    (ref, _render_node(run, overlays, templates, ref, fabric, errors))
                )
    finally:
        run.findings, overlays.findings = saved
    batch.template_errors = dict(errors)
    return batch


def _report_template_errors(
    run: FabricRun, errors: dict[_TemplateKey, list[str]], broken: set[_TemplateKey]
) -> None:
    """One diagnostic per template error, naming the first node it broke and how many more."""
    for key, names in errors.items():
        if key in broken:
            continue  # a compile error, already reported once
        path, line, message, hint = key
        who = names[0] if len(names) == 1 else f"{names[0]} and {len(names) - 1} other nodes"
        run.diagnostics.append(
            Diagnostic(path, line, 1, "template", f"{message} (rendering {who})", hint)
        )


def _render_node(
    run: FabricRun,
    overlays: Overlays,
    templates: Templates,
    ref: NodeRef,
    fabric: dict[str, Any],
    template_errors: dict[_TemplateKey, list[str]],
) -> RenderedNode | None:
    entry = run.lookup(ref.path)
    if entry is None:
        return None
    chain = overlays.chain(ref)
    if not chain.ok:
        return None
    doc = entry[0]
    labels = chain.merged.get("labels") or _EMPTY
    identity = {
        "name": ref.name,
        "site": ref.site,
        "cluster": ref.cluster,
        "address": doc["address"],
        "lifecycle": chain.lifecycle,
        "labels": labels,
        "commit": run.src.commit,
        "identity": doc.get("identity"),
    }
    context = {
        k: identity[k] for k in ("name", "site", "cluster", "address", "labels", "lifecycle")
    }
    data = chain.merged.get("data", _EMPTY)
    used: set[str] = set()

    def render(name: str) -> str:
        used.add(name)
        return templates.render(name, data, context)

    def secret(name: str) -> Secret:
        used_secrets.update((name, recipients_path(name)))
        return read_secret(run.src, name)

    used_secrets: set[str] = set()
    problems: list[BuildProblem] = []
    manifest = build_manifest(
        identity, fabric.get("name", ""), chain.merged, render, problems, run.memo, secret
    )
    special = (fabric.get("policy") or {}).get("special_modes") or ()
    problems += special_mode_problems(manifest["resources"], special)
    if special and has_special_modes(
        manifest["resources"]
    ):  # the agent checks again; other manifests stay as they were
        manifest["metadata"]["special_modes"] = list(special)
    for p in problems:
        if p.at is not None:
            template_errors[(*p.at, p.message, p.hint)].append(ref.name)
        else:
            run.findings.append(_locate_problem(chain, ref, p))
    if problems:
        return None
    canonical = canonical_manifest(manifest, run.memo)
    if len(canonical) > run.limits.max_rendered_bytes:
        run.findings.append(
            Finding(
                ref.path,
                (),
                "too-large",
                f"the rendered manifest is {len(canonical)} bytes, more than "
                f"limits.max_rendered_bytes {run.limits.max_rendered_bytes}",
                "move large content out of the manifest, or raise limits.max_rendered_bytes in fabric.yaml",
            )
        )
        return None
    sources = set(chain.wanted) | used_secrets
    for name in used:
        sources |= templates.dependencies(name)
    return RenderedNode(
        ref.name,
        ref.site,
        ref.cluster,
        doc["address"],
        chain.lifecycle,
        manifest["metadata"]["labels"],
        manifest,
        canonical,
        digest(canonical),
        tuple(sorted(sources)),
    )


def _unchecked(
    run: FabricRun,
    overlays: Overlays,
    templates: Templates,
    fabric: dict[str, Any],
    fabric_tagged: bool,
    nodes: Mapping[str, RenderedNode],
    selected: frozenset[str] | None,
    template_errors: dict[_TemplateKey, list[str]],
) -> frozenset[str]:
    """The nodes not rendered because a file of their chain has errors, named and counted per shared file.

    One error in a shared profile must not hide the others: each such node is
    rendered once more with the documents that parsed but break their schema,
    only to find template errors (its manifest is discarded, and whatever
    else that render trips on is not reported: the schema errors already are).
    """
    lenient = Overlays(run.layout, fabric, fabric_tagged, run.lookup_lenient)
    by_file: dict[str, list[str]] = defaultdict(list)
    names: set[str] = set()
    for ref in run.layout.nodes:
        if (
            ref.name in nodes
            or ref.name in names
            or (selected is not None and ref.name not in selected)
        ):
            continue
        chain = overlays.chain(ref)
        if chain.ok:
            continue  # rendered and refused for its own problems, reported already
        names.add(ref.name)
        broken = sorted(
            p for p in chain.wanted if p != ref.path and p in run.roles and run.lookup(p) is None
        )
        if broken:
            by_file[broken[0]].append(ref.name)
        loose = lenient.chain(ref)
        if loose.ok:
            _look_for_template_errors(run, templates, ref, loose, fabric, template_errors)
    for path, failed in by_file.items():
        shown = ", ".join(failed[:10]) + (
            f" and {len(failed) - 10} more" if len(failed) > 10 else ""
        )
        run.diagnostics.append(
            Diagnostic(
                path,
                1,
                1,
                "unchecked",
                f"{len(failed)} node(s) use this file and were not "
                f"rendered or checked because it has errors: {shown}",
                "fix the errors reported for this file and validate again",
            )
        )
    return frozenset(names)


def _look_for_template_errors(
    run: FabricRun,
    templates: Templates,
    ref: NodeRef,
    chain: Chain,
    fabric: dict[str, Any],
    template_errors: dict[_TemplateKey, list[str]],
) -> None:
    entry = run.lookup_lenient(ref.path)
    if entry is None or not isinstance(entry[0], dict):
        return
    data = chain.merged.get("data", _EMPTY)
    context = {
        "name": ref.name,
        "site": ref.site,
        "cluster": ref.cluster,
        "address": entry[0].get("address"),
        "labels": chain.merged.get("labels") or _EMPTY,
        "lifecycle": chain.lifecycle,
    }
    identity = {**context, "commit": run.src.commit}
    problems: list[BuildProblem] = []
    try:
        build_manifest(
            identity,
            fabric.get("name", ""),
            chain.merged,
            lambda name: templates.render(name, data, context),
            problems,
            Memo(),
        )
    except (
        Exception
    ):  # a schema-invalid document may trip the builder anywhere: its schema errors are reported
        return
    for p in problems:
        if p.at is not None:
            template_errors[(*p.at, p.message, p.hint)].append(ref.name)


def _locate_problem(chain: Chain, ref: NodeRef, p: BuildProblem) -> Finding:
    """A build problem reported in the overlay that set the offending value (the node file if none did)."""
    settings = trace(chain.layers, p.keypath)
    if settings:
        winner = settings[0]
        return Finding(
            winner.layer.path, winner.keypath, p.code, f"{p.message} (node {ref.name})", p.hint
        )
    return Finding(ref.path, (), p.code, f"{p.message} (node {ref.name})", p.hint)


def _reusable(
    previous: RenderResult | None, changed: Iterable[str] | None
) -> dict[str, RenderedNode]:
    """Nodes of ``previous`` that no changed path feeds."""
    if previous is None or changed is None:
        return {}
    changed = set(changed)
    if FABRIC_FILE in changed:
        return {}
    stale: set[str] = set()
    for path in changed:
        stale |= previous.deps.get(path, frozenset())
        if path.startswith(
            TEMPLATE_DIR
        ):  # nodes whose templates compute what they include: any template feeds them
            stale |= previous.deps.get(ANY_TEMPLATE, frozenset())
    nodes = (
        previous.nodes.raw if isinstance(previous.nodes, Stamped) else previous.nodes
    )  # as rendered: re-stamped once, below
    return {name: node for name, node in nodes.items() if name not in stale}


def restamp(node: RenderedNode, commit: str | None) -> RenderedNode:
    """A reused node carrying the new revision's commit.

    Only the commit changes, so its bytes are spliced into the node's
    canonical bytes instead of encoding the whole manifest again (an
    incremental render re-stamps every node of the fabric); the manifest
    shares everything but its metadata with the reused one.
    """
    old = node.manifest["metadata"]["commit"]
    if old == commit:
        return node
    manifest = {**node.manifest, "metadata": {**node.manifest["metadata"], "commit": commit}}
    canonical = restamped(node.canonical, old, commit)
    if canonical is None:
        canonical = canonical_json(manifest)
    return RenderedNode(
        node.name,
        node.site,
        node.cluster,
        node.address,
        node.lifecycle,
        node.labels,
        manifest,
        canonical,
        digest(canonical),
        node.sources,
    )


def _base_lifecycles(
    base: RenderResult | Source | None, cache: ParseCache
) -> dict[str, str] | None:
    """Each node's lifecycle state in the base revision (only node files are read: nothing is rendered)."""
    if base is None:
        return None
    if isinstance(base, RenderResult):
        return {n: s for n, s in base.lifecycles.items() if n not in base.unreadable}
    return lifecycles(base, cache)


def _deps(nodes: Iterable[RenderedNode]) -> dict[str, frozenset[str]]:
    index: dict[str, set[str]] = defaultdict(set)
    for node in nodes:
        for path in node.sources:
            index[path].add(node.name)
    return {path: frozenset(names) for path, names in index.items()}


def secret_receivers(src: Source) -> tuple[dict[str, list[tuple[str, str | None]]], dict[str, Any]]:
    """Which nodes receive each secret (``{name: [(node, identity or None)]}``), and fabric.yaml.

    Read from the merged overlays alone, without rendering, so that it works
    before the ciphertext exists (``treadle secret encrypt``). Nodes whose
    overlays do not merge are left out; ``treadle validate`` reports them.
    """
    run = FabricRun(src, ParseCache())
    fabric, fabric_tagged = load_fabric(run)
    overlays = Overlays(run.layout, fabric, fabric_tagged, run.lookup)
    out: dict[str, list[tuple[str, str | None]]] = defaultdict(list)
    for ref in run.layout.nodes:
        entry = run.lookup(ref.path)
        chain = overlays.chain(ref) if entry is not None else None
        if chain is None or not chain.ok:
            continue
        node_identity = entry[0].get("identity")  # type: ignore[index]
        for spec in (chain.merged.get("files") or _EMPTY).values():
            if (
                isinstance(spec, Mapping)
                and isinstance(spec.get("secret"), str)
                and spec.get("ensure", "present") == "present"
            ):
                if (ref.name, node_identity) not in out[spec["secret"]]:
                    out[spec["secret"]].append(
                        (ref.name, node_identity if isinstance(node_identity, str) else None)
                    )
    return dict(out), plain(fabric)
