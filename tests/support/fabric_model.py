"""A small fabric held as Python values, edited by named operations and committed to a real git repository.

The differential test (test_differential.py) draws sequences of these
operations with hypothesis; bench/differential.py runs many more of them.
Every operation is a commit an admin could make: values at every level,
profiles, templates and their includes (a computed one among them), defaults,
nodes added, removed and moved, a profile renamed, lifecycle changes (legal
and not), merge tags, edits that change nothing, and invalid commits followed
by their revert.

Files are written as YAML flow mappings (JSON is YAML 1.2) with ``!append``
where a merge tag is wanted; node addresses are loopback addresses.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from support.git import ADA, git

SITES = ("s1", "s2")
CLUSTERS = (("s1", "c1"), ("s1", "c2"), ("s2", "c1"))
LIFECYCLES = ("production", "draining", "maintenance", "provisioning")
#: Legal next states (the default transitions, retirement aside); anything else is an illegal, refused commit.
LEGAL = {
    "production": ("draining",),
    "draining": ("maintenance", "production"),
    "maintenance": ("production",),
    "provisioning": ("production",),
}

TEMPLATE_TEXTS = {
    "header.j2": ("# {{ node.name }} in {{ node.site }}\n", "# managed: {{ node.name }}\n"),
    "chrony.conf.j2": (
        '{% include "header.j2" %}{% for s in data.ntp.servers %}server {{ s }} iburst\n{% endfor %}',
        '{% include "header.j2" %}pool {{ data.ntp.servers | join(" ") }}\n',
    ),
    # The computed include: which file it reads depends on the node's site, and may not exist.
    "motd.j2": (
        '{% include "site_" ~ node.site ~ ".j2" ignore missing %}{{ data.motd }}\n',
        '{{ data.motd }}\n{% include "site_" ~ node.site ~ ".j2" ignore missing %}',
    ),
}


class Tagged:
    """A value written with a YAML merge tag (``!append [..]``)."""

    def __init__(self, tag: str, value: Any) -> None:
        self.tag, self.value = tag, value


def dump(value: Any) -> str:
    """YAML flow style: JSON, plus tags."""
    if isinstance(value, Tagged):
        return f"{value.tag} {dump(value.value)}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)}: {dump(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(dump(v) for v in value) + "]"
    return json.dumps(value)


@dataclass
class FabricModel:
    """The fabric's files: YAML documents (dicts) or template texts, plus raw overrides (invalid content)."""

    docs: dict[str, dict[str, Any]] = field(default_factory=dict)
    texts: dict[str, str] = field(default_factory=dict)
    raw: dict[str, str] = field(default_factory=dict)
    comments: dict[str, int] = field(default_factory=dict)
    nodes: dict[str, tuple[str, str]] = field(default_factory=dict)  # name -> (site, cluster)
    role: str = "role"
    next_node: int = 0

    @classmethod
    def initial(cls) -> FabricModel:
        m = cls()
        m.docs["fabric.yaml"] = {
            "kind": "Fabric",
            "name": "differential",
            "defaults": {
                "data": {"ntp": {"servers": ["ntp1.example.org"]}, "motd": "welcome"},
                "files": {
                    "/etc/chrony.conf": {"template": "chrony.conf.j2", "mode": "0644"},
                    "/etc/motd": {"template": "motd.j2", "mode": "0644"},
                },
                "sysctl": {"vm.swappiness": 10},
            },
        }
        m.docs["profiles/base.yaml"] = {"kind": "Profile", "sysctl": {"net.core.somaxconn": 1024}}
        m.docs["profiles/role.yaml"] = {
            "kind": "Profile",
            "data": {"role": "worker"},
            "files": {"/etc/role": {"content": "worker\n", "mode": "0644"}},
        }
        m.docs["profiles/lifecycle/draining.yaml"] = {
            "kind": "Profile",
            "data": {"motd": "draining"},
        }
        m.docs["profiles/lifecycle/maintenance.yaml"] = {
            "kind": "Profile",
            "data": {"motd": "maintenance"},
        }
        for site in SITES:
            m.docs[f"sites/{site}/site.yaml"] = {
                "kind": "Site",
                "profiles": ["base"],
                "labels": {"site": site},
            }
        for site, cluster in CLUSTERS:
            m.docs[f"sites/{site}/{cluster}/cluster.yaml"] = {
                "kind": "Cluster",
                "profiles": ["role"],
            }
            for _ in range(2):
                m.add_node(site, cluster)
        for name, (first, _second) in TEMPLATE_TEXTS.items():
            m.texts[f"templates/{name}"] = first
        m.texts["templates/site_s1.j2"] = "site one\n"
        return m

    # -- paths -----------------------------------------------------------------

    def node_path(self, name: str) -> str:
        site, cluster = self.nodes[name]
        return f"sites/{site}/{cluster}/nodes/{name}.yaml"

    def files(self) -> dict[str, str]:
        out = {path: dump(doc) + "\n" for path, doc in self.docs.items()}
        out.update(self.texts)
        for path, n in self.comments.items():
            if path in out:
                out[path] += (
                    "".join(f"# note {i}\n" for i in range(n)) if not path.endswith(".j2") else ""
                )
        out.update(self.raw)
        return out

    # -- operations (each one commit) ---------------------------------------------

    def add_node(self, site: str, cluster: str) -> str:
        self.next_node += 1
        name = f"n{self.next_node:02d}"
        self.nodes[name] = (site, cluster)
        self.docs[self.node_path(name)] = {
            "kind": "Node",
            "address": f"127.0.{self.next_node // 250}.{self.next_node % 250 + 1}",
            "lifecycle": "production",
        }
        return name

    def remove_node(self, name: str) -> None:
        del self.docs[self.node_path(name)]
        del self.nodes[name]

    def move_node(self, name: str, site: str, cluster: str) -> None:
        doc = self.docs.pop(self.node_path(name))
        self.nodes[name] = (site, cluster)
        self.docs[self.node_path(name)] = doc

    def set_data(self, path: str, key: str, value: Any) -> None:
        self.docs[path].setdefault("data", {})[key] = value

    def rename_role(self) -> None:
        new = "role2" if self.role == "role" else "role"
        self.docs[f"profiles/{new}.yaml"] = self.docs.pop(f"profiles/{self.role}.yaml")
        for doc in self.docs.values():
            if doc.get("profiles"):
                doc["profiles"] = [new if p == self.role else p for p in doc["profiles"]]
        self.role = new

    def lifecycle(self, name: str) -> str:
        return self.docs[self.node_path(name)].get("lifecycle", "production")


