"""What every provider implements, and the per-run context they share.

A provider knows one resource type and answers four questions; the Applier
alone decides, from the answers and the drift policy, what to do and how to
report it (STYLE.md: the decision is made in one place):

- ``want(resource)``: a small fingerprint of the desired state, stored in the
  inventory. Same fingerprint + host differs = drift; new fingerprint = change.
- ``inspect(resource, ctx, entry)`` -> :class:`Observed`: does the host match?
  Reads only; must be cheap when nothing changed (it gets the inventory entry
  to skip work, e.g. hashing a file whose stat data did not move).
- ``repair(resource, ctx, observed)`` -> the provider's inventory fields
  (``created`` among them when it brought the thing into existence).
- ``remove(rid, entry, ctx)``: undo a resource a newer manifest dropped; only
  called for what the agent created. Returns a message.

Providers raise :class:`~treadle_agent.errors.HostError` (or let OSError
through, which the Applier wraps) and never catch to record a result.
"""

from __future__ import annotations

import base64
import binascii
import grp
import hashlib
import os
import pwd
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from treadle_agent.errors import HostError
from treadle_agent.host import Host, PackageState
from treadle_agent.inventory import Entry, Inventory
from treadle_agent.providers.paths import RootFS

Resource = Any  # a manifest resource mapping, schema-validated


@dataclass(slots=True)
class Observed:
    """The result of an inspection. ``diff`` None means in sync.

    ``record`` is provider data to store in the inventory when in sync (None:
    keep the entry's); ``detail`` is private to the provider's ``repair``.
    """

    diff: str | None
    record: Entry | None = None
    detail: Any = None


@dataclass
class Context:
    """Shared by every provider during one run."""

    fs: RootFS
    host: Host
    inventory: Inventory
    #: Package names of the whole manifest, read in one query on first use.
    package_names: list[str] = field(default_factory=list)
    can_chown: bool = field(default_factory=lambda: os.geteuid() == 0)
    #: Services started during this run (a notify restart would be redundant).
    started: set[str] = field(default_factory=set)
    #: Sysctl keys whose runtime value the run changed.
    sysctl_changed: set[str] = field(default_factory=set)
    #: Where the manifest (fabric.yaml policy.special_modes) allows setuid, setgid and sticky bits.
    special_modes: tuple[str, ...] = ()
    #: The run changed, created or removed something in a systemd unit directory: the service manager
    #: must reload before it starts, enables or restarts anything (see :meth:`reload_units`).
    units_changed: bool = False
    #: Where the node's identity is (identity.py): secrets are decrypted with it.
    state_dir: Path | None = None
    _packages: dict[str, PackageState] | None = None
    _uids: dict[str, int] = field(default_factory=dict)
    _gids: dict[str, int] = field(default_factory=dict)
    _cache: dict[str, Any] = field(default_factory=dict)

    def uid(self, name: str) -> int:
        """The uid of user ``name``; raises HostError if there is no such user."""
        if name not in self._uids:
            try:
                self._uids[name] = pwd.getpwnam(name).pw_uid
            except KeyError as e:
                raise HostError(
                    f"unknown user {name!r}: create it first (a package or your image)"
                ) from e
        return self._uids[name]

    def gid(self, name: str) -> int:
        """The gid of group ``name``; raises HostError if there is no such group."""
        if name not in self._gids:
            try:
                self._gids[name] = grp.getgrnam(name).gr_gid
            except KeyError as e:
                raise HostError(
                    f"unknown group {name!r}: create it first (a package or your image)"
                ) from e
        return self._gids[name]

    def package(self, name: str) -> PackageState:
        """The state of package ``name`` (all manifest packages are read in one query)."""
        if self._packages is None:
            self._packages = self.host.packages.query(sorted(set(self.package_names) | {name}))
        if name not in self._packages:
            self._packages.update(self.host.packages.query([name]))
        return self._packages[name]

    def package_changed(self, name: str) -> PackageState:
        """Re-read package ``name`` after a change."""
        state = self.host.packages.query([name])[name]
        if self._packages is not None:
            self._packages[name] = state
        return state

    def reload_units(self) -> None:
        """``systemctl daemon-reload`` once after unit files or drop-ins changed, before any service change.

        systemd's own ``NeedDaemonReload`` misses a new drop-in directory (its unit path cache is only
        refreshed by a reload), so the agent reloads whenever it touched a unit directory.
        """
        if self.units_changed:
            self.host.services.daemon_reload()
            self.units_changed = False

    def secret(self, res: Resource) -> bytes:
        """The plaintext of a file resource's ``secret``, decrypted with the node's identity; kept for this run only.

        The plaintext never goes into a message: errors name the path and the
        ciphertext's digest.

        Raises:
            HostError: the ciphertext does not match its digest, the node has no
                identity, or the secret is not encrypted to it.
            StateError: the stored identity is unusable (identity.py).
        """
        import pyrage

        from treadle_agent import identity

        path, secret = res["path"], res["secret"]
        key = f"secret:{secret['sha256']}"
        if key in self._cache:
            return self._cache[key]
        try:
            data = base64.b64decode(secret["age"], validate=True)
        except (binascii.Error, ValueError) as e:
            raise HostError(f"{path}: the secret's ciphertext is not base64; refusing it") from e
        if hashlib.sha256(data).hexdigest() != secret["sha256"]:
            raise HostError(
                f"{path}: the secret's ciphertext does not match its sha256; refusing it"
            )
        if self.state_dir is None or not (identities := identity.load(self.state_dir)):
            raise HostError(
                f"{path}: this node has no identity to decrypt its secret (ciphertext sha256 "
                f"{secret['sha256'][:16]}) (fix: treadle-agent enroll, record identity: in the node "
                "file, then treadle secret rekey)"
            )
        try:
            plain = pyrage.decrypt(data, identities)
        except pyrage.DecryptError as e:  # not one of our recipients, or a damaged file
            mine = identity.recipient(self.state_dir)
            raise HostError(
                f"{path}: the secret (ciphertext sha256 {secret['sha256'][:16]}) is not encrypted to "
                f"this node's identity {mine}, or is damaged (fix: add the identity to the secret's "
                "recipients, then treadle secret rekey)"
            ) from e
        self._cache[key] = plain
        return plain

    def cached(self, key: str, make: Any) -> Any:
        """A per-run memo (e.g. the parsed persistent sysctl file)."""
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def drop_cached(self, key: str) -> None:
        self._cache.pop(key, None)


