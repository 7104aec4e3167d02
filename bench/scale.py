"""Scale benchmark: how each cost grows from 1,000 to 10,000 to 100,000 nodes, side by side, beside the targets.

    python bench/scale.py                          # 1k, 10k and 100k nodes (about 10 minutes; ~3 GB of RAM at 100k)
    python bench/scale.py --sizes 1000,10000       # some sizes only
    python bench/scale.py --only render,push       # some measurements only (render, cold, push, rollout)

Per size, a fabric from bench/gen_fabric.py (10 sites x 20 clusters x 5, 50
or 500 nodes: the same shape, only the clusters grow), then, one process at
a time so that no two large measurements share the machine:

- full render: ``bench/render.py``'s child renders the work tree cold, then
  warm; peak memory is the proportional set size (PSS) of the render and its
  forked helper together, sampled every 0.1 s, so pages they share count once;
- cold start: ``treadle controller run`` on an empty state directory, from
  start to the deployment recorded (clone, render, sign, publish every node
  durably); peak RSS is the process's VmHWM;
- push -> published: a one-node change pushed with ``git push``, timed to its
  manifest file being replaced in the publish store (the controller reacts to
  the ref through its watcher; the changed node starts a rollout whose first
  wave publishes it). The *push-path work* is the sum of the cycle's steps as
  the controller logs them (gate, render, plan, sign, publish, advance):
  what the controller did for that push, without the waiting. The source
  step, the git fetch, is shown apart and in a second ratio. The upstream
  here is a local bare repository, as in a single-host install: the
  controller fetches it with ``git fetch-pack``, whose ``upload-pack`` walks
  only the trees the push changed. (With libgit2's local transport, used
  before, the controller built the pack itself and walked the whole old tree
  first: 38 ms at 100,000 nodes against 5 ms at 1,000. Over ``git://`` or
  https a real ``upload-pack`` serves it, flat in the fabric's size.)
  The pushes start once the controller is idle after its cold start (the
  garbage collection after a full render takes seconds at 100,000 nodes);
- rollout step: ``bench/rollout.py``'s timed ``RolloutService.tick`` on a
  rollout of that many nodes, the median of five ticks of each kind: no
  news, half the largest wave (90 %) reporting at once, a wave passing and
  the next starting; the service's own time (deciding, persisting, its
  reads and metrics), without its stand-ins for publishing and health;
- memory: the controller's RSS after the pushes.

It reports, it does not judge a build: exit 0 whatever the figures, 2 on a
usage error. Every address used is on 127.0.0.0/8.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
#: nodes -> (sites, clusters per site, nodes per cluster)
SHAPES = {1000: (10, 20, 5), 10000: (10, 20, 50), 100000: (10, 20, 500)}
MEASUREMENTS = ("render", "cold", "push", "rollout")
BIG = 100000
TARGET_RENDER_S, TARGET_RENDER_GIB = 15.0, 2.0
TARGET_COLD_S, TARGET_COLD_GIB = 60.0, 4.0
TARGET_PUSH_S, TARGET_WORK_RATIO = 1.0, 2.0
TARGET_STEP_MS = 100.0


def _module(name: str) -> ModuleType:
    """A sibling script of bench/ imported by path (bench/ is scripts, not a package)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@dataclass
class Row:
    """The figures of one fabric size; None where a measurement was not asked for or failed."""

    nodes: int
    render_s: float | None = None
    warm_s: float | None = None
    render_gib: float | None = None
    cold_s: float | None = None
    cold_gib: float | None = None
    push_s: list[float] = field(default_factory=list)
    work_s: list[float] = field(default_factory=list)
    fetch_s: list[float] = field(default_factory=list)
    steps: str = ""
    cold_steps: str = ""
    rss_after_gib: float | None = None
    #: The rollout step's median (the service's own time, ms) by tick kind: no news, many reporting, wave start.
    step_ms: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


# -- memory of a process tree --------------------------------------------------------------


def _tree(pid: int) -> list[int]:
    out = [pid]
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                for child in f.read().split():
                    out += _tree(int(child))
    return out


def _pss_bytes(pid: int) -> int:
    with contextlib.suppress(OSError, ValueError):
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    return 0


