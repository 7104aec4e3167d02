"""The README's first test of a node: `treadle-agent once` against a controller serving the template fabric."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from treadle.daemon.sign import manifest_from_envelope
from treadle.keygen import generate


def test_agent_once_on_the_template_fabric_exits_0(start_controller, tmp_path: Path) -> None:
    fabric = tmp_path / "fabric"
    subprocess.run(
        [sys.executable, "-m", "treadle.cli", "init", str(fabric)], check=True, capture_output=True
    )
    keys = tmp_path / "keys"
    generate(keys)
    ctl = start_controller(str(fabric), signing=f'"{keys / "treadle.key"}"')
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=fabric, capture_output=True, text=True, check=True
    ).stdout.strip()
    ctl.wait_deployed(head)
    d = tmp_path / "node"
    (d / "root").mkdir(parents=True)
    (d / "proc-sys").mkdir()
    # The node's kernel: a stand-in /proc/sys with the keys the manifest sets (the real one is never written).
    manifest = manifest_from_envelope(ctl.envelopes()["batch-001"])
    for r in manifest["resources"]:
        if r["type"] == "sysctl":
            key = d / "proc-sys" / r["key"].replace(".", "/")
            key.parent.mkdir(parents=True, exist_ok=True)
            key.write_text("0\n")
    config = d / "agent.toml"
    config.write_text(
        f'node = "batch-001"\nmanifest_urls = ["{ctl.url}/v1/nodes/{{node}}/manifest"]\n'
        f'trust_root = "{keys / "trust-root.json"}"\nstate_dir = "{d / "state"}"\nroot = "{d / "root"}"\n'
        f'package_manager = "simulated"\nservice_manager = "simulated"\nproc_sys = "{d / "proc-sys"}"\nretries = 0\n'
    )
    result = subprocess.run(
        [sys.executable, "-m", "treadle_agent.cli", "once", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    files = [
        r["path"]
        for r in manifest["resources"]
        if r["type"] == "file" and r.get("ensure", "present") == "present"
    ]
    assert "/etc/chrony/chrony.conf" in files  # batch-001 is in Meyrin, whose nodes run Debian
    assert [p for p in files if not (d / "root" / p.lstrip("/")).is_file()] == []
