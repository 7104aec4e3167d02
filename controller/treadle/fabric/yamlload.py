"""YAML 1.2 loading on the hot path: libyaml (ruamel.yaml.clib), merge tags, caps.

Why this shape: ruamel's round-trip loader keeps comments and positions but is
about three times slower, so it is only used to *locate* a value after
something went wrong (see :mod:`treadle.fabric.locate`). The hot path is
libyaml's C reader, scanner and parser (ruamel.yaml.clib's ``CParser``); its
events are turned into values by a small builder with an explicit stack. The C
composer is not used: it recurses once per nesting level, and tens of
thousands of levels crash the process. Every file goes through that one
parser: a second, faster reader for "simple" files would be a second YAML
dialect on untrusted input.

Scalars follow the YAML 1.2 core schema exactly (booleans ``true``/``false``
in three spellings, integers in decimal, ``0o`` and ``0x``, ``!`` makes a
string), and the YAML 1.1 habits that YAML 1.2 would silently read as text
are refused with a hint: ``yes``/``no``/``on``/``off``/``y``/``n`` as values,
binary ``0b..`` and ``1_000``. libyaml ends anchor names at the first
character other than a letter, digit, ``-`` or ``_``; such anchors are refused
rather than read differently from the spec.
Three tags change how an overlay merges:

    !append [..]   extend the inherited list instead of replacing it
    !delete        remove the inherited key
    !replace {..}  replace the inherited map whole instead of merging into it

Caps: file size (checked before parsing), control characters (found before
libyaml reports them at 1:1), nesting depth (:data:`MAX_DEPTH`, counted with
aliases expanded, so that every later walker's recursion is bounded),
integer size, alias count and alias expansion. An alias bomb ("billion
laughs") is a small graph of shared nodes; building it is cheap because
aliased values are shared, but anything that walks it later would expand it.
So each value's expanded size is counted while building (an alias adds the
size of what it names) and refused past ``max_file_bytes``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from _ruamel_yaml import CParser  # the ruamel.yaml.clib extension: libyaml
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.events import (
    AliasEvent,
    MappingEndEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceEndEvent,
    SequenceStartEvent,
    StreamEndEvent,
)


class Append(list[Any]):
    """A list tagged ``!append``: merged by extending the inherited list."""

    __slots__ = ()


class Replace(dict[str, Any]):
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
    """A problem at an event's start mark (0-based line and column)."""

    def __init__(self, mark: Any, code: str, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.mark, self.code, self.message = mark, code, message
        self.hint = hint or _HINTS.get(code, "")


#: Deepest nesting of maps and lists accepted, counted after aliases are expanded. Every walker of a
#: document (merge, schema, canonical JSON, templates) recurses, so this keeps them far from Python's
#: recursion limit; a fabric nests a dozen levels.
MAX_DEPTH = 64
#: Longest integer literal accepted (sign included): a manifest integer fits in 64 bits.
MAX_INT_DIGITS = 20
_INT_RANGE = (-(2**63), 2**64 - 1)

# The YAML 1.2.2 core schema (section 10.3.2), exactly: what a plain scalar resolves to.
_CORE_NULL = frozenset(("", "~", "null", "Null", "NULL"))
_CORE_BOOL = {
    "true": True,
    "True": True,
    "TRUE": True,
    "false": False,
    "False": False,
    "FALSE": False,
}
_CORE_INT = re.compile(r"[-+]?[0-9]+\Z|0o[0-7]+\Z|0x[0-9a-fA-F]+\Z")
_CORE_FLOAT = re.compile(r"[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?\Z")
_CORE_SPECIAL_FLOAT = {
    ".inf": float("inf"),
    ".Inf": float("inf"),
    ".INF": float("inf"),
    "+.inf": float("inf"),
    "+.Inf": float("inf"),
    "+.INF": float("inf"),
    "-.inf": float("-inf"),
    "-.Inf": float("-inf"),
    "-.INF": float("-inf"),
    ".nan": float("nan"),
    ".NaN": float("nan"),
    ".NAN": float("nan"),
}
#: First characters of a plain scalar that may resolve to something other than a string.
_MAYBE_NOT_STR = frozenset("0123456789-+.~nNtTfF")
#: YAML 1.1 words for booleans: text in YAML 1.2, read as booleans by Puppet, Ansible and PyYAML.
_TRUTHY_11 = frozenset(("yes", "no", "on", "off", "y", "n"))
#: YAML 1.1 numbers that YAML 1.2 reads as text (binary, digit separators).
_NUMBER_11 = re.compile(
    r"[-+]?0b[01_]+\Z|[-+]?[0-9][0-9_]*_[0-9_]*(?:\.[0-9_]*)?\Z|[-+]?\.?[0-9_]+\.[0-9_]*_[0-9_]*\Z"
)


class _NotCore(Exception):
    """A plain or tagged scalar the core schema refuses (carries the message and hint)."""

    def __init__(self, code: str, message: str, hint: str) -> None:
        super().__init__(message)
        self.code, self.message, self.hint = code, message, hint


def _truthy(text: str) -> _NotCore:
    """The refusal of ``text``, a YAML 1.1 boolean word (``yes``, ``off``...) written unquoted."""
    return _NotCore(
        "truthy",
        f"{text!r} is a YAML 1.1 boolean word: YAML 1.2 reads it as the text {text!r}, "
        "other tools as a boolean",
        "quote it, or write true/false",
    )


def _int(text: str) -> int:
    if len(text) > MAX_INT_DIGITS:
        raise _NotCore(
            "yaml",
            f"integer {text[:24]}... has {len(text)} characters, more than {MAX_INT_DIGITS}",
            "quote it if it is text: manifest integers fit in 64 bits",
        )
    if text[:2] == "0o":
        value = int(text[2:], 8)
    elif text[:2] == "0x":
        value = int(text[2:], 16)
    else:
        value = int(text, 10)  # YAML 1.2: 0644 is the decimal 644
    if not _INT_RANGE[0] <= value <= _INT_RANGE[1]:
        raise _NotCore("yaml", f"integer {text} does not fit in 64 bits", "quote it if it is text")
    return value


def _plain(text: str) -> Any:
    """A plain (unquoted, untagged) scalar, resolved by the YAML 1.2 core schema.

    Raises:
        _NotCore: a YAML 1.1 boolean word or number, which YAML 1.2 would read
            as text while the admin most likely meant otherwise; or an integer
            too large.
    """
    if not text:
        return None  # `key:` with nothing after it
    if text[0] not in _MAYBE_NOT_STR:
        if text.lower() in _TRUTHY_11:
            raise _truthy(text)
        return text
    if text in _CORE_NULL:
        return None
    if text in _CORE_BOOL:
        return _CORE_BOOL[text]
    if _CORE_INT.match(text):
        return _int(text)
    if _CORE_FLOAT.match(text):
        return float(text)
    if text in _CORE_SPECIAL_FLOAT:
        return _CORE_SPECIAL_FLOAT[text]
    if text.lower() in _TRUTHY_11:
        raise _truthy(text)
    if _NUMBER_11.match(text):
        raise _NotCore(
            "yaml-1.1-number",
            f"{text!r} is a YAML 1.1 number (binary or with _ separators): "
            "YAML 1.2 reads it as text",
            "quote it if it is text, or write a decimal, 0o or 0x number",
        )
    return text


def _tagged(tag: str, text: str) -> Any:
    """A scalar with an explicit core tag: its value must be of that tag's form in the core schema."""
    if tag == _STR_TAG:
        return text
    kind = tag.rsplit(":", 1)[-1]
    if tag == _NULL_TAG and text in _CORE_NULL:
        return None
    if tag == _BOOL_TAG and text in _CORE_BOOL:
        return _CORE_BOOL[text]
    if tag == _INT_TAG and _CORE_INT.match(text):
        return _int(text)
    if tag == _FLOAT_TAG:
        if _CORE_FLOAT.match(text):
            return float(text)
        if text in _CORE_SPECIAL_FLOAT:
            return _CORE_SPECIAL_FLOAT[text]
    if tag in (_NULL_TAG, _BOOL_TAG, _INT_TAG, _FLOAT_TAG):
        raise _NotCore(
            "yaml",
            f"{text!r} is not a valid {kind} in YAML 1.2",
            {"bool": "write true or false"}.get(kind, "drop the explicit tag or fix the value"),
        )
    raise _NotCore("yaml", f"unknown tag {tag}", _TAG_HINT)


_MAP_TAG, _SEQ_TAG, _MERGE_TAG = (
    "tag:yaml.org,2002:map",
    "tag:yaml.org,2002:seq",
    "tag:yaml.org,2002:merge",
)
_STR_TAG, _NULL_TAG, _BOOL_TAG = (
    "tag:yaml.org,2002:str",
    "tag:yaml.org,2002:null",
    "tag:yaml.org,2002:bool",
)
_INT_TAG, _FLOAT_TAG = "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"
#: Characters that may follow an anchor or alias name: libyaml ends a name at the first character that
#: is not a letter, digit, - or _, where YAML 1.2 reads on (``&an:chor`` is the anchor ``an:chor``).
_NAME_END = frozenset(" \t\r\n,[]{}")


class _Frame:
    """An open map or list while its events arrive: the value being filled, its height and size so far."""

    __slots__ = ("value", "is_map", "key", "key_mark", "marks", "height", "size", "anchor", "mark")

    def __init__(self, value: Any, is_map: bool, anchor: str | None, mark: Any) -> None:
        self.value, self.is_map, self.anchor, self.mark = value, is_map, anchor, mark
        self.key: Any = _NO_KEY
        self.key_mark: Any = None
        self.marks: dict[str, Any] | None = {} if is_map else None
        self.height = 1
        self.size = 1


_NO_KEY = object()


class _Build:
    """Builds plain Python values from libyaml's event stream, with an explicit stack (no recursion).

    The composer of ruamel.yaml.clib recurses in C once per nesting level (a
    few tens of thousands of levels crash the process), and a Python walk of
    its nodes recurses too; events arrive flat, so every limit is checked here
    before anything recursive sees the document: nesting depth (after alias
    expansion), integer sizes, alias count and alias expansion.
    """

    def __init__(self, text: str, limits: Limits) -> None:
        self.text = text
        self.max_aliases = limits.max_aliases
        self.max_size = limits.max_file_bytes
        self.aliases = 0
        self.tagged = False
        self.anchors: dict[str, tuple[Any, int, int]] = {}  # name -> (value, height, expanded size)
        self.open_anchors: set[str] = set()

    def document(self, parser: Any) -> Any:
        stack: list[_Frame] = []
        get = parser.get_event
        event = get()  # StreamStart
        event = get()
        if type(event) is StreamEndEvent:
            return None
        event = get()  # the first event after DocumentStart
        root: Any = None
        while True:
            kind = type(event)
            if kind is ScalarEvent:
                value, height, size = self._scalar(event, stack), 0, 1 + len(event.value)
                if event.anchor is not None:
                    self._anchor(event)
                    self.anchors[event.anchor] = (value, height, size)
            elif kind is MappingStartEvent or kind is SequenceStartEvent:
                frame = self._open(event, kind is MappingStartEvent, stack)
                stack.append(frame)
                if len(stack) > MAX_DEPTH:
                    raise _Located(
                        event.start_mark,
                        "too-deep",
                        f"maps and lists nest more than {MAX_DEPTH} levels deep",
                        "flatten the structure",
                    )
                event = get()
                continue
            elif kind is MappingEndEvent or kind is SequenceEndEvent:
                frame = stack.pop()
                value, height, size = frame.value, frame.height, frame.size
                if frame.anchor is not None:
                    self.open_anchors.discard(frame.anchor)
                    self.anchors[frame.anchor] = (value, height, size)
            elif kind is AliasEvent:
                value, height, size = self._alias(event)
                if len(stack) + height > MAX_DEPTH:
                    raise _Located(
                        event.start_mark,
                        "too-deep",
                        f"maps and lists nest more than {MAX_DEPTH} levels deep "
                        "once aliases are expanded",
                        "flatten the structure",
                    )
            else:  # DocumentEnd
                nxt = get()
                if type(nxt) is not StreamEndEvent:
                    raise _Located(
                        nxt.start_mark,
                        "yaml",
                        "more than one YAML document in the file (a second ---)",
                        "keep one document per file",
                    )
                return root
            if not stack:
                root = value
            else:
                self._add(stack[-1], value, height, size, event)
            event = get()

    def _open(self, event: Any, is_map: bool, stack: list[_Frame]) -> _Frame:
        tag = event.tag
        if is_map:
            if tag is None or tag == "!" or tag == _MAP_TAG:
                value: Any = {}
            elif tag == "!replace":
                self.tagged, value = True, Replace()
            else:
                raise _Located(event.start_mark, "yaml", _tag_message(tag, "map"), _TAG_HINT)
        elif tag is None or tag == "!" or tag == _SEQ_TAG:
            value = []
        elif tag == "!append":
            self.tagged, value = True, Append()
        else:
            raise _Located(event.start_mark, "yaml", _tag_message(tag, "list"), _TAG_HINT)
        if stack and stack[-1].is_map and stack[-1].key is _NO_KEY:
            raise _Located(
                event.start_mark,
                "yaml",
                "a map key must be a plain value, not a map or list",
                "use a string key",
            )
        anchor = event.anchor
        if anchor is not None:
            self._anchor(event)
            self.open_anchors.add(anchor)
        return _Frame(value, is_map, anchor, event.start_mark)

    def _anchor(self, event: Any) -> None:
        text, at = self.text, event.start_mark.index
        name = "&" + event.anchor
        found = text.find(name, at)
        if found >= 0:
            end = found + len(name)
            if end < len(text) and text[end] not in _NAME_END:
                raise _Located(
                    event.start_mark,
                    "yaml",
                    f"anchor name {event.anchor + text[end]!r}...: anchor names here are "
                    "letters, digits, - and _",
                    "rename the anchor (and its aliases)",
                )

    def _alias(self, event: Any) -> tuple[Any, int, int]:
        name = event.anchor
        if name in self.open_anchors:
            raise _Located(
                event.start_mark,
                "aliases",
                "an alias refers to its own parent (a recursive structure)",
                "YAML aliases must not form a cycle",
            )
        hit = self.anchors.get(name)
        if hit is None:
            raise _Located(
                event.start_mark,
                "yaml",
                f"alias *{name} refers to no anchor before it",
                "define &" + name + " first",
            )
        end = event.start_mark.index + 1 + len(name)
        if end < len(self.text) and self.text[end] not in _NAME_END:
            raise _Located(
                event.start_mark,
                "yaml",
                f"alias name {name + self.text[end]!r}...: anchor names here are "
                "letters, digits, - and _",
                "rename the anchor and its aliases",
            )
        self.aliases += 1
        if self.aliases > self.max_aliases:
            raise _Located(
                event.start_mark,
                "aliases",
                f"more than limits.max_aliases {self.max_aliases} aliases",
            )
        return hit

    def _scalar(self, event: Any, stack: list[_Frame]) -> Any:
        tag, text = event.tag, event.value
        try:
            if tag is None:
                if event.style:  # quoted or block: text
                    return text
                at = event.start_mark.index
                if (
                    at and self.text[at - 1] == "?"
                ):  # libyaml reads `{?x: 1}` as the key x, YAML 1.2 as "?x"
                    raise _NotCore(
                        "yaml",
                        f"'?' directly before {text[:40]!r}: YAML 1.2 reads it as part of the text, "
                        "libyaml as a key indicator",
                        f"quote it (\"?{text[:40]}\") or write '? {text[:40]}'",
                    )
                if stack and stack[-1].is_map and stack[-1].key is _NO_KEY:
                    return _plain_key(text)
                return _plain(text)
            if tag == "!":  # the non-specific tag: a string (YAML 1.2, 6.9.1)
                return text
            if tag == "!delete":
                if text not in ("", "~", "null"):
                    raise _NotCore("yaml", "!delete takes no value", "write `key: !delete`")
                self.tagged = True
                return DELETE
            if tag in ("!append", "!replace"):
                raise _NotCore("yaml", _tag_message(tag, "scalar"), _TAG_HINT)
            return _tagged(tag, text)
        except _NotCore as e:
            raise _Located(event.start_mark, e.code, e.message, e.hint) from None

    def _add(self, frame: _Frame, value: Any, height: int, size: int, event: Any) -> None:
        if height + 1 > frame.height:
            frame.height = height + 1
        frame.size += size
        if (
            self.aliases and frame.size > self.max_size
        ):  # without aliases the file size is the bound
            raise _Located(
                event.start_mark,
                "aliases",
                f"aliases expand to more than {self.max_size} values (an alias bomb)",
                "write the values out instead of nesting aliases",
            )
        if not frame.is_map:
            frame.value.append(value)
            return
        if frame.key is _NO_KEY:
            if type(value) is not str:
                if event.tag == _MERGE_TAG or (
                    type(event) is ScalarEvent and event.value == "<<" and not event.style
                ):
                    raise _Located(
                        event.start_mark,
                        "yaml",
                        "merge keys (<<) are not supported",
                        "use profiles, or the !append / !replace tags",
                    )
                shown = event.value if type(event) is ScalarEvent else value
                raise _Located(
                    event.start_mark,
                    "yaml",
                    f"map key {shown!r} is read as {type(value).__name__}, not text",
                    f'quote it: "{shown}": (keys are strings, as in JSON)',
                )
            if value in frame.value:
                first = frame.marks[value]  # type: ignore[index]
                raise _Located(
                    event.start_mark,
                    "duplicate-key",
                    f"duplicate key {value!r} (first at line {first.line + 1})",
                )
            if value == "<<" and type(event) is ScalarEvent and not event.style:
                raise _Located(
                    event.start_mark,
                    "yaml",
                    "merge keys (<<) are not supported",
                    "use profiles, or the !append / !replace tags",
                )
            frame.key, frame.key_mark = value, event.start_mark
            return
        frame.value[frame.key] = value
        frame.marks[frame.key] = frame.key_mark  # type: ignore[index]
        frame.key = _NO_KEY


def _plain_key(text: str) -> Any:
    """A plain map key: the core schema without the YAML 1.1 checks (``on:`` and ``y:`` are fine keys)."""
    try:
        return _plain(text)
    except _NotCore:
        return text


def _tag_message(tag: str, kind: str) -> str:
    usage = {"!append": "a list", "!replace": "a map", "!delete": "no value"}
    if tag in usage:
        return f"{tag} takes {usage[tag]}, not a {kind}"
    return f"unknown tag {tag}"


def uses_c_loader() -> bool:
    """True: the hot path parses with libyaml (the ruamel.yaml.clib extension)."""
    return CParser.__module__.startswith("ruamel.yaml.clib") or CParser.__module__ == "_ruamel_yaml"


def load_yaml(data: bytes, limits: Limits) -> tuple[Any, bool]:
    """Parse one YAML document: (document, whether it uses merge tags).

    Raises:
        YamlProblem: oversized, not UTF-8, a control character, a syntax
            error, a duplicate key, an unknown tag, a value the YAML 1.2 core
            schema refuses or a YAML 1.1 habit, nesting deeper than
            :data:`MAX_DEPTH`, too many aliases or an alias expansion beyond
            the cap. Never anything else: every input is a located problem.
    """
    if len(data) > limits.max_file_bytes:
        raise YamlProblem(
            Problem(
                1,
                1,
                "too-large",
                f"file is {len(data)} bytes, more than limits.max_file_bytes {limits.max_file_bytes}",
                "split it, or raise limits.max_file_bytes in fabric.yaml",
            )
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        col = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise YamlProblem(
            Problem(line, col, "yaml", f"not UTF-8 text: {e.reason}", "save the file as UTF-8")
        ) from e
    bad = _CONTROL.search(text)
    if bad is not None:
        at = bad.start()
        line, col = text.count("\n", 0, at) + 1, at - (text.rfind("\n", 0, at) + 1) + 1
        raise YamlProblem(
            Problem(
                line,
                col,
                "yaml",
                f"control character U+{ord(bad.group()):04X} in the file",
                "remove it (YAML allows tabs and line breaks only)",
            )
        )
    build = _Build(text, limits)
    parser = CParser(text)
    try:
        doc = build.document(parser)
    except _Located as e:
        raise YamlProblem(
            Problem(e.mark.line + 1, e.mark.column + 1, e.code, e.message, e.hint)
        ) from e
    except MarkedYAMLError as e:
        raise YamlProblem(
            _problem(e, "yaml", _message(e), "fix the YAML syntax (indentation, quotes, colons)")
        ) from e
    except YAMLError as e:
        raise YamlProblem(Problem(1, 1, "yaml", f"YAML error: {e}", "fix the YAML syntax")) from e
    finally:
        parser.dispose()
    return doc, build.tagged


#: Characters YAML 1.2 does not allow in a stream (c-printable), found before libyaml reports them at 1:1;
#: and the raw line breaks U+0085, U+2028, U+2029, which libyaml counts as new lines (YAML 1.1) and YAML 1.2
#: and editors do not, so that every later line number would be off (written as escapes in quotes, they are fine).
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u2028\u2029\ufffe\uffff]")


_HINTS = {
    "aliases": "write the values out, or raise limits.max_aliases in fabric.yaml",
    "duplicate-key": "remove one of them: a key may appear once per map",
}
_TAG_HINT = "the only tags are !append [..], !delete and !replace {..}"


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
