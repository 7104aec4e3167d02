"""treadle plan end to end: exit codes, the rollout preview, incremental rendering, size caps, schema export."""

from __future__ import annotations

import datetime as dt
import json

import pytest

import treadle.fabric.render as render_module
import treadle_schemas
from support.review import FabricRepo, run_cli
from treadle.review.markdown import MarkdownLimits, render_markdown
from treadle.review.plan import PlanSettings, build_plan
from treadle.rollout.policy import has_immediate_trailer


def _one_node_change(repo: FabricRepo, message: str = "Move batch-003 to rack r09") -> None:
    repo.branch("change")
    repo.edit("sites/meyrin/batch/nodes/batch-003.yaml", 'rack: "r02"', 'rack: "r09"')
    repo.commit(message)


def test_one_node_change_renders_only_that_node(fabric_repo, monkeypatch):
    _one_node_change(fabric_repo)
    rendered: list[str] = []
    real = render_module._render_node

    def counting(run, overlays, templates, ref, *rest):
        rendered.append(ref.name)
        return real(run, overlays, templates, ref, *rest)

    monkeypatch.setattr(render_module, "_render_node", counting)
    plan = build_plan(fabric_repo.root, "main", "change")
    assert rendered == ["batch-003", "batch-003"]  # once in BASE, once in HEAD
    assert plan.stats.head_rendered == 1 and plan.stats.head_nodes == plan.stats.base_nodes == 12


def test_unknown_revision_is_a_usage_error(fabric_repo):
    code, out, err = run_cli("plan", str(fabric_repo.root), "main", "no-such-branch")
    assert code == 2 and out == "" and "'no-such-branch': no such revision" in err


def test_wrong_number_of_arguments_is_a_usage_error(fabric_repo):
    code, _, err = run_cli("plan", str(fabric_repo.root), "a", "b", "c")
    assert code == 2 and "got 4 argument(s)" in err
    code, _, err = run_cli("plan", "main")
    assert code == 2 and "[REPO] BASE HEAD" in err


def test_a_directory_outside_git_is_a_usage_error(tmp_path):
    code, _, err = run_cli("plan", str(tmp_path), "main", "HEAD")
    assert code == 2 and "not a git repository" in err


def test_max_nodes_below_one_is_refused(fabric_repo):
    code, _, err = run_cli("plan", str(fabric_repo.root), "main", "main", "--max-nodes", "0")
    assert code == 2 and "below 1" in err


def test_max_nodes_collapses_the_node_list(fabric_repo):
    fabric_repo.branch("change")
    fabric_repo.edit("profiles/base.yaml", "kernel.panic: 10", "kernel.panic: 30")
    fabric_repo.commit("Longer kernel panic timeout")
    code, out, _ = run_cli("plan", str(fabric_repo.root), "main", "change", "--max-nodes", "2")
    assert code == 0
    assert "Nodes: `batch-001`, `batch-002` and 10 more" in out


def test_unchanged_head_plans_nothing(fabric_repo):
    code, out, _ = run_cli("plan", str(fabric_repo.root), "main", "main", "--format", "json")
    doc = json.loads(out)
    assert code == 0 and doc["groups"] == [] and doc["summary"]["changed"] == 0
    assert all(w["count"] == 0 for w in doc["rollout"]["waves"])


def test_emergency_trailer_is_shown_and_drops_soak(fabric_repo):
    _one_node_change(fabric_repo, "Urgent rack move\n\nTreadle-Rollout: immediate\n")
    doc = json.loads(
        run_cli("plan", str(fabric_repo.root), "main", "change", "--format", "json")[1]
    )
    assert doc["rollout"]["immediate"] is True
    assert all(w["soak_s"] == 0 for w in doc["rollout"]["waves"])
    md = run_cli("plan", str(fabric_repo.root), "main", "change")[1]
    assert "`Treadle-Rollout: immediate` is **present**" in md


def test_trailer_outside_the_last_paragraph_does_not_count():
    assert not has_immediate_trailer("Subject\n\nTreadle-Rollout: immediate\n\nMore text.\n")
    assert not has_immediate_trailer(
        "Treadle-Rollout: immediate\n"
    )  # a subject line is not a trailer
    assert has_immediate_trailer(
        "Subject\n\nBody.\n\nSigned-off-by: A <a@b>\ntreadle-rollout: Immediate\n"
    )


