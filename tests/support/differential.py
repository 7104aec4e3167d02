"""The differential check: plans and a running controller against full renders of both revisions.

For every commit of a sequence (see fabric_model.py), with BASE the commit
before it:

- ``treadle plan BASE HEAD``, scoped and ``--full-render``, names exactly the
  nodes whose full renders differ (changed, added, removed), and reports a
  problem whenever HEAD's full render has one that BASE's has not;
- a controller (the real pipeline over the repository: incremental render
  from its last good commit, its dependency index, its parse cache, the
  state database and the publish store) then runs one cycle: it deploys
  HEAD when HEAD is valid against the deployed commit, refuses it otherwise,
  and either way the content it publishes for every node is exactly the full
  render of the commit it reports as deployed, under generations that never
  go down and go up whenever the content changes.

Full renders use a fresh parse cache each, so nothing is shared with the
plan or the controller. The controller runs without rollouts: every change
is published in the cycle that sees it, which is the render-to-store path
this check is about (the waves' gate is tested in tests/rollout*).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from support.fabric_model import LEGAL, FabricModel, GitFabric, apply, invalid_content
from support.keys import write_signing_key
from treadle.daemon import config
from treadle.daemon import process as daemon
from treadle.daemon.pipeline import Pipeline
from treadle.daemon.sign import content_digest, manifest_from_envelope
from treadle.fabric import GitRevisionSource, ParseCache, render_fabric
from treadle.review.plan import PlanSettings, build_plan


class Mismatch(AssertionError):
    """What the differential check found: the commit, the operation and what differed."""


def controller(directory: Path, repository: Path) -> Pipeline:
    """The real pipeline over ``repository``, without rollouts (see the module docstring)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "controller.toml"
    path.write_text(
        f'repository = "{repository}"\nstate_dir = "state"\npublish_dir = "publish"\n'
        f'signing_key = "{write_signing_key(directory / "controller.key")}"\n'
    )
    pipeline = daemon.build(config.load(path)).pipeline
    pipeline.rollouts = None
    return pipeline


def full_render(root: Path, rev: str, base: str | None = None) -> Any:
    return render_fabric(
        GitRevisionSource(root, rev),
        ParseCache(),
        base=GitRevisionSource(root, base) if base else None,
    )


def digests(result: Any) -> dict[str, str]:
    return {n: content_digest(node.manifest) for n, node in result.nodes.items()}


