"""The manifest contract both sides rely on: canonical bytes, strict parsing, resource order."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from treadle_agent.contract.manifest import (
    ManifestFormatError,
    canonical_json,
    format_time,
    is_plain_json,
    parse_json,
    parse_time,
    sort_resources,
)

KEYS = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=8)
SCALARS = st.none() | st.booleans() | st.integers(-(2**63), 2**63) | st.text(max_size=20)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=4),
    max_leaves=20,
)


@given(JSON)
def test_canonical_bytes_parse_back_to_the_same_value_and_encode_to_the_same_bytes(value) -> None:
    data = canonical_json(value)
    assert parse_json(data) == value
    assert canonical_json(parse_json(data)) == data


@given(st.dictionaries(KEYS, SCALARS, min_size=2, max_size=6), st.randoms(use_true_random=False))
def test_key_order_never_changes_the_bytes(mapping, rng) -> None:
    items = list(mapping.items())
    rng.shuffle(items)
    assert canonical_json(dict(items)) == canonical_json(mapping)


@given(JSON)
def test_plain_json_check_agrees_with_the_types_present(value) -> None:
    assert is_plain_json(value)
    assert not is_plain_json({"x": [value, 1.5]})


def test_floats_are_refused_when_encoding_and_when_parsing() -> None:
    with pytest.raises(ManifestFormatError, match="floating-point"):
        canonical_json({"timeout": 1.5})
    with pytest.raises(ManifestFormatError, match="floating-point"):
        parse_json(b'{"timeout":1.5}')


@pytest.mark.parametrize(
    "data, message",
    [
        (b'{"a":1,"a":2}', "duplicate JSON key"),
        (b'{"a":NaN}', "NaN"),
        (b'{"a":', "malformed"),
        (b"\xff\xfe", "malformed"),
    ],
)
def test_strict_parser_refuses_what_canonical_json_never_contains(data, message) -> None:
    with pytest.raises(ManifestFormatError, match=message):
        parse_json(data)


def test_canonical_form_is_compact_sorted_utf8() -> None:
    assert canonical_json({"b": "é", "a": [1, None]}) == '{"a":[1,null],"b":"é"}'.encode()
    assert json.loads(canonical_json({"z": {"y": 1, "x": 2}})) == {"z": {"x": 2, "y": 1}}


def test_resources_are_ordered_by_type_then_key_with_parents_first() -> None:
    resources = [
        {"type": "service", "name": "chronyd"},
        {"type": "file", "path": "/etc/b"},
        {"type": "directory", "path": "/etc/a/b"},
        {"type": "sysctl", "key": "vm.swappiness"},
        {"type": "directory", "path": "/etc/a"},
        {"type": "package", "name": "chrony"},
        {"type": "symlink", "path": "/etc/localtime"},
    ]
    order = [
        (r["type"], r.get("path") or r.get("name") or r.get("key"))
        for r in sort_resources(resources)
    ]
    assert order == [
        ("directory", "/etc/a"),
        ("directory", "/etc/a/b"),
        ("file", "/etc/b"),
        ("symlink", "/etc/localtime"),
        ("package", "chrony"),
        ("sysctl", "vm.swappiness"),
        ("service", "chronyd"),
    ]


@given(st.integers(0, 2**33))
def test_manifest_times_round_trip_at_second_precision(ts) -> None:
    assert parse_time(format_time(ts)) == ts
