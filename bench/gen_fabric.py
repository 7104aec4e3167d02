"""Deterministic generator of synthetic fabric repositories, for benchmarks and tests.

A generated fabric has the shape the render targets were set for: fabric
defaults with about thirty data keys (nested maps and lists), five role
profiles (one per cluster), site and cluster overrides using the merge tags,
templated files, packages, services, sysctl and health checks, and a small
share of nodes overriding a nested key. The same arguments always give the
same bytes, so benchmark runs and the tests that pin the generator compare
like with like.

    python bench/gen_fabric.py --out /tmp/fabric                    # 10 x 20 x 50 = 10,000 nodes
    python bench/gen_fabric.py --out /tmp/small --sites 2 --clusters 2 --nodes 5 --git

Other benchmarks import it (``generate(out, sites, clusters, nodes, seed)``);
it needs nothing beyond the standard library and, for ``git=True``, the git CLI.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCHEMA_URL = "https://treadle.dev/schemas/v1/{}.json"
ROLES = ("compute", "storage", "login", "gpu", "infra")
#: Share of nodes that override a nested data key (``data.app.tuning.threads``).
NODE_OVERRIDE_SHARE = 0.05
#: Every how many clusters one node drains (exercises the lifecycle profile).
DRAINING_CLUSTER_EVERY = 4
#: Fixed identity and dates so that ``git=True`` gives the same commit id every time.
GIT_ENV = {
    "GIT_AUTHOR_NAME": "Fabric Generator",
    "GIT_AUTHOR_EMAIL": "generator@example.org",
    "GIT_COMMITTER_NAME": "Fabric Generator",
    "GIT_COMMITTER_EMAIL": "generator@example.org",
    "GIT_AUTHOR_DATE": "2026-01-01T00:00:00Z",
    "GIT_COMMITTER_DATE": "2026-01-01T00:00:00Z",
}


class GeneratorError(Exception):
    """The fabric cannot be generated (bad arguments, non-empty target, git failed)."""


# --- a tiny deterministic YAML emitter -------------------------------------------------
# The generator writes YAML text itself: it is faster than a YAML library for
# 10,000 small files, and its output is byte-stable across library versions.


@dataclass(frozen=True)
class Append:
    """``!append [..]``: extend the inherited list."""

    items: list[Any]


@dataclass(frozen=True)
class Delete:
    """``!delete``: remove the inherited key."""


@dataclass(frozen=True)
class Replace:
    """``!replace {..}``: replace the inherited map whole."""

    mapping: dict[str, Any]


_PLAIN = re.compile(r"^[A-Za-z_/][A-Za-z0-9_./@-]*$")
#: Words a YAML 1.1 reader (and some editors) would not read as strings.
_RESERVED = frozenset({"true", "false", "null", "yes", "no", "on", "off", "y", "n"})


def _string(text: str) -> str:
    """Plain when unambiguous, else double-quoted (JSON strings are valid YAML)."""
    return text if _PLAIN.match(text) and text.lower() not in _RESERVED else json.dumps(text)


_key = _string


def _scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(
        value, float
    ):  # repr is the shortest round-tripping form, the same on every machine
        return repr(value)
    if isinstance(value, str):
        return _string(value)
    raise GeneratorError(f"cannot emit {type(value).__name__} {value!r}")


def _flow(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_flow(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_key(k)}: {_flow(v)}" for k, v in value.items()) + "}"
    return _scalar(value)


def _is_flat(value: Any) -> bool:
    """True for values written on one line: scalars, and lists or maps of scalars."""
    if isinstance(value, (list, dict)):
        items = value if isinstance(value, list) else value.values()
        return all(not isinstance(v, (list, dict, Append, Delete, Replace)) for v in items)
    return True


def _emit(mapping: dict[str, Any], indent: int) -> Iterator[str]:
    pad = " " * indent
    for key, value in mapping.items():
        head = f"{pad}{_key(key)}:"
        if isinstance(value, Delete):
            yield f"{head} !delete"
        elif isinstance(value, Append):
            yield f"{head} !append {_flow(value.items)}"
        elif isinstance(value, Replace):
            yield f"{head} !replace"
            yield from _emit(value.mapping, indent + 2)
        elif isinstance(value, dict) and value and not (_is_flat(value) and len(value) <= 3):
            yield head
            yield from _emit(value, indent + 2)
        elif isinstance(value, list) and value and not _is_flat(value):
            yield head
            for item in value:
                lines = list(_emit(item, indent + 4))
                yield f"{pad}  - {lines[0].lstrip()}"
                yield from lines[1:]
        else:
            yield f"{head} {_flow(value)}"


def dump(kind: str, schema: str, body: dict[str, Any]) -> str:
    """One fabric file: the editor's schema line, apiVersion, kind and ``body``."""
    head = f"# yaml-language-server: $schema={SCHEMA_URL.format(schema)}\n"
    doc = {"apiVersion": "treadle.dev/v1", "kind": kind, **body}
    return head + "\n".join(_emit(doc, 0)) + "\n"


