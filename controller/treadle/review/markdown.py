"""The plan as a pull-request comment (GitHub-flavoured Markdown).

Order of importance decides order of appearance, and what is cut when the
comment would exceed GitHub's 65,536-character limit: the verdict, errors and
refusals, the summary and the rollout come first and always fit (each list
capped); the change groups follow, each a collapsible ``<details>`` section,
as many as fit; then added and removed nodes. Whatever did not fit is named
in a closing note that points to ``--format json``, which is never cut.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from treadle.errors import Diagnostic
from treadle.review.changes import NodeRef
from treadle.review.group import Group
from treadle.review.jsonreport import summary
from treadle.review.plan import Plan
from treadle.review.provenance import ValueSource

#: The marker CI looks for to update its own comment instead of adding one per push.
MARKER = "<!-- treadle-plan -->"


@dataclass(frozen=True, slots=True)
class MarkdownLimits:
    """Sizes in characters; ``max_chars`` stays below GitHub's 65,536 with room for the closing note."""

    max_chars: int = 64_000
    max_nodes: int = 20
    max_diff_chars: int = 6_000
    max_list_items: int = 100


def render_markdown(plan: Plan, limits: MarkdownLimits | None = None) -> str:
    """The comment; never longer than ``limits.max_chars``."""
    limits = limits or MarkdownLimits()
    head = "\n".join(
        [
            *_header(plan),
            *_problems(plan, limits),
            *_summary(plan, limits),
            *_rollout(plan, limits),
            *_changes_heading(plan),
        ]
    )
    tail_note = "\n\n---\n_Not shown, to stay within the comment size limit: {}. Run `treadle plan --format json` for everything._\n"
    reserve = len(tail_note) + 200
    parts, left_out = [head], list[str]()
    used = len(head)
    sections = [
        (f"group {i + 1} ({len(g.nodes)} nodes)", _group(g, p, limits))
        for i, (g, p) in enumerate(zip(plan.groups, plan.provenance, strict=True))
    ]
    sections += [(what, text) for what, text in _node_lists(plan, limits)]
    for what, text in sections:
        if not left_out and used + len(text) + 1 + reserve <= limits.max_chars:
            parts.append(text)
            used += len(text) + 1
        else:
            left_out.append(what)
    out = "\n".join(parts) + "\n"
    if left_out:
        out += tail_note.format(_shorten(left_out))
    return out[: limits.max_chars]


def _shorten(items: Sequence[str]) -> str:
    return (
        ", ".join(items)
        if len(items) <= 8
        else ", ".join(items[:8]) + f" and {len(items) - 8} more sections"
    )


def _header(plan: Plan) -> list[str]:
    lines = [
        MARKER,
        f"## Treadle plan: `{plan.base.rev}` ({plan.base.commit[:12]}) → `{plan.head.rev}` ({plan.head.commit[:12]})",
        "",
    ]
    if plan.ok:
        lines.append("**HEAD is valid.**")
    else:
        lines.append(
            f"**HEAD is invalid: {len(plan.errors)} error(s), {len(plan.refusals)} refusal(s). "
            "The controller will refuse this commit.**"
        )
    if not plan.base_ok:
        lines.append(
            "\n_Note: BASE itself does not validate; its broken nodes count as not rendered._"
        )
    return [*lines, ""]


def _problems(plan: Plan, limits: MarkdownLimits) -> list[str]:
    out = []
    for title, diags in (("Errors", plan.errors), ("Refusals", plan.refusals)):
        if diags:
            out += [
                f"### {title} ({len(diags)})",
                "",
                *_capped(
                    (f"- `{_code(d)}`" for d in diags), len(diags), limits.max_list_items, "more"
                ),
                "",
            ]
    return out


def _code(d: Diagnostic) -> str:
    return str(d).replace("`", "'")


def _summary(plan: Plan, limits: MarkdownLimits) -> list[str]:
    s = summary(plan)
    out = [
        "### Summary",
        "",
        f"{s['changed']} changed, {s['added']} added, {s['removed']} removed"
        + (f", {s['unrendered']} not rendered (see errors)" if s["unrendered"] else "")
        + " node(s)."
        + (
            f" {plan.stats.untouched} other node(s) read no file this change touches and were not rendered."
            if plan.stats.untouched
            else ""
        ),
        "",
    ]
    rows = s["by_cluster"]
    if rows:
        out += [
            "| site/cluster | changed | added | removed | not rendered |",
            "|---|---:|---:|---:|---:|",
        ]
        out += _capped(
            (
                f"| {r['site']}/{r['cluster']} | {r['changed']} | {r['added']} | {r['removed']} | {r['unrendered']} |"
                for r in rows
            ),
            len(rows),
            limits.max_list_items,
            "more clusters",
        )
        out.append("")
    transitions = s["transitions"]
    if transitions:
        out += [f"**Lifecycle transitions ({len(transitions)})**", ""]
        out += _capped(
            (
                f"- `{t['node']}` ({t['site']}/{t['cluster']}): {t['from']} → {t['to']}"
                for t in transitions
            ),
            len(transitions),
            limits.max_list_items,
            "more",
        )
        out.append("")
    unreadable = s.get("base_unreadable", [])
    if unreadable:
        out += [
            f"**Unreadable in BASE ({len(unreadable)})**: these node files do not parse in BASE, so their "
            "lifecycle there is unknown and no transition is assumed",
            "",
        ]
        out += _capped(
            (f"- `{u['node']}` ({u['site']}/{u['cluster']})" for u in unreadable),
            len(unreadable),
            limits.max_list_items,
            "more",
        )
        out.append("")
    return out


