"""Rendering: the manifest contract, caches, incremental renders, lifecycle profiles."""

from __future__ import annotations

import hashlib

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import treadle_schemas
from treadle.fabric import GitRevisionSource, ParseCache, WorkTreeSource, render_fabric
from treadle.fabric.render import Scope
from treadle.fabric.yamlload import uses_c_loader
from treadle_agent.contract.manifest import canonical_json, sort_resources


def test_minimal_fabric_renders_every_node_valid_against_the_manifest_schema(fabric):
    result = render_fabric(WorkTreeSource(fabric.root))
    assert result.ok, result.diagnostics
    assert sorted(result.nodes) == ["n1", "n2"]
    for node in result.nodes.values():
        assert treadle_schemas.errors("manifest.json", node.manifest) == []
        assert node.canonical == canonical_json(node.manifest)
        assert node.digest == hashlib.sha256(node.canonical).hexdigest()
        assert node.manifest["resources"] == sort_resources(node.manifest["resources"])


def test_manifest_fields_are_normalized_and_complete(fabric):
    node = render_fabric(WorkTreeSource(fabric.root)).nodes["n1"]
    m = node.manifest
    assert m["metadata"] == {
        "node": "n1",
        "site": "s1",
        "cluster": "c1",
        "address": "10.0.0.1",
        "fabric": "test",
        "generation": 0,
        "commit": None,
        "issued": None,
        "expires": None,
        "lifecycle": "production",
        "labels": {"site": "s1"},
        "wave": None,
    }
    chrony = next(r for r in m["resources"] if r["type"] == "file")
    content = "server ntp1.example.org iburst\nserver ntp2.example.org iburst\n# n1\n"
    assert chrony == {
        "type": "file",
        "path": "/etc/chrony.conf",
        "ensure": "present",
        "content": content,
        "sha256": hashlib.sha256(content.encode()).hexdigest(),
        "mode": "0644",
        "owner": None,
        "group": None,
        "notify": ["chronyd"],
        "requires": [],
    }
    assert {"type": "sysctl", "key": "vm.swappiness", "value": "10", "requires": []} in m[
        "resources"
    ]
    assert {
        "type": "package",
        "name": "chrony",
        "ensure": "present",
        "version": None,
        "requires": [],
    } in m["resources"]
    assert m["health"] == [
        {"name": "sshd", "type": "tcp", "port": 22, "host": "127.0.0.1", "timeout_s": 5}
    ]


def test_health_checks_of_every_type_are_rendered_sorted_with_defaults(fabric):
    fabric.write(
        "sites/s1/c1/nodes/n1.yaml",
        """\
        kind: Node
        address: 10.0.0.1
        health:
          web: {http: "http://127.0.0.1:8080/health", timeout_s: 2.5}
          chrony: {service: chronyd}
          conf: {file: /etc/chrony.conf}
          probe: {command: [/bin/true, -x]}
        """,
    )
    health = render_fabric(WorkTreeSource(fabric.root)).nodes["n1"].manifest["health"]
    assert health == [
        {"name": "chrony", "type": "service", "service": "chronyd", "timeout_s": 5},
        {"name": "conf", "type": "file", "path": "/etc/chrony.conf", "timeout_s": 5},
        {"name": "probe", "type": "command", "argv": ["/bin/true", "-x"], "timeout_s": 5},
        {"name": "sshd", "type": "tcp", "port": 22, "host": "127.0.0.1", "timeout_s": 5},
        {
            "name": "web",
            "type": "http",
            "url": "http://127.0.0.1:8080/health",
            "status": 200,
            "timeout_s": 3,
        },
    ]


def test_absent_file_and_symlink_carry_no_content_digest_or_target(fabric):
    fabric.write(
        "sites/s1/c1/nodes/n1.yaml",
        """\
        kind: Node
        address: 10.0.0.1
        files:
          /etc/chrony.conf: {ensure: absent}
        symlinks:
          /etc/localtime: {ensure: absent, target: /usr/share/zoneinfo/UTC}
        """,
    )
    resources = render_fabric(WorkTreeSource(fabric.root)).nodes["n1"].manifest["resources"]
    f = next(r for r in resources if r["type"] == "file")
    s = next(r for r in resources if r["type"] == "symlink")
    assert (f["ensure"], f["content"], f["sha256"]) == ("absent", None, None)
    assert (s["ensure"], s["target"]) == ("absent", None)


