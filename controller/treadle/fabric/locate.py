"""Lazy locations: line and column of a key path, found only when someone asks.

The hot path parses with the C safe loader, which keeps no positions. When an
error must be reported or ``explain`` shows where a value was set, the one file
concerned is re-read with ruamel's round-trip loader, whose maps and lists
remember where each key and item sits. Round-trip documents are cached by
blob id in the :class:`~treadle.fabric.cache.ParseCache`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq


def load_round_trip(data: bytes) -> Any:
    """The round-trip document of ``data``, or None if it does not parse (its error is reported elsewhere)."""
    yaml = YAML(typ="rt")
    yaml.allow_duplicate_keys = (
        True  # only locating: duplicates were already reported by the safe loader
    )
    try:
        return yaml.load(data.decode("utf-8", errors="replace"))
    except (
        Exception
    ):  # only locating: whatever the round-trip loader trips on, the value is found at line 1
        return None


def locate_in(doc: Any, keypath: Sequence[Any]) -> tuple[int, int]:
    """1-based (line, col) of the deepest part of ``keypath`` present in ``doc``; (1, 1) if none is.

    For a key the position is the key's own; for a list index, the item's.
    """
    line, col = 1, 1
    node = doc
    for part in keypath:
        if isinstance(node, CommentedMap) and part in node:
            pos = _safe(node.lc.key, part)
        elif isinstance(node, CommentedSeq) and isinstance(part, int) and 0 <= part < len(node):
            pos = _safe(node.lc.item, part)
        else:
            break
        node = node[part]
        if (
            pos is not None
        ):  # flow-style collections may not record every position: keep the enclosing one
            line, col = pos[0] + 1, pos[1] + 1
    return line, col


def _safe(lookup: Any, part: Any) -> tuple[int, int] | None:
    try:
        pos = lookup(part)
    except (KeyError, IndexError, TypeError):
        return None
    return (pos[0], pos[1]) if pos else None
