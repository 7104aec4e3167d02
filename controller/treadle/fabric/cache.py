"""The parse cache: everything derived from one file's bytes, keyed by its git blob id.

A blob id names content, not a path or a revision, so the work tree, every git
revision and every render share one cache: an unchanged file is parsed once,
schema-validated once per schema, located once (round-trip parse, only when an
error or ``explain`` needs positions), and a template is compiled once. A
source object's classified listing is kept while the source lives, so that
``explain`` after a render does not list and classify the tree again. A
node whose source blobs are all unchanged is not rendered again either.
Parses are keyed by blob id and the parse limits (fabric.yaml ``limits``), so
changing the limits re-parses once. Nothing here is mutated after it is
stored; rendered values share these objects, so the merge engine never
modifies its inputs.
"""

from __future__ import annotations

import hashlib
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import treadle_schemas
from treadle.fabric.locate import load_round_trip
from treadle.fabric.yamlload import Limits, Problem, YamlProblem, load_yaml, plain


@dataclass(frozen=True, slots=True)
class Parsed:
    """One parsed YAML file: its document, or the problem that stopped parsing."""

    doc: Any
    tagged: bool
    problem: Problem | None

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # A cold render's files are parsed half in the forked helper and come back pickled
        # (treadle.fabric.pool): cheaper as a constructor call than as a slotted dataclass's state.
        return Parsed, (self.doc, self.tagged, self.problem)


def parse_bytes(data: bytes, limits: Limits) -> Parsed:
    """One file's bytes parsed: its document, or the problem that stopped parsing (never raises for content)."""
    try:
        doc, tagged = load_yaml(data, limits)
        return Parsed(doc, tagged, None)
    except YamlProblem as e:
        return Parsed(None, False, e.problem)


T = TypeVar("T")

#: One schema violation: (instance path, message). Paths are kept, lines found later.
SchemaError = tuple[tuple[Any, ...], str]