def test_lifecycle_profile_applies_after_the_node_file(fabric):
    fabric.write(
        "profiles/lifecycle/draining.yaml",
        """\
        kind: Profile
        services:
          chronyd: {state: stopped}
        """,
    )
    fabric.write(
        "sites/s1/c1/nodes/n2.yaml", "kind: Node\naddress: 10.0.0.2\nlifecycle: draining\n"
    )
    nodes = render_fabric(WorkTreeSource(fabric.root)).nodes
    state = {
        n: next(r["state"] for r in nodes[n].manifest["resources"] if r["type"] == "service")
        for n in nodes
    }
    assert state == {"n1": "running", "n2": "stopped"}
    assert nodes["n2"].lifecycle == "draining"
    assert "profiles/lifecycle/draining.yaml" in nodes["n2"].sources


def test_the_same_input_gives_the_same_bytes_across_caches_and_sources(fabric):
    fabric.commit()
    first = render_fabric(WorkTreeSource(fabric.root))
    again = render_fabric(WorkTreeSource(fabric.root), ParseCache())
    git = render_fabric(GitRevisionSource(fabric.root, "HEAD"))
    assert {n: v.canonical for n, v in first.nodes.items()} == {
        n: v.canonical for n, v in again.nodes.items()
    }
    assert git.nodes["n1"].manifest["metadata"]["commit"] == git.commit
    assert git.nodes["n1"].manifest["resources"] == first.nodes["n1"].manifest["resources"]


def test_unchanged_files_are_never_parsed_twice(fabric):
    cache = ParseCache()
    render_fabric(WorkTreeSource(fabric.root), cache)
    parsed = cache.parse_count
    render_fabric(WorkTreeSource(fabric.root), cache)
    assert cache.parse_count == parsed
    fabric.write("sites/s1/c1/nodes/n2.yaml", "kind: Node\naddress: 10.0.0.22\n")
    render_fabric(WorkTreeSource(fabric.root), cache)
    assert cache.parse_count == parsed + 1


def test_a_work_tree_and_its_git_revision_share_the_parse_cache(fabric):
    fabric.commit()
    cache = ParseCache()
    render_fabric(WorkTreeSource(fabric.root), cache)
    parsed = cache.parse_count
    render_fabric(GitRevisionSource(fabric.root, "HEAD"), cache)
    assert cache.parse_count == parsed


def test_hot_path_parses_with_the_c_loader():
    assert uses_c_loader()


def test_deps_index_maps_each_file_to_the_nodes_it_feeds(fabric):
    fabric.write("sites/s1/c1/nodes/n2.yaml", "kind: Node\naddress: 10.0.0.2\nprofiles: [extra]\n")
    fabric.write("profiles/extra.yaml", "kind: Profile\n")
    deps = render_fabric(WorkTreeSource(fabric.root)).deps
    assert deps["fabric.yaml"] == {"n1", "n2"}
    assert deps["templates/chrony.conf.j2"] == {"n1", "n2"}
    assert deps["profiles/extra.yaml"] == {"n2"}
    assert deps["sites/s1/c1/nodes/n1.yaml"] == {"n1"}
    assert "rollout.yaml" not in deps


EDITS = {
    "node": (
        "sites/s1/c1/nodes/n1.yaml",
        "kind: Node\naddress: 10.0.0.1\ndata: {ntp: {servers: [x]}}\n",
    ),
    "profile": ("profiles/base.yaml", "kind: Profile\nsysctl: {vm.swappiness: 60}\n"),
    "template": ("templates/chrony.conf.j2", "pool {{ data.ntp.servers | join(',') }}\n"),
    "cluster": ("sites/s1/c1/cluster.yaml", "kind: Cluster\nlabels: {tier: gold}\n"),
    "new-node": ("sites/s1/c1/nodes/n3.yaml", "kind: Node\naddress: 10.0.0.3\n"),
    "fabric": ("fabric.yaml", "kind: Fabric\nname: other\n"),
}


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(edits=st.lists(st.sampled_from(sorted(EDITS)), min_size=1, max_size=3, unique=True))
def test_incremental_render_equals_a_full_render(fabric, edits):
    fabric.reset()
    before = render_fabric(WorkTreeSource(fabric.root), ParseCache())
    for name in edits:
        fabric.write(*EDITS[name])
    changed = {EDITS[name][0] for name in edits}
    incremental = render_fabric(
        WorkTreeSource(fabric.root), ParseCache(), previous=before, changed_paths=changed
    )
    full = render_fabric(WorkTreeSource(fabric.root), ParseCache())
    assert incremental.diagnostics == full.diagnostics
    assert {n: v.canonical for n, v in incremental.nodes.items()} == {
        n: v.canonical for n, v in full.nodes.items()
    }
    assert incremental.deps == full.deps


