"""The fabric commands end to end: init, render, help, exit codes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from treadle.fabric import WorkTreeSource, render_fabric


@pytest.mark.parametrize("command", ["init", "validate", "render", "explain"])
def test_help_of_every_command_shows_an_example(cli, command):
    outcome = cli(command, "--help")
    assert outcome.code == 0
    assert "example" in outcome.out
    assert f"treadle {command}" in outcome.out


def test_init_help_says_it_makes_a_git_repository(cli):
    assert "git" in cli("init", "--help").out


def test_init_copies_the_template_commits_it_and_validates(cli, tmp_path, template_copy):
    target = tmp_path / "new"
    outcome = cli("init", str(target))
    assert outcome.code == 0
    assert (target / "fabric.yaml").exists()
    assert not list(target.rglob("__pycache__")) and not (target / "__init__.py").exists()
    if shutil.which("git"):
        assert (target / ".git").is_dir()
        assert cli("validate", str(target), "--rev", "HEAD").code == 0
    assert cli("validate", str(target)).code == 0


def test_init_refuses_a_non_empty_directory(cli, tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    outcome = cli("init", str(tmp_path))
    assert outcome.code == 2
    assert "not an empty directory" in outcome.err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


def test_render_node_prints_its_canonical_manifest(cli, fabric):
    outcome = cli("render", str(fabric.root), "--node", "n1")
    assert outcome.code == 0
    expected = render_fabric(WorkTreeSource(fabric.root)).nodes["n1"].canonical
    assert outcome.out.encode() == expected + b"\n"
    assert json.loads(outcome.out)["metadata"]["node"] == "n1"


def test_render_all_writes_one_file_per_node(cli, fabric, tmp_path):
    out = tmp_path / "out"
    assert cli("render", str(fabric.root), "--all", "--out", str(out)).code == 0
    assert sorted(p.name for p in out.iterdir()) == ["n1.json", "n2.json"]
    assert json.loads((out / "n2.json").read_bytes())["metadata"]["address"] == "10.0.0.2"


def test_render_of_a_git_revision_stamps_its_commit(cli, fabric):
    sha = fabric.commit()
    outcome = cli("render", str(fabric.root), "--node", "n1", "--rev", "HEAD")
    assert json.loads(outcome.out)["metadata"]["commit"] == sha


def test_render_refuses_an_invalid_fabric_with_every_error(cli, fabric):
    fabric.write("sites/s1/c1/nodes/n1.yaml", "kind: Node\naddress: 10.0.0.1\nlifecycle: broken\n")
    outcome = cli("render", str(fabric.root), "--node", "n2")
    assert outcome.code == 1
    assert "sites/s1/c1/nodes/n1.yaml:3:1: unknown lifecycle state 'broken'" in outcome.err


@pytest.mark.parametrize(
    "args",
    [
        ("render", "{root}", "--node", "nope"),
        ("render", "{root}", "--all"),
        ("render", "{root}"),
        ("validate", "{root}/missing"),
        ("validate", "{root}", "--rev", "HEAD"),
        ("explain", "{root}"),
    ],
)
def test_usage_and_environment_errors_exit_2(cli, fabric, args):
    outcome = cli(*(a.format(root=fabric.root) for a in args))
    assert outcome.code == 2, outcome


def test_validate_defaults_to_the_current_directory(cli, fabric, monkeypatch):
    monkeypatch.chdir(fabric.root)
    assert cli("validate").code == 0


def test_validate_reports_paths_relative_to_the_repository(cli, fabric):
    fabric.write("sites/s1/c1/nodes/n1.yaml", "kind: Node\naddress: 10.0.0.1\nlifecycle: broken\n")
    line = cli("validate", str(fabric.root)).err.splitlines()[0]
    assert line.startswith("sites/s1/c1/nodes/n1.yaml:3:1: ")
    assert not Path(line.split(":")[0]).is_absolute()