# --- the fabric's content ----------------------------------------------------------


def default_data(rng: random.Random) -> dict[str, Any]:
    """Fabric-wide template parameters: about thirty keys, nested maps and lists."""
    return {
        "ntp": {
            "servers": ["ntp1.example.org", "ntp2.example.org", "ntp3.example.org"],
            "makestep": {"threshold_s": 1, "limit": 3},
        },
        "dns": {
            "nameservers": ["127.0.0.53", "127.0.1.53"],
            "search": ["example.org"],
            "options": {"timeout_s": 2, "attempts": 3},
        },
        "ssh": {
            "permit_root_login": "prohibit-password",
            "password_authentication": False,
            "allow_groups": ["admins"],
            "max_auth_tries": 3,
        },
        "motd": {"banner": "Synthetic benchmark fabric", "contact": "admins@example.org"},
        "syslog": {
            "server": "logs.example.org",
            "port": 6514,
            "protocol": "tcp",
            "facilities": ["auth", "authpriv", "daemon", "kern"],
        },
        "app": {
            "name": "workload",
            "listen_port": 8080,
            "tuning": {
                "threads": 8,
                "cache_mb": 512,
                "queues": ["default", "short", "long"],
                "timeouts": {"connect_s": 5, "read_s": 30},
            },
            "features": {"compression": True, "tracing": False, "audit": True},
        },
        "monitoring": {
            "scrape_interval_s": 30,
            "exporters": ["node", "process"],
            "alert_email": "oncall@example.org",
        },
        "proxy": {
            "http": "http://proxy.example.org:3128",
            "no_proxy": ["localhost", "127.0.0.1", ".example.org"],
        },
        "kernel": {
            "hugepages": 0,
            "transparent_hugepages": "madvise",
            "modules": ["bonding", "8021q"],
        },
        "backup": {
            "enabled": True,
            "schedule": "0 2 * * *",
            "retention_days": 14,
            "paths": ["/etc", "/var/lib/workload"],
        },
        "timezone": "UTC",
        "locale": "en_US.UTF-8",
        "environment": "production",
        "admin_email": "admins@example.org",
        "mtu": 9000,
        "swap_mb": 0,
        "ulimit_nofile": 65536,
        "package_mirror": "https://mirror.example.org/debian",
        "log_level": "info",
        "log_retention_days": 30,
        "puppet_free": True,
        "kdump": False,
        "selinux": "permissive",
        "firewall": {"default_policy": "drop", "allow_tcp": [22, 9731], "allow_icmp": True},
        "users": {"admins": ["alice", "bob", "carol"], "operators": ["dave"]},
        "mounts": [
            {
                "path": "/srv/shared",
                "source": "nfs.example.org:/shared",
                "options": ["ro", "nosuid"],
            }
        ],
        "cpu_governor": "performance",
        "numa_balancing": False,
        "build_tag": f"b{rng.randrange(1000, 9999)}",
        "inventory_id": rng.randrange(10**6, 10**7),
    }


