"""``treadle-agent check`` as a real process: what a cycle would change, with nothing changed on the node."""

from __future__ import annotations

import json
from pathlib import Path

from support.procs import agent_cli

MOTD = "/etc/motd"


def _tree(tmp_path: Path) -> dict[str, bytes]:
    """Every file under the managed root and the state dir, with its content."""
    return {
        str(p.relative_to(tmp_path)): p.read_bytes()
        for top in (tmp_path / "root", tmp_path / "state")
        if top.exists()
        for p in sorted(top.rglob("*"))
        if p.is_file()
    }


def _check(config: Path, *extra: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    done = agent_cli("check", "--config", str(config), "--format", "json", *extra)
    assert done.returncode in (0, 1), done.stderr
    return done.returncode, json.loads(done.stdout)


def _statuses(report: dict) -> dict[str, str]:  # type: ignore[type-arg]
    return {r["id"]: r["status"] for r in report["resources"]}


def test_check_on_a_fresh_node_lists_every_change_and_writes_nothing(
    tmp_path, server, keys, kit
) -> None:
    server.serve(
        kit.signed(
            kit.manifest_doc(generation=2, files={MOTD: "hello\n", "/etc/issue": "fabric\n"}),
            keys.signers,
        )
    )
    config = kit.write_config(tmp_path, keys.trust_root, [server.url()])
    before = _tree(tmp_path)
    code, report = _check(config)
    assert (
        code == 1
        and report["in_sync"] is False
        and report["source"] == "fetched"
        and report["generation"] == 2
    )
    assert _statuses(report) == {"file:/etc/issue": "would_change", f"file:{MOTD}": "would_change"}
    assert _tree(tmp_path) == before  # no file, no state, no inventory, no config record
    assert not (tmp_path / "state").exists()


def test_check_after_a_run_is_in_sync_and_exits_0(tmp_path, server, keys, kit) -> None:
    server.serve(kit.signed(kit.manifest_doc(generation=2, files={MOTD: "hello\n"}), keys.signers))
    config = kit.write_config(tmp_path, keys.trust_root, [server.url()])
    assert agent_cli("once", "--config", str(config)).returncode == 0
    done = agent_cli("check", "--config", str(config))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[-1] == "in sync: 1 in sync"


def test_check_shows_drift_with_its_diff_and_leaves_it_for_the_agent(
    tmp_path, server, keys, kit
) -> None:
    server.serve(kit.signed(kit.manifest_doc(generation=2, files={MOTD: "hello\n"}), keys.signers))
    config = kit.write_config(tmp_path, keys.trust_root, [server.url()])
    assert agent_cli("once", "--config", str(config)).returncode == 0
    (tmp_path / "root/etc/motd").write_text("edited by hand\n")
    before = _tree(tmp_path)
    done = agent_cli("check", "--config", str(config))
    assert done.returncode == 1
    assert f"drifted       file:{MOTD}" in done.stdout and "NOT in sync: 1 drifted" in done.stdout
    assert (
        _tree(tmp_path) == before and (tmp_path / "root/etc/motd").read_text() == "edited by hand\n"
    )


def test_a_newer_manifest_shows_what_it_would_change_and_remove(
    tmp_path, server, keys, kit
) -> None:
    server.serve(
        kit.signed(
            kit.manifest_doc(generation=2, files={MOTD: "hello\n", "/etc/old.conf": "x\n"}),
            keys.signers,
        )
    )
    config = kit.write_config(tmp_path, keys.trust_root, [server.url()])
    assert agent_cli("once", "--config", str(config)).returncode == 0
    server.serve(
        kit.signed(kit.manifest_doc(generation=3, files={MOTD: "hello again\n"}), keys.signers)
    )
    code, report = _check(config)
    assert code == 1 and report["generation"] == 3
    assert _statuses(report) == {
        f"file:{MOTD}": "would_change",
        "file:/etc/old.conf": "would_remove",
    }
    assert (
        report["resources"][0]["diff"] == "content differs"
    )  # contents are not shown: they may be secrets
    assert (tmp_path / "root/etc/old.conf").exists()


def test_a_refused_manifest_is_reported_and_the_last_accepted_one_is_checked(
    tmp_path, server, keys, make_keys, kit
) -> None:
    server.serve(kit.signed(kit.manifest_doc(generation=2, files={MOTD: "hello\n"}), keys.signers))
    config = kit.write_config(tmp_path, keys.trust_root, [server.url()])
    assert agent_cli("once", "--config", str(config)).returncode == 0
    forged = kit.signed(
        kit.manifest_doc(generation=9, files={MOTD: "owned\n"}), make_keys().signers
    )
    server.serve(forged)
    code, report = _check(config)
    assert code == 1 and report["refused"] is True and "signature" in report["note"]
    assert (
        report["source"] == "stored"
        and report["generation"] == 2
        and _statuses(report) == {f"file:{MOTD}": "in_sync"}
    )


def test_offline_checks_the_last_accepted_manifest_without_asking_the_server(
    tmp_path, server, keys, kit
) -> None:
    server.serve(kit.signed(kit.manifest_doc(generation=2, files={MOTD: "hello\n"}), keys.signers))
    config = kit.write_config(tmp_path, keys.trust_root, [server.url()])
    assert agent_cli("once", "--config", str(config)).returncode == 0
    server.serve(kit.signed(kit.manifest_doc(generation=3, files={MOTD: "newer\n"}), keys.signers))
    code, report = _check(config, "--offline")
    assert (
        code == 0
        and report["source"] == "stored"
        and report["generation"] == 2
        and report["in_sync"] is True
    )


def test_a_rollback_to_an_older_generation_is_refused_as_a_run_would(
    tmp_path, server, keys, kit
) -> None:
    server.serve(kit.signed(kit.manifest_doc(generation=5, files={MOTD: "five\n"}), keys.signers))
    config = kit.write_config(tmp_path, keys.trust_root, [server.url()])
    assert agent_cli("once", "--config", str(config)).returncode == 0
    server.serve(kit.signed(kit.manifest_doc(generation=4, files={MOTD: "four\n"}), keys.signers))
    code, report = _check(config)
    assert (
        code == 1
        and report["refused"] is True
        and "rollback" in report["note"]
        and report["generation"] == 5
    )


def test_a_changed_file_that_notifies_a_service_shows_the_restart_a_run_would_do(
    tmp_path, server, keys, kit
) -> None:
    def doc(generation: int, conf: str) -> dict:  # type: ignore[type-arg]
        d = kit.manifest_doc(generation=generation, files={"/etc/nginx/site.conf": conf})
        d["resources"][0].update(notify=["nginx"])
        d["resources"].append(
            {
                "type": "service",
                "name": "nginx",
                "enabled": True,
                "state": "running",
                "requires": [],
            }
        )
        return d

    server.serve(kit.signed(doc(2, "listen 80;\n"), keys.signers))
    config = kit.write_config(
        tmp_path,
        keys.trust_root,
        [server.url()],
        package_manager="simulated",
        service_manager="simulated",
    )
    assert agent_cli("once", "--config", str(config)).returncode == 0
    server.serve(kit.signed(doc(3, "listen 8080;\n"), keys.signers))
    code, report = _check(config)
    assert code == 1
    assert [(r["id"], r["status"]) for r in report["resources"]] == [
        ("file:/etc/nginx/site.conf", "would_change"),
        ("service:nginx", "in_sync"),
        ("service:nginx", "would_restart"),
    ]
    restarts = [r for r in report["resources"] if r["status"] == "would_restart"]
    assert restarts == [
        {
            "id": "service:nginx",
            "type": "service",
            "status": "would_restart",
            "diff": "notified by /etc/nginx/site.conf",
        }
    ]
