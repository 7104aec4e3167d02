"""explain: the chain of overlays behind a value, located and blamed."""

from __future__ import annotations

import pytest

from treadle.errors import UsageError
from treadle.fabric import GitRevisionSource, WorkTreeSource, explain

NODE1 = "sites/s1/c1/nodes/n1.yaml"


def test_winner_and_overridden_values_with_their_lines(fabric):
    fabric.write(
        "sites/s1/c1/cluster.yaml", 'kind: Cluster\nfiles:\n  /etc/chrony.conf:\n    mode: "0600"\n'
    )
    chain = explain(WorkTreeSource(fabric.root), "n1", "files./etc/chrony.conf.mode")
    assert [(p.value, p.file, p.line, p.col) for p in chain] == [
        ("0600", "sites/s1/c1/cluster.yaml", 4, 5),
        ("644", "fabric.yaml", 7, 50),
    ]


def test_appends_are_listed_with_the_list_they_extend(fabric):
    fabric.write(
        NODE1,
        "kind: Node\naddress: 10.0.0.1\ndata:\n  ntp:\n    servers: !append [ntp3.example.org]\n",
    )
    chain = explain(WorkTreeSource(fabric.root), "n1", "data.ntp.servers")
    assert [(p.how, p.value, p.file, p.line) for p in chain] == [
        ("append", ["ntp3.example.org"], NODE1, 5),
        ("set", ["ntp1.example.org", "ntp2.example.org"], "fabric.yaml", 5),
    ]


def test_a_key_nobody_sets_has_an_empty_chain(fabric):
    assert explain(WorkTreeSource(fabric.root), "n1", "data.nothing") == []


def test_node_fields_are_explained_from_the_node_file(fabric):
    chain = explain(WorkTreeSource(fabric.root), "n2", "address")
    assert [(p.value, p.file, p.line) for p in chain] == [
        ("10.0.0.2", "sites/s1/c1/nodes/n2.yaml", 2)
    ]


def test_unknown_node_is_a_usage_error(fabric):
    with pytest.raises(UsageError, match="no node 'n9'"):
        explain(WorkTreeSource(fabric.root), "n9", "data")


def test_blame_names_the_commit_that_last_changed_the_line(fabric):
    first = fabric.commit("initial")
    fabric.write(
        "sites/s1/c1/cluster.yaml", 'kind: Cluster\nfiles:\n  /etc/chrony.conf:\n    mode: "0600"\n'
    )
    second = fabric.commit("tighten chrony.conf")
    chain = explain(GitRevisionSource(fabric.root, "HEAD"), "n1", "files./etc/chrony.conf.mode")
    assert [p.blame.commit for p in chain] == [second, first]
    assert chain[0].blame.author == "Ada Admin <ada@example.org>"
    assert chain[0].blame.date.endswith("Z")


def test_work_tree_blame_says_when_a_file_is_not_committed(fabric):
    first = fabric.commit("initial")
    fabric.write(
        "sites/s1/c1/cluster.yaml", 'kind: Cluster\nfiles:\n  /etc/chrony.conf:\n    mode: "0600"\n'
    )
    chain = explain(WorkTreeSource(fabric.root), "n1", "files./etc/chrony.conf.mode")
    assert chain[0].blame.commit is None and chain[0].blame.author == "not committed yet"
    assert chain[1].blame.commit == first


def test_explain_command_prints_the_chain_and_blame(cli, fabric):
    fabric.write(
        "sites/s1/c1/cluster.yaml", 'kind: Cluster\nfiles:\n  /etc/chrony.conf:\n    mode: "0600"\n'
    )
    sha = fabric.commit("tighten")
    outcome = cli("explain", str(fabric.root), "n1", "files./etc/chrony.conf.mode")
    assert outcome.code == 0
    lines = outcome.out.splitlines()
    assert lines[0] == "n1 files./etc/chrony.conf.mode, set by (winner first):"
    assert lines[1] == '  sites/s1/c1/cluster.yaml:4:5  = "0600"'
    assert lines[2].split()[:2] == [sha, "Ada"]
    assert lines[3] == '  fabric.yaml:7:50  = "644"'


def test_explain_command_exits_1_for_an_unset_key_and_2_for_an_unknown_node(cli, fabric):
    assert cli("explain", str(fabric.root), "n1", "data.nothing").code == 1
    assert cli("explain", str(fabric.root), "n9", "data").code == 2


def test_explain_node_lists_every_value_with_what_explain_says_of_it(fabric):
    from treadle.fabric.explain import explain_node

    fabric.write(
        "sites/s1/c1/cluster.yaml", 'kind: Cluster\nfiles:\n  /etc/chrony.conf:\n    mode: "0600"\n'
    )
    first = fabric.commit("initial")
    src = GitRevisionSource(fabric.root, "HEAD")
    values, complete = explain_node(src, "n1")
    assert complete
    keypaths = [k for k, _ in values]
    assert keypaths[0] == "address" and "files./etc/chrony.conf.mode" in keypaths
    assert all(chain == explain(src, "n1", k) for k, chain in values)
    mode = dict(values)["files./etc/chrony.conf.mode"]
    assert [(p.value, p.file, p.blame.commit) for p in mode] == [
        ("0600", "sites/s1/c1/cluster.yaml", first),
        ("644", "fabric.yaml", first),
    ]
    with pytest.raises(UsageError, match="no node 'n9'"):
        explain_node(src, "n9")
