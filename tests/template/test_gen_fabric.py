"""bench/gen_fabric.py writes valid, deterministic fabrics of the asked size."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from support.bench import BENCH

GEN = BENCH / "gen_fabric.py"


def _tree(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and ".git" not in p.parts
    }


def test_same_arguments_give_the_same_bytes(tmp_path, gen_fabric):
    gen_fabric.generate(tmp_path / "a", 2, 3, 7, seed=5)
    gen_fabric.generate(tmp_path / "b", 2, 3, 7, seed=5)
    assert _tree(tmp_path / "a") == _tree(tmp_path / "b")


def test_another_seed_gives_other_bytes(tmp_path, gen_fabric):
    gen_fabric.generate(tmp_path / "a", 2, 3, 20, seed=1)
    gen_fabric.generate(tmp_path / "b", 2, 3, 20, seed=2)
    assert _tree(tmp_path / "a") != _tree(tmp_path / "b")


def test_every_generated_file_validates_against_its_schema(tmp_path, gen_fabric, fabric_files):
    fabric = gen_fabric.generate(tmp_path / "f", 2, 5, 4, seed=1)
    errors = [e for p in sorted(fabric.root.rglob("*.yaml")) for e in fabric_files.errors(p)]
    assert errors == []
    first_lines = {
        p.read_text(encoding="utf-8").splitlines()[0] for p in fabric.root.rglob("*.yaml")
    }
    assert all(
        line.startswith("# yaml-language-server: $schema=https://treadle.dev/schemas/v1/")
        for line in first_lines
    )


def test_generated_fabric_uses_every_merge_tag_and_five_profiles(
    tmp_path, gen_fabric, fabric_files
):
    fabric = gen_fabric.generate(tmp_path / "f", 1, 5, 2, seed=1)
    used = set().union(*(fabric_files.tags(p) for p in fabric.root.rglob("*.yaml")))
    assert used == {"!append", "!delete", "!replace"}
    assigned = [
        fabric_files.load(fabric.root / "sites" / s / c / "cluster.yaml")["profiles"]
        for s, c in fabric.clusters
    ]
    assert sorted(p for (p,) in assigned) == sorted(gen_fabric.ROLES)
    defaults = fabric_files.load(fabric.root / "fabric.yaml")["defaults"]
    assert 25 <= len(defaults["data"]) <= 35
    assert {"files", "packages", "services", "sysctl", "health"} <= defaults.keys()


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(sites=st.integers(1, 3), clusters=st.integers(1, 3), nodes=st.integers(1, 6))
def test_counts_are_as_asked_and_names_and_addresses_unique(
    tmp_path_factory, gen_fabric, fabric_files, sites, clusters, nodes
):
    fabric = gen_fabric.generate(tmp_path_factory.mktemp("f"), sites, clusters, nodes, seed=3)
    root = fabric.root
    assert len(list(root.glob("sites/*/site.yaml"))) == len(fabric.sites) == sites
    assert (
        len(list(root.glob("sites/*/*/cluster.yaml"))) == len(fabric.clusters) == sites * clusters
    )
    node_files = list(root.glob("sites/*/*/nodes/*.yaml"))
    assert len(node_files) == len(fabric.nodes) == sites * clusters * nodes
    assert len({p.stem for p in node_files}) == len(node_files)
    addresses = [fabric_files.load(p)["address"] for p in node_files]
    assert len(set(addresses)) == len(addresses)


def test_five_percent_of_nodes_override_a_nested_key(tmp_path, gen_fabric, fabric_files):
    fabric = gen_fabric.generate(tmp_path / "f", 4, 5, 50, seed=9)
    overriding = {ref.name for ref in fabric.nodes if "data" in fabric_files.load(ref.path)}
    assert overriding == set(fabric.overriding_nodes)
    assert len(overriding) == round(0.05 * len(fabric.nodes)) == 50
    for ref in fabric.nodes:
        if ref.name in overriding:
            assert set(fabric_files.load(ref.path)["data"]["app"]["tuning"]) == {"threads"}


def test_draining_nodes_stay_within_the_out_of_production_limit(tmp_path, gen_fabric, fabric_files):
    fabric = gen_fabric.generate(tmp_path / "f", 1, 8, 2, seed=1)
    draining: dict[str, int] = {}
    for ref in fabric.nodes:
        if fabric_files.load(ref.path)["lifecycle"] == "draining":
            draining[ref.cluster] = draining.get(ref.cluster, 0) + 1
    assert draining == {"s01-c04": 1, "s01-c08": 1}


def test_git_option_commits_the_fabric_with_a_stable_commit_id(tmp_path, gen_fabric):
    a = gen_fabric.generate(tmp_path / "a", 1, 2, 3, seed=1, git=True)
    b = gen_fabric.generate(tmp_path / "b", 1, 2, 3, seed=1, git=True)
    assert a.commit == b.commit and len(a.commit) == 40
    status = subprocess.run(
        ["git", "status", "--porcelain"], cwd=a.root, capture_output=True, text=True, check=True
    )
    assert status.stdout == ""
    branch = subprocess.run(
        ["git", "rev-parse", "--abbrev-ref", "HEAD"],
        cwd=a.root,
        capture_output=True,
        text=True,
        check=True,
    )
    assert branch.stdout.strip() == "main"


def test_non_empty_target_directory_is_refused_naming_it(tmp_path, gen_fabric):
    (tmp_path / "keep.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(gen_fabric.GeneratorError, match=f"{tmp_path}: directory is not empty"):
        gen_fabric.generate(tmp_path, 1, 1, 1)
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_count_below_one_is_refused(tmp_path, gen_fabric):
    with pytest.raises(gen_fabric.GeneratorError, match="at least 1"):
        gen_fabric.generate(tmp_path / "f", 1, 0, 5)


def test_command_line_writes_the_fabric_and_reports_its_size(tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            str(GEN),
            "--out",
            str(tmp_path / "f"),
            "--sites",
            "2",
            "--clusters",
            "2",
            "--nodes",
            "5",
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert "20 nodes in 2 sites, 4 clusters" in done.stdout
    assert len(list((tmp_path / "f").glob("sites/*/*/nodes/*.yaml"))) == 20


def test_command_line_exits_2_with_the_reason_on_a_bad_target(tmp_path):
    (tmp_path / "x").write_text("", encoding="utf-8")
    done = subprocess.run(
        [sys.executable, str(GEN), "--out", str(tmp_path)], capture_output=True, text=True
    )
    assert done.returncode == 2
    assert "directory is not empty" in done.stderr and str(tmp_path) in done.stderr


def test_every_address_in_a_generated_fabric_is_loopback(tmp_path, gen_fabric):
    """Benchmarks start controllers that scrape their nodes: an address outside 127.0.0.0/8 would send traffic
    off this machine. Every IPv4 literal in every generated file must be loopback, and node addresses unique."""
    import ipaddress
    import re

    fabric = gen_fabric.generate(tmp_path / "f", 2, 3, 40, seed=3)
    literals = {
        m
        for p in fabric.root.rglob("*")
        if p.is_file() and ".git" not in p.parts
        for m in re.findall(rb"(?<![\d.])\d{1,3}(?:\.\d{1,3}){3}(?![\d.])", p.read_bytes())
    }
    assert literals, "the generator writes addresses; the scan must see them"
    outside = sorted(
        x.decode() for x in literals if not ipaddress.ip_address(x.decode()).is_loopback
    )
    assert outside == []
    last = gen_fabric._address(gen_fabric.MAX_NODES - 1)
    assert ipaddress.ip_address(last).is_loopback and last != gen_fabric._address(
        gen_fabric.MAX_NODES - 2
    )
    assert len({gen_fabric._address(i) for i in range(0, 300_000, 7)}) == len(range(0, 300_000, 7))
    with pytest.raises(ValueError, match="loopback addresses"):
        gen_fabric._address(gen_fabric.MAX_NODES)


_IPV4 = rb"(?<![\d.])\d{1,3}(?:\.\d{1,3}){3}(?![\d.])"


def test_every_address_written_in_a_benchmark_script_is_loopback():
    """Every benchmark (bench/*.py: the fabric generator, the controller, rollout, scale, agent and soak
    benchmarks...) may send traffic only to 127.0.0.0/8: an IPv4 literal anywhere in them must be loopback."""
    import ipaddress
    import re

    bench = BENCH
    found = {
        (p.name, m.decode()) for p in bench.glob("*.py") for m in re.findall(_IPV4, p.read_bytes())
    }
    assert {name for name, _ in found} >= {
        "gen_fabric.py",
        "controller.py",
        "agent.py",
    }  # the scan sees them
    assert sorted((name, a) for name, a in found if not ipaddress.ip_address(a).is_loopback) == []


def test_the_rollout_benchmarks_node_targets_are_loopback_and_distinct_at_100000_nodes(tmp_path):
    """bench/rollout.py makes its own node targets (no fabric): all on 127.0.0.0/8, one per node."""
    import ipaddress

    from support.bench import bench_module

    rollout = bench_module("rollout", "bench_rollout")
    names = [f"n{i:06d}" for i in range(100_000)]
    targets = rollout.StubExecutor(None, names).targets("c" * 40, names)
    assert len(targets) == 100_000 and len({t.address for t in targets}) == 100_000
    assert all(ipaddress.ip_address(t.address).is_loopback for t in targets)


def test_the_scale_and_controller_benchmarks_generate_their_fabrics_with_the_loopback_generator():
    """bench/scale.py and bench/controller.py take their fabrics from bench/gen_fabric.py (pinned above)."""
    bench = BENCH
    for script in ("scale.py", "controller.py"):
        text = (bench / script).read_text(encoding="utf-8")
        assert "gen_fabric" in text and ".generate(" in text, script