def run_sampled(argv: list[str], timeout_s: float) -> tuple[str, int]:
    """Run ``argv``; its stdout and the peak PSS of it and its children together, sampled every 0.1 s."""
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.PIPE, text=False)
        peak, deadline = 0, time.monotonic() + timeout_s
        while proc.poll() is None:
            if time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                raise RuntimeError(f"{argv[:3]} ran past {timeout_s:.0f} s")
            peak = max(peak, sum(_pss_bytes(p) for p in _tree(proc.pid)))
            time.sleep(0.1)
        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        out.seek(0)
        text = out.read().decode()
        if proc.returncode != 0:
            raise RuntimeError(f"{argv[:3]} exited {proc.returncode}: {err[-2000:]}")
        return text, peak


# -- the measurements ------------------------------------------------------------------------


def measure_render(row: Row, fabric: Path) -> None:
    out, peak = run_sampled([PY, str(ROOT / "bench" / "render.py"), "--child", str(fabric)], 1800)
    report = json.loads(out.strip().splitlines()[-1])
    if not report["ok"] or report["diagnostic_count"]:
        row.notes.append(f"render reported {report['diagnostic_count']} diagnostics")
        return
    row.render_s, row.warm_s, row.render_gib = report["cold_s"], report.get("warm_s"), peak / 2**30


def measure_controller(
    row: Row,
    work: Path,
    fabric_dir: Path,
    bare: Path,
    node_path: Path,
    node: str,
    pushes: int,
    cold: bool,
    push: bool,
) -> None:
    ctl_bench = _module("controller")
    ctl = ctl_bench.Controller(work, bare)
    try:
        ctl.wait_event("api.listening", timeout_s=120)
        first = ctl.wait_event("commit.deployed", timeout_s=1800)
        if cold:
            row.cold_s, row.cold_gib = (
                time.perf_counter() - ctl.started,
                ctl.peak_rss_bytes() / 2**30,
            )
            row.cold_steps = " ".join(
                f"{k.removesuffix('_s')} {v:.1f}"
                for k, v in first.items()
                if k.endswith("_s") and isinstance(v, float)
            )
        if not push:
            return
        _settle(
            ctl.proc.pid
        )  # the collection after the cold render (seconds at 100,000 nodes) is not a push's
        manifest = ctl.publish / "nodes" / node / "manifest"
        for i in range(pushes):
            row.push_s.append(ctl_bench.push_one_node_change(fabric_dir, node_path, manifest, i))
            event = ctl.wait_event("commit.deployed", count=i + 2, timeout_s=120)
            steps = {
                k.removesuffix("_s"): v
                for k, v in event.items()
                if k.endswith("_s") and isinstance(v, float)
            }
            row.fetch_s.append(steps.pop("source", 0.0))
            row.work_s.append(sum(steps.values()))
            row.steps = " ".join(f"{k} {v * 1000:.0f}" for k, v in steps.items())
            time.sleep(0.5)  # the garbage collection after a render is not the next push's
        row.rss_after_gib = _vm(ctl.proc.pid, "VmRSS") / 2**30
    finally:
        ctl.stop()


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _settle(pid: int, timeout_s: float = 120) -> None:
    """Until the process has used under 20 ms of CPU in each of two half-seconds running."""
    deadline, quiet, last = time.monotonic() + timeout_s, 0, _cpu_s(pid)
    while quiet < 2 and time.monotonic() < deadline:
        time.sleep(0.5)
        now = _cpu_s(pid)
        quiet, last = (quiet + 1 if now - last < 0.02 else 0), now


def _vm(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1]) * 1024
    return 0


#: The rollout tick kinds the step target is about, as bench/rollout.py names them, with their labels here.
STEP_KINDS = (
    ("soak, nothing new", "no news"),
    ("soak, half the wave newly reporting", "half a wave reporting at once"),
    ("wave passed, next wave published", "a wave passes, the next starts"),
)


def measure_rollout(row: Row, nodes: int) -> None:
    out, _ = run_sampled([PY, __file__, "--child-rollout", str(nodes)], 1800)
    row.step_ms = json.loads(out.strip().splitlines()[-1])


