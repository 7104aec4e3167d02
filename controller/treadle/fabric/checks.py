"""Checks beyond the schemas: path policy, modes, lifecycle rules, fleet invariants.

Each check returns :class:`Finding` values: a file and a key path inside it.
The renderer turns them into located :class:`~treadle.errors.Diagnostic`
values, re-reading only the files that have findings. Checks never stop at
the first problem: a run reports everything it finds.
"""

from __future__ import annotations

import posixpath
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from treadle.fabric.yamlload import DELETE
from treadle_agent.contract.names import LIFECYCLE_STATES

DEFAULT_ALLOWED_ROOTS = ("/etc", "/usr/local", "/opt", "/var/lib", "/srv")
DEFAULT_LIFECYCLE = "production"
#: state -> states reachable from it (besides staying). Retired is final.
DEFAULT_TRANSITIONS: dict[str, frozenset[str]] = {
    "provisioning": frozenset({"production", "retired"}),
    "production": frozenset({"draining", "retired"}),
    "draining": frozenset({"production", "maintenance", "retired"}),
    "maintenance": frozenset({"production", "retired"}),
    "retired": frozenset(),
}
PATH_SECTIONS = ("files", "directories", "symlinks")
_SINGULAR = {"files": "file", "directories": "directory", "symlinks": "symlink"}


@dataclass(frozen=True, slots=True)
class Finding:
    """A problem at ``keypath`` in ``path`` (an empty key path means the whole file)."""

    path: str
    keypath: tuple[Any, ...]
    code: str
    message: str
    hint: str = ""


def path_problem(path: str, allowed_roots: Sequence[str]) -> str | None:
    """Why a resource path is refused, or None: absolute, normalized, no ``..``, no NUL, inside an allowed root."""
    if "\x00" in path:
        return "contains a NUL byte"
    if not path.startswith("/"):
        return "is relative"
    if ".." in path.split("/"):
        return "contains '..'"
    if posixpath.normpath(path) != path or path.startswith("//"):
        return f"is not normalized (write {posixpath.normpath(path)})"
    if not any(path == root or path.startswith(root.rstrip("/") + "/") for root in allowed_roots):
        return f"is outside the allowed roots ({', '.join(allowed_roots)})"
    return None


def check_paths(
    path: str, prefix: tuple[Any, ...], body: Any, allowed_roots: Sequence[str]
) -> list[Finding]:
    """Path policy for the resource keys one overlay body declares."""
    found: list[Finding] = []
    if not isinstance(body, dict):
        return found
    for section in PATH_SECTIONS:
        entries = body.get(section)
        if not isinstance(entries, dict):
            continue
        for key, value in entries.items():
            why = path_problem(str(key), allowed_roots)
            if why is not None and value is not DELETE:
                kind = _SINGULAR[section]
                found.append(
                    Finding(
                        path,
                        (*prefix, section, key),
                        "path-policy",
                        f"{kind} path {key!r} {why}",
                        "use an absolute, normalized path inside fabric.yaml policy.allowed_roots",
                    )
                )
    return found


def has_special_modes(resources: Iterable[Mapping[str, Any]]) -> bool:
    """Whether a file or directory of ``resources`` has a mode with setuid, setgid or sticky bits."""
    return any(
        r.get("type") in ("file", "directory") and r.get("mode") and int(r["mode"], 8) & 0o7000
        for r in resources
    )


def special_mode_problems(
    resources: Iterable[Mapping[str, Any]], patterns: Sequence[str]
) -> list[Any]:
    """Files and directories whose mode has setuid, setgid or sticky bits on a path no ``policy.special_modes``
    pattern allows (the agent refuses them again: node-agent providers/base.py ``check_special_mode``)."""
    import fnmatch

    from treadle.fabric.nodemanifest import BuildProblem

    out = []
    for r in resources:
        mode = r.get("mode") if r.get("type") in ("file", "directory") else None
        if (
            mode
            and int(mode, 8) & 0o7000
            and not any(fnmatch.fnmatchcase(r["path"], p) for p in patterns)
        ):
            section = "files" if r["type"] == "file" else "directories"
            out.append(
                BuildProblem(
                    (section, r["path"], "mode"),
                    "special-mode",
                    f"{r['type']} {r['path']!r}: mode {mode} has setuid, setgid or sticky bits",
                    "allow the path in fabric.yaml policy.special_modes, or drop those bits",
                )
            )
    return out


def schema_finding(path: str, keypath: tuple[Any, ...], message: str, value: Any) -> Finding:
    """A schema violation, with the messages people need for the two classic mistakes."""
    where = json_path(keypath)
    if keypath and keypath[-1] == "mode" and type(value) is int:
        octal = set(str(value)) <= set("01234567")
        return Finding(
            path,
            keypath,
            "integer-mode",
            f"{where}: mode {value} is an integer; modes are strings (YAML 1.2 reads 0644 as decimal 644)",
            f'quote it: mode: "{value:04d}"' if octal else 'quote it, e.g. mode: "0644"',
        )
    if keypath == ("lifecycle",):
        return Finding(
            path,
            keypath,
            "lifecycle",
            f"unknown lifecycle state {value!r}",
            f"one of {', '.join(LIFECYCLE_STATES)}",
        )
    return Finding(
        path,
        keypath,
        "schema",
        f"{where}: {message}",
        "see schemas/ for the allowed fields and values",
    )


