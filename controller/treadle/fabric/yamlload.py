"""YAML 1.2 loading on the hot path: libyaml (ruamel.yaml.clib), merge tags, caps.

Why this shape: ruamel's round-trip loader keeps comments and positions but is
about three times slower, so it is only used to *locate* a value after
something went wrong (see :mod:`treadle.fabric.locate`). The hot path is the
same C reader, scanner, parser and composer that ``YAML(typ="safe")`` uses
(ruamel.yaml.clib's ``CParser``), with a resolver fixed to YAML 1.2 and a
small builder in place of ruamel's SafeConstructor (about twice as fast for
fabric files; :func:`uses_c_loader` pins that the C parser is the one used).
Every file goes through that one parser: a second, faster reader for "simple"
files would be a second YAML dialect on untrusted input.
Three tags change how an overlay merges:

    !append [..]   extend the inherited list instead of replacing it
    !delete        remove the inherited key
    !replace {..}  replace the inherited map whole instead of merging into it

Caps, all from fabric.yaml ``limits``: file size (checked before parsing),
alias count (counted while building) and alias expansion. An alias bomb
("billion laughs") is a small graph of shared nodes; building it is cheap
because aliased values are shared, but anything that walks it later would
expand it. So when a file uses aliases, its expanded size is computed on the
shared graph (memoized, linear in the file) and refused when it could not
have been written out within ``max_file_bytes``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from _ruamel_yaml import CParser  # the ruamel.yaml.clib extension: libyaml
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.nodes import MappingNode, ScalarNode, SequenceNode
from ruamel.yaml.resolver import BaseResolver, Resolver
from ruamel.yaml.tag import Tag



class Append(list):  # type: ignore[type-arg]
    """A list tagged ``!append``: merged by extending the inherited list."""

    __slots__ = ()


class Replace(dict):  # type: ignore[type-arg]
    """A map tagged ``!replace``: merged by replacing the inherited map whole."""

    __slots__ = ()


class _Delete:
    """The value of a key tagged ``!delete``: merged by removing the inherited key."""

    _instance: _Delete | None = None

    def __new__(cls) -> _Delete:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "!delete"

    def __reduce__(self) -> str:
        return "DELETE"


DELETE = _Delete()


@dataclass(frozen=True, slots=True)
class Limits:
    """Caps on what one file or one manifest may cost (fabric.yaml ``limits``)."""

    max_file_bytes: int = 1024 * 1024
    max_aliases: int = 100
    max_rendered_bytes: int = 8 * 1024 * 1024
    max_template_ms: int = 2000

    @classmethod
    def from_fabric(cls, fabric: Any) -> Limits:
        raw = fabric.get("limits") if isinstance(fabric, dict) else None
        if not isinstance(raw, dict):
            return cls()
        fields = {k: v for k, v in raw.items() if k in cls.__dataclass_fields__ and type(v) is int}
        return cls(**fields)


@dataclass(frozen=True, slots=True)
class Problem:
    """A located problem inside one file's content (the path is added by the caller: blobs are shared)."""

    line: int
    col: int
    code: str
    message: str
    hint: str = ""


