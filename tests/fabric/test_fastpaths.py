"""The render's fast paths give exactly what the plain ones give: encoding, re-stamping, templates, listings."""

from __future__ import annotations

import gc

import jinja2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jinja2.sandbox import ImmutableSandboxedEnvironment
from treadle_agent.manifest import ManifestFormatError, canonical_json

from treadle.fabric import ParseCache, WorkTreeSource, explain, render_fabric
from treadle.fabric.canonical import encode_canonical, restamped
from treadle.fabric.templates import Templates

_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
_JSON = st.recursive(st.none() | st.booleans() | st.integers() | _TEXT,
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_TEXT, inner, max_size=4), max_leaves=20)


@given(_JSON)
def test_encode_canonical_gives_canonical_json_bytes(value):
    assert encode_canonical(value) == canonical_json(value)


@pytest.mark.parametrize("value", [1.5, {"a": [0.0]}, {"a": object()}, "\ud800"])
def test_encode_canonical_refuses_what_canonical_json_refuses(value):
    with pytest.raises(ManifestFormatError):
        encode_canonical(value)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=30)
@given(old=st.none() | _TEXT, new=st.none() | _TEXT)
def test_restamping_by_splice_equals_encoding_the_restamped_manifest(fabric, old, new):
    # a health check whose strings look like the commit key must not fool the splice
    fabric.write("fabric.yaml", (fabric.root / "fabric.yaml").read_text().replace(
        "sshd: {tcp: 22}", 'sshd: {command: [echo, ",\\"commit\\":null,"]}'))
    node = render_fabric(WorkTreeSource(fabric.root)).nodes["n1"]
    before = {**node.manifest, "metadata": {**node.manifest["metadata"], "commit": old}}
    after = {**node.manifest, "metadata": {**node.manifest["metadata"], "commit": new}}
    assert restamped(canonical_json(before), old, new) == canonical_json(after)


def test_restamping_bytes_of_another_shape_is_left_to_the_encoder():
    assert restamped(canonical_json({"commit": "a"}), "a", "b") is None
    assert restamped(canonical_json({"x": 1, "commit": "a"}), "b", "c") is None


@pytest.mark.parametrize("expression", [
    "{{ data.a }}", "{{ data['a'] }}", "{{ data.nested.b }}", "{{ data.get('a') }}", "{{ data.items is defined }}",
    "{{ data.missing is defined }}", "{{ data.keys() | list }}", "{{ node.name }}",
])
def test_template_attribute_access_matches_the_jinja_sandbox(fabric, expression):
    fabric.write("templates/t.j2", expression)
    src = WorkTreeSource(fabric.root)
    data, node = {"a": 1, "nested": {"b": [2]}, "items": "shadowed"}, {"name": "n1"}
    reference = ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined).from_string(expression)
    assert Templates(src, src.entries(), ParseCache()).render("t.j2", data, node) == reference.render(data=data, node=node)


def test_a_missing_key_is_still_an_undefined_error(fabric):
    fabric.write("templates/t.j2", "{{ data.nothing.here }}")
    src = WorkTreeSource(fabric.root)
    with pytest.raises(Exception, match="nothing"):
        Templates(src, src.entries(), ParseCache()).render("t.j2", {}, {})


class _CountingSource(WorkTreeSource):
    listed = 0

    def entries(self) -> dict[str, str]:
        type(self).listed += 1
        return super().entries()


def test_explain_reuses_the_listing_of_the_source_it_was_rendered_from(fabric):
    src, cache = _CountingSource(fabric.root), ParseCache()
    render_fabric(src, cache)
    listed = _CountingSource.listed
    first = explain(src, "n1", "data.ntp.servers", cache)
    assert explain(src, "n2", "files./etc/chrony.conf.mode", cache)
    assert _CountingSource.listed == listed  # neither lookup listed or classified the tree again
    assert first == explain(WorkTreeSource(fabric.root), "n1", "data.ntp.servers")


def test_a_render_leaves_the_garbage_collector_enabled_and_collecting(fabric):
    assert gc.isenabled()
    render_fabric(WorkTreeSource(fabric.root))
    render_fabric(WorkTreeSource(fabric.root))
    assert gc.isenabled()

    class Cycle:
        pass

    a = Cycle()
    a.self = a  # type: ignore[attr-defined]
    del a
    assert gc.collect() > 0
