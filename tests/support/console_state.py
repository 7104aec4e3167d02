"""A controller's state for the console tests: real SQLite state, a real publish store, a real rollout service.

The nodes' manifests are DSSE envelopes written to the store as the pipeline
writes them (signatures are not checked by readers); one node carries an XSS
attempt in a label, as any fabric author could write it.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from support.api_server import serving  # noqa: F401 (the console tests serve their state with it)
from treadle.daemon.api import ApiContext
from treadle.daemon.metrics import ControllerMetrics
from treadle.daemon.publish import PublishStore
from treadle.daemon.state import NodeRecord, StateDB
from treadle.rollout.machine import Observation
from treadle.rollout.observe import Target
from treadle.rollout.policy import from_doc
from treadle.rollout.service import RolloutService
from treadle.rollout.waves import Candidate

SHA = "ab" * 20
XSS = "<script>alert('x')</script>"


class NoAgents:
    """The health source of a controller whose agents never answer (none runs in these tests)."""

    async def observe(self, targets: Sequence[Target]) -> dict[str, Observation]:
        return {}


def envelope(manifest: dict[str, Any]) -> bytes:
    payload = base64.b64encode(json.dumps(manifest, sort_keys=True).encode()).decode()
    return json.dumps(
        {
            "payloadType": "application/vnd.treadle.manifest+json",
            "payload": payload,
            "signatures": [],
        }
    ).encode()


def manifest(
    name: str, site: str, cluster: str, labels: dict[str, str], generation: int
) -> dict[str, Any]:
    return {
        "apiVersion": "treadle.dev/v1",
        "kind": "NodeManifest",
        "metadata": {
            "node": name,
            "site": site,
            "cluster": cluster,
            "address": "127.0.0.1",
            "fabric": "f",
            "generation": generation,
            "commit": SHA,
            "issued": None,
            "expires": None,
            "lifecycle": "production",
            "labels": labels,
        },
        "resources": [
            {
                "type": "file",
                "path": "/etc/motd",
                "ensure": "present",
                "content": labels.get("note", "hi"),
                "sha256": "0" * 64,
                "mode": "0644",
                "owner": "root",
                "group": "root",
                "notify": [],
                "requires": [],
            },
            {
                "type": "package",
                "name": "chrony",
                "ensure": "present",
                "version": None,
                "requires": [],
            },
        ],
        "health": [],
    }


@dataclass
class Fleet:
    ctx: ApiContext
    triggered: list[int]
    rollout_id: int


def make_fleet(tmp_path: Path, n: int = 12, admin_token: bytes | None = None) -> Fleet:
    """``n`` nodes over two sites, node ``n000`` with the XSS label, a rollout of all of them waiting for approval."""
    store = PublishStore(tmp_path / "pub")
    state = StateDB(tmp_path / "state.db")
    labels = {
        f"n{i:03d}": {
            "canary": "true" if i == 0 else "false",
            "rack": f"r{i % 3}",
            "room": "A",
            "unit": str(i // 3 % 42 + 1),
        }
        for i in range(n)
    }
    labels["n000"]["note"] = XSS
    sites = {name: ("s1" if i % 2 == 0 else "s2") for i, name in enumerate(labels)}
    state.reserve(
        [NodeRecord(name, 1, 0, "d", SHA, time.time() + 3600, "production") for name in labels]
    )
    store.publish(
        {name: envelope(manifest(name, sites[name], "c1", labels[name], 1)) for name in labels}
    )
    state.record_deployment(SHA, None, list(labels), [])
    state.record_history([(name, 1, SHA, "Ada <ada@example.com>", "deploy") for name in labels])
    state.record_refusal(
        "cd" * 20, "invalid", f"bad overlay {XSS}", [f"nodes/n1.yaml:3: unknown key {XSS}"]
    )
    rollouts = RolloutService(tmp_path / "rollouts.db", NoAgents())
    policy = from_doc(
        {
            "waves": [
                {
                    "name": "canary",
                    "selector": {"labels": {"canary": "true"}},
                    "soak_s": 10,
                    "approval": True,
                },
                {"name": "rest", "fraction": 1.0, "soak_s": 10},
            ]
        }
    )
    rid = rollouts.begin(
        SHA,
        policy,
        [Candidate(name, sites[name], "c1", labels[name]) for name in labels],
        immediate=False,
    )
    assert rid is not None
    triggered: list[int] = []
    ctx = ApiContext(
        store=store,
        state=state,
        metrics=ControllerMetrics(),
        trigger=lambda: triggered.append(1),
        branch="main",
        repository="/srv/fabric.git",
        admin_token=admin_token,
        rollouts=rollouts,
        scrape_timeout_s=0.5,
    )
    return Fleet(ctx, triggered, rid)