class Differential:
    """One sequence of commits, checked commit by commit."""

    def __init__(self, workdir: Path) -> None:
        self.repo = GitFabric(workdir / "fabric")
        self.model = FabricModel.initial()
        self.head = self.repo.commit(self.model, "fabric")
        self.pipeline = controller(workdir / "controller", self.repo.root)
        self.generations: dict[str, int] = {}
        self.published: dict[str, str] = {}
        self._check_controller("the first commit")

    def close(self) -> None:
        self.pipeline.state.close()

    def run(self, ops: Sequence[tuple[Any, ...]]) -> None:
        for op in ops:
            before = self._lifecycles()
            if op[0] == "invalid":
                paths = sorted(self.model.files())
                path = paths[op[1] % len(paths)]
                self.model.raw[path] = invalid_content(path)
                self.step(f"break {path}", op, before)
                before = self._lifecycles()
                del self.model.raw[path]
                self.step(f"revert the break of {path}", op, before)
            else:
                self.step(apply(self.model, op), op, before)

    def step(self, message: str, op: tuple[Any, ...], before: dict[str, str | None] | None) -> None:
        base, self.head = self.head, self.repo.commit(self.model, message)
        what = f"{message} ({op!r}) at {self.head[:12]}"
        self._check_plan(base, self.head, what, before, self._lifecycles())
        self._check_controller(what)

    def _lifecycles(self) -> dict[str, str | None] | None:
        """Each node's lifecycle as the model has it (None: its file is broken); None when another file is broken."""
        broken = set(self.model.raw)
        paths = {self.model.node_path(n): n for n in self.model.nodes}
        if broken - set(paths):
            return None
        return {n: None if p in broken else self.model.lifecycle(n) for p, n in paths.items()}

    # -- the checks ------------------------------------------------------------

    def _check_plan(
        self,
        base: str,
        head: str,
        what: str,
        before: dict[str, str | None] | None,
        after: dict[str, str | None] | None,
    ) -> None:
        b, h = full_render(self.repo.root, base), full_render(self.repo.root, head, base)
        for settings in (PlanSettings(), PlanSettings(full_render=True)):
            plan = build_plan(self.repo.root, base, head, settings)
            kind = "plan --full-render" if settings.full_render else "plan"
            if before is not None and after is not None:
                # Lifecycle transitions, from the model: only between node files that parse in both revisions.
                moves = {
                    n: (before[n], after[n])
                    for n in before.keys() & after.keys()
                    if before[n] is not None and after[n] is not None and before[n] != after[n]
                }
                got_moves = {t.name: (t.before, t.after) for t in plan.changes.transitions}
                _expect(
                    got_moves == moves,
                    f"{kind} lists transitions {got_moves}, the commit makes {moves}: {what}",
                )
                illegal = {n for n, (old, new) in moves.items() if new not in LEGAL[old]}  # type: ignore[index]
                refused = {
                    Path(d.file).stem for d in plan.refusals if d.code == "lifecycle-transition"
                }
                _expect(
                    refused == illegal,
                    f"{kind} refuses transitions of {refused}, illegal are {illegal}: {what}",
                )
            if b.ok and not h.ok:
                _expect(
                    bool(plan.errors or plan.refusals),
                    f"{kind} reports no problem of an invalid HEAD: {what}",
                )
            if not (b.ok and h.ok):
                continue
            bd, hd = digests(b), digests(h)
            want = {
                "changed": {n for n in bd.keys() & hd.keys() if bd[n] != hd[n]},
                "added": set(hd) - set(bd),
                "removed": set(bd) - set(hd),
            }
            got = {
                "changed": {c.name for c in plan.changes.changed},
                "added": {n.name for n in plan.changes.added},
                "removed": {n.name for n in plan.changes.removed},
            }
            _expect(got == want, f"{kind} differs from the full renders: {got} != {want}: {what}")
            _expect(
                not plan.changes.unrendered,
                f"{kind} leaves nodes unrendered in a valid HEAD: {what}",
            )

    def _check_controller(self, what: str) -> None:
        deployed = self.pipeline.state.deployed_commit()
        valid = full_render(
            self.repo.root, self.head, deployed if deployed != self.head else None
        ).ok
        outcome = self.pipeline.run_once()
        now = self.pipeline.state.deployed_commit()
        if valid:
            _expect(
                outcome.result in ("deployed", "unchanged") and now == self.head,
                f"the controller did not deploy a valid commit ({outcome.result}: {outcome.message} "
                f"{list(outcome.diagnostics)[:3]}): {what}",
            )
        else:
            _expect(
                outcome.result == "refused" and now == deployed,
                f"the controller did not refuse an invalid commit ({outcome.result}): {what}",
            )
        assert now is not None
        want = digests(full_render(self.repo.root, now))
        store = self.pipeline.store
        got, generations = {}, {}
        for n in store.nodes():
            manifest = manifest_from_envelope(store.read(n) or b"")
            got[n], generations[n] = content_digest(manifest), manifest["metadata"]["generation"]
        _expect(
            got == want,
            f"the controller publishes other content than the render of {now[:12]}: "
            f"{sorted(n for n in got.keys() | want.keys() if got.get(n) != want.get(n))}: {what}",
        )
        for n, g in generations.items():
            old = self.generations.get(n)
            if old is not None:
                _expect(g >= old, f"{n}: generation went down from {old} to {g}: {what}")
                _expect(
                    g > old or got[n] == self.published[n],
                    f"{n}: content changed under generation {g}: {what}",
                )
        self.generations.update(generations)
        self.published.update(got)


def _expect(condition: bool, message: str) -> None:
    if not condition:
        raise Mismatch(message)


def operations(st: Any) -> Any:
    """The hypothesis strategy of one operation (see fabric_model.apply)."""
    small = st.integers(min_value=0, max_value=7)
    return st.one_of(
        st.tuples(
            st.just("data"),
            st.sampled_from(
                ["defaults", "site", "cluster", "node", "profile", "lifecycle-profile"]
            ),
            st.sampled_from(["motd", "ntp"]),
            small,
        ),
        st.tuples(st.just("sysctl"), small),
        st.tuples(
            st.just("template"), st.sampled_from(["header.j2", "chrony.conf.j2", "motd.j2"]), small
        ),
        st.tuples(
            st.just("site-template"),
            st.sampled_from(["s1", "s2"]),
            st.one_of(st.none(), st.sampled_from(["a", "b"])),
        ),
        st.tuples(st.just("add-node"), small),
        st.tuples(st.just("remove-node"), small),
        st.tuples(st.just("move-node"), small, small),
        st.tuples(st.just("rename-profile")),
        st.tuples(st.just("lifecycle"), small, small, st.booleans()),
        st.tuples(st.just("merge-tag"), small),
        st.tuples(st.just("noop"), small),
        st.tuples(st.just("invalid"), st.integers(min_value=0, max_value=40)),
    )


def run_sequence(workdir: Path, ops: Sequence[tuple[Any, ...]]) -> None:
    """Check one sequence of operations in a fresh repository and controller under ``workdir``."""
    diff = Differential(workdir)
    try:
        diff.run(ops)
    finally:
        diff.close()