def test_creating_a_missing_site_file_re_renders_its_nodes(fabric):
    """The dependency index names site.yaml and cluster.yaml where they belong, even while missing."""
    site = (fabric.root / "sites/s1/site.yaml").read_text()
    (fabric.root / "sites/s1/site.yaml").unlink()
    before = render_fabric(WorkTreeSource(fabric.root), ParseCache())
    assert any(d.code == "missing-file" for d in before.diagnostics) and set(before.nodes) == {
        "n1",
        "n2",
    }
    assert (
        before.deps["sites/s1/site.yaml"] == {"n1", "n2"} == before.deps["sites/s1/c1/cluster.yaml"]
    )
    fabric.write("sites/s1/site.yaml", site)
    incremental = render_fabric(
        WorkTreeSource(fabric.root),
        ParseCache(),
        previous=before,
        changed_paths={"sites/s1/site.yaml"},
    )
    full = render_fabric(WorkTreeSource(fabric.root), ParseCache())
    assert {n: v.canonical for n, v in incremental.nodes.items()} == {
        n: v.canonical for n, v in full.nodes.items()
    }
    assert incremental.nodes["n1"].canonical != before.nodes["n1"].canonical


def test_incremental_render_reuses_the_nodes_a_change_does_not_feed(fabric):
    before = render_fabric(WorkTreeSource(fabric.root))
    fabric.write("sites/s1/c1/nodes/n2.yaml", "kind: Node\naddress: 10.0.0.2\nlabels: {rack: r9}\n")
    after = render_fabric(
        WorkTreeSource(fabric.root),
        ParseCache(),
        previous=before,
        changed_paths={"sites/s1/c1/nodes/n2.yaml"},
    )
    assert after.nodes["n1"] is before.nodes["n1"]
    assert after.nodes["n2"] is not before.nodes["n2"]
    assert after.nodes["n2"].labels == {"site": "s1", "rack": "r9"}


def test_a_new_commit_restamps_reused_nodes_with_its_sha(fabric):
    first = fabric.commit("one")
    before = render_fabric(GitRevisionSource(fabric.root, "HEAD"))
    fabric.write("sites/s1/c1/nodes/n2.yaml", "kind: Node\naddress: 10.0.0.2\nlabels: {rack: r9}\n")
    second = fabric.commit("two")
    after = render_fabric(
        GitRevisionSource(fabric.root, "HEAD"),
        previous=before,
        changed_paths={"sites/s1/c1/nodes/n2.yaml"},
    )
    full = render_fabric(GitRevisionSource(fabric.root, second))
    assert before.nodes["n1"].manifest["metadata"]["commit"] == first
    assert after.nodes["n1"].manifest["metadata"]["commit"] == second
    assert after.nodes["n1"].canonical == full.nodes["n1"].canonical


def test_each_file_is_schema_validated_once_and_never_round_trip_parsed_when_valid(
    fabric, monkeypatch
):
    import treadle_schemas as schemas

    calls = []
    real = schemas.errors
    monkeypatch.setattr(schemas, "errors", lambda name, doc: calls.append(name) or real(name, doc))
    cache = ParseCache()
    render_fabric(WorkTreeSource(fabric.root), cache)
    render_fabric(WorkTreeSource(fabric.root), cache)
    assert sorted(calls) == [
        "cluster.json",
        "fabric.json",
        "node.json",
        "node.json",
        "profile.json",
        "site.json",
    ]
    assert cache._round_trip == {}


def test_round_trip_parsing_happens_only_for_files_with_problems(fabric):
    fabric.write("sites/s1/c1/nodes/n1.yaml", "kind: Node\naddress: 10.0.0.1\nlifecycle: broken\n")
    cache = ParseCache()
    render_fabric(WorkTreeSource(fabric.root), cache)
    assert len(cache._round_trip) == 1


