"""file, directory and symlink resources, each present or absent.

All access goes through :class:`~treadle_agent.providers.paths.RootFS`, which
never follows a symlink out of the managed root. A file's content is compared
without hashing when its stat data equals what the inventory recorded after
the agent last wrote or verified it; otherwise it is hashed (only if the size
matches) and the inventory's stat data refreshed.

Two refusals protect what lies outside the root and the node's privileges
(base.py): no chmod or chown of a file with other hard links the agent did not
create (content is replaced by rename, never written through), and no setuid,
setgid or sticky bits except where the manifest's ``special_modes`` allows.
"""

from __future__ import annotations

import hashlib
import os
import stat

from treadle_agent.errors import HostError
from treadle_agent.inventory import Entry, stat_key
from treadle_agent.providers.base import (
    Context,
    Observed,
    Resource,
    check_single_link,
    check_special_mode,
    fix_ownership,
    ownership_diff,
    wanted_ids,
)
from treadle_agent.providers.paths import split_path, temp_name

#: The difference a secret file's content shows: never the content, only the ciphertext's digest.
SECRET_DIFF = "secret changed"

_KINDS = {stat.S_IFDIR: "a directory", stat.S_IFLNK: "a symlink", stat.S_IFREG: "a regular file"}


def kind(st: os.stat_result) -> str:
    return _KINDS.get(stat.S_IFMT(st.st_mode), "a special file")


def desired_sha(res: Resource) -> str | None:
    """The manifest's sha256 of the content; computed only if a manifest left it out. None: content unmanaged."""
    if res["sha256"] is not None or res["content"] is None:
        return res["sha256"]
    return hashlib.sha256(res["content"].encode()).hexdigest()


def secret_sha(res: Resource) -> str | None:
    """The sha256 of a secret file's ciphertext (what the inventory and messages name), None for other files."""
    secret = res.get("secret")
    return secret["sha256"] if secret else None