class Provider(Protocol):
    type: str

    def want(self, res: Resource) -> list[Any]: ...
    def inspect(self, res: Resource, ctx: Context, entry: Entry | None) -> Observed: ...
    def repair(self, res: Resource, ctx: Context, observed: Observed) -> Entry: ...
    def remove(self, rid: str, entry: Entry, ctx: Context) -> str: ...


SPECIAL_BITS = 0o7000


def check_special_mode(res: Resource, ctx: Context) -> None:
    """Refuse a mode with setuid, setgid or sticky bits on a path the fabric's policy does not allow them on.

    ``treadle validate`` refuses such a fabric already; this is the agent's own
    check of the signed manifest, so that no single mistake grants setuid.

    Raises:
        HostError: naming the path, the mode and the fix.
    """
    import fnmatch

    mode = res.get("mode")
    if mode is None or not int(mode, 8) & SPECIAL_BITS:
        return
    if any(fnmatch.fnmatchcase(res["path"], pattern) for pattern in ctx.special_modes):
        return
    raise HostError(
        f"{res['path']}: mode {mode} has setuid, setgid or sticky bits, which fabric.yaml policy.special_modes "
        "does not allow on this path (fix: add the path to policy.special_modes, or drop those bits)"
    )


def check_single_link(path: str, st: os.stat_result, ctx: Context) -> None:
    """Refuse to change the mode or owner of a file with other hard links that the agent did not create.

    A chmod or chown acts on the inode, so through a hard link planted under
    the managed root it would change a file outside it (``/etc/shadow``). A
    rewrite of the content is safe (it replaces the name, never writes
    through), so only mode and owner changes are refused.

    Raises:
        HostError: naming the path, the link count and the fix.
    """
    if st.st_nlink <= 1:
        return
    entry = ctx.inventory.get(f"file:{path}")
    stat_data = entry.get("stat") if entry else None
    if entry and entry.get("created") and stat_data and stat_data[3] == st.st_ino:
        return  # the agent made this very inode; another name for it changes nothing else
    raise HostError(
        f"{path} has {st.st_nlink} hard links and was not created by the agent: changing its mode or owner "
        "would change the file behind every other link (fix: remove the other links, e.g. `find / -samefile "
        f"{path}`)"
    )


def ownership_diff(st: os.stat_result, res: Resource, ctx: Context) -> list[str]:
    """What differs in mode, owner and group; owner/group are unmanaged unless running as root."""
    out = []
    if res.get("mode") is not None and (st.st_mode & 0o7777) != int(res["mode"], 8):
        out.append(f"mode is {st.st_mode & 0o7777:04o}, want {res['mode']}")
    if ctx.can_chown:
        if res.get("owner") is not None and st.st_uid != ctx.uid(res["owner"]):
            out.append(f"owner is uid {st.st_uid}, want {res['owner']}")
        if res.get("group") is not None and st.st_gid != ctx.gid(res["group"]):
            out.append(f"group is gid {st.st_gid}, want {res['group']}")
    return out


def wanted_ids(res: Resource, ctx: Context, st: os.stat_result | None) -> tuple[int, int]:
    """(uid, gid) to give a new or rewritten file: the desired ones, else the existing file's, else unchanged (-1)."""
    if not ctx.can_chown:
        return -1, -1
    uid = (
        ctx.uid(res["owner"])
        if res.get("owner") is not None
        else (st.st_uid if st is not None else -1)
    )
    gid = (
        ctx.gid(res["group"])
        if res.get("group") is not None
        else (st.st_gid if st is not None else -1)
    )
    return uid, gid


def fix_ownership(fd: int, res: Resource, ctx: Context) -> None:
    """chmod/chown an open file or directory to the resource's mode, owner and group (where set)."""
    if res.get("mode") is not None:
        os.fchmod(fd, int(res["mode"], 8))
    uid, gid = wanted_ids(res, ctx, None)
    if uid != -1 or gid != -1:
        os.fchown(fd, uid, gid)
