"""What the console reads from the controller's git mirror: commits, their plans, where a node's values come from.

All three are functions of immutable commits, so :class:`treadle.console.work.Work`
caches them. They run in worker threads, each opening its own handle on the
mirror (a pygit2 repository is not shared between threads). Their results
are plain, bounded values: a plan of a large change is cut to
``PLAN_LIMITS`` before it is kept, so one commit page can neither exhaust
the controller's memory nor the browser's.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pygit2

from treadle.rollout.observe import Target

SHA = re.compile(r"[0-9a-f]{7,40}")
MAX_VALUE_CHARS = 200


@dataclass(frozen=True, slots=True)
class PlanLimits:
    groups: int = 50
    nodes_per_group: int = 25
    diff_chars: int = 20_000
    node_refs: int = 200
    diagnostics: int = 100


PLAN_LIMITS = PlanLimits()


def _repo(mirror: str) -> pygit2.Repository:
    try:
        return pygit2.Repository(mirror)
    except (pygit2.GitError, KeyError, ValueError) as e:
        raise LookupError(f"the controller's mirror {mirror} cannot be read: {e}") from e


def _commit(repo: pygit2.Repository, sha: str) -> pygit2.Commit | None:
    if not SHA.fullmatch(sha):
        return None
    try:
        return repo.revparse_single(sha).peel(pygit2.Commit)
    except (KeyError, ValueError, pygit2.GitError, pygit2.InvalidSpecError):
        return None


def _describe(c: pygit2.Commit) -> dict[str, Any]:
    message = c.message or ""
    return {
        "sha": str(c.id),
        "author": f"{c.author.name} <{c.author.email}>",
        "at": float(c.author.time),
        "subject": message.split("\n", 1)[0][:300],
        "message": message[:4000],
        "parents": [str(p) for p in c.parent_ids],
    }


def commit_info(mirror: str, sha: str) -> dict[str, Any] | None:
    """Author, time, subject and parents of ``sha`` (a full or abbreviated id); None when the mirror lacks it."""
    c = _commit(_repo(mirror), sha)
    return None if c is None else _describe(c)


def commit_plan(mirror: str, sha: str) -> dict[str, Any]:
    """The plan between ``sha``'s first parent and ``sha``, as ``treadle plan`` computes it, cut to PLAN_LIMITS.

    A root commit has no parent to compare with: its plan is None.

    Raises:
        TreadleError: the plan could not be computed (an unreadable revision).
    """
    from treadle.review.jsonreport import plan_dict
    from treadle.review.plan import build_plan

    c = _commit(_repo(mirror), sha)
    if c is None:
        raise LookupError(f"no commit {sha} in the controller's mirror")
    if not c.parent_ids:
        return {"commit": _describe(c), "plan": None}
    parent = str(c.parent_ids[0])
    return {
        "commit": _describe(c),
        "plan": _bounded(plan_dict(build_plan(mirror, parent, str(c.id)))),
    }


def _bounded(plan: dict[str, Any], lim: PlanLimits = PLAN_LIMITS) -> dict[str, Any]:
    """The plan document with long lists and diffs cut, each cut said (``*_more`` counts)."""
    out = dict(plan)
    groups = plan["groups"]
    out["groups_more"] = max(0, len(groups) - lim.groups)
    out["groups"] = []
    for g in groups[: lim.groups]:
        g = dict(g)
        g["nodes_more"] = max(0, len(g["nodes"]) - lim.nodes_per_group)
        g["nodes"] = g["nodes"][: lim.nodes_per_group]
        g["changes"] = [
            {**c, "diff": _cut(c.get("diff") or "", lim.diff_chars)} for c in g["changes"]
        ]
        out["groups"].append(g)
    for key in ("added", "removed", "unrendered"):
        out[f"{key}_more"] = max(0, len(plan[key]) - lim.node_refs)
        out[key] = plan[key][: lim.node_refs]
    for key in ("errors", "refusals"):
        out[f"{key}_more"] = max(0, len(plan[key]) - lim.diagnostics)
        out[key] = plan[key][: lim.diagnostics]
    summary = dict(plan["summary"])
    for key in ("by_cluster", "transitions"):
        summary[f"{key}_more"] = max(0, len(summary[key]) - lim.node_refs)
        summary[key] = summary[key][: lim.node_refs]
    out["summary"] = summary
    rollout = dict(plan["rollout"])
    rollout["waves"] = [{**w, "nodes": w["nodes"][: lim.nodes_per_group]} for w in rollout["waves"]]
    out["rollout"] = rollout
    return out


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + f"\n… {len(text) - limit} more characters"


class ProvenanceReader:
    """Traces a node's values at a commit (``treadle explain`` for each key path of the node).

    The source and parse cache of the last commit asked are kept: the first
    node at a commit pays for listing and loading the fabric, the next ones
    only for their own files. Not thread-safe: one thread calls it (the
    console's provenance pool has one worker).
    """

    def __init__(self, mirror: str) -> None:
        self.mirror = mirror
        self._at: tuple[str, Any, Any] | None = None  # (commit, GitRevisionSource, ParseCache)

    def __call__(self, commit: str, node: str) -> dict[str, Any]:
        """Every value of ``node`` at ``commit`` with the overlays that set it, winner first.

        Raises:
            TreadleError: no such node at that commit, or its files are invalid there.
        """
        from treadle.fabric.cache import ParseCache
        from treadle.fabric.explain import explain_node
        from treadle.fabric.source import GitRevisionSource

        if self._at is None or self._at[0] != commit:
            self._at = None  # a failure below leaves nothing half made
            self._at = (commit, GitRevisionSource(self.mirror, commit), ParseCache())
        _, src, cache = self._at
        values, complete = explain_node(src, node, cache)
        rows = []
        for keypath, chain in values:
            settings = [
                {
                    "value": _value_text(p.value),
                    "file": p.file,
                    "line": p.line,
                    "col": p.col,
                    "how": p.how,
                    "commit": p.blame.commit if p.blame else None,
                    "author": p.blame.author if p.blame else None,
                    "date": p.blame.date if p.blame else None,
                }
                for p in chain
            ]
            rows.append({"keypath": keypath, "settings": settings})
        return {"commit": commit, "node": node, "values": rows, "complete": complete}


def _value_text(value: Any) -> str:
    try:
        text = json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= MAX_VALUE_CHARS else text[: MAX_VALUE_CHARS - 1] + "…"


def agent_targets(mirror: str, commit: str, nodes: Sequence[Any]) -> list[Target]:
    """Where each of ``nodes`` (with ``name``, ``site``, ``cluster``, ``address``) serves its agent's metrics:
    its address, and the ``agent.metrics_port`` of its node file at ``commit`` (the default port when unset)."""
    from treadle.fabric.cache import ParseCache
    from treadle.fabric.nodefile import node_settings
    from treadle.fabric.source import GitRevisionSource
    from treadle_agent.contract.names import DEFAULT_METRICS_PORT

    placed = [n for n in nodes if n.present and n.site and n.cluster and n.address]
    settings = node_settings(GitRevisionSource(mirror, commit), ParseCache(), {}, placed)
    return [
        Target(n.name, n.address, settings[n.name].metrics_port or DEFAULT_METRICS_PORT)
        for n in placed
    ]
