"""A plan renders only the nodes its change can affect, and says exactly what a full render would.

Every case is one real commit on the template fabric; the plan is built twice,
scoped (the default) and with ``full_render``, and the two JSON reports must be
equal but for the render figures, while the scoped plan renders only the
nodes listed for the case.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

import treadle.fabric.render as render_module
from support.review import FabricRepo, run_cli
from treadle.review.jsonreport import render_json
from treadle.review.plan import PlanSettings, build_plan

ALL = frozenset(
    {
        *(f"batch-00{i}" for i in range(1, 7)),
        "login-001",
        "login-002",
        *(f"storage-00{i}" for i in range(1, 5)),
    }
)
STORAGE = frozenset(n for n in ALL if n.startswith("storage"))
PRODUCTION = ALL - {"batch-004", "batch-005", "storage-004"}  # draining, maintenance, provisioning

STORAGE_NODE = """apiVersion: treadle.dev/v1
kind: Node
address: 192.0.2.250
"""


def _write(repo: FabricRepo, rel: str, text: str) -> None:
    path = repo.path(rel)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def _node_file(repo: FabricRepo) -> None:
    repo.edit("sites/meyrin/batch/nodes/batch-003.yaml", 'rack: "r02"', 'rack: "r09"')


def _profile(repo: FabricRepo) -> None:
    repo.edit("profiles/storage.yaml", "vm.dirty_ratio: 10", "vm.dirty_ratio: 12")


def _template(repo: FabricRepo) -> None:
    _write(
        repo,
        "templates/exports.j2",
        repo.path("templates/exports.j2").read_text(encoding="utf-8") + "# managed\n",
    )


def _new_include(repo: FabricRepo) -> None:
    """A template that starts including a new one: a template change and an added file."""
    _write(repo, "templates/exports-header.j2", "# exports of {{ node.name }}\n")
    _write(
        repo,
        "templates/exports.j2",
        '{% include "exports-header.j2" %}'
        + repo.path("templates/exports.j2").read_text(encoding="utf-8"),
    )


def _cluster(repo: FabricRepo) -> None:
    repo.edit(
        "sites/wigner/storage/cluster.yaml",
        'permit_root_login: "no"',
        'permit_root_login: "prohibit-password"',
    )


def _site(repo: FabricRepo) -> None:
    text = repo.path("sites/meyrin/site.yaml").read_text(encoding="utf-8")
    _write(repo, "sites/meyrin/site.yaml", text + "\nlabels:\n  campus: meyrin\n")


def _added_and_removed(repo: FabricRepo) -> None:
    _write(repo, "sites/wigner/storage/nodes/storage-005.yaml", STORAGE_NODE)
    repo.path("sites/meyrin/batch/nodes/batch-006.yaml").unlink()


def _moved(repo: FabricRepo) -> None:
    """A node file moved to another cluster: both paths change, one name."""
    old, new = (
        repo.path("sites/meyrin/login/nodes/login-002.yaml"),
        repo.path("sites/meyrin/batch/nodes/login-002.yaml"),
    )
    new.write_bytes(old.read_bytes())
    old.unlink()


def _lifecycle_profile_created(repo: FabricRepo) -> None:
    """profiles/lifecycle/production.yaml did not exist: every production node looked for it."""
    _write(
        repo,
        "profiles/lifecycle/production.yaml",
        'apiVersion: treadle.dev/v1\nkind: Profile\nlabels:\n  serving: "yes"\n',
    )


def _lifecycle(repo: FabricRepo) -> None:
    repo.edit(
        "sites/meyrin/batch/nodes/batch-003.yaml", "lifecycle: production", "lifecycle: draining"
    )


def _duplicate_name_first(repo: FabricRepo) -> None:
    """A new file, in a site sorting first, reusing the name of a node whose own file did not change."""
    _write(repo, "sites/alpha/site.yaml", "apiVersion: treadle.dev/v1\nkind: Site\n")
    _write(repo, "sites/alpha/edge/cluster.yaml", "apiVersion: treadle.dev/v1\nkind: Cluster\n")
    _write(repo, "sites/alpha/edge/nodes/storage-001.yaml", STORAGE_NODE)


def _unknown_profile(repo: FabricRepo) -> None:
    text = repo.path("sites/wigner/storage/nodes/storage-002.yaml").read_text(encoding="utf-8")
    _write(
        repo, "sites/wigner/storage/nodes/storage-002.yaml", text + "profiles: [no-such-profile]\n"
    )


def _broken_template(repo: FabricRepo) -> None:
    _write(repo, "templates/exports.j2", "{{ data.no_such_key.deeper }}\n")


def _fabric_file(repo: FabricRepo) -> None:
    text = repo.path("fabric.yaml").read_text(encoding="utf-8")
    _write(repo, "fabric.yaml", text + "\n# reviewed\n")


CASES: dict[str, tuple[Callable[[FabricRepo], None], frozenset[str]]] = {
    "node-file": (_node_file, frozenset({"batch-003"})),
    "profile": (_profile, STORAGE),
    "template": (_template, STORAGE),
    "template-include": (_new_include, STORAGE),
    "cluster": (_cluster, STORAGE),
    "site": (_site, ALL - STORAGE),
    "added-and-removed": (_added_and_removed, frozenset({"storage-005", "batch-006"})),
    "moved": (_moved, frozenset({"login-002"})),
    "lifecycle-profile-created": (_lifecycle_profile_created, PRODUCTION),
    "lifecycle": (_lifecycle, frozenset({"batch-003"})),
    "duplicate-name": (_duplicate_name_first, frozenset({"storage-001"})),
    "unknown-profile": (_unknown_profile, frozenset({"storage-002"})),
    "broken-template": (_broken_template, STORAGE),
    "fabric-file": (_fabric_file, ALL),
}


def _plan(repo: FabricRepo, full: bool, monkeypatch: pytest.MonkeyPatch) -> tuple[dict, set[str]]:
    rendered: set[str] = set()
    real = render_module._render_node

    def counting(run, overlays, templates, ref, *rest):
        rendered.add(ref.name)
        return real(run, overlays, templates, ref, *rest)

    monkeypatch.setattr(render_module, "_render_node", counting)
    plan = build_plan(repo.root, "main", "change", PlanSettings(now_s=0, full_render=full))
    return json.loads(render_json(plan)), rendered


@pytest.mark.parametrize("case", sorted(CASES))
def test_scoped_plan_equals_the_full_plan_and_renders_only_the_affected_nodes(
    fabric_repo, monkeypatch, case
):
    change, affected = CASES[case]
    fabric_repo.branch("change")
    change(fabric_repo)
    fabric_repo.commit(f"change: {case}")
    full, full_rendered = _plan(fabric_repo, True, monkeypatch)
    scoped, scoped_rendered = _plan(fabric_repo, False, monkeypatch)
    assert scoped_rendered == affected
    assert full_rendered >= ALL - {"batch-006"}  # the full plan renders BASE in full
    full_stats, scoped_stats = full.pop("stats"), scoped.pop("stats")
    assert scoped == full
    assert (
        scoped_stats["base_nodes"] == full_stats["base_nodes"]
        and scoped_stats["head_nodes"] == full_stats["head_nodes"]
    )


def test_the_duplicate_name_case_renders_base_again_for_the_name_head_selected(
    fabric_repo, monkeypatch
):
    """The one case where HEAD selects a node BASE did not: its plan still compares the same node in both."""
    fabric_repo.branch("change")
    _duplicate_name_first(fabric_repo)
    fabric_repo.commit("a second storage-001")
    scoped, _ = _plan(fabric_repo, False, monkeypatch)
    assert [g["nodes"] for g in scoped["groups"]] == [["storage-001"]]
    assert not scoped["ok"] and any(r["code"] == "duplicate-node" for r in scoped["refusals"])


def _one_node_change_over_a_broken_main(repo: FabricRepo) -> None:
    """main: the storage nodes' template fails; branch change: batch-003's file changes, nothing storage reads."""
    first_line = repo.path("templates/exports.j2").read_text(encoding="utf-8").splitlines()[0]
    repo.edit("templates/exports.j2", first_line, "{{ data.no_such_key.deeper }}")
    repo.commit("break the exports template on main")
    repo.branch("change")
    _node_file(repo)
    repo.commit("move batch-003")


def test_a_template_error_in_an_untouched_node_is_left_to_validate(fabric_repo, monkeypatch):
    """Scoped, the plan does not see what only rendering an untouched node finds; with full_render it does."""
    _one_node_change_over_a_broken_main(fabric_repo)
    scoped, _ = _plan(fabric_repo, False, monkeypatch)
    full, _ = _plan(fabric_repo, True, monkeypatch)
    assert scoped["ok"] and not scoped["errors"]
    assert not full["ok"] and any(e["file"] == "templates/exports.j2" for e in full["errors"])


def test_creating_a_missing_site_file_selects_the_nodes_of_that_site(fabric_repo, monkeypatch):
    """A site without site.yaml is a layout error in BASE; the commit that adds it changes the site's nodes."""
    site = fabric_repo.path("sites/wigner/site.yaml").read_text(encoding="utf-8")
    fabric_repo.path("sites/wigner/site.yaml").unlink()
    fabric_repo.commit("wigner loses its site file")
    fabric_repo.branch("change")
    _write(fabric_repo, "sites/wigner/site.yaml", site)
    fabric_repo.commit("wigner gets it back")
    full, _ = _plan(fabric_repo, True, monkeypatch)
    scoped, rendered = _plan(fabric_repo, False, monkeypatch)
    assert rendered == STORAGE
    full.pop("stats"), scoped.pop("stats")
    assert scoped == full and scoped["groups"]


def test_full_render_on_the_command_line_reports_problems_of_untouched_nodes(fabric_repo):
    _one_node_change_over_a_broken_main(fabric_repo)
    assert run_cli("plan", str(fabric_repo.root), "main", "change")[0] == 0
    code, out, _ = run_cli("plan", str(fabric_repo.root), "main", "change", "--full-render")
    assert code == 1 and "templates/exports.j2" in out
