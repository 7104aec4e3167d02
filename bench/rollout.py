"""Rollout benchmark: one decided and persisted step of a 10,000-node rollout, and a 50-agent rollout.

    python bench/rollout.py                       # both figures
    python bench/rollout.py --nodes 10000 --ticks 30 --agents 0
    python bench/rollout.py --agents 50 --soak-s 2

- step: :meth:`RolloutService.tick` over a 10,000-node rollout (waves:
  10 canaries, a tenth of each of 100 clusters, the rest), with an
  in-process Executor that publishes nothing and a HealthSource that returns
  prepared observations, so what is timed is deciding (``machine.step``) and
  persisting (SQLite, WAL, synchronous=FULL) plus the service's own reads
  and metrics, not HTTP. Timed separately: ``machine.step`` alone and
  ``RolloutStore.save`` alone, on the largest wave (about 9,000 nodes). The
  ticks are of three kinds: a soak in progress where half the wave's nodes
  newly report (a transition, persisted), a steady soak (nothing changes,
  nothing written), and a wave passing into the next one.
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
TARGET_STEP_MS = 50.0
TARGET_50_AGENTS_S = 30.0


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _line(what: str, values_ms: list[float], target_ms: float | None) -> None:
    med, worst = statistics.median(values_ms), max(values_ms)
    verdict = "" if target_ms is None else f"  target <= {target_ms:.0f} ms  {'PASS' if worst <= target_ms else 'FAIL'}"
    print(f"  {what:<44} median {med:7.2f} ms  p95 {_percentile(values_ms, 0.95):7.2f} ms  max {worst:7.2f} ms{verdict}")


class StubExecutor:
    """The pipeline's side, with nothing behind it: every publish succeeds at once."""

    def __init__(self, policy: Any, nodes: Sequence[str]) -> None:
        from treadle.rollout.observe import Target

        self.policy = policy
        self.generation = dict.fromkeys(nodes, 1)
        # Loopback addresses: the fake health source never contacts them, and nothing here may leave 127/8.
        self._targets = {n: Target(n, f"127.{16 + i // 65536}.{i // 256 % 256}.{i % 256}") for i, n in enumerate(nodes)}

    def rollout_policy(self, commit: str) -> Any:
        return self.policy

    def targets(self, commit: str, nodes: Sequence[str]) -> list[Any]:
        return [self._targets[n] for n in nodes]

    def expected(self, nodes: Sequence[str]) -> dict[str, int]:
        return dict(zip(nodes, map(self.generation.__getitem__, nodes)))  # in C: the stub should cost ~nothing

    def current_manifests(self, nodes: Sequence[str]) -> dict[str, bytes]:
        return {n: b'{"metadata":{"generation":%d,"node":"%s"}}' % (self.generation[n], n.encode()) for n in nodes}

    def publish_content(self, commit: str, nodes: Sequence[str]) -> None:
        for n in nodes:
            self.generation[n] += 1

    def publish_manifests(self, manifests: Mapping[str, Mapping[str, Any]]) -> None:
        self.publish_content("", list(manifests))

    def write_revert(self, commit: str, reason: str) -> str:
        return f"treadle/revert-{commit[:12]}"


class PreparedHealth:
    """Answers from a dict the benchmark fills in: no HTTP."""

    def __init__(self) -> None:
        self.answers: dict[str, Any] = {}

    async def observe(self, targets: Sequence[Any]) -> dict[str, Any]:
        answers = self.answers
        return {t.node: answers[t.node] for t in targets if t.node in answers}


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def _policy():  # type: ignore[no-untyped-def]
    from treadle.rollout.policy import from_doc

    return from_doc({"waves": [
        {"name": "canary", "selector": {"labels": {"canary": "true"}}, "soak_s": 60, "failure_budget": {"count": 0}},
        {"name": "ten-percent", "fraction": 0.1, "soak_s": 60, "failure_budget": {"percent": 5}},
        {"name": "rest", "fraction": 1.0, "soak_s": 60, "failure_budget": {"percent": 2}},
    ]})


