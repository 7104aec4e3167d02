"""The publish store: a directory of static files any HTTP server can serve.

    <publish_dir>/nodes/<node>/manifest     the DSSE envelope bytes of <node>

A batch is made durable with two filesystem flushes instead of one fsync per
file (about 1 ms each on this class of disk: 12 s for 10,000 files):

1. every new envelope is written to a temp file beside its target (not yet visible);
2. one ``syncfs`` of the store's filesystem makes all their bytes durable;
3. each temp file is renamed over its target (atomic: a reader sees the old
   or the new envelope, never part of one);
4. one more ``syncfs`` makes the renames (the directory entries) durable.

On a cold start the directories and empty temp files are created ahead, while
the commit is still being rendered (:meth:`PublishStore.prepare`); both are
invisible to readers.

A crash before step 3 leaves only temp files, removed on the next open; a
crash during step 3 leaves some nodes old and some new, each a whole envelope
that verifies; the controller's state (see :mod:`treadle.daemon.state`) has those
nodes marked dirty and re-publishes them. Re-running a batch is idempotent.

The store also keeps, once asked (:meth:`PublishStore.index`), an in-memory
index of every published envelope's ETag, so that the API answers an agent's
conditional GET without touching the disk (:class:`ManifestIndex`).

Raises:
    StoreError: the directory cannot be written, or a node name is unsafe.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import os
import re
import subprocess
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path

from treadle.errors import StoreError

MANIFEST = "manifest"
TEMP_PREFIX = ".manifest.tmp-"
#: A node name as a path segment: no separators, no leading dot (so never `.` or `..`), no control characters.
#: Directories per mkdir process: well inside the kernel's argument size limit.
PREPARE_BATCH = 2000
NODE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,252}$")


def valid_node_name(name: str) -> bool:
    return bool(NODE_NAME.fullmatch(name)) and ".." not in name


def etag_of(data: bytes) -> str:
    """The strong ETag of an envelope: its SHA-256, quoted (what agents send back in ``If-None-Match``)."""
    return f'"{hashlib.sha256(data).hexdigest()}"'


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except (FileNotFoundError, NotADirectoryError):
        return None


class ManifestIndex:
    """node -> ETag of its published envelope, in memory: a conditional GET is answered without the disk.

    100,000 agents polling every minute make 1,700 requests a second, nearly all
    answered 304; a stat per request was a third of the controller's time.
    The store keeps this index current: :meth:`PublishStore.publish` sets the
    ETag of each envelope once it is renamed into place (so the index never
    names bytes a reader cannot get yet) and drops removed nodes. What the
    store held before the index existed is read once by :meth:`load` (a
    thread of the API); until it has finished, a node missing from the index
    is looked up on disk, and a node that publish touched meanwhile is never
    overwritten by an older read. Once loaded, a node missing from the index
    is unknown: a 404 without a disk access. Only this store's publications
    are seen: the store belongs to one controller (mirrors serve copies).
    """

    def __init__(self, nodes_dir: Path) -> None:
        self._nodes_dir = str(nodes_dir)
        self._etags: dict[str, str] = {}
        self._lock = threading.Lock()
        self._touched: set[str] | None = (
            set()
        )  # published or removed since creation; None once loaded
        self._load_started = False

    @property
    def loaded(self) -> bool:
        return self._touched is None

    def etag(self, node: str) -> str | None:
        """The ETag of ``node``'s envelope, or None when it has none; ``node`` must be a valid node name."""
        etag = self._etags.get(node)
        if etag is not None or self._touched is None:
            return etag
        data = _read(
            os.path.join(self._nodes_dir, node, MANIFEST)
        )  # still loading: the disk decides
        if data is None:
            return None
        etag = etag_of(data)
        return etag if self._fill(node, etag) else self._etags.get(node)

    def read(self, node: str) -> bytes | None:
        """The envelope bytes of ``node`` from the store (a full answer reads them; a 304 does not)."""
        return _read(os.path.join(self._nodes_dir, node, MANIFEST))

    def begin_load(self) -> bool:
        """True the first time only: the caller then runs :meth:`load` (once per index, however many apps use it)."""
        with self._lock:
            started, self._load_started = self._load_started, True
        return not started

    def load(self) -> int:
        """Index every envelope already in the store; returns how many. See the class docstring."""
        with os.scandir(self._nodes_dir) as it:
            names = [e.name for e in it if not e.name.startswith(".")]
        count = 0
        for node in names:
            if node in self._etags or not valid_node_name(node):
                continue
            data = _read(os.path.join(self._nodes_dir, node, MANIFEST))
            if data is not None and self._fill(node, etag_of(data)):
                count += 1
        with self._lock:
            self._touched = None
        return count

    def _fill(self, node: str, etag: str) -> bool:
        # A read from disk may be older than a publication that ran while it
        # was read: publish's entry, or its removal, wins.
        with self._lock:
            if self._touched is None or node in self._touched or node in self._etags:
                return False
            self._etags[node] = etag
            return True

    def published(self, etags: Mapping[str, str], removed: Iterable[str]) -> None:
        """Record a batch :meth:`PublishStore.publish` has renamed into place and removed."""
        with self._lock:
            for node in removed:
                self._etags.pop(node, None)
                if self._touched is not None:
                    self._touched.add(node)
            self._etags.update(etags)
            if self._touched is not None:
                self._touched.update(etags)


