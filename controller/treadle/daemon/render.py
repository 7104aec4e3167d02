"""load/render/check: a commit of the fabric made into manifests, refused on any diagnostic.

The rendering itself is :mod:`treadle.fabric`'s; this module is the
pipeline's side of it: the renderer it keeps across cycles (a parse cache and
the last source, so a push costs what it changed), the :class:`Rendered`
value the later steps receive, and the checks that refuse a commit
(any diagnostic, or a rollout policy that parses but means nothing).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from treadle import log
from treadle.daemon.publish import PublishStore
from treadle.errors import Diagnostic, FabricError
from treadle.fabric.source import changed_paths
from treadle.rollout import policy as rollout_policy


class Renderer(Protocol):
    """Renders one commit of the fabric, reusing ``previous`` for paths outside ``changed``.

    ``base`` is the deployed revision (its render result, or its commit id)
    against which lifecycle transitions are checked; None skips that check.
    """

    def __call__(
        self,
        repo: Any,
        commit: str,
        previous: Any | None,
        changed: set[str] | None,
        base: Any | None,
    ) -> Any: ...


class FabricRenderer:
    """The real renderer (:mod:`treadle.fabric`), with a parse cache kept across cycles.

    It keeps the source of its last render: the next commit's source is made
    from it and the changed paths (:meth:`GitRevisionSource.derived`) instead
    of walking the whole tree, and the cache forgets only the blobs those
    paths replaced. A push's cost then follows the change, not the fabric.
    """

    def __init__(self) -> None:
        from treadle.fabric import ParseCache

        self.cache = ParseCache()
        self._last: Any = None  # the GitRevisionSource of the last render

    def __call__(
        self,
        repo: Any,
        commit: str,
        previous: Any | None,
        changed: set[str] | None,
        base: Any | None,
    ) -> Any:
        from treadle.fabric import render_fabric

        if isinstance(base, str):
            base = self.source(repo, base)
        src = self._derived(repo, commit, previous, changed) or self.source(repo, commit)
        result = render_fabric(
            src, cache=self.cache, previous=previous, changed_paths=changed, base=base
        )
        if result.fresh is not None and self._last is not None and changed is not None:
            old = self._last.entries_view()
            new = src.entries_view()
            self.cache.forget(old[p] for p in changed if p in old and old[p] != new.get(p))
        else:
            self.cache.retain(
                src.entries_view().values()
            )  # the cache keeps one revision's files, not every version seen
        self._last = src
        return result

    def source(self, repo: Any, commit: str) -> Any:
        """The source of ``commit``: the last render's when it is that commit (no second walk of the tree)."""
        from treadle.fabric import GitRevisionSource

        if self._last is not None and self._last.commit == commit and self._last.repo is repo:
            return self._last
        return GitRevisionSource(repo, commit)

    def _derived(
        self, repo: Any, commit: str, previous: Any | None, changed: set[str] | None
    ) -> Any:
        from treadle.fabric import GitRevisionSource

        last = self._last
        if (
            previous is None
            or changed is None
            or last is None
            or last.repo is not repo
            or last.commit != previous.commit
        ):
            return None
        return GitRevisionSource.derived(last, commit, changed)


@dataclass(frozen=True, slots=True)
class Rendered:
    """A commit that passed every check, with its render result (the base of the next incremental render)."""

    commit: str
    result: Any
    duration_s: float


def render(
    renderer: Renderer, repo: Any, head: str, deployed: str | None, last_good: Rendered | None
) -> Rendered:
    """load/render/check ``head``: incremental from the last good commit when there is one.

    Lifecycle transitions are checked against the deployed revision: its
    result when in memory, else (after a restart, when the head moved) its
    commit, which the renderer reads.

    Raises:
        FabricError: any diagnostic at all.
        SourceError: the mirror cannot be read.
    """
    previous, changed, base = None, None, None
    if last_good is not None:
        previous = last_good.result
        changed = changed_paths(repo, last_good.commit, head)
        base = previous if last_good.commit == deployed else deployed
    elif deployed is not None and deployed != head:
        base = deployed
    started = time.perf_counter()
    result = renderer(repo, head, previous, changed, base)
    duration = time.perf_counter() - started
    if not result.ok or result.diagnostics:
        raise FabricError(list(result.diagnostics))
    policy_of(result)  # a rollout.yaml that parses but means nothing refuses the commit too
    return Rendered(head, result, duration)


def policy_of(result: Any) -> rollout_policy.RolloutPolicy:
    """The rollout policy of a render. Raises FabricError when rollout.yaml is meaningless (e.g. an unknown time zone)."""
    try:
        return rollout_policy.from_doc(result.rollout)
    except rollout_policy.PolicyError as e:
        raise FabricError(
            [Diagnostic("rollout.yaml", 0, 0, "rollout", str(e), "fix rollout.yaml")]
        ) from e


def prepare_store(store: PublishStore, mirror: Path, head: str) -> threading.Thread:
    """On a cold cycle, create the store's node directories and temp files while the render runs (a thread).

    See :meth:`PublishStore.prepare`. Node names come from the tree's layout alone (no parsing). The thread
    opens its own handle on the mirror: a pygit2 repository is not shared
    between threads.
    """

    def work() -> None:
        src = None
        try:
            from treadle.fabric import GitRevisionSource
            from treadle.fabric.layout import classify

            src = GitRevisionSource(str(mirror), head)
            store.prepare(n.name for n in classify(src.entries()).nodes)
        except Exception as e:  # only an optimisation: publish creates what is missing
            log.warning("store.prepare_failed", error=str(e))
        finally:
            if src is not None:
                # libgit2 shares a pack's descriptor among every handle on the repository: this one
                # would keep the mirror's packs open after a repack (tests/controller/test_soak.py).
                src.repo.free()

    thread = threading.Thread(target=work, name="store-prepare", daemon=True)
    thread.start()
    return thread