def test_included_templates_feed_the_node_and_its_deps(fabric):
    fabric.write("templates/header.j2", "# managed for {{ node.name }}\n")
    fabric.write(
        "templates/chrony.conf.j2", "{% include 'header.j2' %}server {{ data.ntp.servers[0] }}\n"
    )
    result = render_fabric(WorkTreeSource(fabric.root))
    chrony = next(r for r in result.nodes["n2"].manifest["resources"] if r["type"] == "file")
    assert chrony["content"] == "# managed for n2\nserver ntp1.example.org\n"
    assert result.deps["templates/header.j2"] == {"n1", "n2"}


def test_a_template_that_ignores_node_renders_once_per_distinct_data(fabric):
    fabric.write(
        "templates/chrony.conf.j2", "{% for s in data.ntp.servers %}server {{ s }}\n{% endfor %}"
    )
    fabric.write(
        "sites/s1/c1/nodes/n2.yaml",
        "kind: Node\naddress: 10.0.0.2\ndata: {ntp: {servers: [other]}}\n",
    )
    nodes = render_fabric(WorkTreeSource(fabric.root)).nodes
    content = {
        n: next(r["content"] for r in nodes[n].manifest["resources"] if r["type"] == "file")
        for n in nodes
    }
    assert content == {
        "n1": "server ntp1.example.org\nserver ntp2.example.org\n",
        "n2": "server other\n",
    }


def test_merge_tags_work_through_the_whole_chain(fabric):
    fabric.write(
        "sites/s1/c1/nodes/n1.yaml",
        "kind: Node\naddress: 10.0.0.1\nfiles:\n  /etc/chrony.conf: !delete\n"
        "packages: !replace\n  vim: {}\n",
    )
    fabric.write(
        "sites/s1/c1/nodes/n2.yaml",
        "kind: Node\naddress: 10.0.0.2\ndata:\n  ntp:\n    servers: !append [ntp3.example.org]\n",
    )
    nodes = render_fabric(WorkTreeSource(fabric.root)).nodes
    n1 = nodes["n1"].manifest["resources"]
    assert [r for r in n1 if r["type"] == "file"] == []
    assert [r["name"] for r in n1 if r["type"] == "package"] == ["vim"]
    n2_file = next(r for r in nodes["n2"].manifest["resources"] if r["type"] == "file")
    assert n2_file["content"].splitlines()[:3] == [
        "server ntp1.example.org iburst",
        "server ntp2.example.org iburst",
        "server ntp3.example.org iburst",
    ]


COMPUTED = (
    '{% include "site_" ~ node.site ~ ".j2" ignore missing %}server {{ data.ntp.servers[0] }}\n'
)


def test_a_template_added_for_a_computed_include_re_renders_the_nodes_using_it(fabric):
    """The dependency index is conservative for computed includes: any template, even a new one, feeds them."""
    fabric.write("templates/chrony.conf.j2", COMPUTED)
    cache = ParseCache()
    before = render_fabric(WorkTreeSource(fabric.root), cache)
    assert before.ok and before.deps["templates/"] == {"n1", "n2"}
    fabric.write("templates/site_s1.j2", "# site s1\n")
    full = render_fabric(WorkTreeSource(fabric.root), ParseCache())
    assert full.nodes["n1"].canonical != before.nodes["n1"].canonical
    want = {n: v.canonical for n, v in full.nodes.items()}
    # The controller's path: incremental from the previous result, through the same parse cache.
    incremental = render_fabric(
        WorkTreeSource(fabric.root), cache, previous=before, changed_paths={"templates/site_s1.j2"}
    )
    assert {n: v.canonical for n, v in incremental.nodes.items()} == want
    # The cache of rendered nodes alone (no previous result) must not reuse them either.
    cached = render_fabric(WorkTreeSource(fabric.root), cache)
    assert {n: v.canonical for n, v in cached.nodes.items()} == want
    # The plan's path: a scope of the touched paths selects every node using the template.
    scoped = render_fabric(
        WorkTreeSource(fabric.root), ParseCache(), scope=Scope(frozenset({"templates/site_s1.j2"}))
    )
    assert set(scoped.nodes) == {"n1", "n2"}