def json_path(keypath: Iterable[Any]) -> str:
    """``$.files['/etc/chrony.conf'].mode``: a key path as people read it."""
    out = "$"
    for part in keypath:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and part.isidentifier():
            out += f".{part}"
        else:
            out += f"[{str(part)!r}]"
    return out


def transitions(fabric: Mapping[str, Any]) -> dict[str, frozenset[str]]:
    """Allowed lifecycle transitions: fabric.yaml lifecycle.transitions, or the defaults."""
    custom = (
        (fabric.get("lifecycle") or {}).get("transitions") if isinstance(fabric, dict) else None
    )
    if not isinstance(custom, dict):
        return DEFAULT_TRANSITIONS
    return {state: frozenset(custom.get(state) or ()) for state in LIFECYCLE_STATES}


@dataclass(frozen=True, slots=True)
class NodeFacts:
    """What the fleet checks need of a node: identity, file and lifecycle."""

    name: str
    site: str
    cluster: str
    path: str
    address: str | None
    lifecycle: str
    #: False when the node file does not parse (or its lifecycle is not a string): ``lifecycle`` is then
    #: the default, not what the file says, and no transition is assumed from or to it.
    lifecycle_known: bool = True
    identity: str | None = None  # the node's age recipient (identity:), when its file names one


def check_fleet(
    nodes: Sequence[NodeFacts], fabric: Mapping[str, Any], base: Mapping[str, str] | None
) -> list[Finding]:
    """Duplicate names and addresses, the out-of-production share, lifecycle transitions (given the base revision's states)."""
    return [
        *_duplicates(nodes),
        *_out_of_production(nodes, fabric, base),
        *_transitions(nodes, fabric, base),
    ]


def check_transitions(
    nodes: Sequence[NodeFacts], fabric: Mapping[str, Any], base: Mapping[str, str]
) -> list[Finding]:
    """The lifecycle transitions of ``nodes`` from their states in ``base`` (the part of :func:`check_fleet`
    that concerns each node alone)."""
    return _transitions(nodes, fabric, base)


def out_of_production_limit(fabric: Mapping[str, Any]) -> float | None:
    """fabric.yaml ``lifecycle.max_out_of_production``, when set."""
    limit = (
        (fabric.get("lifecycle") or {}).get("max_out_of_production")
        if isinstance(fabric, dict)
        else None
    )
    return limit if isinstance(limit, int | float) else None


def _duplicates(nodes: Sequence[NodeFacts]) -> list[Finding]:
    found = []
    for field, keypath, code in (
        ("name", (), "duplicate-node"),
        ("address", ("address",), "duplicate-address"),
        ("identity", ("identity",), "duplicate-identity"),
    ):
        groups: dict[str, list[NodeFacts]] = defaultdict(list)
        for n in nodes:
            value = getattr(n, field)
            if value is not None:
                groups[value].append(n)
        for value, group in groups.items():
            for n in group if len(group) > 1 else ():
                others = ", ".join(o.path for o in group if o is not n)
                found.append(
                    Finding(
                        n.path,
                        keypath,
                        code,
                        f"{field} {value!r} is also used by {others}",
                        "node names (file names), addresses and identities must be unique across the fabric"
                        + (
                            " (fix: run `treadle-agent enroll` on the node and record what it prints)"
                            if field == "identity"
                            else ""
                        ),
                    )
                )
    return found


def _out_of_production(
    nodes: Sequence[NodeFacts], fabric: Mapping[str, Any], base: Mapping[str, str] | None
) -> list[Finding]:
    limit = out_of_production_limit(fabric)
    if limit is None:
        return []
    clusters: dict[tuple[str, str], list[NodeFacts]] = defaultdict(list)
    for n in nodes:
        if n.lifecycle != "retired":
            clusters[(n.site, n.cluster)].append(n)
    found = []
    for (site, cluster), members in sorted(clusters.items()):
        out = [n for n in members if n.lifecycle != "production"]
        if len(out) <= limit * len(members):
            continue
        # Blame the nodes that just left production when the base is known; otherwise every one out.
        blamed = [
            n for n in out if base is None or base.get(n.name, DEFAULT_LIFECYCLE) == "production"
        ] or out
        for n in blamed:
            found.append(
                Finding(
                    n.path,
                    ("lifecycle",),
                    "max-out-of-production",
                    f"cluster {site}/{cluster} would have {len(out)} of {len(members)} non-retired nodes outside production, "
                    f"more than fabric.yaml lifecycle.max_out_of_production {limit:g}",
                    "bring other nodes back to production first, or change fewer nodes at once",
                )
            )
    return found


def _transitions(
    nodes: Sequence[NodeFacts], fabric: Mapping[str, Any], base: Mapping[str, str] | None
) -> list[Finding]:
    if base is None:
        return []
    allowed = transitions(fabric)
    found = []
    for n in nodes:
        before = base.get(n.name)
        if before is None or before == n.lifecycle or not n.lifecycle_known:
            continue
        if n.lifecycle not in allowed.get(before, frozenset()):
            reachable = ", ".join(sorted(allowed.get(before, ()))) or "nothing (final)"
            found.append(
                Finding(
                    n.path,
                    ("lifecycle",),
                    "lifecycle-transition",
                    f"lifecycle {before} -> {n.lifecycle} is not allowed",
                    f"from {before} a node may go to: {reachable}",
                )
            )
    return found
