"""The plan as JSON for bots: every node, every change, described by schemas/plan.json.

Keys are sorted and lists have a fixed order (nodes by name, groups largest
first), so the same two commits always give the same bytes. Unlike the
Markdown comment nothing is collapsed or truncated.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from treadle.review.changes import NodeRef, ResourceChange
from treadle.review.group import Group
from treadle.review.plan import Plan
from treadle.review.provenance import ValueSource

API_VERSION = "treadle.dev/v1"
KIND = "Plan"


def plan_dict(plan: Plan) -> dict[str, Any]:
    """The plan as plain JSON values (schemas/plan.json)."""
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "ok": plan.ok,
        "base": {"rev": plan.base.rev, "commit": plan.base.commit, "ok": plan.base_ok},
        "head": {"rev": plan.head.rev, "commit": plan.head.commit},
        "summary": summary(plan),
        "rollout": _rollout(plan),
        "groups": [_group(g, p) for g, p in zip(plan.groups, plan.provenance, strict=True)],
        "added": [_ref(n) for n in plan.changes.added],
        "removed": [_ref(n) for n in plan.changes.removed],
        "unrendered": [_ref(n) for n in plan.changes.unrendered],
        "errors": [d.as_dict() for d in plan.errors],
        "refusals": [d.as_dict() for d in plan.refusals],
        "provenance_skipped": plan.provenance_skipped,
        "stats": {
            "base_nodes": plan.stats.base_nodes,
            "head_nodes": plan.stats.head_nodes,
            "head_rendered": plan.stats.head_rendered,
            "untouched": plan.stats.untouched,
        },
    }


def render_json(plan: Plan) -> str:
    """The JSON document, sorted keys, two-space indent, ending in a newline."""
    return json.dumps(plan_dict(plan), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def summary(plan: Plan) -> dict[str, Any]:
    """Counts in total and per site/cluster, and the lifecycle transitions."""
    c = plan.changes
    counts: dict[str, Counter[tuple[str, str]]] = {
        "changed": Counter((n.site, n.cluster) for n in c.changed),
        "added": Counter((n.site, n.cluster) for n in c.added),
        "removed": Counter((n.site, n.cluster) for n in c.removed),
        "unrendered": Counter((n.site, n.cluster) for n in c.unrendered),
    }
    places = sorted(set().union(*(set(v) for v in counts.values())))
    extra = (
        {
            "base_unreadable": [
                {"node": n.name, "site": n.site, "cluster": n.cluster} for n in c.base_unreadable
            ]
        }
        if c.base_unreadable
        else {}
    )
    return {
        **extra,
        "changed": len(c.changed),
        "added": len(c.added),
        "removed": len(c.removed),
        "unrendered": len(c.unrendered),
        "by_cluster": [
            {"site": s, "cluster": cl, **{k: v[(s, cl)] for k, v in counts.items()}}
            for s, cl in places
        ],
        "transitions": [
            {"node": t.name, "site": t.site, "cluster": t.cluster, "from": t.before, "to": t.after}
            for t in c.transitions
        ],
    }


def _rollout(plan: Plan) -> dict[str, Any]:
    r = plan.rollout
    return {
        "waves": [
            {
                "name": w.name,
                "count": len(w.nodes),
                "nodes": list(w.nodes),
                "soak_s": w.soak_s,
                "approval": w.approval,
            }
            for w in r.waves
        ],
        "windows": list(r.windows),
        "freezes": list(r.freezes),
        "blocked": r.blocked,
        "immediate": r.immediate,
        "policy_error": r.policy_error,
    }


def _group(group: Group, provenance: dict[str, tuple[ValueSource, ...] | None]) -> dict[str, Any]:
    return {
        "title": group.title,
        "count": len(group.nodes),
        "clusters": list(group.places),
        "example": group.example.name,
        "nodes": [n.name for n in group.nodes],
        "changes": [_change(c, provenance.get(c.rid)) for c in group.changes],
    }


def _change(change: ResourceChange, sources: tuple[ValueSource, ...] | None) -> dict[str, Any]:
    return {
        "resource": change.rid,
        "type": change.type,
        "key": change.key,
        "change": change.change,
        "fields": list(change.fields),
        "summary": change.summary,
        "diff": change.diff,
        "sources": None if sources is None else [_source(s) for s in sources],
    }


def _source(source: ValueSource) -> dict[str, Any]:
    return {
        "keypath": source.keypath,
        "settings": [
            {
                "file": s.file,
                "line": s.line,
                "col": s.col,
                "how": s.how,
                "value": s.value,
                "commit": s.commit,
                "in_change": s.in_change,
            }
            for s in source.settings
        ],
    }


def _ref(node: NodeRef) -> dict[str, Any]:
    return {
        "node": node.name,
        "site": node.site,
        "cluster": node.cluster,
        "lifecycle": node.lifecycle,
    }
