"""Patched: a large read-only mapping with a few keys replaced or removed, without copying it.

An incremental render changes a handful of entries of mappings that hold
one entry per file or per node (the listing, the rendered nodes). Copying a
100,000-entry dict per push costs more than the rest of the push; a
:class:`Patched` keeps the unchanged base and a small patch instead. Patches
of patches share the base, and once the patch grows past a share of the base
it is flattened into a new dict, so a lookup costs at most two dict lookups
and the copying, amortized, is a small fraction per change.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import TypeVar

K = TypeVar("K")
V = TypeVar("V")

#: A patch is flattened into a plain dict past this many keys and an eighth of the base.
_FLATTEN_AT = 1024


class Patched(Mapping[K, V]):
    """``base`` with ``patch``'s keys set and ``gone``'s keys removed; iterates in the base's order, new keys last."""

    __slots__ = ("base", "patch", "gone", "_len")

    def __init__(self, base: Mapping[K, V], patch: Mapping[K, V], gone: frozenset[K]) -> None:
        self.base, self.patch, self.gone = base, patch, gone
        self._len = (
            len(base) - sum(1 for k in gone if k in base) + sum(1 for k in patch if k not in base)
        )

    @classmethod
    def of(
        cls, mapping: Mapping[K, V], patch: Mapping[K, V], gone: Iterable[K] = ()
    ) -> Mapping[K, V]:
        """``mapping`` with ``patch`` applied and ``gone`` removed (a new object; ``mapping`` is not changed)."""
        removed = frozenset(gone)
        if isinstance(mapping, Patched):
            base = mapping.base
            merged = {k: v for k, v in mapping.patch.items() if k not in removed}
            merged.update(patch)
            removed = ((mapping.gone - patch.keys()) | removed) - patch.keys()
        else:
            base, merged = mapping, dict(patch)
            removed = removed - patch.keys()
        if len(merged) + len(removed) > max(_FLATTEN_AT, len(base) // 8):
            flat = {k: v for k, v in base.items() if k not in removed}
            flat.update(merged)
            return flat
        return cls(base, merged, removed)

    def __getitem__(self, key: K) -> V:
        if key in self.patch:
            return self.patch[key]
        if key in self.gone:
            raise KeyError(key)
        return self.base[key]

    def __contains__(self, key: object) -> bool:
        return key in self.patch or (key not in self.gone and key in self.base)

    def __iter__(self) -> Iterator[K]:
        for key in self.base:
            if key not in self.gone:
                yield key
        for key in self.patch:
            if key not in self.base:
                yield key

    def __len__(self) -> int:
        return self._len