class FileProvider:
    """Files; a ``secret`` file's content is decrypted at write time and compared by digest in memory.

    For a secret, the inventory records the ciphertext's digest and the stat
    data of the file written from it, never the plaintext nor its digest: a
    file whose stat data changed is decrypted again and compared.
    """

    type = "file"

    def want(self, res: Resource) -> list:
        content = f"secret:{secret_sha(res)}" if res.get("secret") else desired_sha(res)
        return [res["ensure"], content, res["mode"], res["owner"], res["group"]]

    def inspect(self, res: Resource, ctx: Context, entry: Entry | None) -> Observed:
        st = ctx.fs.lstat(res["path"])
        if res["ensure"] == "absent":
            return Observed(None if st is None else f"exists ({kind(st)}), want absent", detail=st)
        if st is None:
            return Observed("missing", detail=st)
        if not stat.S_ISREG(st.st_mode):
            return Observed(f"is {kind(st)}, want a regular file", detail=st)
        diffs, record = [], None
        sha = desired_sha(res)
        if res.get("secret"):
            record, diff = self._inspect_secret(res, ctx, entry, st)
            diffs += [diff] if diff else []
        elif sha is not None and not (
            entry is not None and entry.get("sha256") == sha and entry.get("stat") == stat_key(st)
        ):
            content = res["content"] or ""
            if st.st_size == len(content.encode()) and ctx.fs.sha256(res["path"]) == sha:
                record = {"sha256": sha, "stat": stat_key(st)}
            else:
                diffs.append("content differs")
        diffs += ownership_diff(st, res, ctx)
        return Observed("; ".join(diffs) or None, record=record, detail=st)

    @staticmethod
    def _inspect_secret(
        res: Resource, ctx: Context, entry: Entry | None, st: os.stat_result
    ) -> tuple[Entry | None, str | None]:
        csha = secret_sha(res)
        if (
            entry is not None
            and entry.get("secret_sha256") == csha
            and entry.get("stat") == stat_key(st)
        ):
            return None, None
        plain = ctx.secret(res)
        if (
            st.st_size == len(plain)
            and ctx.fs.sha256(res["path"]) == hashlib.sha256(plain).hexdigest()
        ):
            return {"secret_sha256": csha, "stat": stat_key(st)}, None
        return None, f"{SECRET_DIFF} (ciphertext sha256 {csha})"

    def repair(self, res: Resource, ctx: Context, observed: Observed) -> Entry:
        path, st = res["path"], observed.detail
        if st is not None and stat.S_ISDIR(st.st_mode):
            raise HostError(f"{path} is a directory: remove it, or declare it as a directory")
        if res["ensure"] == "absent":
            ctx.fs.unlink(path)
            return {}
        check_special_mode(res, ctx)
        if (
            st is None
            or not stat.S_ISREG(st.st_mode)
            or any(d in (observed.diff or "") for d in ("content differs", SECRET_DIFF))
        ):
            return self._write(res, ctx, st)
        f = ctx.fs.open_regular(path)
        try:
            check_single_link(
                path, os.fstat(f), ctx
            )  # the inode about to change, not the name looked up before
            fix_ownership(f, res, ctx)
            new = os.fstat(f)
        finally:
            os.close(f)
        if res.get("secret"):
            return {"secret_sha256": secret_sha(res), "stat": stat_key(new)}
        return {"sha256": desired_sha(res), "stat": stat_key(new)}

    def _write(self, res: Resource, ctx: Context, st: os.stat_result | None) -> Entry:
        if res.get("secret"):
            data = ctx.secret(res)
            regular = st is not None and stat.S_ISREG(st.st_mode)
            uid, gid = wanted_ids(res, ctx, st if regular else None)
            mode = (
                int(res["mode"], 8) if res["mode"] is not None else 0o600
            )  # never readable by others unless asked
            new = ctx.fs.write_atomic(res["path"], data, mode=mode, uid=uid, gid=gid)
            return {"secret_sha256": secret_sha(res), "stat": stat_key(new), "created": st is None}
        data = (res["content"] or "").encode()
        sha = hashlib.sha256(data).hexdigest()
        if res["sha256"] is not None and sha != res["sha256"]:
            raise HostError(
                f"{res['path']}: the manifest's sha256 does not match its content; refusing to write it"
            )
        regular = st is not None and stat.S_ISREG(st.st_mode)
        # Unmanaged mode/owner: keep the replaced file's, so that a rewrite never loosens them.
        mode = (
            int(res["mode"], 8)
            if res["mode"] is not None
            else (st.st_mode & 0o7777 if st is not None and regular else 0o644)
        )
        uid, gid = wanted_ids(res, ctx, st if regular else None)
        new = ctx.fs.write_atomic(res["path"], data, mode=mode, uid=uid, gid=gid)
        return {"sha256": sha, "stat": stat_key(new), "created": st is None}

    def remove(self, rid: str, entry: Entry, ctx: Context) -> str:
        path = rid.partition(":")[2]
        st = ctx.fs.lstat(path)
        if st is None:
            return "already gone"
        if stat.S_ISDIR(st.st_mode):
            return f"left in place: it is now {kind(st)}"
        ctx.fs.unlink(path)
        return "removed (created by the agent, no longer in the manifest)"


