"""A secret file from the fabric repository to one node, through a real controller and a real agent.

The plaintext marker must reach the node's file and nothing else: not the
repository, the controller's log, state, publish store or metrics, nor the
agent's output and state.
"""

from __future__ import annotations

from pathlib import Path

import httpx

from support.procs import agent_cli

from .test_agents_e2e import agent_config

MARKER = "PLAINTEXT-MARKER-e2e-3c7d"


def _tree_bytes(top: Path) -> bytes:
    return b"".join(
        p.read_bytes() for p in sorted(top.rglob("*")) if p.is_file() and not p.is_symlink()
    )


def test_a_secret_reaches_its_node_and_nothing_else_sees_it(
    make_fabric, start_controller, trust_root_file: Path, tmp_path: Path
) -> None:
    from treadle.cli import main as treadle

    repo, fabric = make_fabric(1, 1, 2)
    ctl = start_controller(str(repo.bare))
    ctl.wait_deployed(fabric.commit)
    a = fabric.nodes[0]
    config = agent_config(tmp_path, a.name, ctl.url, trust_root_file)
    enrolled = agent_cli("enroll", "--config", str(config))
    assert enrolled.returncode == 0, enrolled.stderr
    a.path.write_text(
        a.path.read_text() + f"identity: {enrolled.stdout.strip()}\n"
        'files:\n  /etc/munge/munge.key: {secret: secrets/munge.key.age, mode: "0400"}\n'
    )
    plain = tmp_path / "munge.key"
    plain.write_text(f"{MARKER}\n")
    assert (
        treadle(["secret", "encrypt", "munge.key", "--in", str(plain), "--repo", str(repo.work)])
        == 0
    )
    plain.unlink()
    head = repo.commit_and_push("deliver the munge key")
    ctl.wait_deployed(head)

    applied = agent_cli("once", "--config", str(config), "--log-format", "json")
    assert applied.returncode in (0, 1), (
        applied.stderr
    )  # 1: the fabric's health checks fail in a temp root
    written = config.parent / "root/etc/munge/munge.key"
    assert written.read_text() == f"{MARKER}\n" and written.stat().st_mode & 0o777 == 0o400
    checked = agent_cli("check", "--config", str(config), "--offline", "--format", "json")

    metrics = httpx.get(f"{ctl.url}/metrics", timeout=10).content
    marker = MARKER.encode()
    assert marker not in _tree_bytes(repo.bare) and marker not in _tree_bytes(repo.work)
    assert marker not in _tree_bytes(tmp_path / "controller")  # log, state, publish store
    assert marker not in metrics
    assert MARKER not in applied.stdout + applied.stderr + checked.stdout + checked.stderr
    assert marker not in _tree_bytes(config.parent / "state")