class YamlProblem(Exception):
    """A file that cannot be loaded; carries the :class:`Problem`."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(problem.message)
        self.problem = problem


class _Located(Exception):
    """A problem at a composed node (its start mark gives the line and column)."""

    def __init__(self, node: Any, code: str, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.node, self.code, self.message = node, code, message
        self.hint = hint or _HINTS.get(code, "")


def _to_int(text: str) -> int:
    s = text.replace("_", "")
    sign = -1 if s.startswith("-") else 1
    s = s.lstrip("+-")
    if s[:2] in ("0o", "0O"):
        return sign * int(s[2:], 8)
    if s[:2] in ("0x", "0X"):
        return sign * int(s[2:], 16)
    return sign * int(s, 10)  # YAML 1.2: 0644 is the decimal 644


def _to_float(text: str) -> float:
    s = text.replace("_", "").lower()
    if s.endswith(".inf"):
        return float("-inf") if s.startswith("-") else float("inf")
    if s.endswith(".nan"):
        return float("nan")
    return float(s)


_MAP_TAG, _SEQ_TAG, _MERGE_TAG = "tag:yaml.org,2002:map", "tag:yaml.org,2002:seq", "tag:yaml.org,2002:merge"
_SCALAR_BY_NAME: dict[str, Any] = {
    "tag:yaml.org,2002:str": str,
    "tag:yaml.org,2002:int": _to_int,
    "tag:yaml.org,2002:float": _to_float,
    "tag:yaml.org,2002:bool": lambda s: s.lower() == "true",
    "tag:yaml.org,2002:null": lambda s: None,
}


def _implicit_12() -> tuple[dict[str, tuple[tuple[Tag, re.Pattern[str]], ...]], tuple[tuple[Tag, re.Pattern[str]], ...]]:
    # ruamel's YAML 1.2 rules, keyed by first character, without timestamps: the
    # 1.2 core schema has none, and a date object is not a manifest value.
    table = {ch: [(t, r) for t, r in rules if not t.endswith(":timestamp")] for ch, rules in Resolver.yaml_implicit_resolvers.items()}
    anyfirst = tuple((Tag(suffix=t), r) for t, r in table.get(None, []))
    return {ch: tuple((Tag(suffix=t), r) for t, r in rules) + anyfirst for ch, rules in table.items() if ch is not None}, anyfirst


_IMPLICIT, _IMPLICIT_ANY = _implicit_12()
_STR, _SEQ, _MAP = BaseResolver.DEFAULT_SCALAR_TAG, BaseResolver.DEFAULT_SEQUENCE_TAG, BaseResolver.DEFAULT_MAPPING_TAG


class _Resolver12(BaseResolver):
    """YAML 1.2 core-schema scalars, always (a ``%YAML 1.1`` directive does not bring back ``yes``/``no`` or octal ``0644``).

    ruamel's resolvers look the version up on every scalar; fixing it once
    makes parsing about twice as fast. Path resolvers are not used.
    """

    @property
    def processing_version(self) -> tuple[int, int]:
        return (1, 2)

    def resolve(self, kind: Any, value: Any, implicit: Any) -> Any:
        if kind is ScalarNode:
            if implicit[0]:
                for tag, regexp in _IMPLICIT.get(value[:1], _IMPLICIT_ANY):
                    if regexp.match(value):
                        return tag
            return _STR
        return _SEQ if kind is SequenceNode else _MAP


#: Converters keyed by the resolver's own (shared) tag objects: the common case skips the name lookup.
_SCALARS: dict[int, Any] = {id(_STR): str}
for _rules in (*_IMPLICIT.values(), _IMPLICIT_ANY):
    for _tag, _ in _rules:
        if str(_tag) in _SCALAR_BY_NAME:
            _SCALARS[id(_tag)] = _SCALAR_BY_NAME[str(_tag)]


class _Loader(CParser, _Resolver12):  # type: ignore[misc]
    """libyaml's reader, scanner, parser and composer (C), with the YAML 1.2 resolver."""

    def __init__(self, text: str) -> None:
        CParser.__init__(self, text)
        self._parser = self._composer = self
        _Resolver12.__init__(self, loadumper=self)


class _Build:
    """Turns libyaml's composed node graph into plain Python values.

    ruamel's SafeConstructor does the same through several layers of generic
    dispatch; this is the part a fabric needs, about twice as fast: YAML 1.2
    core scalars, maps (duplicate keys refused), lists, the three merge tags,
    and shared (aliased) nodes counted against ``max_aliases``.
    """

    def __init__(self, max_aliases: int) -> None:
        self.max_aliases = max_aliases
        self.aliases = 0
        self.tagged = False
        self.memo: dict[int, Any] = {}

    def value(self, node: Any) -> Any:
        key = id(node)
        if key in self.memo:
            self.aliases += 1
            if self.aliases > self.max_aliases:
                raise _Located(node, "aliases", f"more than limits.max_aliases {self.max_aliases} aliases")
            return self.memo[key]
        kind = type(node)
        if kind is ScalarNode:
            convert = _SCALARS.get(id(node.ctag))
            value = convert(node.value) if convert is not None else self._scalar(node, str(node.ctag))
            self.memo[key] = value  # so that an alias of a scalar is counted too
            return value
        if kind is MappingNode:
            return self._mapping(node, str(node.ctag), key)
        return self._sequence(node, str(node.ctag), key)

    def _mapping(self, node: Any, tag: str, key: int) -> dict[Any, Any]:
        if tag == "!replace":
            self.tagged = True
            out: dict[Any, Any] = Replace()
        elif tag == _MAP_TAG:
            out = {}
        else:
            raise _Located(node, "yaml", _tag_message(tag, "map"), _TAG_HINT)
        self.memo[key] = out
        for knode, vnode in node.value:
            if type(knode) is not ScalarNode:
                raise _Located(knode, "yaml", "a map key must be a plain value, not a map or list", "use a string key")
            if str(knode.ctag) == _MERGE_TAG:
                raise _Located(knode, "yaml", "merge keys (<<) are not supported", "use profiles, or the !append / !replace tags")
            k = self.value(knode)
            if type(k) is not str:
                raise _Located(knode, "yaml", f"map key {knode.value!r} is read as {type(k).__name__}, not text",
                               f'quote it: "{knode.value}": (keys are strings, as in JSON)')
            if k in out:
                first = next(kn for kn, _ in node.value if self.value(kn) == k)
                raise _Located(knode, "duplicate-key", f"duplicate key {k!r} (first at line {first.start_mark.line + 1})")
            out[k] = self.value(vnode)
        return out

    def _sequence(self, node: Any, tag: str, key: int) -> list[Any]:
        if tag == "!append":
            self.tagged = True
            out: list[Any] = Append()
        elif tag == _SEQ_TAG:
            out = []
        else:
            raise _Located(node, "yaml", _tag_message(tag, "list"), _TAG_HINT)
        self.memo[key] = out
        out.extend(self.value(v) for v in node.value)
        return out

    def _scalar(self, node: Any, tag: str) -> Any:
        if tag == "!delete":
            if node.value not in ("", "~", "null"):
                raise _Located(node, "yaml", "!delete takes no value", "write `key: !delete`")
            self.tagged = True
            return DELETE
        convert = _SCALAR_BY_NAME.get(tag)
        if convert is None:
            raise _Located(node, "yaml", _tag_message(tag, "scalar"), _TAG_HINT)
        try:
            return convert(node.value)
        except ValueError as e:
            kind = tag.rsplit(":", 1)[-1]
            raise _Located(node, "yaml", f"{node.value!r} is not a valid {kind}", "drop the explicit tag or fix the value") from e


