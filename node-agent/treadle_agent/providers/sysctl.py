"""sysctl resources: the runtime value under ``proc_sys`` and a persistent file.

The runtime value is what the kernel uses now; ``<sysctl_dir>/99-treadle.conf``
(below the managed root) is what ``systemd-sysctl`` applies at boot. Both are
part of a key's state: a key whose runtime value is right but whose persisted
line was edited has drifted too. The persistent file holds every managed key
(sorted) and is written once per run, atomically, only when its bytes change
(:func:`sync_persistent`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping

from treadle_agent.errors import HostError
from treadle_agent.host import normalize_sysctl
from treadle_agent.inventory import Entry
from treadle_agent.providers.base import Context, Observed, Resource

FILE_NAME = "99-treadle.conf"
HEADER = "# Written by treadle-agent from this node's manifest; local edits are reverted.\n"


def persistent_path(ctx: Context) -> str:
    return ctx.host.sysctl_dir.rstrip("/") + "/" + FILE_NAME


def persistent_id(ctx: Context) -> str:
    return "sysctl.d:" + persistent_path(ctx)


def _persisted(ctx: Context) -> dict[str, str]:
    """key -> value of the persistent file as it is on disk (empty if there is none)."""
    data = ctx.fs.read(persistent_path(ctx))
    out: dict[str, str] = {}
    for line in (data or b"").decode("utf-8", "replace").splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";")) and "=" in line:
            k, _, v = line.partition("=")
            out[k.strip()] = normalize_sysctl(v)
    return out


def render(values: Mapping[str, str]) -> bytes:
    return (HEADER + "".join(f"{k} = {values[k]}\n" for k in sorted(values))).encode()


class SysctlProvider:
    type = "sysctl"

    def want(self, res: Resource) -> list:
        return [normalize_sysctl(res["value"])]

    def inspect(self, res: Resource, ctx: Context, entry: Entry | None) -> Observed:
        key, value = res["key"], normalize_sysctl(res["value"])
        current = ctx.host.sysctl.read(key)
        if current is None:
            raise HostError(
                f"unknown sysctl key {key}: this kernel has no {ctx.host.sysctl.path(key)}"
            )
        diffs = []
        if current != value:
            diffs.append(f"runtime value is {current!r}, want {value!r}")
        persisted = ctx.cached("sysctl.persisted", lambda: _persisted(ctx)).get(key)
        if persisted != value:
            diffs.append(
                f"{persistent_path(ctx)} has {persisted!r}, want {value!r}"
                if persisted is not None
                else f"not persisted in {persistent_path(ctx)}"
            )
        return Observed("; ".join(diffs) or None, detail=current != value)

    def repair(self, res: Resource, ctx: Context, observed: Observed) -> Entry:
        key, value = res["key"], normalize_sysctl(res["value"])
        if observed.detail:
            ctx.host.sysctl.write(key, value)
            after = ctx.host.sysctl.read(key)
            if after != value:
                raise HostError(f"sysctl {key}: wrote {value!r} but the kernel reports {after!r}")
        ctx.sysctl_changed.add(key)
        return {}

    def remove(self, rid: str, entry: Entry, ctx: Context) -> str:
        return "forgotten (the runtime value stays; the key leaves the persistent file)"


def sync_persistent(ctx: Context, keys: Iterable[tuple[str, str, str]], heal: bool) -> str | None:
    """Bring the persistent file in line with the run's sysctl results; returns a message if it wrote or removed it.

    ``keys`` are (key, value, status) of every sysctl resource. Keys that failed
    or were skipped are left out (a boot-time error helps no one); a key that
    drifted under the report policy keeps whatever the file says. Under
    ``report`` the file is rewritten only for a manifest change, never to undo
    a hand edit.

    Raises:
        HostError: the file could not be written.
    """
    path, rid = persistent_path(ctx), persistent_id(ctx)
    on_disk = ctx.cached("sysctl.persisted", lambda: _persisted(ctx))
    values: dict[str, str] = {}
    changed = False
    for key, value, status in keys:
        if status == "drifted":
            if key in on_disk:
                values[key] = on_disk[key]
        elif status in ("in_sync", "changed", "healed"):
            values[key] = normalize_sysctl(value)
            changed |= status == "changed"
    entry = ctx.inventory.get(rid)
    data = ctx.fs.read(path)
    current_sha = hashlib.sha256(data).hexdigest() if data is not None else None
    untouched = entry is not None and entry.get("sha256") == current_sha
    if not values:
        if data is not None and entry is not None and entry.get("created"):
            ctx.fs.unlink(path)
            ctx.inventory.forget(rid)
            return f"removed {path}: no managed sysctl keys left"
        ctx.inventory.forget(rid)
        return None
    want = render(values)
    if data == want:
        if not untouched:  # in line already, but not yet known to the inventory
            ctx.inventory.put(
                rid,
                {"created": entry.get("created", False) if entry else False, "sha256": current_sha},
            )
        return None
    if not (heal or changed or untouched or data is None):
        return None
    ctx.fs.write_atomic(path, want, mode=0o644)
    ctx.drop_cached("sysctl.persisted")
    created = entry.get("created", False) if entry is not None else data is None
    ctx.inventory.put(rid, {"created": created, "sha256": hashlib.sha256(want).hexdigest()})
    return f"wrote {path}"
