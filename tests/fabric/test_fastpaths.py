"""The render's fast paths give exactly what the plain ones give: encoding, re-stamping, templates, listings."""

from __future__ import annotations

import gc

import jinja2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jinja2.sandbox import ImmutableSandboxedEnvironment

from treadle.fabric import ParseCache, WorkTreeSource, explain, render_fabric
from treadle.fabric.canonical import encode_canonical, restamped
from treadle.fabric.templates import Templates
from treadle_agent.contract.manifest import ManifestFormatError, canonical_json

_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | _TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_TEXT, inner, max_size=4),
    max_leaves=20,
)


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
    fabric.write(
        "fabric.yaml",
        (fabric.root / "fabric.yaml")
        .read_text()
        .replace("sshd: {tcp: 22}", 'sshd: {command: [echo, ",\\"commit\\":null,"]}'),
    )
    node = render_fabric(WorkTreeSource(fabric.root)).nodes["n1"]
    before = {**node.manifest, "metadata": {**node.manifest["metadata"], "commit": old}}
    after = {**node.manifest, "metadata": {**node.manifest["metadata"], "commit": new}}
    assert restamped(canonical_json(before), old, new) == canonical_json(after)


def test_restamping_bytes_of_another_shape_is_left_to_the_encoder():
    assert restamped(canonical_json({"commit": "a"}), "a", "b") is None
    assert restamped(canonical_json({"x": 1, "commit": "a"}), "b", "c") is None


@pytest.mark.parametrize(
    "expression",
    [
        "{{ data.a }}",
        "{{ data['a'] }}",
        "{{ data.nested.b }}",
        "{{ data.get('a') }}",
        "{{ data.items is defined }}",
        "{{ data.missing is defined }}",
        "{{ data.keys() | list }}",
        "{{ node.name }}",
    ],
)
def test_template_attribute_access_matches_the_jinja_sandbox(fabric, expression):
    fabric.write("templates/t.j2", expression)
    src = WorkTreeSource(fabric.root)
    data, node = {"a": 1, "nested": {"b": [2]}, "items": "shadowed"}, {"name": "n1"}
    reference = ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined).from_string(
        expression
    )
    assert Templates(src, src.entries(), ParseCache()).render(
        "t.j2", data, node
    ) == reference.render(data=data, node=node)


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


_NODE_TEMPLATES = [
    # spliced: node members only printed
    "{{ node.name }} {{ node.address }}:{{ data.port }}\n",
    "{% for s in data.servers %}server {{ s }} {{ node.site }}/{{ node.cluster }}\n{% endfor %}{{ node.labels }}",
    "{% if data.port > 1 %}{{ node.lifecycle }}{% else %}none{% endif %}",
    # rendered in full: node used otherwise, or text captured before it is printed
    "{{ node.name | upper }}",
    "{% if node.lifecycle == 'production' %}p{% endif %}{{ node.name }}",
    "{% set n = node.name %}{{ n }}",
    "{% macro m() %}{{ node.name }}{% endmacro %}{{ m() | upper }}",
    "{% set x %}{{ node.name }}{% endset %}{{ x | length }}",
    "{% filter upper %}{{ node.name }}{% endfilter %}",
    "{{ node['name'] }}{{ node.name ~ '!' }}",
    "{% for node in data.servers %}{{ node }}{% endfor %}",
]
_NODES = [
    {
        "name": n,
        "site": "s1",
        "cluster": "c1",
        "address": f"127.0.0.{i}",
        "labels": {"rack": str(i)},
        "lifecycle": "production" if i % 2 else "draining",
    }
    for i, n in enumerate(["n1", "n2", "n3"], 1)
]


@pytest.mark.parametrize("text", _NODE_TEMPLATES)
def test_a_template_printing_node_members_renders_as_plain_jinja_for_every_node(fabric, text):
    """One data object shared by several nodes: the spliced text must be each node's full render."""
    fabric.write("templates/t.j2", text)
    src = WorkTreeSource(fabric.root)
    templates = Templates(src, src.entries(), ParseCache())
    data = {"port": 2, "servers": ["a", "b"]}
    reference = ImmutableSandboxedEnvironment(
        undefined=jinja2.StrictUndefined, keep_trailing_newline=True
    ).from_string(text)
    for node in _NODES:
        assert templates.render("t.j2", data, node) == reference.render(data=data, node=node)


def test_only_templates_printing_node_members_alone_are_spliced(fabric):
    src = WorkTreeSource(fabric.root)
    for i, text in enumerate(_NODE_TEMPLATES):
        fabric.write(f"templates/t{i}.j2", text)
    src = WorkTreeSource(fabric.root)
    templates = Templates(src, src.entries(), ParseCache())
    assert [
        templates.compiled(f"t{i}.j2").prints_node_only for i in range(len(_NODE_TEMPLATES))
    ] == [True] * 3 + [False] * 8


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=40)
@given(name=_TEXT, address=_TEXT, servers=st.lists(_TEXT, max_size=3))
def test_spliced_text_equals_plain_jinja_for_any_values(fabric, name, address, servers):
    text = "{% for s in data.servers %}{{ s }}:{{ node.name }};{% endfor %}{{ node.address }}|{{ node.name }}"
    fabric.write("templates/t.j2", text)
    src = WorkTreeSource(fabric.root)
    templates = Templates(src, src.entries(), ParseCache())
    data = {"servers": servers}
    reference = ImmutableSandboxedEnvironment(
        undefined=jinja2.StrictUndefined, keep_trailing_newline=True
    ).from_string(text)
    for node in (_NODES[0], {**_NODES[1], "name": name, "address": address}):
        assert templates.render("t.j2", data, node) == reference.render(data=data, node=node)


def test_a_template_error_under_splicing_is_each_nodes_own_error(fabric):
    fabric.write("templates/t.j2", "{{ node.name }}{{ data.missing }}")
    src = WorkTreeSource(fabric.root)
    templates = Templates(src, src.entries(), ParseCache())
    for node in _NODES[:2]:
        with pytest.raises(Exception, match="missing"):
            templates.render("t.j2", {}, node)