def test_change_window_outside_now_is_reported(fabric_repo):
    fabric_repo.branch("change")
    text = fabric_repo.path("rollout.yaml").read_text(encoding="utf-8")
    fabric_repo.path("rollout.yaml").write_text(
        text.replace("# windows:", "windows:").replace("#   ", "  "), encoding="utf-8"
    )
    fabric_repo.edit("sites/meyrin/batch/nodes/batch-003.yaml", 'rack: "r02"', 'rack: "r09"')
    fabric_repo.commit("Rack move, working hours only")
    sunday = dt.datetime(2026, 1, 4, 12, 0, tzinfo=dt.UTC).timestamp()
    plan = build_plan(fabric_repo.root, "main", "change", PlanSettings(now_s=sunday))
    assert plan.rollout.windows == ("mon,tue,wed,thu 09:00-16:00 Europe/Zurich",)
    assert (
        plan.rollout.blocked is not None and "outside every change window" in plan.rollout.blocked
    )
    assert "A rollout starting now would wait: outside every change window" in render_markdown(plan)


def test_pinned_wave_from_the_node_file_is_respected(fabric_repo):
    fabric_repo.branch("change")
    fabric_repo.edit("profiles/base.yaml", "kernel.panic: 10", "kernel.panic: 30")
    fabric_repo.commit("Longer kernel panic timeout")
    plan = build_plan(fabric_repo.root, "main", "change")
    waves = {w.name: w.nodes for w in plan.rollout.waves}
    assert "login-002" in waves["rest"]  # pinned by rollout.wave in its node file
    assert sum(len(n) for n in waves.values()) == 12


def test_markdown_is_cut_to_its_limit_with_a_note(fabric_repo):
    fabric_repo.branch("change")
    fabric_repo.edit("profiles/base.yaml", "kernel.panic: 10", "kernel.panic: 30")
    fabric_repo.edit("fabric.yaml", "threshold_s: 1", "threshold_s: 2")
    fabric_repo.commit("Two changes")
    plan = build_plan(fabric_repo.root, "main", "change")
    full = render_markdown(plan)
    cut = render_markdown(plan, MarkdownLimits(max_chars=3000))
    assert len(cut) <= 3000 < len(full)
    assert "Not shown, to stay within the comment size limit: group" in cut
    assert "--format json" in cut
    assert MarkdownLimits().max_chars < 65_536


def test_schema_export_writes_every_shipped_schema(tmp_path):
    code, out, _ = run_cli("schema", "export", str(tmp_path / "schemas"))
    assert code == 0
    written = sorted(p.name for p in (tmp_path / "schemas").iterdir())
    assert written == treadle_schemas.names() and "plan.json" in written
    for name in written:
        exported = json.loads((tmp_path / "schemas" / name).read_text())
        assert exported == treadle_schemas.for_editors(name)
        assert (exported == treadle_schemas.load(name)) == (
            name != "overlay.json"
        )  # only !delete's null is added


def test_schema_export_into_a_file_is_a_usage_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = run_cli("schema", "export", str(blocker))
    assert code == 2 and "cannot write schemas" in err


@pytest.mark.parametrize("fmt", ["markdown", "json"])
def test_invalid_head_exits_1_and_still_prints_the_report(fabric_repo, fmt):
    fabric_repo.branch("change")
    fabric_repo.edit("profiles/base.yaml", 'mode: "0644"', "mode: 0644")
    fabric_repo.commit("Integer mode")
    code, out, _ = run_cli("plan", str(fabric_repo.root), "main", "change", "--format", fmt)
    assert code == 1
    if fmt == "json":
        errors = json.loads(out)["errors"]
        assert [e["file"] for e in errors if e["code"] != "unchecked"] == ["profiles/base.yaml"]
        assert [e["file"] for e in errors if e["code"] == "unchecked"] == [
            "profiles/base.yaml"
        ]  # names the nodes it hid
    else:
        assert "`profiles/base.yaml:" in out