def bench_step(nodes: int, ticks: int, workdir: Path) -> list[float]:
    """Time RolloutService.tick, machine.step and RolloutStore.save on a ``nodes``-node rollout; the tick times (ms)."""
    from treadle.daemon.metrics import ControllerMetrics
    from treadle.rollout import machine
    from treadle.rollout.machine import Observation
    from treadle.rollout.service import RolloutService
    from treadle.rollout.store import RolloutStore
    from treadle.rollout.waves import Candidate

    clusters = 100
    names = [f"c{i % clusters:03d}-n{i // clusters:04d}" for i in range(nodes)]
    candidates = [Candidate(n, "s1", n[:4], {"canary": "true"} if i < 10 else {}) for i, n in enumerate(names)]
    policy, health, clock = _policy(), PreparedHealth(), Clock()
    executor = StubExecutor(policy, names)
    service = RolloutService(workdir / "state.sqlite3", health, metrics=ControllerMetrics(), clock=clock)
    side = RolloutStore(sqlite3.connect(workdir / "state.sqlite3"))  # the benchmark's own handle, for resets
    created = time.perf_counter()
    rid = service.begin("a" * 40, policy, candidates, immediate=False, current=executor.current_manifests(names))
    print(f"  planning and creating the rollout: {1000 * (time.perf_counter() - created):.1f} ms "
          f"(waves {[len(w.nodes) for w in service.active().waves]})")
    assert rid is not None

    def healthy(wave_nodes: Sequence[str], share: float = 1.0) -> None:
        for n in wave_nodes[: int(len(wave_nodes) * share)]:
            health.answers[n] = Observation(executor.generation[n], True, True)

    def timed_tick() -> float:
        started = time.perf_counter()
        service.tick(executor)
        return 1000 * (time.perf_counter() - started)

    kinds: dict[str, list[float]] = {"soak, half the wave newly reporting": [], "soak, nothing new": [],
                                     "wave passed, next wave published": []}
    service.tick(executor)  # publishes the canaries
    for _ in range(ticks):
        r = service.active()
        assert r is not None and r.current is not None, "the rollout ended early"
        if r.wave < 2:  # walk to the largest wave; timed: its start (9,000 nodes' previous manifests kept)
            healthy(r.current.nodes)
            clock.now += 1
            service.tick(executor)
            clock.now += 61
            passed = timed_tick()
            if r.wave == 1:
                kinds["wave passed, next wave published"].append(passed)
            continue
        break
    big = service.active()
    assert big is not None and big.current is not None
    wave = big.current.nodes
    for i in range(ticks):
        health.answers.clear()
        healthy(wave, 0.5)
        clock.now += 1
        kinds["soak, half the wave newly reporting"].append(timed_tick())
        clock.now += 1
        kinds["soak, nothing new"].append(timed_tick())
        # Reset the wave's progress for the next round, untimed: the same transition every time.
        found = side.active()
        assert found is not None
        side.save(found[0], replace(found[1], progress={n: machine.NodeProgress() for n in wave}), clock.now)
    print(f"RolloutService.tick, {nodes:,}-node rollout, largest wave {len(wave):,} nodes ({ticks} ticks each):")
    for kind in ("soak, half the wave newly reporting", "soak, nothing new"):
        _line(kind, kinds[kind], TARGET_STEP_MS)
    _line(f"wave 2 passed, wave 3 ({len(wave):,}) published", kinds["wave passed, next wave published"], TARGET_STEP_MS)
    healthy(wave)
    clock.now += 1
    service.tick(executor)
    clock.now += 61
    last = [timed_tick()]
    kinds["last wave passed"] = last
    _line("last wave passed, rollout complete", last, TARGET_STEP_MS)

    # The two halves of a step, alone, on the same wave.
    store, r = side, side.get(rid)
    assert r is not None
    r = replace(r, state=machine.State.SOAKING, wave=2, started_at=clock.now,
                                    progress={n: machine.NodeProgress() for n in wave})
    obs = {n: Observation(2, True, True) for n in wave}
    expected = dict.fromkeys(wave, 2)
    steps, saves = [], []
    for i in range(ticks):
        started = time.perf_counter()
        new, _ = machine.step(r, clock.now + i, obs, expected, None)
        steps.append(1000 * (time.perf_counter() - started))
        started = time.perf_counter()
        store.save(rid, new, clock.now + i)
        saves.append(1000 * (time.perf_counter() - started))
    print("  its parts, on the same wave:")
    _line("machine.step", steps, None)
    _line("RolloutStore.save", saves, None)
    return [v for vs in kinds.values() for v in vs]


