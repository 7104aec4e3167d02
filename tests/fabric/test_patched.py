"""Patched mappings behave as the dicts they stand for, through any sequence of patches."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

import treadle.fabric.patched as patched
from treadle.fabric.patched import Patched

_KEYS = st.integers(min_value=0, max_value=12)
_STEP = st.tuples(
    st.dictionaries(_KEYS, st.integers(), max_size=6), st.frozensets(_KEYS, max_size=8)
)


@given(
    st.dictionaries(_KEYS, st.integers(), max_size=30), st.lists(_STEP, max_size=12), st.booleans()
)
def test_a_patched_mapping_equals_the_dict_patched_in_place(base, steps, small_flatten):
    if small_flatten:
        patched._FLATTEN_AT, before = 3, patched._FLATTEN_AT
    try:
        expected, current = dict(base), base
        for patch, gone in steps:
            current = Patched.of(current, patch, gone)
            for k in gone:
                expected.pop(k, None)
            expected.update(patch)
            assert dict(current) == expected
            assert len(current) == len(expected) and list(current) == list(current.keys())
            assert all((k in current) == (k in expected) for k in range(41))
            assert all(current.get(k) == expected.get(k) for k in range(41))
        assert base == dict(base)  # the base is never changed
    finally:
        if small_flatten:
            patched._FLATTEN_AT = before


def test_patching_keeps_the_order_of_the_base_and_shares_it():
    base = {f"k{i}": i for i in range(10_000)}
    one = Patched.of(base, {"k5": -5})
    two = Patched.of(one, {"k7": -7}, ["k1"])
    assert isinstance(two, Patched) and two.base is base
    assert (
        list(two)[:8] == ["k0", "k2", "k3", "k4", "k5", "k6", "k7", "k8"]
        and two["k5"] == -5
        and two["k7"] == -7
    )
