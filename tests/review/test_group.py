"""Grouping: nodes share a group exactly when their changes are identical (modulo their own name and address)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from treadle.review.changes import NodeChange, resource_change
from treadle.review.group import group_changes, normalized


def _file_change(path: str, before: str, after: str):
    return resource_change(
        "file",
        path,
        {"type": "file", "path": path, "content": before, "mode": "0644"},
        {"type": "file", "path": path, "content": after, "mode": "0644"},
    )


def _node(name: str, *changes) -> NodeChange:
    return NodeChange(name, "s1", "c1", f"10.0.0.{len(name)}", tuple(changes))


def test_nodes_with_different_content_diffs_are_in_different_groups():
    a = _node("n1", _file_change("/etc/chrony.conf", "server a\n", "server b\n"))
    b = _node("n2", _file_change("/etc/chrony.conf", "server a\n", "server c\n"))
    c = _node("n3", _file_change("/etc/chrony.conf", "server a\n", "server b\n"))
    groups = group_changes([a, b, c])
    assert [[n.name for n in g.nodes] for g in groups] == [["n1", "n3"], ["n2"]]


def test_a_diff_naming_the_node_itself_still_groups():
    a = _node(
        "batch-001", _file_change("/etc/motd", "host batch-001\nold\n", "host batch-001\nnew\n")
    )
    b = _node(
        "batch-002", _file_change("/etc/motd", "host batch-002\nold\n", "host batch-002\nnew\n")
    )
    assert len(group_changes([a, b])) == 1


def test_a_diff_naming_another_node_does_not_group():
    a = _node(
        "batch-001", _file_change("/etc/motd", "peer batch-009\nold\n", "peer batch-009\nnew\n")
    )
    b = _node(
        "batch-002", _file_change("/etc/motd", "peer batch-010\nold\n", "peer batch-010\nnew\n")
    )
    assert len(group_changes([a, b])) == 2


def test_a_name_inside_a_longer_name_is_not_taken_for_the_node():
    a = _node("n1", _file_change("/etc/x", "n10\n", "n10 y\n"))
    b = _node("n2", _file_change("/etc/x", "n10\n", "n10 y\n"))
    assert len(group_changes([a, b])) == 1  # "n10" is nobody's own name here: identical diffs


_names = st.sampled_from(["a1", "a2", "b-1", "b-2", "c.3"])
_contents = st.sampled_from(["x\n", "y\n", "a1\n", "a2 and b-1\n", ""])
_change = st.tuples(st.sampled_from(["/etc/a", "/etc/b"]), _contents, _contents).filter(
    lambda t: t[1] != t[2]
)
_nodes = st.dictionaries(
    _names, st.lists(_change, min_size=1, max_size=2, unique_by=lambda t: t[0]), min_size=1
)


@settings(max_examples=200, deadline=None)
@given(_nodes)
def test_groups_partition_the_nodes_and_members_have_equal_normalized_diffs(spec):
    nodes = [_node(name, *(_file_change(*c) for c in changes)) for name, changes in spec.items()]
    groups = group_changes(nodes)
    members = [n.name for g in groups for n in g.nodes]
    assert sorted(members) == sorted(spec)
    for g in groups:
        assert len({normalized(n) for n in g.nodes}) == 1
    for i, g in enumerate(groups):
        for h in groups[i + 1 :]:
            assert normalized(g.nodes[0]) != normalized(h.nodes[0])


_plain_contents = st.sampled_from(["x\n", "y\n", "z\n", ""])
_plain_change = st.tuples(
    st.sampled_from(["/etc/a", "/etc/b"]), _plain_contents, _plain_contents
).filter(lambda t: t[1] != t[2])


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        _names,
        st.lists(_plain_change, min_size=1, max_size=2, unique_by=lambda t: t[0]),
        min_size=2,
    )
)
def test_two_nodes_with_different_diffs_never_share_a_group(spec):
    nodes = [_node(name, *(_file_change(*c) for c in changes)) for name, changes in spec.items()]
    for g in group_changes(nodes):
        assert all(m.changes == g.nodes[0].changes for m in g.nodes)