def defaults_body(rng: random.Random) -> dict[str, Any]:
    """The fabric defaults: data plus the resources every node has."""
    return {
        "data": default_data(rng),
        "labels": {"fabric": "synthetic"},
        "directories": {"/etc/workload": {"mode": "0755", "owner": "root", "group": "root"}},
        "files": {
            "/etc/chrony.conf": {
                "template": "ntp.conf.j2",
                "mode": "0644",
                "notify": ["chronyd"],
                "requires": ["package:chrony"],
            },
            "/etc/motd": {"template": "motd.j2", "mode": "0644"},
            "/etc/workload/app.conf": {
                "template": "app.conf.j2",
                "mode": "0640",
                "owner": "root",
                "group": "root",
                "notify": ["workload"],
            },
        },
        "symlinks": {"/etc/localtime": {"target": "/usr/share/zoneinfo/UTC"}},
        "packages": {
            name: {"ensure": "present"}
            for name in (
                "chrony",
                "openssh-server",
                "rsyslog",
                "prometheus-node-exporter",
                "workload",
            )
        },
        "services": {
            "chronyd": {"enabled": True, "state": "running"},
            "sshd": {"enabled": True, "state": "running"},
            "workload": {"enabled": True, "state": "running", "requires": ["package:workload"]},
        },
        "sysctl": {
            "vm.swappiness": 10,
            "kernel.panic": 10,
            "net.core.somaxconn": 1024,
            "net.ipv4.tcp_syncookies": 1,
        },
        "health": {
            "chrony-config": {"file": "/etc/chrony.conf"},
            "app-config": {"file": "/etc/workload/app.conf"},
            "agent-metrics": {"tcp": 9731},
        },
    }


def profile_body(index: int, role: str) -> dict[str, Any]:
    """One role profile; each sets data, packages, a service, a templated file, sysctl and a check."""
    return {
        "description": f"Synthetic role {role}.",
        "labels": {"role": role},
        "data": {
            "role": {"name": role, "slots": 4 * (index + 1), "tags": [role, f"tier{index % 3}"]},
            "app": {"tuning": {"cache_mb": 256 * (index + 1)}},
        },
        "packages": {
            f"{role}-tools": {"ensure": "present"},
            f"{role}-agent": {"ensure": "present", "version": f"1.{index}.0"},
        },
        "services": {
            f"{role}-agent": {
                "enabled": True,
                "state": "running",
                "requires": [f"package:{role}-agent"],
            }
        },
        "files": {
            f"/etc/{role}/role.conf": {
                "template": "role.conf.j2",
                "mode": "0644",
                "notify": [f"{role}-agent"],
            }
        },
        "directories": {f"/etc/{role}": {"mode": "0755"}},
        "sysctl": {"vm.dirty_ratio": 10 + index},
        "health": {"role-config": {"file": f"/etc/{role}/role.conf"}},
    }


TEMPLATES = {
    "ntp.conf.j2": (
        "# managed by Treadle: {{ node.name }} ({{ node.site }}/{{ node.cluster }})\n"
        "{% for server in data.ntp.servers %}server {{ server }} iburst\n{% endfor %}"
        "makestep {{ data.ntp.makestep.threshold_s }} {{ data.ntp.makestep.limit }}\n"
    ),
    "motd.j2": "{{ data.motd.banner }}\n{{ node.name }} {{ node.address }} {{ node.lifecycle }}\nContact: {{ data.motd.contact }}\n",
    "app.conf.j2": (
        "[{{ data.app.name }}]\nlisten = {{ node.address }}:{{ data.app.listen_port }}\n"
        "threads = {{ data.app.tuning.threads }}\ncache_mb = {{ data.app.tuning.cache_mb }}\n"
        "queues = {{ data.app.tuning.queues | join(',') }}\n"
        "{% for name, on in data.app.features | dictsort %}feature.{{ name }} = {{ on | lower }}\n{% endfor %}"
        "{% for key, value in data.app.tuning.timeouts | dictsort %}timeout.{{ key }} = {{ value }}\n{% endfor %}"
        "proxy = {{ data.proxy.http }}\nlog_level = {{ data.log_level }}\n"
    ),
    "role.conf.j2": "role = {{ data.role.name }}\nslots = {{ data.role.slots }}\ntags = {{ data.role.tags | join(' ') }}\n",
}


@dataclass(frozen=True)
class NodeRef:
    """One generated node: enough for benchmarks to find and change it."""

    name: str
    site: str
    cluster: str
    path: Path


@dataclass(frozen=True)
class GeneratedFabric:
    """What ``generate`` wrote."""

    root: Path
    sites: tuple[str, ...]
    clusters: tuple[tuple[str, str], ...]
    nodes: tuple[NodeRef, ...]
    overriding_nodes: tuple[str, ...] = field(default=())
    commit: str | None = None