def _load_syncfs():  # type: ignore[no-untyped-def]
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.syncfs
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int]
    return fn


_SYNCFS = _load_syncfs()


class PublishStore:
    """Atomic batches of envelopes under ``root``; see the module docstring."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.nodes_dir = root / "nodes"
        try:
            self.nodes_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(
                f"{self.nodes_dir}: cannot create the publish store: {e.strerror}"
            ) from e
        self.remove_temp_files()
        self._index: ManifestIndex | None = None

    def index(self) -> ManifestIndex:
        """The in-memory ETag index of this store, kept current by :meth:`publish` from the first call on."""
        if self._index is None:
            self._index = ManifestIndex(self.nodes_dir)
        return self._index

    def path(self, node: str) -> Path:
        """The published file of ``node``.

        Raises:
            StoreError: ``node`` is not a safe path segment.
        """
        if not valid_node_name(node):
            raise StoreError(f"node name {node!r} cannot be a file name in the publish store")
        return self.nodes_dir / node / MANIFEST

    def read(self, node: str) -> bytes | None:
        """The published envelope of ``node``, or None."""
        try:
            return self.path(node).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise StoreError(f"{self.path(node)}: {e.strerror}") from e

    def nodes(self) -> list[str]:
        """Every node with a published manifest, sorted."""
        with os.scandir(self.nodes_dir) as it:
            return sorted(
                e.name for e in it if e.is_dir() and os.path.exists(os.path.join(e.path, MANIFEST))
            )

    def prepare(self, nodes: Iterable[str]) -> int:
        """Create the directories and empty temp files of ``nodes`` whose directory is missing; returns how many.

        Both are invisible to readers (no ``manifest`` file: a 404), so this
        can run ahead of a cold start's render while the commit is still
        unchecked: creating 20,000 inodes costs seconds of filesystem time,
        which then overlaps with rendering, and :meth:`publish` only fills and
        renames. The inodes are made by ``mkdir`` and ``touch`` processes
        rather than os calls in a thread: a thread would wait for the
        interpreter lock after every call while the render holds it, and take
        longer than the render itself. Unsafe names are skipped (the render
        reports them); whatever fails here :meth:`publish` creates itself.
        """
        with os.scandir(self.nodes_dir) as it:
            existing = {e.name for e in it}
        missing = [n for n in dict.fromkeys(nodes) if n not in existing and valid_node_name(n)]
        temp = self._temp_name()
        for command, paths in (("mkdir", missing), ("touch", [f"{n}/{temp}" for n in missing])):
            for i in range(0, len(paths), PREPARE_BATCH):
                subprocess.run(
                    [command, "--", *paths[i : i + PREPARE_BATCH]],
                    cwd=self.nodes_dir,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    check=False,
                )
        return len(missing)

    @staticmethod
    def _temp_name() -> str:
        return f"{TEMP_PREFIX}{os.getpid()}"

    def publish(self, envelopes: Mapping[str, bytes], remove: Iterable[str] = ()) -> None:
        """Replace the envelopes of ``envelopes``' nodes and delete ``remove``'s, durably; see the module docstring.

        Raises:
            StoreError: a write, flush or rename failed; whatever was renamed is whole.
        """
        temps: list[tuple[str, str, str]] = []
        renamed: list[str] = []
        unlinked: list[str] = []
        try:
            for node, data in envelopes.items():
                temps.append((node, *self._write_temp(node, data)))
            self._flush()
            for node, temp, target in temps:
                os.replace(temp, target)
                renamed.append(node)
            for node in remove:
                self.path(node).unlink(missing_ok=True)
                unlinked.append(node)
            self._flush()
        except OSError as e:
            raise StoreError(f"{self.root}: publishing failed: {e}") from e
        finally:
            if (
                self._index is not None
            ):  # what was renamed or unlinked, also when the batch failed midway
                self._index.published({n: etag_of(envelopes[n]) for n in renamed}, unlinked)

    def _write_temp(self, node: str, data: bytes) -> tuple[str, str]:
        # Plain os calls: on a cold start this runs 10,000 times and the
        # filesystem, not Python, should be the cost.
        directory = str(self.path(node).parent)  # StoreError for an unsafe name
        temp = os.path.join(directory, self._temp_name())
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        except FileNotFoundError:
            os.mkdir(directory)
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        return temp, os.path.join(directory, MANIFEST)

    def _flush(self) -> None:
        # One flush for the whole filesystem of the store instead of an fsync
        # per file; os.sync() where syncfs is unavailable does the same, wider.
        if _SYNCFS is None:
            os.sync()
            return
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            if _SYNCFS(fd) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"syncfs: {os.strerror(err)}")
        finally:
            os.close(fd)

    def remove_temp_files(self) -> int:
        """Delete temp files a crashed batch left behind; returns how many."""
        count = 0
        with os.scandir(self.nodes_dir) as it:
            for entry in it:
                if not entry.is_dir():
                    continue
                with os.scandir(entry.path) as inner:
                    for f in inner:
                        if f.name.startswith(TEMP_PREFIX):
                            os.unlink(f.path)
                            count += 1
        return count