def apply(model: FabricModel, op: tuple[Any, ...]) -> str:
    """Carry out operation ``op`` on ``model``; the commit message."""
    kind = op[0]
    names = sorted(model.nodes)
    if kind == "data":
        _, level, key, value = op
        paths = {
            "defaults": None,
            "site": f"sites/{SITES[value % 2]}/site.yaml",
            "cluster": f"sites/{CLUSTERS[value % 3][0]}/{CLUSTERS[value % 3][1]}/cluster.yaml",
            "node": model.node_path(names[value % len(names)]) if names else None,
            "profile": f"profiles/{model.role}.yaml",
            "lifecycle-profile": "profiles/lifecycle/draining.yaml",
        }
        path = paths[level]
        if level == "defaults":
            model.docs["fabric.yaml"]["defaults"]["data"][key] = (
                f"v{value}" if key == "motd" else {"servers": [f"ntp{value}.example.org"]}
            )
        elif path is not None:
            model.set_data(
                path,
                key,
                f"v{value}" if key == "motd" else {"servers": [f"ntp{value}.example.org"]},
            )
        return f"data {key} at {level}"
    if kind == "sysctl":
        model.docs["profiles/base.yaml"]["sysctl"]["net.core.somaxconn"] = 1024 + op[1]
        return "profile sysctl"
    if kind == "template":
        _, name, variant = op
        model.texts[f"templates/{name}"] = TEMPLATE_TEXTS[name][variant % 2]
        return f"template {name}"
    if kind == "site-template":
        _, site, text = op
        path = f"templates/site_{site}.j2"
        if text is None:
            model.texts.pop(path, None)
        else:
            model.texts[path] = f"site {site}: {text}\n"
        return f"computed include target {path}"
    if kind == "add-node":
        site, cluster = CLUSTERS[op[1] % 3]
        return f"add {model.add_node(site, cluster)}"
    if kind == "remove-node" and len(names) > 1:
        model.remove_node(names[op[1] % len(names)])
        return "remove a node"
    if kind == "move-node" and names:
        name = names[op[1] % len(names)]
        site, cluster = CLUSTERS[op[2] % 3]
        model.move_node(name, site, cluster)
        return f"move {name}"
    if kind == "rename-profile":
        model.rename_role()
        return "rename the role profile"
    if kind == "lifecycle" and names:
        name = names[op[1] % len(names)]
        current = model.lifecycle(name)
        legal = LEGAL[current]
        state = (
            legal[op[2] % len(legal)]
            if op[3]
            else next(s for s in LIFECYCLES if s != current and s not in legal)
        )
        model.docs[model.node_path(name)]["lifecycle"] = state
        return f"{name}: {current} -> {state}"
    if kind == "merge-tag" and names:
        name = names[op[1] % len(names)]
        model.docs[model.node_path(name)].setdefault("data", {})["ntp"] = {
            "servers": Tagged("!append", [f"extra{op[1]}.example.org"])
        }
        return f"!append on {name}"
    if kind == "noop":
        paths = sorted(model.docs)
        path = paths[op[1] % len(paths)]
        model.comments[path] = model.comments.get(path, 0) + 1
        return f"comment in {path}"
    return "nothing"


def invalid_content(path: str) -> str:
    """A YAML syntax error for a YAML file, an unclosed block for a template."""
    return "{% if %}\n" if path.endswith(".j2") else "kind: [broken\n"


class GitFabric:
    """The model's files in a work tree that commits each operation."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.git("init", "-q", "-b", "main")
        self.written: dict[str, str] = {}

    def git(self, *args: str) -> str:
        return git(self.root, *args, identity=ADA)

    def commit(self, model: FabricModel, message: str) -> str:
        files = model.files()
        for path in set(self.written) - set(files):
            (self.root / path).unlink()
        for path, text in files.items():
            if self.written.get(path) != text:
                target = self.root / path
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(text)
        self.written = files
        self.git("add", "-A")
        self.git("commit", "-q", "--allow-empty", "-m", message)
        return self.git("rev-parse", "HEAD")