def child_rollout(nodes: int) -> int:
    """bench/rollout.py's step benchmark on ``nodes`` nodes; its own report goes to stderr, the medians by tick
    kind (the service's own time) to stdout."""
    rollout = _module("rollout")
    with (
        tempfile.TemporaryDirectory(prefix="treadle-scale-rollout-") as tmp,
        contextlib.redirect_stdout(sys.stderr),
    ):
        ticks = rollout.bench_step(nodes, 5, Path(tmp))
    print(json.dumps({kind: statistics.median(ticks[kind]) for kind, _ in STEP_KINDS}))
    return 0


def measure_size(nodes: int, only: set[str], pushes: int) -> Row:
    row = Row(nodes)
    sites, clusters, per = SHAPES[nodes]
    work = Path(tempfile.mkdtemp(prefix=f"treadle-scale-{nodes}-"))
    try:
        started = time.perf_counter()
        fabric = _module("gen_fabric").generate(work / "fabric", sites, clusters, per, 1, git=True)
        print(
            f"... {nodes:,} nodes generated in {time.perf_counter() - started:.0f} s",
            file=sys.stderr,
            flush=True,
        )
        if "render" in only:
            print(f"... {nodes:,} nodes: full render", file=sys.stderr, flush=True)
            measure_render(row, work / "fabric")
        if only & {"cold", "push"}:
            print(f"... {nodes:,} nodes: controller", file=sys.stderr, flush=True)
            ctl_bench = _module("controller")
            bare = work / "upstream.git"
            ctl_bench.git(work, "init", "-q", "--bare", "-b", "main", str(bare))
            ctl_bench.git(work / "fabric", "remote", "add", "origin", str(bare))
            ctl_bench.git(work / "fabric", "push", "-q", "origin", "main")
            node = fabric.nodes[len(fabric.nodes) // 2]
            measure_controller(
                row,
                work,
                work / "fabric",
                bare,
                node.path,
                node.name,
                pushes,
                "cold" in only,
                "push" in only,
            )
        if "rollout" in only:
            print(f"... {nodes:,} nodes: rollout step", file=sys.stderr, flush=True)
            measure_rollout(row, nodes)
    except (RuntimeError, SystemExit) as e:
        row.notes.append(f"failed: {str(e)[-500:]}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return row


# -- the report ---------------------------------------------------------------------------------


def _f(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _med(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def table(rows: list[Row]) -> str:
    head = ["", *(f"{r.nodes:,} nodes" for r in rows)]
    lines = [
        ("full render (s)", [_f(r.render_s, ".2f") for r in rows]),
        ("  warm re-render (s)", [_f(r.warm_s, ".2f") for r in rows]),
        ("  peak memory, PSS (GiB)", [_f(r.render_gib, ".2f") for r in rows]),
        ("cold start (s)", [_f(r.cold_s, ".1f") for r in rows]),
        ("  peak RSS (GiB)", [_f(r.cold_gib, ".2f") for r in rows]),
        ("push -> published, median (s)", [_f(_med(r.push_s), ".3f") for r in rows]),
        ("  worst (s)", [_f(max(r.push_s) if r.push_s else None, ".3f") for r in rows]),
        (
            "  push-path work, median (ms)",
            [_f(None if not r.work_s else 1000 * _med(r.work_s), ".1f") for r in rows],
        ),
        (
            "  git fetch (source step), median (ms)",
            [_f(None if not r.fetch_s else 1000 * _med(r.fetch_s), ".1f") for r in rows],
        ),
        *(
            (
                f"rollout step, {label} (ms)" if i == 0 else f"  {label} (ms)",
                [_f(r.step_ms.get(kind), ".1f") for r in rows],
            )
            for i, (kind, label) in enumerate(STEP_KINDS)
        ),
        ("controller RSS after pushes (GiB)", [_f(r.rss_after_gib, ".2f") for r in rows]),
    ]
    width = max(len(name) for name, _ in lines) + 2
    out = [head[0].ljust(width) + "".join(h.rjust(16) for h in head[1:])]
    out += [name.ljust(width) + "".join(v.rjust(16) for v in values) for name, values in lines]
    for r in rows:
        if r.cold_steps:
            out.append(f"cold start's steps at {r.nodes:,} nodes (s): {r.cold_steps}")
        if r.steps:
            out.append(f"last push's steps at {r.nodes:,} nodes (ms): {r.steps}")
        out += [f"{r.nodes:,} nodes: {n}" for n in r.notes]
    return "\n".join(out)


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def targets(rows: list[Row]) -> str:
    lines = [f"{'target':<52} {'measured':>12}  result"]
    big = next((r for r in rows if r.nodes == BIG), None)
    small = next((r for r in rows if r.nodes == min(SHAPES)), None)

    def line(name: str, value: float | None, limit: float, unit: str) -> None:
        shown = "-" if value is None else f"{value:.2f} {unit}"
        lines.append(
            f"{name:<52} {shown:>12}  {'-' if value is None else _verdict(value <= limit)}"
        )

    if big is None:
        lines.append(f"(the absolute targets are for {BIG:,} nodes; not measured here)")
    else:
        line(
            f"full render, {BIG:,} nodes <= {TARGET_RENDER_S:.0f} s",
            big.render_s,
            TARGET_RENDER_S,
            "s",
        )
        line(
            f"full render peak memory <= {TARGET_RENDER_GIB:.0f} GiB",
            big.render_gib,
            TARGET_RENDER_GIB,
            "GiB",
        )
        line(f"cold start, {BIG:,} nodes <= {TARGET_COLD_S:.0f} s", big.cold_s, TARGET_COLD_S, "s")
        line(
            f"cold start peak RSS <= {TARGET_COLD_GIB:.0f} GiB",
            big.cold_gib,
            TARGET_COLD_GIB,
            "GiB",
        )
        line(
            f"push -> published (worst), {BIG:,} nodes <= {TARGET_PUSH_S:.0f} s",
            max(big.push_s) if big.push_s else None,
            TARGET_PUSH_S,
            "s",
        )
        line(
            f"rollout step (worst kind), {BIG:,} nodes <= {TARGET_STEP_MS:.0f} ms",
            max(big.step_ms.values(), default=None),
            TARGET_STEP_MS,
            "ms",
        )
    if big is not None and small is not None and big.work_s and small.work_s:
        ratio = statistics.median(big.work_s) / statistics.median(small.work_s)
        line(
            f"push-path work, {BIG:,} / {small.nodes:,} nodes <= {TARGET_WORK_RATIO:.0f}x",
            ratio,
            TARGET_WORK_RATIO,
            "x",
        )
        with_fetch = (
            [w + f for w, f in zip(big.work_s, big.fetch_s, strict=False)],
            [w + f for w, f in zip(small.work_s, small.fetch_s, strict=False)],
        )
        line(
            f"  the same with the git fetch <= {TARGET_WORK_RATIO:.0f}x",
            statistics.median(with_fetch[0]) / statistics.median(with_fetch[1]),
            TARGET_WORK_RATIO,
            "x",
        )
    else:
        lines.append(
            f"(the push-path work ratio needs {min(SHAPES):,} and {BIG:,} nodes with pushes)"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="example: python bench/scale.py --sizes 1000,10000",
    )
    parser.add_argument(
        "--sizes",
        default="1000,10000,100000",
        help="fabric sizes among 1000, 10000, 100000 (default all three)",
    )
    parser.add_argument(
        "--only",
        default=",".join(MEASUREMENTS),
        help=f"measurements among {', '.join(MEASUREMENTS)} (default all)",
    )
    parser.add_argument(
        "--pushes", type=int, default=5, help="one-node pushes per size (default 5)"
    )
    parser.add_argument("--child-rollout", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_rollout is not None:
        return child_rollout(args.child_rollout)
    try:
        sizes = sorted({int(s) for s in args.sizes.split(",") if s.strip()})
    except ValueError:
        parser.error(f"--sizes: not a list of numbers: {args.sizes!r}")
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    if (
        not sizes
        or set(sizes) - set(SHAPES)
        or not only
        or only - set(MEASUREMENTS)
        or args.pushes < 1
    ):
        parser.error(
            f"--sizes among {sorted(SHAPES)}, --only among {', '.join(MEASUREMENTS)}, --pushes >= 1"
        )
    rows = [measure_size(n, only, args.pushes) for n in sizes]
    print("\nTreadle at scale (this machine; figures vary with its load)\n")
    print(table(rows))
    print()
    print(targets(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
