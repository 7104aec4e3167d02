"""Builders for manifests and resources, every field present as the schema requires."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import treadle_schemas
from treadle_agent.apply import Applier
from treadle_agent.contract.manifest import Manifest, canonical_json, sort_resources
from treadle_agent.host_sim import SimulatedHost, Unit


def file(
    path: str,
    content: str | None = "",
    *,
    ensure: str = "present",
    mode: str | None = None,
    owner: str | None = None,
    group: str | None = None,
    notify: Iterable[str] = (),
    requires: Iterable[str] = (),
) -> dict[str, Any]:
    sha = hashlib.sha256(content.encode()).hexdigest() if content is not None else None
    return {
        "type": "file",
        "path": path,
        "ensure": ensure,
        "content": content,
        "sha256": sha,
        "mode": mode,
        "owner": owner,
        "group": group,
        "notify": list(notify),
        "requires": list(requires),
    }


def directory(
    path: str,
    *,
    ensure: str = "present",
    mode: str | None = None,
    owner: str | None = None,
    group: str | None = None,
    requires: Iterable[str] = (),
) -> dict[str, Any]:
    return {
        "type": "directory",
        "path": path,
        "ensure": ensure,
        "mode": mode,
        "owner": owner,
        "group": group,
        "requires": list(requires),
    }


def symlink(
    path: str, target: str | None, *, ensure: str = "present", requires: Iterable[str] = ()
) -> dict[str, Any]:
    return {
        "type": "symlink",
        "path": path,
        "ensure": ensure,
        "target": target,
        "requires": list(requires),
    }


def package(
    name: str, *, ensure: str = "present", version: str | None = None, requires: Iterable[str] = ()
) -> dict[str, Any]:
    return {
        "type": "package",
        "name": name,
        "ensure": ensure,
        "version": version,
        "requires": list(requires),
    }


def sysctl(key: str, value: str, *, requires: Iterable[str] = ()) -> dict[str, Any]:
    return {"type": "sysctl", "key": key, "value": value, "requires": list(requires)}


def service(
    name: str,
    *,
    enabled: bool | None = None,
    state: str | None = None,
    requires: Iterable[str] = (),
) -> dict[str, Any]:
    return {
        "type": "service",
        "name": name,
        "enabled": enabled,
        "state": state,
        "requires": list(requires),
    }


def manifest(
    *resources: Mapping[str, Any],
    health: Iterable[Mapping[str, Any]] = (),
    generation: int = 1,
    validate: bool = True,
) -> Manifest:
    doc = {
        "apiVersion": "treadle.dev/v1",
        "kind": "NodeManifest",
        "metadata": {
            "node": "n01",
            "site": "s1",
            "cluster": "c1",
            "address": "10.0.0.1",
            "fabric": "f",
            "generation": generation,
            "commit": None,
            "issued": None,
            "expires": None,
            "lifecycle": "production",
            "labels": {},
        },
        "resources": sort_resources(resources),
        "health": list(health),
    }
    if validate:
        errors = treadle_schemas.errors("manifest.json", doc)
        assert not errors, errors
    raw = canonical_json(doc)
    return Manifest(raw, doc)


def snapshot(root: Path) -> dict[str, tuple]:
    """Everything below root: (kind, bytes or link target, mode, mtime_ns, inode) per path."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            st = p.lstat()
            rel = "/" + str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = ("link", os.readlink(p), st.st_mtime_ns)
            elif p.is_dir():
                out[rel] = ("dir", None, st.st_mode, st.st_mtime_ns, st.st_ino)
            else:
                out[rel] = (
                    "file",
                    p.read_bytes(),
                    st.st_mode,
                    st.st_mtime_ns,
                    st.st_ino,
                    st.st_uid,
                    st.st_gid,
                )
    return out


PROC_SYS = {
    "net/ipv4/ip_forward": "0",
    "vm/swappiness": "60",
    "kernel/ostype": "Linux",
    "net/ipv4/ip_local_port_range": "32768\t60999",
}


@dataclass
class Env:
    root: Path
    state: Path
    proc: Path
    host: SimulatedHost

    def applier(self, policy: str = "heal") -> Applier:
        return Applier(self.root, self.state, self.host, policy)

    def sysctl_value(self, key: str) -> str:
        return (self.proc / key.replace(".", "/")).read_text()

    def set_sysctl(self, key: str, value: str) -> None:
        (self.proc / key.replace(".", "/")).write_text(value + "\n")


def make_env(base: Path, **host_kwargs) -> Env:
    root, state, proc = base / "root", base / "state", base / "proc_sys"
    root.mkdir()
    for key, value in PROC_SYS.items():
        (proc / key).parent.mkdir(parents=True, exist_ok=True)
        (proc / key).write_text(value + "\n")
    host_kwargs.setdefault(
        "available", {"chrony": "4.3-2", "nginx": "1.22.1-9", "curl": "7.88.1-10"}
    )
    host_kwargs.setdefault("units", {"chronyd": Unit(enabled=True, active=True), "nginx": Unit()})
    return Env(root, state, proc, SimulatedHost(proc_sys=proc, **host_kwargs))