class DirectoryProvider:
    type = "directory"

    def want(self, res: Resource) -> list:
        return [res["ensure"], res["mode"], res["owner"], res["group"]]

    def inspect(self, res: Resource, ctx: Context, entry: Entry | None) -> Observed:
        st = ctx.fs.lstat(res["path"])
        if res["ensure"] == "absent":
            return Observed(None if st is None else f"exists ({kind(st)}), want absent", detail=st)
        if st is None:
            return Observed("missing", detail=st)
        if not stat.S_ISDIR(st.st_mode):
            return Observed(f"is {kind(st)}, want a directory", detail=st)
        return Observed("; ".join(ownership_diff(st, res, ctx)) or None, detail=st)

    def repair(self, res: Resource, ctx: Context, observed: Observed) -> Entry:
        path, st = res["path"], observed.detail
        parent, name = ctx.fs.parent(path, create=res["ensure"] == "present")
        if res["ensure"] == "absent":
            if not stat.S_ISDIR(st.st_mode):
                raise HostError(
                    f"{path} is {kind(st)}, not a directory: remove it by hand or declare it as what it is"
                )
            ctx.fs.forget(path)
            import shutil

            # rmtree with dir_fd works on fds and never follows symlinks inside the tree.
            shutil.rmtree(name, dir_fd=parent)
            ctx.fs.mark_dirty(parent)
            return {}
        if st is not None and stat.S_ISLNK(st.st_mode):
            ctx.fs.unlink(path)
            ctx.fs.forget(path)
            st = None
        elif st is not None and not stat.S_ISDIR(st.st_mode):
            raise HostError(f"{path} is {kind(st)}: remove it by hand, or declare it as a file")
        check_special_mode(res, ctx)
        fd = ctx.fs.dir_fd(split_path(path), create=True)
        assert fd is not None
        if st is None and res["mode"] is None:
            os.fchmod(fd, 0o755)  # independent of the umask
        fix_ownership(fd, res, ctx)
        return {"created": st is None}

    def remove(self, rid: str, entry: Entry, ctx: Context) -> str:
        path = rid.partition(":")[2]
        st = ctx.fs.lstat(path)
        if st is None:
            return "already gone"
        if not stat.S_ISDIR(st.st_mode):
            return f"left in place: it is now {kind(st)}"
        parent, name = ctx.fs.parent(path)
        ctx.fs.forget(path)
        try:
            os.rmdir(name, dir_fd=parent)
        except OSError as e:
            # Something else put files there: never delete what the agent did not write.
            return f"left in place and forgotten: {e.strerror}"
        ctx.fs.mark_dirty(parent)
        return "removed (created by the agent, no longer in the manifest)"


class SymlinkProvider:
    type = "symlink"

    def want(self, res: Resource) -> list:
        return [res["ensure"], res["target"]]

    def inspect(self, res: Resource, ctx: Context, entry: Entry | None) -> Observed:
        st = ctx.fs.lstat(res["path"])
        if res["ensure"] == "absent":
            return Observed(None if st is None else f"exists ({kind(st)}), want absent", detail=st)
        target = res["target"]
        if not target or "\0" in target:
            raise HostError(f"symlink {res['path']}: target must be a non-empty path without NUL")
        if st is None:
            return Observed("missing", detail=st)
        if not stat.S_ISLNK(st.st_mode):
            return Observed(f"is {kind(st)}, want a symlink", detail=st)
        parent, name = ctx.fs.parent(res["path"])
        actual = os.readlink(name, dir_fd=parent)
        return Observed(
            None if actual == target else f"points to {actual}, want {target}", detail=st
        )

    def repair(self, res: Resource, ctx: Context, observed: Observed) -> Entry:
        path, st = res["path"], observed.detail
        if st is not None and stat.S_ISDIR(st.st_mode):
            raise HostError(
                f"{path} is a directory: remove it by hand, or declare it as a directory"
            )
        if res["ensure"] == "absent":
            if not stat.S_ISLNK(st.st_mode):
                raise HostError(
                    f"{path} is {kind(st)}, not a symlink: remove it by hand or declare it as what it is"
                )
            ctx.fs.unlink(path)
            ctx.fs.forget(path)
            return {}
        parent, name = ctx.fs.parent(path, create=True)
        tmp = temp_name(name)
        try:
            os.unlink(tmp, dir_fd=parent)
        except FileNotFoundError:
            pass
        os.symlink(res["target"], tmp, dir_fd=parent)
        os.rename(tmp, name, src_dir_fd=parent, dst_dir_fd=parent)
        ctx.fs.mark_dirty(parent)
        ctx.fs.forget(path)
        return {"created": st is None}

    def remove(self, rid: str, entry: Entry, ctx: Context) -> str:
        path = rid.partition(":")[2]
        st = ctx.fs.lstat(path)
        if st is None:
            return "already gone"
        if not stat.S_ISLNK(st.st_mode):
            return f"left in place: it is now {kind(st)}"
        ctx.fs.unlink(path)
        ctx.fs.forget(path)
        return "removed (created by the agent, no longer in the manifest)"
