"""source: a bare mirror of the tracked branch in the state directory, and ways to learn it moved.

The mirror is cloned and fetched with pygit2 (libgit2) from any URL git
serves: a local path, ``file://``, ``https://``, ``ssh://``. From a local
path or ``file://`` it is fetched with ``git fetch-pack`` instead when the
git command is installed (libgit2's in-process pack building walks the whole
tree at every fetch; see :meth:`GitSource._fetch_pack`). Neither runs hooks
(``git upload-pack`` runs none of the upstream's), and the controller never
initialises submodules (the fabric check refuses a repository that has any),
so nothing in the fabric repository executes on the controller.

Credentials (:class:`GitCredentials`): over ssh a deploy key file, else the
ssh-agent; over https a token file. The server is always authenticated: an
ssh host key must be in ``~/.ssh/known_hosts`` of the user the controller
runs as, and a TLS certificate must verify; libgit2 reports both, and
:class:`Callbacks` refuses the connection when they fail (pygit2's default
accepts any host key).

Three ways to notice a new commit, all of which only *trigger* a fetch (the
fetch itself decides what the head is, so duplicates are harmless):

- watchfiles on the refs of a local repository: a push is seen within a second;
- ``POST /v1/hooks/git`` (see :mod:`treadle.daemon.api`);
- polling every ``poll_interval_s`` as the fallback.

Upkeep: every fetch that brings commits writes one more pack file into the
mirror, and libgit2 never repacks. After a fetch, when the mirror holds more
than ``max_packs`` pack files, ``git gc`` (the git CLI) repacks them into one
and prunes unreachable objects older than git's default (two weeks); the
repository handle is then freed so the deleted packs' descriptors close.
libgit2 is also told to keep at most :data:`MAX_OPEN_PACK_FILES` pack files
open at once, process-wide. (Pinned by tests/controller/test_soak.py.)

Raises:
    SourceError: clone, fetch or a read failed; the loop retries later.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import pygit2

from treadle import log
from treadle.errors import SourceError

MIRROR_DIR = "mirror.git"
REMOTE = "origin"


def local_git_dir(url: str) -> Path | None:
    """The git directory of ``url`` when it is a repository on this machine (path or ``file://``), else None."""
    if url.startswith("file://"):
        path = Path(unquote(urlparse(url).path))
    elif "://" in url:
        return None
    else:
        path = Path(url)
    if (path / ".git").is_dir():
        return path / ".git"
    if (path / "refs").is_dir() and (path / "HEAD").exists():
        return path
    return None


#: The user name presented with a token when the URL names none (``https://user@host/...`` overrides it).
DEFAULT_TOKEN_USER = "git"
#: libgit2's socket timeouts (ms), process-wide: a server that accepts a connection and then says nothing
#: fails the fetch (the loop retries later) instead of hanging the pipeline for good.
CONNECT_TIMEOUT_MS = 15_000
IO_TIMEOUT_MS = 60_000


#: Pack files libgit2 keeps open at once, process-wide (its default: no limit, one descriptor per pack ever read).
MAX_OPEN_PACK_FILES = 64
#: Default of ``mirror_max_packs``: repack the mirror when it holds more pack files than this.
DEFAULT_MAX_PACKS = 16
#: How long ``git gc`` of the mirror may take before it is stopped (the next fetch tries again).
GC_TIMEOUT_S = 600
#: How long ``git fetch-pack`` from a local upstream may take, the first (whole) fetch included, before libgit2 is tried.
FETCH_PACK_TIMEOUT_S = 600


def _run_git(
    git_dir: Path, args: list[str], *, timeout_s: float
) -> subprocess.CompletedProcess[str]:
    """Run ``git -C git_dir args`` with no hooks, no system config and no prompt; its output as text.

    Why one place: the mirror's git commands must never run a hook of the
    repository (``core.hooksPath=/dev/null``), read ``/etc/gitconfig`` or wait
    for a password, and must stop after ``timeout_s``. The exit status is the
    caller's to judge (``check=False``); stdin is closed.

    Raises:
        OSError: the git command cannot be started.
        subprocess.TimeoutExpired: it ran longer than ``timeout_s``.
    """
    env = {**os.environ, "GIT_CONFIG_NOSYSTEM": "1", "GIT_TERMINAL_PROMPT": "0"}
    argv = ["git", "-C", str(git_dir), "-c", "core.hooksPath=/dev/null", *args]
    return subprocess.run(
        argv,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        errors="replace",
        timeout=timeout_s,
        check=False,
    )


def set_timeouts(connect_ms: int = CONNECT_TIMEOUT_MS, io_ms: int = IO_TIMEOUT_MS) -> None:
    """Set libgit2's connect and read/write timeouts for every remote of this process (ssh and http)."""
    pygit2.settings.server_connect_timeout = connect_ms
    pygit2.settings.server_timeout = io_ms


@dataclass(frozen=True, slots=True)
class GitCredentials:
    """What the controller presents to the fabric repository's server.

    ``ssh_key_file``: a private key without a passphrase (a deploy key); without it the ssh-agent's keys.
    ``https_token_file``: a file holding an access token, read at every use (so it can be rotated in place).
    ``https_ca_file``: the certificate(s) of a private CA that signs the server's TLS certificate, trusted
    in addition to the system's CAs (process-wide: libgit2 has one TLS context).
    """

    ssh_key_file: Path | None = None
    https_token_file: Path | None = None
    https_ca_file: Path | None = None

    def callbacks(self) -> Callbacks:
        """Fresh callbacks for one fetch or push (they count authentication attempts)."""
        return Callbacks(self)


class Callbacks(pygit2.RemoteCallbacks):
    """Credentials on request, once per kind; and the server's identity checked, never waved through.

    libgit2 asks again after a refused credential; answering with the same
    one again would loop forever, so a second request of a kind is a failure.
    """

    def __init__(self, creds: GitCredentials) -> None:
        super().__init__()
        self._creds = creds
        self._asked: set[str] = set()

    def credentials(self, url: str, username_from_url: str | None, allowed_types: Any) -> Any:
        kinds = pygit2.enums.CredentialType
        if allowed_types & kinds.SSH_KEY:
            user = username_from_url or "git"
            self._once(
                "ssh",
                url,
                f"the ssh key {self._creds.ssh_key_file or '(from the ssh-agent)'} of user {user!r}",
            )
            if self._creds.ssh_key_file is not None:
                return pygit2.Keypair(user, None, str(self._creds.ssh_key_file), "")
            return pygit2.KeypairFromAgent(user)
        if allowed_types & kinds.USERPASS_PLAINTEXT and self._creds.https_token_file is not None:
            self._once("token", url, f"the token in {self._creds.https_token_file}")
            return pygit2.UserPass(
                username_from_url or DEFAULT_TOKEN_USER, read_token(self._creds.https_token_file)
            )
        raise SourceError(
            f"{url}: the server asks for credentials the controller does not hold; set https_token_file "
            "(https) or ssh_key_file (ssh) in controller.toml"
        )

    def _once(self, kind: str, url: str, what: str) -> None:
        if kind in self._asked:
            raise SourceError(
                f"{url}: the server refused {what}; grant it read access (and write access to "
                "treadle/revert-* branches), or fix the key or token"
            )
        self._asked.add(kind)

    def certificate_check(self, certificate: Any, valid: bool, host: bytes | str) -> bool:
        if not valid:
            name = host.decode(errors="replace") if isinstance(host, bytes) else host
            raise SourceError(
                f"{name}: the server's identity does not verify (an ssh host key that is not in "
                "~/.ssh/known_hosts of the controller's user, or a TLS certificate that does not "
                f"verify); for ssh, add the host's key with `ssh-keyscan {name} >> ~/.ssh/known_hosts` "
                "after checking its fingerprint"
            )
        return True


def read_token(path: Path) -> str:
    """The token in ``path``, without surrounding whitespace.

    Raises:
        SourceError: the file cannot be read or is empty.
    """
    try:
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        raise SourceError(f"https_token_file: cannot read {path}: {e}") from e
    if not token:
        raise SourceError(f"https_token_file: {path} is empty; write the access token into it")
    return token


class GitSource:
    """The tracked ``branch`` of ``url``, mirrored in ``state_dir``."""

    def __init__(
        self,
        url: str,
        branch: str,
        state_dir: Path,
        credentials: GitCredentials | None = None,
        max_packs: int = DEFAULT_MAX_PACKS,
    ) -> None:
        self.url = url
        self.branch = branch
        self.credentials = credentials or GitCredentials()
        self.max_packs = max_packs
        if pygit2.settings.server_timeout == 0:  # libgit2's default: wait forever
            set_timeouts()
        if pygit2.settings.mwindow_file_limit == 0:  # libgit2's default: no limit
            pygit2.settings.mwindow_file_limit = MAX_OPEN_PACK_FILES
        if self.credentials.https_ca_file is not None:
            pygit2.settings.set_ssl_cert_locations(str(self.credentials.https_ca_file), None)
        self.path = state_dir / MIRROR_DIR
        self.tracking_ref = f"refs/remotes/{REMOTE}/{branch}"
        self._repo: pygit2.Repository | None = None
        self._retry_gc_at = 0  # pack count at which a failed git gc is tried again
        self._cli_fetch = (
            True  # local upstreams: git fetch-pack until the git command proves missing
        )
        self._fetch_pack_warned = (
            False  # a failed git fetch-pack was logged, and none has worked since
        )

    @property
    def repo(self) -> pygit2.Repository:
        """The mirror, cloned on first use.

        Raises:
            SourceError: it cannot be cloned or opened.
        """
        if self._repo is None:
            self._repo = self._open_or_clone()
        return self._repo

    def _open_or_clone(self) -> pygit2.Repository:
        try:
            if (self.path / "HEAD").exists():
                return pygit2.Repository(str(self.path))
            # Clone into a temp dir and rename: a crash mid-clone never leaves a half mirror.
            tmp = self.path.with_name(self.path.name + ".tmp")
            if tmp.exists():
                _rmtree(tmp)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            repo = pygit2.init_repository(str(tmp), bare=True)
            repo.remotes.create(REMOTE, self.url, f"+refs/heads/{self.branch}:{self.tracking_ref}")
            os.replace(tmp, self.path)
            return pygit2.Repository(str(self.path))
        except (pygit2.GitError, OSError) as e:
            raise SourceError(f"{self.url}: cannot create the mirror at {self.path}: {e}") from e

    def fetch(self) -> str:
        """Fetch the branch and return its head commit id.

        The refspec is forced (``+``): a rewritten history must reach the gate to
        be refused and reported, not fail here.

        Raises:
            SourceError: the fetch failed, or the branch does not exist upstream.
        """
        repo = self.repo
        upstream = local_git_dir(self.url)
        if upstream is None or not self._fetch_pack(upstream):
            try:
                repo.remotes[REMOTE].fetch(
                    [f"+refs/heads/{self.branch}:{self.tracking_ref}"],
                    callbacks=self.credentials.callbacks(),
                    prune=pygit2.enums.FetchPrune.NO_PRUNE,
                )
            except (pygit2.GitError, KeyError, ValueError) as e:
                raise SourceError(f"{self.url}: fetch of branch {self.branch!r} failed: {e}") from e
        packs = self.pack_count()
        if packs > self.max_packs and packs >= self._retry_gc_at:
            if not self.repack():
                # Not at every fetch (git missing, a broken mirror): once another max_packs packs have come.
                self._retry_gc_at = packs + self.max_packs
        return self.head()

    def _fetch_pack(self, upstream: Path) -> bool:
        """Fetch the branch of the local repository ``upstream`` with ``git fetch-pack``; whether it did.

        Why not libgit2 here: for a path or ``file://`` URL libgit2 builds the
        pack itself, in this process, and first marks every tree and blob of
        the commit the mirror already has as known: a one-file push costs a
        walk of the whole fabric tree (35-40 ms at 100,000 nodes, 4 ms at
        1,000). ``git upload-pack``'s sparse walk only opens the trees that
        changed, so the same fetch takes the same ~12 ms at any size. Over a
        network URL the server's ``upload-pack`` does that walk already.

        Only the tracking ref is written (forced, as the libgit2 refspec); the
        pack is kept whole (``-k``) so the mirror's pack-count upkeep applies.
        A branch missing upstream leaves the ref alone (:meth:`head` says so).
        Any other failure (no git command, a repository git refuses to read)
        returns False and the caller fetches with libgit2, as before.
        """
        if not self._cli_fetch:
            return False
        try:
            done = _run_git(
                self.path,
                ["fetch-pack", "-q", "-k", "--thin", str(upstream), f"refs/heads/{self.branch}"],
                timeout_s=FETCH_PACK_TIMEOUT_S,
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            if isinstance(e, OSError):
                self._cli_fetch = (
                    False  # no git command: libgit2 from now on, without retrying every fetch
                )
            return self._fetch_pack_failed(upstream, str(e))
        if done.returncode != 0:
            if "no such remote ref" in done.stderr:
                return True
            return self._fetch_pack_failed(upstream, done.stderr.strip()[-500:])
        wanted = f"refs/heads/{self.branch}"
        heads = [
            line.split()[0] for line in done.stdout.splitlines() if line.split()[1:] == [wanted]
        ]
        if len(heads) != 1:
            return self._fetch_pack_failed(upstream, f"unexpected output {done.stdout[:200]!r}")
        try:
            self.repo.references.create(self.tracking_ref, pygit2.Oid(hex=heads[0]), force=True)
        except (pygit2.GitError, ValueError) as e:
            raise SourceError(
                f"{self.path}: cannot move {self.tracking_ref} to {heads[0][:12]}: {e}"
            ) from e
        for line in (
            done.stdout.splitlines()
        ):  # fetch-pack locks the new pack until its ref is written: now it is
            kind, _, name = line.partition("\t")
            if kind == "keep" and name.isalnum():
                (self.path / "objects" / "pack" / f"pack-{name}.keep").unlink(missing_ok=True)
        self._fetch_pack_warned = False
        return True

    def _fetch_pack_failed(self, upstream: Path, error: str) -> bool:
        """Log the first of a run of failures (not one line per poll), and say libgit2 must fetch."""
        if not self._fetch_pack_warned:
            log.warning(
                "mirror.fetch_pack_failed", path=str(upstream), error=error, fallback="libgit2"
            )
            self._fetch_pack_warned = True
        return False

    def pack_count(self) -> int:
        """How many pack files the mirror holds."""
        try:
            return sum(1 for p in (self.path / "objects" / "pack").iterdir() if p.suffix == ".pack")
        except OSError:
            return 0

    def repack(self) -> bool:
        """``git gc`` the mirror, then free the handle so the old packs' descriptors close; whether it ran.

        A failure is logged, never raised: the mirror stays usable, only larger, and the next fetch tries again.
        """
        try:
            done = _run_git(
                self.path, ["-c", "gc.autoDetach=false", "gc", "--quiet"], timeout_s=GC_TIMEOUT_S
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            log.warning("mirror.gc_failed", path=str(self.path), error=str(e))
            return False
        self.close()  # the handle reopens on next use, seeing only the new pack
        if done.returncode != 0:
            log.warning("mirror.gc_failed", path=str(self.path), error=done.stderr.strip()[-500:])
            return False
        log.event("mirror.gc", path=str(self.path), packs=self.pack_count())
        return True

    def prune_revert_branches(
        self, keep: int, prefix: str = "refs/heads/treadle/revert-"
    ) -> list[str]:
        """Delete all but the ``keep`` newest revert branches (by commit time) from the mirror; their names.

        Only the mirror's copies: the branches pushed upstream are the admins' to merge or delete.
        """
        repo = self.repo
        found = []
        for name in repo.references:
            if name.startswith(prefix):
                try:
                    found.append((repo.references[name].peel(pygit2.Commit).commit_time, name))
                except (pygit2.GitError, KeyError, ValueError):
                    found.append((0, name))
        found.sort(reverse=True)
        gone = [name for _, name in found[keep:]]
        try:
            for name in gone:
                repo.references.delete(name)
        except (pygit2.GitError, KeyError) as e:
            raise SourceError(f"{self.path}: cannot delete an old revert branch: {e}") from e
        return gone

    def close(self) -> None:
        """Release the mirror's handle and the pack files behind it (reopened on next use)."""
        if self._repo is not None:
            self._repo.free()
            self._repo = None

    def head(self) -> str:
        """The last fetched head of the branch.

        Raises:
            SourceError: the branch was never fetched (it does not exist upstream).
        """
        ref = self.repo.references.get(self.tracking_ref)
        if ref is None:
            raise SourceError(
                f"{self.url}: branch {self.branch!r} not found; push it or set `branch` in controller.toml"
            )
        return str(ref.resolve().target)

    def changed_paths(self, old: str, new: str) -> set[str]:
        """Paths that differ between commits ``old`` and ``new`` (added, deleted, modified, both sides of a rename).

        Raises:
            SourceError: a commit is missing from the mirror.
        """
        try:
            # pygit2's stubs omit diff(Tree, Tree), which it supports (Tree.diff_to_tree).
            diff = self.repo.diff(
                self.repo[old].peel(pygit2.Tree), self.repo[new].peel(pygit2.Tree)
            )  # type: ignore[call-overload]
        except (pygit2.GitError, AttributeError, ValueError, KeyError) as e:
            raise SourceError(f"cannot diff {old[:12]}..{new[:12]}: {e}") from e
        paths: set[str] = set()
        for delta in diff.deltas:
            paths.add(delta.old_file.path)
            paths.add(delta.new_file.path)
        return paths


async def watch_refs(
    git_dir: Path, on_change: Callable[[], Awaitable[None] | None], stop_event: Any = None
) -> None:
    """Call ``on_change`` whenever a ref of the repository at ``git_dir`` moves, until ``stop_event`` is set.

    Set ``stop_event`` before cancelling: the watcher's thread notices it at
    once, while a bare cancellation waits for the thread's next timeout.

    Only ``refs/`` and ``packed-refs`` are of interest; object writes during a
    push are filtered out so one push is one or two calls, not hundreds.
    """
    import watchfiles

    refs, packed = str(git_dir / "refs"), str(git_dir / "packed-refs")

    def interesting(_change: watchfiles.Change, path: str) -> bool:
        return path.startswith(refs) or path == packed

    async for _changes in watchfiles.awatch(
        git_dir,
        watch_filter=interesting,
        debounce=50,
        step=20,
        stop_event=stop_event,
        recursive=True,
        rust_timeout=500,
    ):
        result = on_change()
        if result is not None:
            await result


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path)
