"""Golden Markdown and JSON plans of typical pull requests on the example fabric.

Each scenario commits a change on branch ``change`` of a fresh copy of the
template and runs ``treadle plan main change`` for real. The JSON is also
validated against schemas/plan.json. Regenerate with TREADLE_REGEN_GOLDEN=1
(see conftest.py) and review the diff of golden/ before committing it.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

import treadle_schemas
from support.review import FabricRepo, check_golden, make_repo, normalize_commits, run_cli


def one_node(repo: FabricRepo) -> None:
    repo.edit("sites/meyrin/batch/nodes/batch-003.yaml", 'rack: "r02"', 'rack: "r09"')


def profile_many(repo: FabricRepo) -> None:
    repo.edit("profiles/base.yaml", "kernel.panic: 10", "kernel.panic: 30")
    repo.edit(
        "profiles/batch.yaml",
        "  munge: {ensure: present}\n",
        "  munge: {ensure: present}\n  hwloc: {ensure: present}\n",
    )


def lifecycle(repo: FabricRepo) -> None:
    repo.edit(
        "sites/meyrin/batch/nodes/batch-005.yaml", "lifecycle: maintenance", "lifecycle: production"
    )


def invalid_head(repo: FabricRepo) -> None:
    repo.edit(
        "sites/meyrin/batch/nodes/batch-003.yaml", "lifecycle: production", "lifecycle: maintenance"
    )
    repo.edit(
        "sites/meyrin/login/nodes/login-001.yaml", "address: 192.0.2.21", "adress: 192.0.2.21"
    )
    repo.edit(
        "profiles/base.yaml",
        'template: motd.j2\n    mode: "0644"',
        'template: motd.j2\n    mode: "0645"',
    )


def added_removed(repo: FabricRepo) -> None:
    text = repo.path("sites/meyrin/batch/nodes/batch-002.yaml").read_text(encoding="utf-8")
    text = text.replace("192.0.2.12", "192.0.2.17").replace("9742", "9747")
    repo.path("sites/meyrin/batch/nodes/batch-007.yaml").write_text(text, encoding="utf-8")
    repo.path("sites/wigner/storage/nodes/storage-004.yaml").unlink()


SCENARIOS: dict[str, tuple[Callable[[FabricRepo], None], int]] = {
    "one-node": (one_node, 0),
    "profile-many": (profile_many, 0),
    "lifecycle": (lifecycle, 0),
    "invalid-head": (invalid_head, 1),
    "added-removed": (added_removed, 0),
}


@pytest.fixture(scope="module")
def plans(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, tuple[int, str]]]:
    """Every scenario's (exit code, output) per format, computed once for the module."""
    out: dict[str, dict[str, tuple[int, str]]] = {}
    for name, (change, _) in SCENARIOS.items():
        repo = make_repo(tmp_path_factory.mktemp(name) / "fabric")
        repo.branch("change")
        change(repo)
        repo.commit(f"Scenario {name}")
        commits = {repo.git("rev-parse", "main"): "main", repo.git("rev-parse", "change"): "change"}
        out[name] = {}
        for fmt in ("markdown", "json"):
            code, stdout, stderr = run_cli(
                "plan", str(repo.root), "main", "change", "--format", fmt
            )
            assert stderr == ""
            out[name][fmt] = (code, normalize_commits(stdout, commits))
    return out


@pytest.mark.parametrize("name", SCENARIOS)
def test_markdown_plan_matches_golden(plans, name):
    code, text = plans[name]["markdown"]
    assert code == SCENARIOS[name][1]
    check_golden(f"{name}.md", text)


@pytest.mark.parametrize("name", SCENARIOS)
def test_json_plan_matches_golden_and_schema(plans, name):
    code, text = plans[name]["json"]
    assert code == SCENARIOS[name][1]
    doc = json.loads(text)
    for side in ("base", "head"):
        doc[side]["commit"] = (
            "0" * 40
        )  # the schema wants a commit id where the golden names the branch
    assert treadle_schemas.errors("plan.json", doc) == []
    check_golden(f"{name}.json", text)


def test_one_node_change_changes_exactly_that_node_with_its_source_line(plans):
    doc = json.loads(plans["one-node"]["json"][1])
    assert doc["summary"]["changed"] == 1 and [g["nodes"] for g in doc["groups"]] == [["batch-003"]]
    settings = [
        s
        for c in doc["groups"][0]["changes"]
        for src in c["sources"] or []
        for s in src["settings"]
        if s["in_change"]
    ]
    assert {(s["file"], s["line"]) for s in settings} == {
        ("sites/meyrin/batch/nodes/batch-003.yaml", 8),
        ("sites/meyrin/batch/nodes/batch-003.yaml", 7),
    }


def test_profile_change_is_grouped_not_repeated(plans):
    doc = json.loads(plans["profile-many"]["json"][1])
    assert doc["summary"]["changed"] == 12
    assert sorted(g["count"] for g in doc["groups"]) == [6, 6]
    md = plans["profile-many"]["markdown"][1]
    assert md.count('+"value": "30"') == 2  # once per group, not once per node


def test_lifecycle_transition_is_listed(plans):
    doc = json.loads(plans["lifecycle"]["json"][1])
    assert doc["summary"]["transitions"] == [
        {
            "node": "batch-005",
            "site": "meyrin",
            "cluster": "batch",
            "from": "maintenance",
            "to": "production",
        }
    ]


def test_invalid_head_lists_errors_and_refusals_with_file_and_line(plans):
    doc = json.loads(plans["invalid-head"]["json"][1])
    assert doc["ok"] is False
    assert any(
        e["file"] == "sites/meyrin/login/nodes/login-001.yaml" and e["line"] > 0
        for e in doc["errors"]
    )
    assert any(
        r["code"] == "lifecycle-transition"
        and r["file"] == "sites/meyrin/batch/nodes/batch-003.yaml"
        and r["line"] == 5
        for r in doc["refusals"]
    )
    md = plans["invalid-head"]["markdown"][1]
    assert "sites/meyrin/batch/nodes/batch-003.yaml:5:" in md and "HEAD is invalid" in md


def test_added_and_removed_nodes_are_listed(plans):
    doc = json.loads(plans["added-removed"]["json"][1])
    assert [n["node"] for n in doc["added"]] == ["batch-007"]
    assert [n["node"] for n in doc["removed"]] == ["storage-004"]