class ParseCache:
    """Parsed documents, schema verdicts, round-trip documents and compiled templates by blob id.

    Keep one per process (the controller) or per command; it grows with the
    number of distinct file versions seen, so a long-lived owner may drop it
    and start a new one at any time.
    """

    def __init__(self) -> None:
        self._parsed: dict[tuple[str, Limits], Parsed] = {}
        self._schema: dict[tuple[str, str], tuple[SchemaError, ...]] = {}
        self._round_trip: dict[str, Any] = {}
        self._templates: dict[str, Any] = {}
        self._rendered: dict[str, tuple[tuple[tuple[str, str | None], ...], Any]] = {}
        self._listings: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
        #: The last directory listing id computed (entries, directory, id): one listing per render.
        self._listing_ids: tuple[Any, str, str] = (None, "", "")
        self._limits_seen: set[Limits] = set()  # the keys' second halves, for forget()
        self._schemas_seen: set[str] = set()
        self.parse_count = (
            0  # files actually parsed (not served from the cache): lets tests pin "never twice"
        )

    def parse(self, blob: str, read: Callable[[], bytes], limits: Limits) -> Parsed:
        """The parsed file with blob id ``blob``; ``read`` is called only on a miss."""
        key = (blob, limits)
        hit = self._parsed.get(key)
        if hit is None:
            self.parse_count += 1
            self._limits_seen.add(limits)
            hit = self._parsed[key] = parse_bytes(read(), limits)
        return hit

    def missing(self, blobs: Iterable[str], limits: Limits) -> list[str]:
        """The blobs of ``blobs`` not parsed yet under ``limits`` (each once, in order)."""
        seen: set[str] = set()
        out = []
        for blob in blobs:
            if (blob, limits) not in self._parsed and blob not in seen:
                seen.add(blob)
                out.append(blob)
        return out

    def add_parsed(self, blob: str, limits: Limits, parsed: Parsed) -> None:
        """Store a parse made elsewhere (:func:`parse_bytes` in a forked worker): as if :meth:`parse` had made it."""
        if (blob, limits) not in self._parsed:
            self.parse_count += 1
            self._limits_seen.add(limits)
            self._parsed[(blob, limits)] = parsed

    def schema_errors(self, blob: str, schema: str, parsed: Parsed) -> tuple[SchemaError, ...]:
        """Violations of ``schema`` (e.g. ``node.json``) by the parsed file; validated once per (blob, schema)."""
        key = (blob, schema)
        hit = self._schema.get(key)
        if hit is None:
            self._schemas_seen.add(schema)
            instance = plain(parsed.doc) if parsed.tagged else parsed.doc
            try:
                hit = tuple(
                    (tuple(path), message)
                    for path, message in treadle_schemas.errors(schema, instance)
                )
            except (
                ValueError
            ) as e:  # a value JSON Schema cannot express; the loader should have refused it already
                hit = (((), f"not representable as JSON: {e}"),)
            self._schema[key] = hit
        return hit

    def round_trip(self, blob: str, read: Callable[[], bytes]) -> Any:
        """The round-trip (position-keeping) document of the blob; parsed at most once."""
        if blob not in self._round_trip:
            self._round_trip[blob] = load_round_trip(read())
        return self._round_trip[blob]

    def listing(self, src: Any, build: Callable[[], T]) -> T:
        """What ``build`` derives from the file listing of ``src``, once per source object.

        A source is a snapshot (a work tree read once, a git tree), so its
        listing never changes: a render and the ``explain`` lookups that follow
        it on the same source classify its files once, not once per call. The
        entry lives as long as the source object does. A source that cannot be
        weakly referenced is listed on every call.
        """
        try:
            hit = self._listings.get(src)
        except TypeError:
            return build()
        if hit is None:
            hit = self._listings[src] = build()
        return hit

    def template_code(self, key: str, compile_: Callable[[], Any]) -> Any:
        """The compiled template for ``key`` (blob id and path: the code embeds its file name); ``compile_`` runs only on a miss."""
        hit = self._templates.get(key)
        if hit is None:
            hit = self._templates[key] = compile_()
        return hit

    def rendered(self, node: str, entries: Mapping[str, str]) -> Any:
        """The last rendered result of ``node`` if none of the files that fed it changed (by blob id), else None.

        A node's manifest is a function of the blobs of its sources (including
        the profiles and templates it looked for and did not find), so equal
        blobs mean equal bytes, except the commit, which the caller re-stamps.
        """
        hit = self._rendered.get(node)
        if hit is None or any(self._blob(entries, path) != blob for path, blob in hit[0]):
            return None
        return hit[1]

    def retain(self, blobs: Iterable[str]) -> None:
        """Forget every parse, schema verdict, round-trip document and template of a blob not in ``blobs``.

        A long-lived owner calls it with the blobs of the revision it now
        works from, so the cache holds about one revision's files instead of
        every version ever seen (the controller: tests/controller/test_soak.py).
        """
        keep = set(blobs)
        self._parsed = {k: v for k, v in self._parsed.items() if k[0] in keep}
        self._schema = {k: v for k, v in self._schema.items() if k[0] in keep}
        self._round_trip = {k: v for k, v in self._round_trip.items() if k in keep}
        self._templates = {k: v for k, v in self._templates.items() if k.split(":", 1)[0] in keep}

    def forget(self, blobs: Iterable[str]) -> None:
        """Forget the parses, schema verdicts and round-trip documents of ``blobs`` (files a change replaced).

        :meth:`retain` for a few blobs, in proportion to them: each is looked up
        under every parse limit and schema seen (a handful), not by a scan.
        """
        for blob in blobs:
            for lim in self._limits_seen:
                self._parsed.pop((blob, lim), None)
            for schema in self._schemas_seen:
                self._schema.pop((blob, schema), None)
            self._round_trip.pop(blob, None)

    def store_rendered(
        self, node: str, sources: Iterable[str], entries: Mapping[str, str], result: Any
    ) -> None:
        """Remember ``result`` for ``node`` with the blob ids of its sources (one entry per node name)."""
        self._rendered[node] = (
            tuple((path, self._blob(entries, path)) for path in sources),
            result,
        )

    def _blob(self, entries: Mapping[str, str], path: str) -> str | None:
        """The blob id of ``path``; for a directory source (``templates/``: a template computing what it
        includes reads any file there), one id for the whole listing under it, added files included."""
        if not path.endswith("/"):
            return entries.get(path)
        memo = self._listing_ids
        if memo[0] is not entries or memo[1] != path:
            listing = sorted((p, b) for p, b in entries.items() if p.startswith(path))
            self._listing_ids = memo = (
                entries,
                path,
                hashlib.sha256(repr(listing).encode()).hexdigest(),
            )
        return memo[2]
