"""The incremental render of node-file changes gives what a full render gives, or falls back to the full render."""

from __future__ import annotations

from collections.abc import Callable

import pygit2
import pytest

from treadle.fabric import GitRevisionSource, ParseCache, RenderResult, render_fabric
from treadle.fabric.incremental import Stamped
from treadle.fabric.source import changed_paths


def _next(
    fabric, previous: RenderResult, cache: ParseCache, edit: Callable[[], object]
) -> tuple[RenderResult, RenderResult]:
    """(incremental render of the edited commit from ``previous``, full render of it); ``previous`` is the base."""
    before = previous.commit
    edit()
    head = fabric.commit("edit")
    repo = pygit2.Repository(str(fabric.root))
    assert before is not None
    incremental = render_fabric(
        GitRevisionSource(repo, head),
        cache,
        previous=previous,
        changed_paths=changed_paths(repo, before, head),
        base=previous,
    )
    full = render_fabric(
        GitRevisionSource(repo, head), ParseCache(), base=GitRevisionSource(repo, before)
    )
    return incremental, full


def _same(a: RenderResult, b: RenderResult) -> None:
    assert [str(d) for d in a.diagnostics] == [str(d) for d in b.diagnostics]
    assert {n: v.canonical for n, v in a.nodes.items()} == {
        n: v.canonical for n, v in b.nodes.items()
    }
    assert list(a.nodes) == list(b.nodes)
    assert dict(a.deps) == dict(b.deps) and dict(a.lifecycles) == dict(b.lifecycles)


def _start(fabric) -> tuple[RenderResult, ParseCache]:
    cache = ParseCache()
    first = render_fabric(GitRevisionSource(fabric.root, fabric.commit("first")), cache)
    assert first.ok and first.index is not None
    return first, cache


def test_node_file_changes_render_those_nodes_alone_and_equal_full_renders(fabric):
    previous, cache = _start(fabric)
    edits = [
        lambda: fabric.write(
            "sites/s1/c1/nodes/n1.yaml", "kind: Node\naddress: 10.0.0.1\nlabels: {rack: r1}\n"
        ),
        lambda: fabric.write(
            "sites/s1/c1/nodes/n2.yaml",
            "kind: Node\naddress: 10.0.0.7\nlifecycle: draining\n"
            "profiles: [base]\ndata: {ntp: {servers: [ntp9.example.org]}}\n",
        ),
        lambda: fabric.write(
            "sites/s1/c1/nodes/n1.yaml", "kind: Node\naddress: 10.0.0.2\n"
        ),  # n2's old address
    ]
    for edit, name in zip(edits, ["n1", "n2", "n1"], strict=False):
        incremental, full = _next(fabric, previous, cache, edit)
        assert incremental.fresh == {name}
        assert isinstance(incremental.nodes, Stamped)
        assert {n.manifest["metadata"]["commit"] for n in incremental.nodes.values()} == {
            incremental.commit
        }
        _same(incremental, full)
        previous = incremental


@pytest.mark.parametrize(
    "node_file",
    [
        "kind: Node\naddress: 10.0.0.2\n",  # n2's address
        "kind: Node\naddress: 10.0.0.1\nlifecycle: maintenance\n",  # production -> maintenance is not allowed
        "kind: Node\naddress: [10.0.0.1\n",  # not YAML
        "kind: Node\naddress: 10.0.0.1\nfiles: {/etc/x: {content: x, mode: '9999'}}\n",  # a bad mode
        "kind: Node\naddress: 10.0.0.1\nprofiles: [nope]\n",  # an unknown profile
    ],
)
def test_a_node_change_that_breaks_a_check_is_rendered_in_full_and_reported_as_a_full_render_reports_it(
    fabric, node_file
):
    previous, cache = _start(fabric)
    incremental, full = _next(
        fabric, previous, cache, lambda: fabric.write("sites/s1/c1/nodes/n1.yaml", node_file)
    )
    assert not incremental.ok and incremental.fresh is None
    _same(incremental, full)


def test_leaving_production_past_the_clusters_share_is_rendered_in_full_and_refused(fabric):
    text = (fabric.root / "fabric.yaml").read_text()
    fabric.write(
        "fabric.yaml",
        text.replace("name: test\n", "name: test\nlifecycle: {max_out_of_production: 0.4}\n"),
    )
    previous, cache = _start(fabric)
    incremental, full = _next(
        fabric,
        previous,
        cache,
        lambda: fabric.write(
            "sites/s1/c1/nodes/n1.yaml", "kind: Node\naddress: 10.0.0.1\nlifecycle: draining\n"
        ),
    )
    assert not incremental.ok and incremental.fresh is None
    assert "max-out-of-production" in {d.code for d in incremental.diagnostics}
    _same(incremental, full)


@pytest.mark.parametrize(
    "path, text",
    [
        ("profiles/base.yaml", "kind: Profile\nsysctl:\n  vm.swappiness: 20\n"),
        ("templates/chrony.conf.j2", "server {{ data.ntp.servers[0] }}\n"),
        ("sites/s1/c1/nodes/n3.yaml", "kind: Node\naddress: 10.0.0.3\n"),  # a node added
    ],
)
def test_a_change_beyond_existing_node_files_renders_in_full(fabric, path, text):
    previous, cache = _start(fabric)
    incremental, full = _next(fabric, previous, cache, lambda: fabric.write(path, text))
    assert incremental.ok and incremental.fresh is None
    _same(incremental, full)
