"""`treadle targets`: Prometheus file_sd JSON from a real fabric (work tree and git revision)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from treadle.cli import main


@pytest.fixture
def fabric(tmp_path: Path) -> Path:
    repo = tmp_path / "fabric"
    assert main(["init", str(repo)]) == 0
    return repo


def _targets(out: Path) -> dict[str, dict]:
    return {e["labels"]["node"]: e for e in json.loads(out.read_text())}


def _edit(path: Path, pattern: str, replacement: str) -> None:
    text = path.read_text()
    new = re.sub(pattern, replacement, text, count=1, flags=re.M)
    assert new != text, f"{pattern!r} not found in {path}"
    path.write_text(new)


def test_every_node_is_a_target_at_its_address_and_metrics_port_with_its_labels(
    fabric: Path, tmp_path: Path
) -> None:
    out = tmp_path / "agents.json"
    assert main(["targets", str(fabric), "--out", str(out)]) == 0
    targets = _targets(out)
    assert len(targets) == 12
    assert targets["batch-001"] == {
        "targets": ["192.0.2.11:9741"],
        "labels": {
            "node": "batch-001",
            "site": "meyrin",
            "cluster": "batch",
            "lifecycle": "production",
        },
    }
    assert targets["batch-004"]["labels"]["lifecycle"] == "draining"
    assert targets["storage-001"]["labels"]["site"] == "wigner"


def test_retired_nodes_are_left_out_and_a_node_without_metrics_port_gets_9731(
    fabric: Path, tmp_path: Path
) -> None:
    nodes = fabric / "sites/meyrin/batch/nodes"
    _edit(nodes / "batch-002.yaml", r"^lifecycle: production$", "lifecycle: retired")
    _edit(nodes / "batch-003.yaml", r"^agent:\n  metrics_port: \d+\n", "")
    out = tmp_path / "agents.json"
    assert main(["targets", str(fabric), "--out", str(out)]) == 0
    targets = _targets(out)
    assert "batch-002" not in targets and len(targets) == 11
    assert targets["batch-003"]["targets"] == ["192.0.2.13:9731"]


def test_rev_reads_the_committed_fabric_not_the_work_tree(fabric: Path, tmp_path: Path) -> None:
    _edit(
        fabric / "sites/meyrin/batch/nodes/batch-001.yaml", r"^address: .*$", "address: 192.0.2.99"
    )
    out = tmp_path / "agents.json"
    assert main(["targets", str(fabric), "--rev", "HEAD", "--out", str(out)]) == 0
    assert _targets(out)["batch-001"]["targets"] == ["192.0.2.11:9741"]
    assert main(["targets", str(fabric), "--out", str(out)]) == 0
    assert _targets(out)["batch-001"]["targets"] == ["192.0.2.99:9741"]


def test_an_existing_file_is_replaced_whole_and_no_temp_file_remains(
    fabric: Path, tmp_path: Path
) -> None:
    out = tmp_path / "sd" / "agents.json"
    out.parent.mkdir()
    out.write_text("old content, much longer than nothing " * 1000)
    assert main(["targets", str(fabric), "--out", str(out)]) == 0
    assert len(json.loads(out.read_text())) == 12
    assert sorted(p.name for p in out.parent.iterdir()) == ["agents.json"]


def test_an_invalid_fabric_exits_1_with_the_located_problem_and_writes_nothing(
    fabric: Path, tmp_path: Path
) -> None:
    _edit(
        fabric / "sites/meyrin/batch/nodes/batch-001.yaml",
        r"^address: .*$",
        "address: [not, an, address]",
    )
    out = tmp_path / "agents.json"
    done = subprocess.run(
        [sys.executable, "-m", "treadle.cli", "targets", str(fabric), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "sites/meyrin/batch/nodes/batch-001.yaml:" in done.stderr
    assert not out.exists()


def test_a_missing_output_directory_exits_2_naming_it(fabric: Path, tmp_path: Path) -> None:
    out = tmp_path / "no-such-dir" / "agents.json"
    done = subprocess.run(
        [sys.executable, "-m", "treadle.cli", "targets", str(fabric), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert f"{out.parent} does not exist" in done.stderr
