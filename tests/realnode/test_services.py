"""Services on a real systemd: unit files the manifest changes, starts that do nothing, static/masked/alias units.

One node for the whole module. The probe unit writes the version of its
ExecStart to /run/treadle-probe when it starts, so a restart that kept the
old definition shows.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from support.nodefleet import RealNode, boot_real_node

HEAD = "apiVersion: treadle.dev/v1\nkind: Profile\n"
UNIT = "/etc/systemd/system/treadle-probe.service"
DROPIN_DIR = "/etc/systemd/system/treadle-probe.service.d"


def unit_text(version: str) -> str:
    return (
        f"[Unit]\\nDescription=probe {version}\\n[Service]\\n"
        f"ExecStart=/bin/sh -c 'echo {version} > /run/treadle-probe; exec sleep infinity'\\n"
        "[Install]\\nWantedBy=multi-user.target\\n"
    )


def probe(version: str, extra: str = "", services: str = "") -> str:
    return (
        HEAD + f'files:\n  {UNIT}:\n    content: "{unit_text(version)}"\n    mode: "0644"\n'
        f"    notify: [treadle-probe]\n{extra}"
        f'services:\n  treadle-probe: {{enabled: true, state: running, requires: ["file:{UNIT}"]}}\n{services}'
    )


@pytest.fixture(scope="module")
def rn(
    tmp_path_factory: pytest.TempPathFactory, realnode_cache: tuple[Path, Path], realnode_keys: Path
) -> Iterator[RealNode]:
    yield from boot_real_node(tmp_path_factory, realnode_cache, realnode_keys, probe("v1"))


def test_a_new_unit_file_is_started_and_enabled(rn: RealNode) -> None:
    out = rn.once()
    assert out.returncode == 0, out.output
    assert rn.active("treadle-probe") == "active" and rn.enabled("treadle-probe") == "enabled"
    assert rn.sh("cat /run/treadle-probe") == "v1"


def test_a_changed_unit_file_is_reloaded_before_the_restart(rn: RealNode) -> None:
    rn.publish(probe("v2"))
    out = rn.once()
    assert out.returncode == 0 and out.done["restarted"] == ["treadle-probe"], out.output
    assert rn.sh("cat /run/treadle-probe") == "v2"
    assert rn.sh("systemctl show -p NeedDaemonReload --value treadle-probe") == "no"
    rc, report = rn.check()
    assert rc == 0, report


def test_a_changed_drop_in_is_reloaded_before_the_restart(rn: RealNode) -> None:
    dropin = "[Service]\\nExecStart=\\nExecStart=/bin/sh -c 'echo v3 > /run/treadle-probe; exec sleep infinity'\\n"
    rn.publish(
        probe(
            "v2",
            f'  {DROPIN_DIR}/10-treadle.conf:\n    content: "{dropin}"\n    mode: "0644"\n'
            "    notify: [treadle-probe]\n",
        )
    )
    out = rn.once()
    assert out.returncode == 0 and out.done["restarted"] == ["treadle-probe"], out.output
    assert rn.sh("cat /run/treadle-probe") == "v3"
    assert rn.sh("systemctl show -p NeedDaemonReload --value treadle-probe") == "no"
    # Dropped from the manifest, the drop-in (the agent's) is removed and systemd reloaded; the service keeps
    # what it runs until something restarts it.
    rn.publish(probe("v2"))
    assert rn.once().returncode == 0
    assert not rn.node.path(f"{DROPIN_DIR}/10-treadle.conf").exists()
    assert rn.sh("systemctl show -p NeedDaemonReload --value treadle-probe") == "no"
    rn.sh("systemctl restart treadle-probe")
    assert rn.sh("cat /run/treadle-probe") == "v2"


def test_check_predicts_a_start_for_a_stopped_service_whose_file_changed_not_a_restart(
    rn: RealNode,
) -> None:
    rn.publish(probe("v4"))
    rn.sh("systemctl stop treadle-probe")
    rc, report = rn.check()
    statuses = {(r["id"], r["status"]) for r in report["resources"]}
    assert rc == 1 and ("service:treadle-probe", "drifted") in statuses, report
    assert ("service:treadle-probe", "would_restart") not in statuses, report
    out = rn.once()
    assert out.returncode == 0 and out.done["restarted"] == [], out.output
    assert out.status("service:treadle-probe") == "healed"
    assert rn.sh("cat /run/treadle-probe") == "v4"


def test_a_start_that_has_no_effect_fails_with_the_reason_every_run(rn: RealNode) -> None:
    cond = (
        "[Unit]\\nConditionPathExists=/treadle-never\\n[Service]\\nExecStart=/bin/sleep infinity\\n"
    )
    once = "[Service]\\nType=oneshot\\nExecStart=/bin/true\\n"
    rn.publish(
        probe(
            "v4",
            f'  /etc/systemd/system/treadle-cond.service: {{content: "{cond}", mode: "0644"}}\n'
            f'  /etc/systemd/system/treadle-once.service: {{content: "{once}", mode: "0644"}}\n',
            '  treadle-cond: {state: running, requires: ["file:/etc/systemd/system/treadle-cond.service"]}\n'
            '  treadle-once: {state: running, requires: ["file:/etc/systemd/system/treadle-once.service"]}\n',
        )
    )
    for _ in range(2):
        out = rn.once()
        assert out.returncode == 1, out.output
        assert out.status("service:treadle-cond") == "failed" and "Condition" in out.message(
            "service:treadle-cond"
        )
        assert out.status("service:treadle-once") == "failed" and "had no effect" in out.message(
            "service:treadle-once"
        )
        assert out.done["ok"] is False


def test_static_masked_and_alias_units_are_handled_explicitly(rn: RealNode) -> None:
    static = "[Service]\\nExecStart=/bin/sleep infinity\\n"
    real = "[Service]\\nExecStart=/bin/sleep infinity\\n[Install]\\nWantedBy=multi-user.target\\nAlias=treadle-alias.service\\n"
    rn.sh(
        "mkdir -p /usr/local/lib/systemd/system && printf '[Service]\\nExecStart=/bin/sleep infinity\\n'"
        " > /usr/local/lib/systemd/system/treadle-masked.service"
        " && systemctl daemon-reload && systemctl mask treadle-masked"
    )
    files = (
        f'  /etc/systemd/system/treadle-static.service: {{content: "{static}", mode: "0644"}}\n'
        f'  /etc/systemd/system/treadle-real.service: {{content: "{real}", mode: "0644"}}\n'
    )
    rn.publish(
        probe(
            "v4",
            files,
            '  treadle-static: {enabled: true, state: running, requires: ["file:/etc/systemd/system/treadle-static.service"]}\n'
            '  treadle-real: {enabled: true, state: running, requires: ["file:/etc/systemd/system/treadle-real.service"]}\n'
            "  treadle-masked: {enabled: true}\n"
            '  treadle-alias: {enabled: true, requires: ["service:treadle-real"]}\n',
        )
    )
    out = rn.once()
    assert out.status("service:treadle-static") == "changed", (
        out.output
    )  # started; nothing to enable
    assert "does not unmask" in out.message("service:treadle-masked")
    assert out.status(
        "service:treadle-alias"
    ) == "failed" and "alias of treadle-real.service" in out.message("service:treadle-alias")
    again = rn.once()
    assert (
        again.status("service:treadle-static") == "in_sync"
        and rn.enabled("treadle-static") == "static"
    ), again.output
    assert rn.enabled("treadle-masked") == "masked"
