"""The overlay merge and its provenance.

Rules (DESIGN.md): maps merge key by key, scalars and lists replace, later
wins; ``!append [..]`` extends the inherited list, ``!delete`` removes the
inherited key, ``!replace {..}`` replaces the inherited map whole.

The merge is copy-on-write: it never modifies its inputs and shares every
subtree an overlay does not touch, so the prefix shared by all nodes of a
cluster is merged once and each node only pays for its own overlay.

Provenance is computed on demand instead of being stored for every value of
every node: :func:`trace` replays the node's overlay chain for one key path
and says which overlays set it (for ``explain`` and for locating errors).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from treadle.fabric.yamlload import DELETE, Append, Replace, plain


def merge(base: Any, over: Any, tagged: bool = True) -> Any:
    """``over`` merged onto ``base`` (a plain value, no tags); returns a new value sharing untouched parts.

    ``tagged=False`` promises that ``over`` holds no merge tags (the loader
    knows), which lets untouched overlay subtrees be shared without a copy.
    """
    if type(over) is dict and type(base) is dict:
        out = dict(base)
        for key, value in over.items():
            if value is DELETE:
                out.pop(key, None)
            elif key in out:
                out[key] = merge(out[key], value, tagged)
            else:
                out[key] = plain(value) if tagged else value
        return out
    if type(over) is Append:
        return [*base, *plain(over)] if type(base) is list else plain(over)
    if over is DELETE:
        return None
    return plain(over) if tagged else over


@dataclass(frozen=True, slots=True)
class Layer:
    """One overlay in a node's chain: the file it came from, where its body sits in that file, and the body."""

    path: str
    prefix: tuple[Any, ...]
    body: Any
    tagged: bool


@dataclass(frozen=True, slots=True)
class Setting:
    """One overlay that set a key path: its file, the path inside that file, and the value it wrote."""

    layer: Layer
    keypath: tuple[Any, ...]
    value: Any
    how: str  # "set", "append" (!append), "merge" (a map merged into the inherited one) or "replace" (!replace)


def trace(chain: Sequence[Layer], keypath: Sequence[Any]) -> list[Setting]:
    """Every overlay that set ``keypath``, the winner first, the values it overrode after it.

    An overlay that deletes the key (or an enclosing one) starts the chain
    afresh: what came before it no longer has anything to do with the value.
    """
    found: list[Setting] = []
    for layer in chain:
        effect, value, where = _effect(layer.body, keypath)
        if effect == "reset":
            found = []
        elif effect in ("set", "replace"):
            how = (
                "replace"
                if effect == "replace"
                else "append"
                if type(value) is Append
                else "merge"
                if type(value) is dict
                else "set"
            )
            found.append(Setting(layer, layer.prefix + where, plain(value), how))
    return found[::-1]


def _effect(body: Any, keypath: Sequence[Any]) -> tuple[str, Any, tuple[Any, ...]]:
    """What one overlay body does to ``keypath``: ("none"|"set"|"replace"|"reset", value, where in the body)."""
    node = body
    for depth, part in enumerate(keypath):
        if type(node) not in (dict, Replace) or part not in node:
            return "none", None, ()
        node = node[part]
        where = tuple(keypath[: depth + 1])
        if node is DELETE:
            return "reset", None, where
        last = depth == len(keypath) - 1
        if type(node) is Replace and not last:
            inner, found = _dig(node, keypath[depth + 1 :])
            return ("replace", inner, tuple(keypath)) if found else ("reset", None, where)
        if not last and type(node) is not dict:
            return "reset", None, where  # an enclosing value was replaced by a scalar or a list
        if last:
            return ("replace" if type(node) is Replace else "set"), node, where
    return "none", None, ()


def _dig(node: Any, rest: Sequence[Any]) -> tuple[Any, bool]:
    for part in rest:
        if not isinstance(node, dict) or part not in node or node[part] is DELETE:
            return None, False
        node = node[part]
    return node, True


def get_path(value: Any, keypath: Sequence[Any]) -> tuple[Any, bool]:
    """The value at ``keypath`` in a merged (plain) value, and whether it exists."""
    node = value
    for part in keypath:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        else:
            return None, False
    return node, True
