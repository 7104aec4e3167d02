"""Real agents (`treadle-agent once`) apply from a real controller into temp roots."""

from __future__ import annotations

import subprocess
from pathlib import Path

from support.fleet import write_agent_config
from support.procs import agent_cli


def agent_config(tmp_path: Path, node: str, url: str, trust_root_file: Path) -> Path:
    return write_agent_config(tmp_path / "agents" / node, node, url, trust_root_file)


def run_agent(config: Path) -> subprocess.CompletedProcess[str]:
    # Exit 1 is expected here: the fabric's health checks (sshd on port 22...) fail in a temp root.
    return agent_cli("once", "--config", str(config))


def test_a_pushed_change_reaches_the_right_agents_files_and_no_other_node_changes(
    make_fabric, start_controller, trust_root_file: Path, tmp_path: Path
) -> None:
    repo, fabric = make_fabric(1, 1, 2)
    ctl = start_controller(str(repo.bare))
    ctl.wait_deployed(fabric.commit)
    a, b = fabric.nodes[0], fabric.nodes[1]
    configs = {n.name: agent_config(tmp_path, n.name, ctl.url, trust_root_file) for n in (a, b)}
    for node, config in configs.items():
        result = run_agent(config)
        assert result.returncode in (0, 1), result.stderr
        assert (config.parent / "root/etc/motd").is_file(), f"{node}: {result.stderr}"
    before = ctl.envelopes()
    a.path.write_text(
        a.path.read_text()
        + 'files:\n  /etc/motd.local: {content: "maintenance window: sunday\\n", mode: "0640"}\n'
    )
    head = repo.commit_and_push("a local motd on one node")
    ctl.wait_deployed(head)
    after = ctl.envelopes()
    assert {n for n in after if after[n] != before[n]} == {a.name}
    for config in configs.values():
        run_agent(config)
    motd = configs[a.name].parent / "root/etc/motd.local"
    assert (
        motd.read_text() == "maintenance window: sunday\n"
        and oct(motd.stat().st_mode & 0o777) == "0o640"
    )
    assert not (configs[b.name].parent / "root/etc/motd.local").exists()
