"""Where things live in a fabric repository, and what is out of place.

    fabric.yaml                              kind: Fabric
    rollout.yaml                             kind: RolloutPolicy
    profiles/<name>.yaml                     kind: Profile (name may contain /)
    templates/<name>                         file templates
    sites/<site>/site.yaml                   kind: Site
    sites/<site>/<cluster>/cluster.yaml      kind: Cluster
    sites/<site>/<cluster>/nodes/<node>.yaml kind: Node

A node's name is its file stem; its site and cluster are the directory names.
A YAML file anywhere else under ``profiles/`` or ``sites/`` is reported: it
would otherwise be silently ignored (a node file outside ``nodes/`` is a node
that never gets a manifest). At the top level, where CI and tool configs live
too, only a YAML file that declares a fabric ``kind`` is reported. Markdown
files are welcome everywhere; other top-level directories are not the fabric's.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from treadle.errors import Diagnostic

FABRIC_FILE = "fabric.yaml"
ROLLOUT_FILE = "rollout.yaml"
PROFILE_DIR = "profiles/"
SITE_DIR = "sites/"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
PROFILE_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]*(/[a-z0-9][a-z0-9_-]*)*$")


@dataclass(frozen=True, slots=True)
class NodeRef:
    """A node file: the node's name, site and cluster, from its path."""

    name: str
    site: str
    cluster: str
    path: str


@dataclass
class Layout:
    """The fabric files of one tree, by role, plus the problems of placement."""

    fabric: str | None = None
    rollout: str | None = None
    profiles: dict[str, str] = field(default_factory=dict)
    sites: dict[str, str] = field(default_factory=dict)
    clusters: dict[tuple[str, str], str] = field(default_factory=dict)
    nodes: list[NodeRef] = field(default_factory=list)
    problems: list[Diagnostic] = field(default_factory=list)
    stray: list[str] = field(
        default_factory=list
    )  # top-level YAML files other than fabric.yaml and rollout.yaml

    def yaml_files(self) -> list[str]:
        """Every fabric YAML file except fabric.yaml, in a stable order."""
        files = [
            *self.profiles.values(),
            *self.sites.values(),
            *self.clusters.values(),
            *(n.path for n in self.nodes),
        ]
        return ([self.rollout] if self.rollout else []) + sorted(files)


def profile_path(name: str) -> str:
    return f"{PROFILE_DIR}{name}.yaml"


def classify(paths: Mapping[str, str] | list[str]) -> Layout:
    """Sort the repository's files into their roles; report misplaced ones."""
    layout = Layout()
    for path in sorted(paths):
        if path == FABRIC_FILE:
            layout.fabric = path
        elif path == ROLLOUT_FILE:
            layout.rollout = path
        elif path == ".gitmodules":
            layout.problems.append(
                Diagnostic(
                    path,
                    0,
                    0,
                    "submodule",
                    "the fabric repository declares submodules",
                    "copy the content into the repository; a fabric holds no submodules",
                )
            )
        elif path.startswith(PROFILE_DIR):
            _profile(layout, path)
        elif path.startswith(SITE_DIR):
            _site_file(layout, path)
        elif "/" not in path and path.endswith((".yaml", ".yml")) and not path.startswith("."):
            layout.stray.append(
                path
            )  # misplaced only if it is a fabric document (CI and tool configs live here too)
    _missing_parents(layout)
    return layout


def _profile(layout: Layout, path: str) -> None:
    if path.endswith(".md"):
        return
    name = path[len(PROFILE_DIR) :].removesuffix(".yaml")
    if not path.endswith(".yaml"):
        _misplaced(
            layout,
            path,
            "profiles/ holds only <name>.yaml files",
            "rename it to .yaml or move it out of profiles/",
        )
    elif not PROFILE_NAME_RE.match(name):
        _misplaced(
            layout,
            path,
            f"profile name {name!r} is not lower-case letters, digits, '-' and '_'",
            "rename the file, e.g. profiles/batch-workers.yaml",
        )
    else:
        layout.profiles[name] = path


def _site_file(layout: Layout, path: str) -> None:
    if path.endswith(".md"):
        return
    parts = path.split("/")[1:]
    if not all(NAME_RE.match(p) for p in parts[:-1]):
        _misplaced(
            layout,
            path,
            "site and cluster directory names are letters, digits, '.', '-' and '_'",
            "rename the directory",
        )
    elif len(parts) == 2 and parts[1] == "site.yaml":
        layout.sites[parts[0]] = path
    elif len(parts) == 3 and parts[2] == "cluster.yaml":
        layout.clusters[(parts[0], parts[1])] = path
    elif len(parts) == 4 and parts[2] == "nodes" and parts[3].endswith(".yaml"):
        name = parts[3].removesuffix(".yaml")
        if NAME_RE.match(name):
            layout.nodes.append(NodeRef(name, parts[0], parts[1], path))
        else:
            _misplaced(
                layout,
                path,
                f"node name {name!r} is not letters, digits, '.', '-' and '_'",
                "rename the node file",
            )
    elif path.endswith(".yml"):
        _misplaced(
            layout, path, "fabric files end in .yaml, not .yml", f"rename it to {path[:-4]}.yaml"
        )
    elif len(parts) == 3 and path.endswith(".yaml"):
        site, cluster, stem = parts[0], parts[1], parts[2]
        _misplaced(
            layout,
            path,
            "a node file outside nodes/ (it would never be rendered)",
            f"move it to sites/{site}/{cluster}/nodes/{stem}",
        )
    else:
        _misplaced(
            layout,
            path,
            "unexpected file under sites/",
            "sites/<site>/ holds site.yaml and cluster directories; a cluster holds cluster.yaml and nodes/<node>.yaml",
        )


def _missing_parents(layout: Layout) -> None:
    for node in layout.nodes:
        if (node.site, node.cluster) not in layout.clusters:
            layout.clusters.setdefault((node.site, node.cluster), "")
    for (site, cluster), path in sorted(layout.clusters.items()):
        if not path:
            want = f"{SITE_DIR}{site}/{cluster}/cluster.yaml"
            layout.problems.append(
                Diagnostic(
                    want,
                    0,
                    0,
                    "missing-file",
                    f"cluster {site}/{cluster} has nodes but no cluster.yaml",
                    f"create {want} with `kind: Cluster` (or fix the directory name)",
                )
            )
        if site not in layout.sites:
            want = f"{SITE_DIR}{site}/site.yaml"
            diag = Diagnostic(
                want,
                0,
                0,
                "missing-file",
                f"site {site} has clusters but no site.yaml",
                f"create {want} with `kind: Site` (or fix the directory name)",
            )
            if diag not in layout.problems:
                layout.problems.append(diag)
    layout.clusters = {k: v for k, v in layout.clusters.items() if v}


def _misplaced(layout: Layout, path: str, message: str, hint: str) -> None:
    layout.problems.append(Diagnostic(path, 0, 0, "misplaced", message, hint))