def bench_agents(agents: int, soak_s: int, workdir: Path) -> float | None:
    """A 3-wave rollout over ``agents`` real agent processes; seconds from push to complete (None: it did not complete)."""
    sys.path.insert(0, str(ROOT / "tests" / "rollout_e2e"))
    from rollout_fleet import generate_keys, node_specs, start_fleet

    rollout = (f"apiVersion: treadle.dev/v1\nkind: RolloutPolicy\nwaves:\n"
               f'  - {{name: canary, selector: {{labels: {{canary: "true"}}}}, soak_s: {soak_s}, timeout_s: 120}}\n'
               f"  - {{name: ten-percent, fraction: 0.1, soak_s: {soak_s}, timeout_s: 120}}\n"
               f"  - {{name: rest, fraction: 1.0, soak_s: {soak_s}, timeout_s: 120}}\n")
    clusters = 5
    started = time.perf_counter()
    fleet = start_fleet(workdir / "fleet", generate_keys(workdir / "keys"), node_specs(clusters, agents // clusters, 2),
                        rollout, agent_interval_s=1.0)
    print(f"{agents} agents: fleet started and applied v1 in {time.perf_counter() - started:.1f} s")
    try:
        pushed = time.perf_counter()
        sha = fleet.change_app("v2")
        doc = fleet.wait_rollout(sha, {"complete", "halted", "rolled_back", "aborted", "superseded"}, 180)
        wall = time.perf_counter() - pushed
        sizes = [len(w["nodes"]) for w in doc["waves"]]
        if doc["state"] != "complete":
            print(f"  the rollout ended {doc['state']}: {doc['reason']}")
            return None
        fleet.wait_applied("v2", fleet.agents, 60)
        verdict = "PASS" if wall < TARGET_50_AGENTS_S else "FAIL"
        print(f"  3-wave rollout (waves {sizes}, soak {soak_s} s each), push -> complete: {wall:.1f} s  "
              f"target < {TARGET_50_AGENTS_S:.0f} s  {verdict}")
        return wall
    finally:
        fleet.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=10000, help="nodes in the in-process rollout (default 10000)")
    parser.add_argument("--ticks", type=int, default=20, help="timed ticks of each kind (default 20)")
    parser.add_argument("--agents", type=int, default=50, help="real agents for the end-to-end figure; 0 skips it")
    parser.add_argument("--soak-s", type=int, default=2, help="soak of every wave in the end-to-end figure")
    args = parser.parse_args(argv)
    if args.nodes < 1000 or args.ticks < 1 or args.agents < 0 or (args.agents and args.agents < 10):
        parser.error("--nodes must be >= 1000, --ticks >= 1, --agents 0 or >= 10")
    sys.path.insert(0, str(ROOT / "controller"))
    with tempfile.TemporaryDirectory(prefix="treadle-bench-rollout-") as tmp:
        bench_step(args.nodes, args.ticks, Path(tmp))
        if args.agents:
            if bench_agents(args.agents, args.soak_s, Path(tmp)) is None:
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