def _rollout(plan: Plan, limits: MarkdownLimits) -> list[str]:
    r = plan.rollout
    out = ["### Rollout", ""]
    if r.policy_error:
        return [*out, f"Rollout policy unusable: {r.policy_error}", ""]
    out += ["| wave | nodes | soak | approval |", "|---|---:|---:|---|"]
    out += [
        f"| {w.name} | {len(w.nodes)} | {w.soak_s} s | {'required' if w.approval else 'no'} |"
        for w in r.waves
    ]
    out.append("")
    out.append(
        "Change windows: " + ("; ".join(r.windows) if r.windows else "none (any time)") + "."
    )
    if r.freezes:
        out.append("Freezes: " + "; ".join(r.freezes) + ".")
    if r.blocked:
        out.append(
            f"A rollout starting now would wait: {r.blocked}"
            + (" (the emergency trailer overrides it)." if r.immediate else ".")
        )
    if r.immediate:
        out.append(
            "Emergency trailer `Treadle-Rollout: immediate` is **present**: no soak, windows ignored."
        )
    else:
        out.append("Emergency trailer `Treadle-Rollout: immediate`: absent.")
    return [*out, ""]


def _changes_heading(plan: Plan) -> list[str]:
    if not plan.groups:
        return []
    return [
        f"### Changes ({len(plan.groups)} group{'s' if len(plan.groups) != 1 else ''} of nodes that change the same way)",
        "",
        "Each value's sources in HEAD are listed winner first; ✎ marks a setting this change adds or modifies.",
        "",
    ]


def _group(
    group: Group, provenance: dict[str, tuple[ValueSource, ...] | None], limits: MarkdownLimits
) -> str:
    lines = ["<details>", f"<summary>{html.escape(group.title)}</summary>", ""]
    lines.append("Nodes: " + _node_names([n.name for n in group.nodes], limits.max_nodes))
    lines.append("")
    if len(group.nodes) > 1:
        lines += [
            f"Diff shown for `{group.example.name}`; the others differ only in their own name and address.",
            "",
        ]
    for change in group.changes:
        lines.append(f"**{change.rid}**: {change.summary}")
        lines += ["", *_fenced(change.diff, limits.max_diff_chars), ""]
        lines += _sources(provenance.get(change.rid))
    lines += ["</details>", ""]
    return "\n".join(lines)


def _fenced(diff: str, max_chars: int) -> list[str]:
    text = (
        diff
        if len(diff) <= max_chars
        else diff[:max_chars].rsplit("\n", 1)[0]
        + f"\n... ({len(diff) - max_chars} more characters of diff)\n"
    )
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return [fence + "diff", text.rstrip("\n"), fence]


def _sources(sources: tuple[ValueSource, ...] | None) -> list[str]:
    if sources is None:
        return ["_Sources not looked up (lookup budget spent; `treadle explain` shows them)._", ""]
    if not sources:
        return []
    out = ["Where it comes from in HEAD:"]
    for source in sources:
        if source.keypath.startswith("template:"):
            setting = source.settings[0]
            out.append(
                f"- template `{setting.file}`" + (" (changed here)" if setting.in_change else "")
            )
            continue
        where = (
            ", ".join(
                f"`{s.file}:{s.line}`"
                + (f" ({s.how})" if s.how != "set" else "")
                + (" ✎" if s.in_change else "")
                for s in source.settings
            )
            or "not set in HEAD"
        )
        out.append(f"- `{source.keypath}`: {where}")
    return [*out, ""]


def _node_names(names: Sequence[str], max_nodes: int) -> str:
    shown = ", ".join(f"`{n}`" for n in names[:max_nodes])
    return shown + (f" and {len(names) - max_nodes} more" if len(names) > max_nodes else "")


def _node_lists(plan: Plan, limits: MarkdownLimits) -> Iterable[tuple[str, str]]:
    c = plan.changes
    for title, nodes in (
        ("Added nodes", c.added),
        ("Removed nodes", c.removed),
        ("Not rendered (see errors)", c.unrendered),
    ):
        if nodes:
            yield title.lower(), _ref_list(title, nodes, limits)


def _ref_list(title: str, nodes: Sequence[NodeRef], limits: MarkdownLimits) -> str:
    lines = ["<details>", f"<summary>{title} ({len(nodes)})</summary>", ""]
    lines += _capped(
        (f"- `{n.name}` ({n.site}/{n.cluster}, {n.lifecycle})" for n in nodes),
        len(nodes),
        limits.max_nodes,
        "more",
    )
    return "\n".join([*lines, "", "</details>", ""])


def _capped(items: Iterable[str], total: int, cap: int, noun: str) -> list[str]:
    out = [item for _, item in zip(range(cap), items, strict=False)]
    if total > cap:
        out.append(f"- … and {total - cap} {noun}")
    return out