def test_a_fabric_in_a_directory_of_the_repository_is_planned_incrementally(tmp_path):
    from support import copy_template

    root = tmp_path / "infra"
    copy_template(root / "fabric")
    repo = FabricRepo(root)
    repo.git("init", "-q", "-b", "main")
    repo.commit("Fabric in a directory")
    repo.branch("change")
    repo.edit("fabric/sites/meyrin/batch/nodes/batch-003.yaml", 'rack: "r02"', 'rack: "r09"')
    repo.commit("Rack move")
    plan = build_plan(root / "fabric", "main", "change")
    assert [n.name for g in plan.groups for n in g.nodes] == ["batch-003"]
    assert plan.stats.head_rendered == 1
    assert any(
        s.in_change
        for sources in plan.provenance[0].values()
        for v in sources or ()
        for s in v.settings
    )


def test_an_unusable_rollout_policy_is_reported_instead_of_waves(fabric_repo):
    fabric_repo.branch("change")
    text = fabric_repo.path("rollout.yaml").read_text(encoding="utf-8")
    text = (
        text.replace("# windows:", "windows:")
        .replace("#   ", "  ")
        .replace("Europe/Zurich", "Mars/Olympus")
    )
    fabric_repo.path("rollout.yaml").write_text(text, encoding="utf-8")
    fabric_repo.edit("sites/meyrin/batch/nodes/batch-003.yaml", 'rack: "r02"', 'rack: "r09"')
    fabric_repo.commit("Window on Mars")
    plan = build_plan(fabric_repo.root, "main", "change")
    assert plan.rollout.waves == () and "unknown time zone 'Mars/Olympus'" in (
        plan.rollout.policy_error or ""
    )
    assert "Rollout policy unusable: rollout.yaml: unknown time zone" in render_markdown(plan)


def test_a_long_diff_is_shortened_with_a_count_of_what_was_cut(fabric_repo):
    fabric_repo.branch("change")
    fabric_repo.edit(
        "fabric.yaml",
        "banner: Example fabric",
        "banner: " + "A much longer banner " * 20 + "Example fabric",
    )
    fabric_repo.commit("Long banner")
    plan = build_plan(fabric_repo.root, "main", "change")
    md = render_markdown(plan, MarkdownLimits(max_diff_chars=200))
    assert "more characters of diff)" in md
    assert md.count("```diff") == len(plan.groups) * 1  # one file changes per group: one diff each


def test_a_base_node_file_that_does_not_parse_is_named_and_no_transition_is_invented(fabric_repo):
    node = "sites/meyrin/batch/nodes/batch-005.yaml"  # in maintenance
    fabric_repo.edit(node, "lifecycle: maintenance", "lifecycle: [maintenance")
    fabric_repo.commit("a syntax error")
    fabric_repo.branch("fix")
    fabric_repo.edit(node, "lifecycle: [maintenance", "lifecycle: maintenance")
    fabric_repo.commit("revert the syntax error")
    draining = "sites/meyrin/batch/nodes/batch-004.yaml"
    plan = build_plan(fabric_repo.root, "main", "fix", PlanSettings(full_render=True))
    assert plan.refusals == () and plan.changes.transitions == ()
    assert [n.name for n in plan.changes.base_unreadable] == ["batch-005"]
    doc = json.loads(run_cli("plan", str(fabric_repo.root), "main", "fix", "--format", "json")[1])
    assert doc["summary"]["base_unreadable"] == [
        {"node": "batch-005", "site": "meyrin", "cluster": "batch"}
    ]
    assert doc["summary"]["transitions"] == []
    code, markdown, _ = run_cli("plan", str(fabric_repo.root), "main", "fix")
    assert code == 0 and "Unreadable in BASE (1)" in markdown and "`batch-005`" in markdown
    # A draining node whose BASE file is broken: no "production -> draining" is listed.
    fabric_repo.git("checkout", "-q", "main")
    fabric_repo.edit(draining, "lifecycle: draining", "lifecycle: [draining")
    fabric_repo.commit("break the draining node too")
    fabric_repo.branch("fix2")
    fabric_repo.edit(draining, "lifecycle: [draining", "lifecycle: draining")
    fabric_repo.commit("revert it")
    plan = build_plan(fabric_repo.root, "main", "fix2")
    assert plan.changes.transitions == () and [n.name for n in plan.changes.base_unreadable] == [
        "batch-004"
    ]
