"""Rollout benchmark: one decided and persisted step of a 10,000-node (or 100,000-node) rollout, and a 50-agent rollout.

    python bench/rollout.py                       # both figures
    python bench/rollout.py --nodes 100000 --ticks 10 --agents 0
    python bench/rollout.py --agents 50 --soak-s 2

- step: :meth:`RolloutService.tick` over a rollout of ``--nodes`` nodes (waves:
  10 canaries, a tenth of each of 100 clusters, the rest: 90 %), with an
  in-process Executor that publishes nothing and a HealthSource that returns
  prepared observations, so what is timed is deciding (``machine.step``) and
  persisting (SQLite, WAL, synchronous=FULL) plus the service's own reads
  and metrics, not HTTP. Both stand-ins are built to cost next to nothing
  and their time is measured: the figures judged are the service's own (the
  tick less the stand-ins); the whole tick and its CPU time are printed
  beside them. The tick kinds: the largest wave's start (the wave before it
  passes and 90 % of the nodes are published), then rounds in its soak where
  half the wave newly reports (45,000 nodes at 100,000), nothing changes,
  and the reports vanish again; then a restart (a new service: the first
  tick reads the rollout from the database) and the last wave passing.
  The target is 50 ms up to 10,000 nodes and 100 ms at 100,000.
  Timed separately: ``machine.step`` alone and ``RolloutStore.save`` alone,
  on the largest wave, all of its nodes reporting at once.
- step with the watcher (``--health watcher``, run after the above by
  default): the same ticks with the daemon's real ``HealthWatcher`` between
  the service and a stand-in source (no HTTP), its cache holding every
  watched node's observation; a round (the health thread's work, untimed)
  lands before each timed tick, so the tick reads what that round changed.
- 50 agents: a real controller and 50 real ``treadle-agent run`` processes
  (tests/rollout_e2e/rollout_fleet.py), a 3-wave rollout with a 2 s soak in
  every wave; wall time from ``git push`` returning to the rollout being
  complete (asserted: the run fails with exit 1 otherwise).
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
#: A step's target: 50 ms up to 10,000 nodes, 100 ms at 100,000 (the scale target).
TARGET_STEP_MS, TARGET_STEP_MS_LARGE, LARGE = 50.0, 100.0, 50000
TARGET_50_AGENTS_S = 30.0


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _line(what: str, values_ms: list[float], target_ms: float | None, after: str = "") -> None:
    med, worst = statistics.median(values_ms), max(values_ms)
    verdict = (
        ""
        if target_ms is None
        else f"  target <= {target_ms:.0f} ms  {'PASS' if worst <= target_ms else 'FAIL'}"
    )
    print(
        f"  {what:<44} median {med:7.2f} ms  p95 {_percentile(values_ms, 0.95):7.2f} ms  max {worst:7.2f} ms{verdict}{after}"
    )


class StandIns:
    """Time spent in the stand-ins for the pipeline and the health source, to print beside the ticks."""

    def __init__(self) -> None:
        self.spent_s = 0.0

    def timed(self, started: float) -> None:
        self.spent_s += time.perf_counter() - started


class StubExecutor:
    """The pipeline's side, with nothing behind it: every publish succeeds at once.

    Built to cost next to nothing, so that the ticks time the service: the generations published for a
    wave are one dict, handed out again until a publish changes them (the real executor looks them up
    in the state database's records).
    """

    def __init__(self, policy: Any, nodes: Sequence[str], spent: StandIns | None = None) -> None:
        from treadle.rollout.observe import Target

        self.policy = policy
        self.generation = dict.fromkeys(nodes, 1)
        self._expected: tuple[Sequence[str], dict[str, int]] | None = None
        self._spent = spent if spent is not None else StandIns()
        # Loopback addresses: the fake health source never contacts them, and nothing here may leave 127/8.
        self._targets = {
            n: Target(n, f"127.{16 + i // 65536}.{i // 256 % 256}.{i % 256}")
            for i, n in enumerate(nodes)
        }

    def rollout_policy(self, commit: str) -> Any:
        return self.policy

    def targets(self, commit: str, nodes: Sequence[str]) -> list[Any]:
        started = time.perf_counter()
        try:
            return [self._targets[n] for n in nodes]
        finally:
            self._spent.timed(started)

    def expected(self, nodes: Sequence[str]) -> dict[str, int]:
        started = time.perf_counter()
        if self._expected is None or self._expected[0] is not nodes:
            self._expected = (
                nodes,
                dict(zip(nodes, map(self.generation.__getitem__, nodes), strict=False)),
            )
        self._spent.timed(started)
        return self._expected[1]

    def current_manifests(self, nodes: Sequence[str]) -> dict[str, bytes]:
        return {
            n: b'{"metadata":{"generation":%d,"node":"%s"}}' % (self.generation[n], n.encode())
            for n in nodes
        }

    def publish_content(self, commit: str, nodes: Sequence[str]) -> None:
        started = time.perf_counter()
        generation = self.generation
        generation.update(
            zip(nodes, map((1).__add__, map(generation.__getitem__, nodes)), strict=False)
        )
        self._expected = None
        self._spent.timed(started)

    def publish_manifests(self, manifests: Mapping[str, Mapping[str, Any]]) -> None:
        self.publish_content("", list(manifests))

    def write_revert(self, commit: str, reason: str) -> str:
        return f"treadle/revert-{commit[:12]}"


class PreparedHealth:
    """Answers from a dict the benchmark fills in: no HTTP.

    Built to cost next to nothing: the benchmark only answers for nodes it observes, so the answers are
    handed out as a copy (in C) once they are known to be among the targets asked (the real health
    watcher reads its cache; see the README's Performance section for its share).
    """

    def __init__(self, spent: StandIns | None = None) -> None:
        self.answers: dict[str, Any] = {}
        self._spent = spent if spent is not None else StandIns()
        self._asked: tuple[Sequence[Any], set[str]] | None = None

    async def observe(self, targets: Sequence[Any]) -> dict[str, Any]:
        started = time.perf_counter()
        try:
            if self._asked is None or self._asked[0] is not targets:
                self._asked = (targets, {t.node for t in targets})
            answers = self.answers
            if answers.keys() <= self._asked[1]:
                return dict(answers)
            return {t.node: answers[t.node] for t in targets if t.node in answers}
        finally:
            self._spent.timed(started)


class RoundAnswers:
    """A health source answering a watcher's rounds from a dict the benchmark fills in: no HTTP."""

    def __init__(self) -> None:
        self.answers: dict[str, Any] = {}

    async def observe(self, targets: Sequence[Any]) -> dict[str, Any]:
        return (await self.observe_round(targets)).observations

    async def observe_round(self, targets: Sequence[Any]) -> Any:
        from treadle.rollout.observe import RoundResult

        answers = self.answers
        got = {t.node: answers[t.node] for t in targets if t.node in answers}
        return RoundResult(got, {t.node: "refused" for t in targets if t.node not in got})


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def _policy():  # type: ignore[no-untyped-def]
    from treadle.rollout.policy import from_doc

    return from_doc(
        {
            "waves": [
                {
                    "name": "canary",
                    "selector": {"labels": {"canary": "true"}},
                    "soak_s": 60,
                    "failure_budget": {"count": 0},
                },
                {
                    "name": "ten-percent",
                    "fraction": 0.1,
                    "soak_s": 60,
                    "failure_budget": {"percent": 5},
                },
                {"name": "rest", "fraction": 1.0, "soak_s": 60, "failure_budget": {"percent": 2}},
            ]
        }
    )


#: The tick kinds timed, in the order printed; the first three are those the target is about.
NO_NEWS, REPORTING, WAVE_START = (
    "soak, nothing new",
    "soak, half the wave newly reporting",
    "wave passed, next wave published",
)
LOSING, LAST, RESTART, RESTART_ROUND = (
    "soak, half the wave losing its reports",
    "last wave passed, rollout complete",
    "first tick after a restart",
    "first step after a restart's first round",
)


def bench_step(
    nodes: int, ticks: int, workdir: Path, watcher: bool = False
) -> dict[str, list[float]]:
    """Time RolloutService.tick, machine.step and RolloutStore.save on a ``nodes``-node rollout; the tick times
    (ms) by kind. ``watcher``: the service reads a real HealthWatcher's cache, a round landing before each tick."""
    from treadle.daemon.metrics import ControllerMetrics
    from treadle.rollout import machine
    from treadle.rollout.health import HealthWatcher
    from treadle.rollout.machine import Observation
    from treadle.rollout.service import RolloutService
    from treadle.rollout.store import RolloutStore
    from treadle.rollout.waves import Candidate

    workdir.mkdir(parents=True, exist_ok=True)
    clusters = 100
    names = [f"c{i % clusters:03d}-n{i // clusters:04d}" for i in range(nodes)]
    candidates = [
        Candidate(n, "s1", n[:4], {"canary": "true"} if i < 10 else {}) for i, n in enumerate(names)
    ]
    spent = StandIns()
    policy, clock = _policy(), Clock()
    health: PreparedHealth | RoundAnswers = RoundAnswers() if watcher else PreparedHealth(spent)
    # The watcher's clocks are the benchmark's: its rounds start when the rollout's time says (no staleness).
    cache = (
        HealthWatcher(health, interval_s=1, stale_after_s=3600, clock=clock, wall_clock=clock)
        if watcher
        else None
    )
    executor = StubExecutor(policy, names, spent)
    service = RolloutService(
        workdir / "state.sqlite3", cache or health, metrics=ControllerMetrics(), clock=clock
    )
    created = time.perf_counter()
    rid = service.begin(
        "a" * 40, policy, candidates, immediate=False, current=executor.current_manifests(names)
    )
    print(
        f"  planning and creating the rollout: {1000 * (time.perf_counter() - created):.1f} ms "
        f"(waves {[len(w.nodes) for w in service.active().waves]})"
    )
    assert rid is not None

    def healthy(wave_nodes: Sequence[str], share: float = 1.0) -> None:
        for n in wave_nodes[: int(len(wave_nodes) * share)]:
            health.answers[n] = Observation(executor.generation[n], True, True)

    kinds: dict[str, list[float]] = {
        k: [] for k in (NO_NEWS, REPORTING, WAVE_START, LOSING, LAST, RESTART, RESTART_ROUND)
    }
    stand_ins: dict[str, list[float]] = {k: [] for k in kinds}
    cpus: dict[str, list[float]] = {
        k: [] for k in kinds
    }  # CPU time: what the wall time is on an idle machine

    rounds: list[float] = []
    # The part of each round done under the cache's lock (a tick's read waits meanwhile).
    held: list[float] = []
    if cache is not None:
        keep = cache._keep

        def timed_keep(kept: Any) -> None:
            started = time.perf_counter()
            keep(kept)
            held.append(1000 * (time.perf_counter() - started))

        cache._keep = timed_keep  # type: ignore[method-assign]

    def timed_tick(kind: str | None, on: RolloutService = service) -> None:
        if cache is not None:  # what the health thread does between ticks
            started = time.perf_counter()
            cache.run_round(cache.watched())
            rounds.append(1000 * (time.perf_counter() - started))
        spent.spent_s = 0.0
        started, cpu = time.perf_counter(), time.process_time()
        on.tick(executor)
        if kind is not None:
            kinds[kind].append(1000 * (time.perf_counter() - started))
            cpus[kind].append(1000 * (time.process_time() - cpu))
            stand_ins[kind].append(1000 * spent.spent_s)

    timed_tick(None)  # publishes the canaries
    while True:  # walk to the largest wave; timed: its start (90 % of the nodes)
        r = service.active()
        assert r is not None and r.current is not None, "the rollout ended early"
        timed_tick(
            None, service
        )  # a wave just published: the watcher is asked for its nodes from now on
        if r.wave == 2:
            break
        healthy(r.current.nodes)
        clock.now += 1
        timed_tick(None, service)
        clock.now += 61
        timed_tick(WAVE_START if r.wave == 1 else None)
    big = service.active()
    assert big is not None and big.current is not None
    wave = big.current.nodes
    # Each round: half the wave reports (45,000 nodes start soaking at 100,000), nothing new, then the
    # reports vanish (they go back to pending); the soak (60 s) never ends meanwhile: one second a tick.
    for _ in range(ticks):
        health.answers.clear()
        healthy(wave, 0.5)
        clock.now += 1
        timed_tick(REPORTING)
        clock.now += 1
        timed_tick(NO_NEWS)
        health.answers.clear()
        clock.now += 1
        timed_tick(LOSING)
    # A restart: a new service (its store connections, no rollout in memory) ticks the same rollout,
    # with a new watcher (an empty cache: the tick waits for its first round) when there is one.
    service.close()
    if cache is not None:
        cache = HealthWatcher(
            health, interval_s=1, stale_after_s=3600, clock=clock, wall_clock=clock
        )
    service = RolloutService(
        workdir / "state.sqlite3", cache or health, metrics=ControllerMetrics(), clock=clock
    )
    healthy(wave, 0.5)
    clock.now += 1
    timed_tick(RESTART, service)
    if cache is not None:
        clock.now += 1
        timed_tick(RESTART_ROUND, service)
    healthy(wave)
    clock.now += 1
    timed_tick(None, service)
    clock.now += 61
    timed_tick(LAST, service)
    service.close()

    target = TARGET_STEP_MS_LARGE if nodes > LARGE else TARGET_STEP_MS
    own = {k: [t - s for t, s in zip(kinds[k], stand_ins[k], strict=False)] for k in kinds}
    reads = (
        "reading the real HealthWatcher's cache, a round having landed just before each tick"
        if watcher
        else "its reads"
    )
    print(
        f"RolloutService.tick, {nodes:,}-node rollout, largest wave {len(wave):,} nodes ({ticks} ticks of each "
        f"soak kind): the service's own time (deciding, persisting, {reads} and metrics); in brackets the "
        "median and max of the whole tick, with the stand-ins for the pipeline (publishing) and the health source, "
        "and the median CPU time of the whole tick (on a busy machine the wall time waits for a core too):"
    )
    for kind, label in (
        (NO_NEWS, NO_NEWS),
        (REPORTING, REPORTING),
        (WAVE_START, f"wave 2 passed, wave 3 ({len(wave):,}) published"),
        (LOSING, LOSING),
        (LAST, LAST),
        (RESTART, RESTART),
        (RESTART_ROUND, RESTART_ROUND),
    ):
        if not kinds[kind]:
            continue
        _line(
            label,
            own[kind],
            target,
            f"  [{statistics.median(kinds[kind]):.1f} / {max(kinds[kind]):.1f}; "
            f"CPU {statistics.median(cpus[kind]):.1f}]",
        )

    if watcher:
        _line("a watcher round (health thread, untimed in ticks)", rounds, None)
        _line("  of which under the cache's lock (reads wait)", held, None)
        return own
    # The two halves of a step, alone, on the same wave: every node of it reports at once.
    store = RolloutStore(sqlite3.connect(workdir / "state.sqlite3"))
    r = store.get(rid)
    assert r is not None
    fresh = machine.NodeProgress()
    obs = {n: Observation(2, True, True) for n in wave}
    expected = dict.fromkeys(wave, 2)
    steps, saves = [], []
    for i in range(ticks):
        r = replace(
            r,
            state=machine.State.SOAKING,
            wave=2,
            started_at=clock.now,
            progress=dict.fromkeys(wave, fresh),
        )
        store.save(rid, r, clock.now + i)
        started = time.perf_counter()
        new, _ = machine.step(r, clock.now + i, obs, expected, None)
        steps.append(1000 * (time.perf_counter() - started))
        started = time.perf_counter()
        store.save(rid, new, clock.now + i, before=r)
        saves.append(1000 * (time.perf_counter() - started))
    store.close()
    print(f"  its parts, on the same wave, all {len(wave):,} of its nodes reporting at once:")
    _line("machine.step", steps, None)
    _line("RolloutStore.save", saves, None)
    return own


def bench_agents(agents: int, soak_s: int, workdir: Path) -> float | None:
    """A 3-wave rollout over ``agents`` real agent processes; seconds from push to complete (None: it did not complete)."""
    sys.path.insert(0, str(ROOT / "tests" / "rollout_e2e"))
    from rollout_fleet import generate_keys, node_specs, start_fleet

    rollout = (
        f"apiVersion: treadle.dev/v1\nkind: RolloutPolicy\nwaves:\n"
        f'  - {{name: canary, selector: {{labels: {{canary: "true"}}}}, soak_s: {soak_s}, timeout_s: 120}}\n'
        f"  - {{name: ten-percent, fraction: 0.1, soak_s: {soak_s}, timeout_s: 120}}\n"
        f"  - {{name: rest, fraction: 1.0, soak_s: {soak_s}, timeout_s: 120}}\n"
    )
    clusters = 5
    started = time.perf_counter()
    fleet = start_fleet(
        workdir / "fleet",
        generate_keys(workdir / "keys"),
        node_specs(clusters, agents // clusters, 2),
        rollout,
        agent_interval_s=1.0,
    )
    print(f"{agents} agents: fleet started and applied v1 in {time.perf_counter() - started:.1f} s")
    try:
        pushed = time.perf_counter()
        sha = fleet.change_app("v2")
        doc = fleet.wait_rollout(
            sha, {"complete", "halted", "rolled_back", "aborted", "superseded"}, 180
        )
        wall = time.perf_counter() - pushed
        sizes = [len(w["nodes"]) for w in doc["waves"]]
        if doc["state"] != "complete":
            print(f"  the rollout ended {doc['state']}: {doc['reason']}")
            return None
        fleet.wait_applied("v2", fleet.agents, 60)
        verdict = "PASS" if wall < TARGET_50_AGENTS_S else "FAIL"
        print(
            f"  3-wave rollout (waves {sizes}, soak {soak_s} s each), push -> complete: {wall:.1f} s  "
            f"target < {TARGET_50_AGENTS_S:.0f} s  {verdict}"
        )
        return wall
    finally:
        fleet.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--nodes", type=int, default=10000, help="nodes in the in-process rollout (default 10000)"
    )
    parser.add_argument(
        "--ticks", type=int, default=20, help="timed ticks of each kind (default 20)"
    )
    parser.add_argument(
        "--agents", type=int, default=50, help="real agents for the end-to-end figure; 0 skips it"
    )
    parser.add_argument(
        "--soak-s", type=int, default=2, help="soak of every wave in the end-to-end figure"
    )
    parser.add_argument(
        "--health",
        choices=("prepared", "watcher", "both"),
        default="both",
        help="the step's health: prepared answers, a real HealthWatcher's cache, or both (default)",
    )
    args = parser.parse_args(argv)
    if args.nodes < 1000 or args.ticks < 1 or args.agents < 0 or (args.agents and args.agents < 10):
        parser.error("--nodes must be >= 1000, --ticks >= 1, --agents 0 or >= 10")
    sys.path.insert(0, str(ROOT / "controller"))
    with tempfile.TemporaryDirectory(prefix="treadle-bench-rollout-") as tmp:
        if args.health != "watcher":
            bench_step(args.nodes, args.ticks, Path(tmp) / "prepared")
        if args.health != "prepared":
            bench_step(args.nodes, args.ticks, Path(tmp) / "watcher", watcher=True)
        if args.agents:
            if bench_agents(args.agents, args.soak_s, Path(tmp)) is None:
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
