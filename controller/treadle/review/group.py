"""Grouping: nodes whose manifests change in the same way are shown once.

Two nodes are in one group exactly when their lists of resource changes are
identical after each node's own name and address are replaced by
placeholders (a chrony.conf that names its node in a comment changes "in the
same way" on every node). Nothing else is abstracted away, so two nodes whose
diffs differ in any other byte are never grouped (tests/review/test_group.py
pins it with hypothesis).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from treadle.review.changes import NodeChange, ResourceChange

NAME_PLACEHOLDER = "{node.name}"
ADDRESS_PLACEHOLDER = "{node.address}"


@dataclass(frozen=True, slots=True)
class Group:
    """Nodes with identical changes; ``example`` is the node whose diff is shown."""

    nodes: tuple[NodeChange, ...]
    key: tuple[tuple[str, str, str], ...]

    @property
    def example(self) -> NodeChange:
        return self.nodes[0]

    @property
    def changes(self) -> tuple[ResourceChange, ...]:
        return self.example.changes

    @property
    def places(self) -> tuple[str, ...]:
        """``site/cluster`` of the members, sorted."""
        return tuple(sorted({f"{n.site}/{n.cluster}" for n in self.nodes}))

    @property
    def title(self) -> str:
        count = len(self.nodes)
        where = ", ".join(self.places[:3]) + (
            f" and {len(self.places) - 3} more clusters" if len(self.places) > 3 else ""
        )
        what = "; ".join(f"{_label(c)}: {c.summary}" for c in self.changes[:3])
        if len(self.changes) > 3:
            more = len(self.changes) - 3
            what += f"; and {more} more resource{'s' if more != 1 else ''}"
        return f"{count} node{'s' if count != 1 else ''} in {where}: {what}"


def _label(change: ResourceChange) -> str:
    """How a title names a resource: a file by its path, the node's metadata as "node", others by type and name."""
    if change.type == "file":
        return change.key
    return "node" if change.type == "node" else f"{change.type} {change.key}"


def _identity_pattern(text: str) -> re.Pattern[str] | None:
    # Whole tokens only, so node "n1" does not also hide "n10" in another node's diff.
    return re.compile(r"(?<![\w.-])" + re.escape(text) + r"(?![\w-]|\.\w)") if text else None


def normalized(node: NodeChange) -> tuple[tuple[str, str, str], ...]:
    """The grouping key of a node: each change's id, kind and diff, with the node's identity replaced."""
    name, address = _identity_pattern(node.name), _identity_pattern(node.address)

    def hide(text: str) -> str:
        if name is not None:
            text = name.sub(NAME_PLACEHOLDER, text)
        if address is not None:
            text = address.sub(ADDRESS_PLACEHOLDER, text)
        return text

    return tuple((hide(c.rid), c.change, hide(c.diff)) for c in node.changes)


def group_changes(changed: Iterable[NodeChange]) -> list[Group]:
    """Changed nodes in groups, largest first (ties by first node name); members sorted by name."""
    buckets: dict[tuple[tuple[str, str, str], ...], list[NodeChange]] = {}
    for node in sorted(changed, key=lambda n: n.name):
        buckets.setdefault(normalized(node), []).append(node)
    groups = [Group(tuple(members), key) for key, members in buckets.items()]
    return sorted(groups, key=lambda g: (-len(g.nodes), g.nodes[0].name))
