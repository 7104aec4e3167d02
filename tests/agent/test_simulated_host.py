"""agent.toml's ``simulated`` host mode: packages and services as the agent would manage them, nothing touched."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from support.procs import agent_cli
from treadle_agent.contract.names import SIMULATED_HOST_FILE as STATE_FILE
from treadle_agent.errors import StateError
from treadle_agent.host_mode import host_for
from treadle_agent.host_sim import SimulatedHost


def _web_server(kit, generation: int) -> dict:  # type: ignore[no-untyped-def,type-arg]
    doc = kit.manifest_doc(
        generation=generation, files={"/etc/nginx/site.conf": f"listen 80; # {generation}\n"}
    )
    doc["resources"][0].update(notify=["nginx"], requires=["package:nginx"])
    doc["resources"] += [
        {"type": "package", "name": "nginx", "ensure": "present", "version": None, "requires": []},
        {
            "type": "service",
            "name": "nginx",
            "enabled": True,
            "state": "running",
            "requires": ["package:nginx"],
        },
    ]
    doc["health"] = [{"name": "nginx", "type": "service", "service": "nginx", "timeout_s": 5}]
    return doc


def test_a_simulated_node_installs_starts_and_restarts_in_its_state_file_only(
    tmp_path, server, keys, kit
) -> None:
    server.serve(kit.signed(_web_server(kit, 2), keys.signers))
    config = kit.write_config(
        tmp_path,
        keys.trust_root,
        [server.url()],
        package_manager="simulated",
        service_manager="simulated",
    )
    done = agent_cli("once", "--config", str(config))
    assert done.returncode == 0, done.stderr
    state = json.loads((tmp_path / "state" / STATE_FILE).read_text())
    assert state == {
        "installed": {"nginx": "1.0-1"},
        "units": {"nginx": {"active": True, "broken": False, "enabled": True}},
    }
    assert (
        agent_cli("check", "--config", str(config)).returncode == 0
    )  # the next run would change nothing
    server.serve(kit.signed(_web_server(kit, 3), keys.signers))  # a new site.conf notifies nginx
    done = agent_cli("once", "--config", str(config), "--log-format", "json")
    assert done.returncode == 0, done.stderr
    restarted = [
        json.loads(line) for line in done.stderr.splitlines() if '"service.restarted"' in line
    ]
    assert [e["service"] for e in restarted] == ["nginx"]


def test_simulated_is_a_mode_of_the_whole_host(tmp_path, keys, kit) -> None:
    config = kit.write_config(
        tmp_path,
        keys.trust_root,
        ["http://127.0.0.1:9/"],
        package_manager="simulated",
        service_manager="systemd",
    )
    done = agent_cli("once", "--config", str(config))
    assert done.returncode == 2 and 'set both to "simulated"' in done.stderr


def test_the_simulated_state_survives_a_new_host_object_and_a_corrupt_one_is_named(
    tmp_path: Path,
) -> None:
    settings = type(
        "Settings",
        (),
        {"package_manager": "simulated", "service_manager": "simulated", "proc_sys": str(tmp_path)},
    )
    host = host_for(settings, tmp_path)
    assert isinstance(host, SimulatedHost)
    host.packages.install("chrony", None)
    host.services.set_running("chronyd", True)
    again = host_for(settings, tmp_path)
    assert again.packages.query(["chrony"])["chrony"].installed and again.services.is_active(
        "chronyd"
    )
    (tmp_path / STATE_FILE).write_text("{not json")
    with pytest.raises(StateError, match=STATE_FILE):
        host_for(settings, tmp_path)
