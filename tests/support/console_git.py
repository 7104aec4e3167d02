"""A controller's state made from a real fabric repository: the console's commit and provenance pages read it.

The repository is a git work tree (the console reads it as it reads the
controller's mirror); its HEAD is rendered by the real renderer, and every
node's manifest published to a real publish store, with the state database
saying HEAD is deployed, as the pipeline would after a deploy.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from support import copy_template
from support import git as _git
from support.console_state import XSS, NoAgents, envelope
from support.git import ADA
from treadle.daemon.api import ApiContext
from treadle.daemon.metrics import ControllerMetrics
from treadle.daemon.publish import PublishStore
from treadle.daemon.state import NodeRecord, StateDB
from treadle.fabric import GitRevisionSource, ParseCache, render_fabric
from treadle.rollout.policy import from_doc
from treadle.rollout.service import RolloutService
from treadle.rollout.waves import Candidate

#: The change of the second commit: one node moves rack (a label the console shows, with markup in it).
NODE = "batch-003"
NODE_FILE = "sites/meyrin/batch/nodes/batch-003.yaml"


def git(root: Path, *args: str, author: str | None = None) -> str:
    """git as the fabric's admin (``author``: another author, the same committer)."""
    return _git.git(root, *args, identity=ADA, author=author)


def commit_all(root: Path, message: str, author: str | None = None) -> str:
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", message, author=author)
    return git(root, "rev-parse", "HEAD")


@dataclass
class GitFleet:
    ctx: ApiContext
    root: Path
    first: str
    head: str


def template_repo(root: Path) -> tuple[str, str]:
    """The example fabric in a new git repository (addresses moved to loopback: the console's sweep of the
    agents asks them), then a commit by another author that moves one node to a rack named with markup."""
    copy_template(root)
    for path in root.rglob("*.yaml"):
        text = path.read_text(encoding="utf-8")
        if "192.0.2." in text:
            path.write_text(text.replace("192.0.2.", "127.0.2."), encoding="utf-8")
    git(root, "init", "-q", "-b", "main")
    first = commit_all(root, "Example fabric")
    node_file = root / NODE_FILE
    node_file.write_text(
        node_file.read_text(encoding="utf-8").replace('rack: "r02"', f'rack: "r09{XSS}"'),
        encoding="utf-8",
    )
    head = commit_all(
        root,
        f"Move {NODE} to rack r09 {XSS}\n\nThe old rack is being emptied.",
        author="Grace Hopper",
    )
    return first, head


def make_git_fleet(
    tmp_path: Path, root: Path, first: str, head: str, admin_token: bytes | None = None
) -> GitFleet:
    """The state of a controller that deployed ``head`` of the repository at ``root`` (its mirror)."""
    result = render_fabric(GitRevisionSource(root, head), ParseCache())
    assert result.ok, result.diagnostics[:5]
    nodes = result.nodes
    store = PublishStore(tmp_path / "pub")
    state = StateDB(tmp_path / "state.db")
    state.reserve(
        [
            NodeRecord(n.name, 1, 0, n.digest, head, time.time() + 3600, n.lifecycle)
            for n in nodes.values()
        ]
    )
    store.publish({name: envelope(dict(n.manifest)) for name, n in nodes.items()})
    state.record_deployment(head, first, list(nodes), [])
    state.record_history(
        [(name, 1, head, "Grace Hopper <ada@example.org>", "deploy") for name in nodes]
    )
    rollouts = RolloutService(tmp_path / "rollouts.db", NoAgents())
    policy = from_doc({"waves": [{"name": "all", "fraction": 1.0, "soak_s": 10}]})
    rollouts.begin(
        head,
        policy,
        [Candidate(n.name, n.site, n.cluster, dict(n.labels)) for n in nodes.values()],
        immediate=False,
    )
    ctx = ApiContext(
        store=store,
        state=state,
        metrics=ControllerMetrics(),
        trigger=lambda: None,
        branch="main",
        repository=str(root),
        admin_token=admin_token,
        rollouts=rollouts,
        scrape_timeout_s=0.5,
        mirror=str(root),
    )
    return GitFleet(ctx, root, first, head)