def _tag_message(tag: str, kind: str) -> str:
    usage = {"!append": "a list", "!replace": "a map", "!delete": "no value"}
    if tag in usage:
        return f"{tag} takes {usage[tag]}, not a {kind}"
    return f"unknown tag {tag}"


def uses_c_loader() -> bool:
    """True: the hot path parses with libyaml (the ruamel.yaml.clib extension)."""
    return issubclass(_Loader, CParser) and CParser.__module__.startswith("ruamel.yaml.clib")


def load_yaml(data: bytes, limits: Limits) -> tuple[Any, bool]:
    """Parse one YAML document: (document, whether it uses merge tags).

    Raises:
        YamlProblem: oversized, not UTF-8, a syntax error, a duplicate key, an
            unknown tag, too many aliases or an alias expansion beyond the cap.
    """
    if len(data) > limits.max_file_bytes:
        raise YamlProblem(
            Problem(0, 0, "too-large", f"file is {len(data)} bytes, more than limits.max_file_bytes {limits.max_file_bytes}",
                    "split it, or raise limits.max_file_bytes in fabric.yaml")
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise YamlProblem(Problem(line, 1, "yaml", f"not UTF-8 text: {e.reason}", "save the file as UTF-8")) from e
    loader = _Loader(text)
    build = _Build(limits.max_aliases)
    try:
        node = loader.get_single_node()
        doc = None if node is None else build.value(node)
    except _Located as e:
        mark = e.node.start_mark
        raise YamlProblem(Problem(mark.line + 1, mark.column + 1, e.code, e.message, e.hint)) from e
    except MarkedYAMLError as e:
        raise YamlProblem(_problem(e, "yaml", _message(e), "fix the YAML syntax (indentation, quotes, colons)")) from e
    except YAMLError as e:
        raise YamlProblem(Problem(1, 1, "yaml", f"YAML error: {e}", "fix the YAML syntax")) from e
    finally:
        loader.dispose()
    if build.aliases:
        _refuse_expansion(doc, limits)
    return doc, build.tagged


_HINTS = {
    "aliases": "write the values out, or raise limits.max_aliases in fabric.yaml",
    "duplicate-key": "remove one of them: a key may appear once per map",
}
_TAG_HINT = "the only tags are !append [..], !delete and !replace {..}"


def _refuse_expansion(doc: Any, limits: Limits) -> None:
    """Refuse a document whose aliases expand past what ``max_file_bytes`` could spell out."""
    cap = limits.max_file_bytes
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(obj: Any) -> int:
        key = id(obj)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise YamlProblem(Problem(1, 1, "aliases", "an alias refers to its own parent (a recursive structure)",
                                      "YAML aliases must not form a cycle"))
        if isinstance(obj, dict):
            active.add(key)
            total = 1 + sum(size(k) + size(v) for k, v in obj.items())
        elif isinstance(obj, list):
            active.add(key)
            total = 1 + sum(size(v) for v in obj)
        else:
            return 1 + (len(obj) if isinstance(obj, str) else 0)
        active.discard(key)
        sizes[key] = total
        if total > cap:
            raise YamlProblem(Problem(1, 1, "aliases", f"aliases expand to more than {cap} values (an alias bomb)",
                                      "write the values out instead of nesting aliases"))
        return total

    size(doc)


def _message(e: MarkedYAMLError) -> str:
    parts = [str(p).strip() for p in (e.context, e.problem) if p]
    return "; ".join(parts) or "invalid YAML"


def _problem(e: MarkedYAMLError, code: str, message: str, hint: str) -> Problem:
    mark = e.problem_mark or e.context_mark
    if mark is None:
        return Problem(1, 1, code, message, hint)
    return Problem(mark.line + 1, mark.column + 1, code, message, hint)


def plain(value: Any) -> Any:
    """``value`` with the merge tags resolved as if merged onto nothing (deleted keys dropped)."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items() if v is not DELETE}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return None if value is DELETE else value