#: Node addresses start at 127.16.0.0: benchmarks run controllers that scrape their nodes' health, and
#: nothing here may send traffic outside loopback (tests/template/test_gen_fabric.py pins it).
_FIRST_OCTET2 = 16
MAX_NODES = (256 - _FIRST_OCTET2) << 16


def _address(index: int) -> str:
    """A unique loopback address per node (127.16.0.1 onwards; unique up to ``MAX_NODES`` nodes)."""
    if not 0 <= index < MAX_NODES:
        raise ValueError(
            f"node index {index} is beyond the {MAX_NODES} loopback addresses a fabric can have"
        )
    return f"127.{_FIRST_OCTET2 + (index >> 16)}.{(index >> 8) & 255}.{index & 255}"


class _Writer:
    """Writes the files of one fabric below ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def write(self, relpath: str, text: str) -> Path:
        path = self.root / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        return path


def _rollout() -> dict[str, Any]:
    return {
        "failure_policy": "halt",
        "waves": [
            {
                "name": "canary",
                "selector": {"labels": {"canary": "true"}},
                "soak_s": 300,
                "failure_budget": {"count": 0},
            },
            {
                "name": "ten-percent",
                "fraction": 0.1,
                "soak_s": 600,
                "failure_budget": {"percent": 5},
            },
            {"name": "rest", "fraction": 1.0, "soak_s": 0, "failure_budget": {"percent": 2}},
        ],
    }


def _write_static(w: _Writer, rng: random.Random) -> None:
    fabric = {
        "name": "synthetic",
        "description": "Synthetic fabric written by bench/gen_fabric.py.",
        "defaults": defaults_body(rng),
        "policy": {"allowed_roots": ["/etc", "/usr/local", "/opt", "/var/lib", "/srv"]},
        "lifecycle": {"max_out_of_production": 0.5},
    }
    w.write("fabric.yaml", dump("Fabric", "fabric", fabric))
    w.write("rollout.yaml", dump("RolloutPolicy", "rollout", _rollout()))
    for index, role in enumerate(ROLES):
        w.write(f"profiles/{role}.yaml", dump("Profile", "profile", profile_body(index, role)))
    draining = {
        "description": "Applied to draining nodes.",
        "services": {"workload": {"state": "stopped"}},
        "labels": {"drain": "true"},
    }
    w.write("profiles/lifecycle/draining.yaml", dump("Profile", "profile", draining))
    for name, text in TEMPLATES.items():
        w.write(f"templates/{name}", text)


def _site_body(site: str, s: int) -> dict[str, Any]:
    return {
        "description": f"Synthetic site {site}.",
        "labels": {"site-region": f"region{s % 3}"},
        "data": {
            "ntp": {"servers": Append([f"ntp.{site}.example.org"])},
            "dns": {"search": Append([f"{site}.example.org"])},
        },
        "symlinks": {"/etc/localtime": {"target": f"/usr/share/zoneinfo/Etc/GMT-{s % 12}"}},
    }


def _cluster_body(role: str, c: int) -> dict[str, Any]:
    body: dict[str, Any] = {
        "profiles": [role],
        "labels": {"cluster-kind": role},
        "data": {
            "app": {"tuning": {"queues": Append([f"q{c}"])}},
            "monitoring": {"scrape_interval_s": 15 + c % 4 * 15},
        },
        "sysctl": {"net.core.somaxconn": 2048 + c},
    }
    if c % 5 == 0:  # a few clusters drop a default package and replace a whole map
        body["packages"] = {"rsyslog": Delete()}
        body["data"]["firewall"] = Replace({"default_policy": "accept", "allow_icmp": True})
    return body


def _node_body(index: int, *, canary: bool, draining: bool, threads: int | None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "address": _address(index),
        "lifecycle": "draining" if draining else "production",
    }
    labels = {"rack": f"r{index // 40:04d}"}
    if canary:
        labels["canary"] = "true"
    body["labels"] = labels
    if threads is not None:
        body["data"] = {"app": {"tuning": {"threads": threads}}}
    return body


def generate(
    out: str | os.PathLike[str],
    sites: int = 10,
    clusters: int = 20,
    nodes: int = 50,
    seed: int = 1,
    *,
    git: bool = False,
) -> GeneratedFabric:
    """Write a synthetic fabric of ``sites`` x ``clusters`` (per site) x ``nodes`` (per cluster) into ``out``.

    Raises GeneratorError when a count is below 1, ``out`` exists and is not
    empty, or ``git`` is asked for and the git CLI fails.
    """
    if min(sites, clusters, nodes) < 1:
        raise GeneratorError(
            f"sites, clusters and nodes must be at least 1 (got {sites}, {clusters}, {nodes})"
        )
    root = Path(out)
    if root.exists() and any(root.iterdir()):
        raise GeneratorError(f"{root}: directory is not empty; pass a new or empty directory")
    root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    w = _Writer(root)
    _write_static(w, rng)
    total = sites * clusters * nodes
    overriding = set(rng.sample(range(total), round(total * NODE_OVERRIDE_SHARE)))
    refs: list[NodeRef] = []
    cluster_names: list[tuple[str, str]] = []
    site_names: list[str] = []
    index = 0
    for s in range(1, sites + 1):
        site = f"s{s:02d}"
        site_names.append(site)
        w.write(f"sites/{site}/site.yaml", dump("Site", "site", _site_body(site, s)))
        for c in range(1, clusters + 1):
            cluster = f"{site}-c{c:02d}"
            cluster_names.append((site, cluster))
            role = ROLES[((s - 1) * clusters + c - 1) % len(ROLES)]
            w.write(
                f"sites/{site}/{cluster}/cluster.yaml",
                dump("Cluster", "cluster", _cluster_body(role, c)),
            )
            drains = nodes >= 2 and c % DRAINING_CLUSTER_EVERY == 0
            for n in range(1, nodes + 1):
                name = f"{cluster}-n{n:03d}"
                threads = rng.choice((4, 16, 32, 64)) if index in overriding else None
                body = _node_body(
                    index + 1, canary=n == 1, draining=drains and n == nodes, threads=threads
                )
                path = w.write(
                    f"sites/{site}/{cluster}/nodes/{name}.yaml", dump("Node", "node", body)
                )
                refs.append(NodeRef(name, site, cluster, path))
                index += 1
    commit = _git_commit(root) if git else None
    over = tuple(refs[i].name for i in sorted(overriding))
    return GeneratedFabric(root, tuple(site_names), tuple(cluster_names), tuple(refs), over, commit)


def _git_commit(root: Path) -> str:
    """Commit the whole tree as the first commit of branch main; returns the commit id."""
    env = {**os.environ, **GIT_ENV}
    commands = (
        ["git", "init", "-q", "-b", "main"],
        ["git", "add", "-A"],
        ["git", "-c", "commit.gpgsign=false", "commit", "-q", "-m", "Synthetic fabric"],
        ["git", "rev-parse", "HEAD"],
    )
    out = ""
    for argv in commands:
        try:
            done = subprocess.run(
                argv, cwd=root, env=env, capture_output=True, text=True, check=True
            )
        except (OSError, subprocess.CalledProcessError) as e:
            detail = getattr(e, "stderr", "") or str(e)
            raise GeneratorError(f"{' '.join(argv)} failed in {root}: {detail.strip()}") from e
        out = done.stdout.strip()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Write a deterministic synthetic fabric repository.",
        epilog="example: gen_fabric.py --out /tmp/fabric --sites 2 --clusters 2 --nodes 5",
    )
    parser.add_argument(
        "--out", required=True, help="new or empty directory to write the fabric into"
    )
    parser.add_argument("--sites", type=int, default=10, help="number of sites (default 10)")
    parser.add_argument("--clusters", type=int, default=20, help="clusters per site (default 20)")
    parser.add_argument("--nodes", type=int, default=50, help="nodes per cluster (default 50)")
    parser.add_argument(
        "--seed", type=int, default=1, help="random seed; same seed, same bytes (default 1)"
    )
    parser.add_argument(
        "--git", action="store_true", help="commit the fabric as a git repository (branch main)"
    )
    args = parser.parse_args(argv)
    try:
        fabric = generate(args.out, args.sites, args.clusters, args.nodes, args.seed, git=args.git)
    except GeneratorError as e:
        print(f"gen_fabric: error: {e}", file=sys.stderr)
        return 2
    suffix = f", commit {fabric.commit}" if fabric.commit else ""
    print(
        f"{fabric.root}: {len(fabric.nodes)} nodes in {len(fabric.sites)} sites, {len(fabric.clusters)} clusters{suffix}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
