"""Where each changed value comes from in HEAD, as ``treadle explain`` shows it.

For a changed field of a resource the source is the overlay chain of that
key path (``files./etc/motd.mode``). For file content rendered from a
template the sources are the template and the ``data`` keys it reads whose
settings lie on lines the change touched (``data.ntp.servers`` set in
``sites/meyrin/site.yaml:12``); for literal ``content`` it is that key.

Each lookup replays one node's overlay chain, so lookups are budgeted
(:class:`ProvenanceBudget`): a plan over many groups explains the first ones
and says that it stopped, instead of growing with the change.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from treadle.errors import TreadleError
from treadle.fabric import ParseCache, Provenance, explain
from treadle.fabric.source import Source
from treadle.fabric.yamlload import plain
from treadle.review.changes import SECTIONS, ResourceChange
from treadle.review.group import Group

TEMPLATE_DIR = "templates/"
_DATA_KEY = re.compile(r"\bdata((?:\.[A-Za-z_][A-Za-z0-9_]*)+)")
_NODE_KEY = re.compile(r"\bnode\.(address|lifecycle|labels)\b")
_MAX_VALUE_CHARS = 120
#: Node metadata fields that are a node file's own keys (explain key paths as they are).
_NODE_KEYS = ("lifecycle", "address")


@dataclass(frozen=True, slots=True)
class Setting:
    """One overlay that set a value: where (1-based line; 0 for a whole file), how, and its last commit."""

    file: str
    line: int
    col: int
    how: str
    value: str
    commit: str | None
    in_change: bool


@dataclass(frozen=True, slots=True)
class ValueSource:
    """The settings of one key path (winner first), or a template as a whole (``keypath`` ``template:<path>``)."""

    keypath: str
    settings: tuple[Setting, ...]


@dataclass
class ProvenanceBudget:
    """How many explain lookups one plan may spend; ``skipped`` counts the resources left unexplained."""

    lookups: int = 24
    spent: int = 0
    skipped: int = 0

    def take(self) -> bool:
        if self.spent >= self.lookups:
            return False
        self.spent += 1
        return True


@dataclass
class Explainer:
    """Explains the changes of one node in HEAD; shares the parse cache with the renders.

    Lookups run on ``src`` itself: the parse cache keeps the listing of the
    source HEAD was rendered from, so a lookup does not list the revision
    again.
    """

    src: Source
    cache: ParseCache
    changed_lines: Mapping[str, frozenset[int]]
    budget: ProvenanceBudget = field(default_factory=ProvenanceBudget)
    _texts: dict[str, list[str]] = field(default_factory=dict)

    def sources(self, node: str, change: ResourceChange) -> tuple[ValueSource, ...] | None:
        """Where the changed values of ``change`` come from; None when the budget ran out."""
        keypaths = _keypaths(change)
        out: list[ValueSource] = []
        for keypath in keypaths:
            if keypath == "#content":
                found = self._content(node, change.key)
                if found is None:
                    self._skip()
                    return None
                out += found
                continue
            settings = self.lookup(node, keypath)
            if settings is None:
                self._skip()
                return None
            out.append(ValueSource(keypath, settings))
        return tuple(out)

    def _skip(self) -> None:
        self.budget.skipped += 1

    def lookup(self, node: str, keypath: str) -> tuple[Setting, ...] | None:
        """The settings of ``keypath`` for ``node`` (winner first; () when unknown); None when the budget is spent."""
        if not self.budget.take():
            return None
        try:
            found = explain(self.src, node, keypath, self.cache)
        except TreadleError:
            return ()
        return tuple(self._setting(p) for p in found)

    def _setting(self, p: Provenance) -> Setting:
        return Setting(
            p.file,
            p.line,
            p.col,
            p.how,
            _value_text(p.value),
            p.blame.commit if p.blame else None,
            self.touched(p.file, p.line, p.col),
        )

    def touched(self, path: str, line: int, col: int) -> bool:
        """Whether the change added or modified a line of the value at ``path:line:col`` (its whole block)."""
        lines = self.changed_lines.get(path)
        if not lines:
            return False
        if line <= 0:
            return True
        end = block_end(self._text(path), line, col)
        return any(line <= n <= end for n in lines)

    def _text(self, path: str) -> list[str]:
        if path not in self._texts:
            try:
                self._texts[path] = self.src.read(path).decode("utf-8", "replace").splitlines()
            except TreadleError:
                self._texts[path] = []
        return self._texts[path]

    def _content(self, node: str, path: str) -> list[ValueSource] | None:
        template = self.lookup(node, f"files.{path}.template")
        if template is None:
            return None
        if not template:
            content = self.lookup(node, f"files.{path}.content")
            return None if content is None else [ValueSource(f"files.{path}.content", content)]
        name = str(plain(template[0].value)).strip('"')
        tpath = TEMPLATE_DIR + name
        out = [
            ValueSource(f"files.{path}.template", template),
            ValueSource(
                f"template:{tpath}",
                (Setting(tpath, 0, 0, "template", "", None, self.touched(tpath, 0, 0)),),
            ),
        ]
        for key in self._data_keys(tpath):
            settings = self.lookup(node, key)
            if settings is None:
                return out  # what was found so far is still true; the rest is counted as skipped
            if any(s.in_change for s in settings):
                out.append(ValueSource(key, settings))
        return out

    def _data_keys(self, tpath: str) -> list[str]:
        """``data.*`` key paths the template reads (only the most specific of each chain), and the node
        file fields it shows (``node.address`` is the node file's ``address``)."""
        try:
            text = self.src.read(tpath).decode("utf-8", "replace")
        except TreadleError:
            return []
        keys = sorted({"data" + m.group(1) for m in _DATA_KEY.finditer(text)})
        node_keys = sorted({m.group(1) for m in _NODE_KEY.finditer(text)})
        return [k for k in keys if not any(other.startswith(k + ".") for other in keys)] + node_keys


def block_end(lines: Sequence[str], line: int, col: int) -> int:
    """The last line (1-based) of the YAML value whose key is at ``line``/``col``: the lines indented deeper
    (or list items at the key's own indentation), blank lines and comments included."""
    indent = max(col - 1, 0)
    end = line
    for number in range(line + 1, len(lines) + 1):
        text = lines[number - 1]
        stripped = text.lstrip(" ")
        depth = len(text) - len(stripped)
        if not stripped or stripped.startswith("#"):
            continue
        if depth > indent or (depth == indent and stripped.startswith("- ")):
            end = number
            continue
        break
    return end


def _keypaths(change: ResourceChange) -> list[str]:
    if change.type == "node":
        return [f for f in change.fields if f in _NODE_KEYS or f.startswith("labels.")]
    section = SECTIONS[change.type]
    base = f"{section}.{change.key}"
    if change.change != "changed" or change.type in ("sysctl", "health"):
        return [base]
    paths = []
    for f in change.fields:
        if f == "sha256":
            continue
        paths.append("#content" if f == "content" else f"{base}.{f}")
    return paths


def _value_text(value: Any) -> str:
    try:
        text = json.dumps(plain(value), sort_keys=True, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= _MAX_VALUE_CHARS else text[: _MAX_VALUE_CHARS - 3] + "..."


def explain_groups(
    explainer: Explainer, groups: Iterable[Group]
) -> list[dict[str, tuple[ValueSource, ...] | None]]:
    """For each group (its example node), the sources of each change by resource id."""
    return [{c.rid: explainer.sources(g.example.name, c) for c in g.changes} for g in groups]
