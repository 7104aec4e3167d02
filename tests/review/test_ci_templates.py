"""The fabric template's CI files and this repository's pre-commit hook: valid, real actions, real commands.

The GitHub workflow's ``run:`` steps that need no GitHub (validate, plan) run
for real in a clone of a fabric repository, with ``treadle`` from this
checkout's virtualenv on PATH, as the runner would run them.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from support import REPO, TEMPLATE
from support.review import GIT_ENV, FabricRepo, make_repo

WORKFLOW = TEMPLATE / ".github" / "workflows" / "treadle.yml"
GITLAB = TEMPLATE / ".gitlab-ci.yml"
HOOKS = REPO / ".pre-commit-hooks.yaml"
KNOWN_ACTIONS = {"actions/checkout@v4", "actions/setup-python@v5", "actions/github-script@v7"}
LOCAL_STEPS = ("Validate", "Plan")


def _load(path: Path):
    return YAML(typ="safe").load(path.read_text(encoding="utf-8"))


def _steps():
    return _load(WORKFLOW)["jobs"]["plan"]["steps"]


def test_workflow_is_yaml_naming_real_pinned_actions():
    doc = _load(WORKFLOW)
    assert "pull_request" in doc["on"]
    uses = [s["uses"] for s in _steps() if "uses" in s]
    assert all(re.fullmatch(r"[\w.-]+/[\w.-]+@v\d+", u) for u in uses)
    assert set(uses) == KNOWN_ACTIONS
    checkout = next(s for s in _steps() if s.get("uses") == "actions/checkout@v4")
    assert checkout["with"]["fetch-depth"] == 0


def test_workflow_installs_treadle_as_a_package_and_plans_against_origin_main():
    runs = "\n".join(s.get("run", "") for s in _steps())
    assert 'pip install "treadle[controller]"' in runs
    assert "treadle plan origin/main HEAD --format markdown > plan.md" in runs


@pytest.fixture
def pr_clone(tmp_path: Path) -> FabricRepo:
    """A clone of a fabric repository with one commit on a pull-request branch, origin/main its base."""
    origin = make_repo(tmp_path / "origin")
    subprocess.run(
        ["git", "clone", "-q", str(origin.root), str(tmp_path / "clone")],
        check=True,
        env={**os.environ, **GIT_ENV},
    )
    clone = FabricRepo(tmp_path / "clone")
    clone.branch("pr")
    clone.edit("profiles/base.yaml", "kernel.panic: 10", "kernel.panic: 30")
    clone.commit("Longer kernel panic timeout")
    return clone


def _run_step(step: dict, cwd: Path, output: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        **GIT_ENV,
        "GITHUB_OUTPUT": str(output),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    # GitHub runs `run:` with `bash -e {0}`.
    return subprocess.run(
        ["bash", "-e", "-c", step["run"]],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_workflow_validate_and_plan_steps_run_in_a_clone(pr_clone, tmp_path):
    output = tmp_path / "github_output"
    output.touch()
    steps = {s["name"]: s for s in _steps() if "name" in s}
    for name in LOCAL_STEPS:
        done = _run_step(steps[name], pr_clone.root, output)
        assert done.returncode == 0, done.stdout + done.stderr
    plan = (pr_clone.root / "plan.md").read_text(encoding="utf-8")
    assert plan.startswith("<!-- treadle-plan -->") and "kernel.panic" in plan
    assert "exit=0" in output.read_text()


def test_workflow_plan_step_records_an_invalid_head_for_the_last_step(pr_clone, tmp_path):
    pr_clone.edit("profiles/base.yaml", 'mode: "0644"', "mode: 0644")
    pr_clone.commit("Integer mode")
    output = tmp_path / "github_output"
    output.touch()
    plan_step = next(s for s in _steps() if s.get("name") == "Plan")
    assert (
        _run_step(plan_step, pr_clone.root, output).returncode == 0
    )  # the comment is still posted
    assert "exit=1" in output.read_text()
    assert "profiles/base.yaml:" in (pr_clone.root / "plan.md").read_text(encoding="utf-8")


def test_gitlab_job_validates_plans_and_posts_a_note():
    job = _load(GITLAB)["treadle-plan"]
    script = "\n".join(job["script"])
    assert "treadle validate ." in script and "treadle plan" in script
    assert "merge_requests" in script and "/notes" in script
    assert job["variables"]["GIT_DEPTH"] == "0"


def test_pre_commit_hook_runs_treadle_validate_on_fabric_files(pr_clone):
    [hook] = _load(HOOKS)
    assert (hook["id"], hook["entry"], hook["language"], hook["pass_filenames"]) == (
        "treadle-validate",
        "treadle validate",
        "python",
        False,
    )
    files = re.compile(hook["files"])
    assert all(
        files.search(p)
        for p in (
            "fabric.yaml",
            "rollout.yaml",
            "profiles/base.yaml",
            "templates/motd.j2",
            "sites/meyrin/batch/nodes/batch-001.yaml",
        )
    )
    assert not any(files.search(p) for p in ("README.md", ".github/workflows/treadle.yml"))
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    done = subprocess.run(
        hook["entry"].split(), cwd=pr_clone.root, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_codeowners_gives_every_site_an_owner():
    rules = [
        line.split()
        for line in (TEMPLATE / "CODEOWNERS").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert all(len(r) >= 2 and all(o.startswith("@") for o in r[1:]) for r in rules)
    sites = {p.name for p in (TEMPLATE / "sites").iterdir() if p.is_dir()}
    assert {r[0] for r in rules} >= {f"/sites/{s}/" for s in sites}


def test_template_readme_pre_commit_example_is_a_local_hook_that_runs(pr_clone):
    text = (TEMPLATE / "README.md").read_text()
    block = text[text.index("```yaml\nrepos:") + len("```yaml\n") :]
    block = block[: block.index("```")]
    [repo] = YAML(typ="safe").load(block)["repos"]
    [hook] = repo["hooks"]
    [declared] = _load(HOOKS)
    assert repo["repo"] == "local" and "rev" not in repo  # nothing to pin that might not exist
    assert (hook["id"], hook["entry"], hook["files"]) == (
        declared["id"],
        declared["entry"],
        declared["files"],
    )
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    done = subprocess.run(
        hook["entry"].split(), cwd=pr_clone.root, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_ci_templates_find_the_wheel_through_a_variable_the_readme_names():
    install = next(s for s in _steps() if s.get("name") == "Install Treadle")
    assert install["env"]["PIP_FIND_LINKS"] == "${{ vars.TREADLE_WHEELS }}"
    assert _load(GITLAB)["treadle-plan"]["variables"]["PIP_FIND_LINKS"] == "$TREADLE_WHEELS"
    assert "TREADLE_WHEELS" in (TEMPLATE / "README.md").read_text()
