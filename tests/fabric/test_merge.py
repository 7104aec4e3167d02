"""Merge laws (DESIGN.md): maps merge key by key, scalars and lists replace, later wins; the three tags."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from treadle.fabric.merge import Layer, merge, trace
from treadle.fabric.yamlload import DELETE, Append, Replace
from treadle_agent.contract.manifest import canonical_json

keys = st.sampled_from(["a", "b", "c", "d", "e"])
scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.text(max_size=3))
plain = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(keys, inner, max_size=4)),
    max_leaves=12,
)
maps = st.dictionaries(keys, plain, max_size=4)


@given(maps)
def test_an_empty_overlay_changes_nothing(base):
    assert merge(base, {}) == base


@given(maps)
def test_merging_onto_nothing_gives_the_overlay(over):
    assert merge({}, over) == over


@given(maps, maps)
def test_later_wins_for_every_leaf_it_sets(base, over):
    out = merge(base, over)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            assert merge(base[key], value) == out[key]
        else:
            assert out[key] == value
    for key in base.keys() - over.keys():
        assert out[key] == base[key]


@given(maps, maps)
def test_merge_never_modifies_its_inputs(base, over):
    before = (canonical_json(base), canonical_json(over))
    merge(base, over)
    assert (canonical_json(base), canonical_json(over)) == before


@given(maps, keys)
def test_delete_removes_the_key(base, key):
    assert key not in merge(base, {key: DELETE})


@given(st.lists(plain, max_size=3), st.lists(plain, max_size=3))
def test_append_extends_the_inherited_list(old, new):
    assert merge({"k": old}, {"k": Append(new)}) == {"k": old + new}


@given(st.lists(plain, max_size=3), st.lists(plain, max_size=3))
def test_a_plain_list_replaces_the_inherited_list(old, new):
    assert merge({"k": old}, {"k": new}) == {"k": new}


@given(maps, maps)
def test_replace_replaces_the_map_whole(old, new):
    assert merge({"k": old}, {"k": Replace(new)}) == {"k": new}


@given(maps, maps)
def test_the_same_input_gives_the_same_bytes(base, over):
    assert canonical_json(merge(base, over)) == canonical_json(merge(dict(base), dict(over)))


def test_merge_is_associative_for_plain_maps():
    a, b, c = {"x": {"y": 1, "z": [1]}}, {"x": {"y": 2}}, {"x": {"w": 3}, "v": 0}
    assert (
        merge(merge(a, b), c) == merge(a, merge(b, c)) == {"x": {"y": 2, "z": [1], "w": 3}, "v": 0}
    )


def test_trace_forgets_the_settings_before_a_delete():
    chain = [
        Layer("fabric.yaml", ("defaults",), {"data": {"k": 1}}, False),
        Layer("a.yaml", (), {"data": {"k": DELETE}}, True),
        Layer("b.yaml", (), {"data": {"k": 2}}, False),
        Layer("c.yaml", (), {"data": {"k": 3}}, False),
    ]
    assert [(s.layer.path, s.value) for s in trace(chain, ("data", "k"))] == [
        ("c.yaml", 3),
        ("b.yaml", 2),
    ]


def test_trace_keeps_every_append_and_the_list_it_extends():
    chain = [
        Layer("fabric.yaml", ("defaults",), {"data": {"s": ["a"]}}, False),
        Layer("site.yaml", (), {"data": {"s": Append(["b"])}}, True),
    ]
    settings = trace(chain, ("data", "s"))
    assert [(s.layer.path, s.keypath, s.value, s.how) for s in settings] == [
        ("site.yaml", ("data", "s"), ["b"], "append"),
        ("fabric.yaml", ("defaults", "data", "s"), ["a"], "set"),
    ]


def test_trace_lists_overridden_values_after_the_winner():
    chain = [
        Layer("fabric.yaml", ("defaults",), {"data": {"k": 1}}, False),
        Layer("b.yaml", (), {"data": {"k": 2}}, False),
    ]
    assert [(s.layer.path, s.keypath, s.value) for s in trace(chain, ("data", "k"))] == [
        ("b.yaml", ("data", "k"), 2),
        ("fabric.yaml", ("defaults", "data", "k"), 1),
    ]


def test_trace_sees_a_replace_of_an_enclosing_map():
    chain = [
        Layer("p.yaml", (), {"files": {"/etc/a": {"mode": "0600", "owner": "x"}}}, False),
        Layer("n.yaml", (), {"files": {"/etc/a": Replace({"mode": "0644"})}}, True),
    ]
    assert [(s.layer.path, s.how) for s in trace(chain, ("files", "/etc/a", "mode"))] == [
        ("n.yaml", "replace"),
        ("p.yaml", "set"),
    ]
    assert trace(chain, ("files", "/etc/a", "owner")) == []
