"""Console benchmark: server-side render time of the web console's pages at 10,000 nodes.

    python bench/console.py                   # 10,000 nodes, 20 requests per page
    python bench/console.py --nodes 1000 --requests 5

The controller's state is real and made the way a deploy makes it: a
synthetic fabric (bench/gen_fabric.py) in a git repository, plus a commit
that changes one cluster (50 nodes); the head is rendered by the real
renderer, every manifest published to a real publish store, the state
database says it is deployed, and a rollout of every node waits in the
rollout database (tests/support/console_git.py). The console reads the
repository as it reads the controller's mirror; it runs in uvicorn on
127.0.0.1 and is asked over HTTP, so a figure is the whole answer: reading
the state, rendering the template, sending it.

Reported apart (cold): the first overview, which reads every manifest into
the console's node index and starts the first sweep of the agents (none
runs: the fabric's loopback addresses refuse, so every node is
"unreachable" and the sweep is quick); the first node page, which traces
each of the node's values to its file, line and commit (loading the fabric
at that commit: the next node at the same commit reuses it); the first commit
page, which computes the plan against the parent. The others are warm
(provenance and plans are kept per commit). Targets (overview and node
page, provenance included): ≤ 300 ms; the commit page has none.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the tests' support package
sys.path.insert(0, str(ROOT / "bench"))
TARGET_MS = 300.0
TARGETED = ("overview", "node page (with provenance)")

from gen_fabric import generate  # noqa: E402

from support.console_git import commit_all, git, make_git_fleet  # noqa: E402
from support.console_state import serving  # noqa: E402


def _time(client: httpx.Client, path: str, expect: str | None = None) -> float:
    start = time.perf_counter()
    r = client.get(path)
    elapsed = (time.perf_counter() - start) * 1000
    if r.status_code != 200:
        raise SystemExit(f"{path}: {r.status_code}")
    if expect is not None and expect not in r.text:
        raise SystemExit(f"{path}: the answer lacks {expect!r}")
    return elapsed


def _cold(client: httpx.Client, path: str, done: str) -> float:
    """Milliseconds until ``path`` shows ``done`` (a page still computing says so and is asked again)."""
    start = time.perf_counter()
    while done not in client.get(path).text:
        if time.perf_counter() - start > 600:
            raise SystemExit(f"{path}: never showed {done!r}")
        time.sleep(0.05)
    return (time.perf_counter() - start) * 1000


def _fabric(root: Path, nodes: int) -> tuple[str, str, str, str]:
    """A git fabric of about ``nodes`` nodes and a second commit changing one cluster: (first, head, a node of the
    cluster, another node)."""
    clusters, per_cluster = max(1, nodes // 50 // 10), 50 if nodes >= 50 else nodes
    sites = max(1, nodes // (clusters * per_cluster))
    generate(root, sites, clusters, per_cluster, 1, git=True)
    first = git(root, "rev-parse", "HEAD")
    cluster = sorted((root / "sites").glob("*/*/cluster.yaml"))[0]
    text = cluster.read_text(encoding="utf-8")
    changed = text.replace("sysctl: {net.core.somaxconn:", "sysctl: {net.core.somaxconn: 1", 1)
    cluster.write_text(changed, encoding="utf-8")
    head = commit_all(root, "Raise somaxconn in one cluster")
    node = sorted((cluster.parent / "nodes").glob("*.yaml"))[-1].stem
    other = sorted((root / "sites").glob("*/*/nodes/*.yaml"))[-1].stem
    return first, head, node, other


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--nodes", type=int, default=10_000)
    ap.add_argument("--requests", type=int, default=20)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        first, head, node, other = _fabric(Path(tmp) / "fabric", args.nodes)
        fleet = make_git_fleet(Path(tmp), Path(tmp) / "fabric", first, head)
        total = len(fleet.ctx.state.nodes())
        print(
            f"console at {total} nodes (fabric, render and state built in {time.perf_counter() - start:.1f} s)"
        )
        pages = {
            "overview": "/ui/",
            "node page (with provenance)": f"/ui/nodes/{node}",
            "fabric, page 1": "/ui/nodes",
            "fabric, search": "/ui/nodes?q=r00&site=s01",
            "fabric, unreachable nodes": "/ui/nodes?health=unreachable",
            "rollouts": "/ui/rollouts",
            "rollout (current wave)": "/ui/rollouts/1",
            "racks of a site": "/ui/racks?site=s01",
            "commit page (plan)": f"/ui/commits/{head}",
        }
        with serving(fleet.ctx) as url, httpx.Client(base_url=url, timeout=120) as client:
            cold = {
                "overview (reads every manifest, starts the sweep)": _cold(
                    client, "/ui/", "Overview"
                ),
                "node page (traces every value)": _cold(client, f"/ui/nodes/{node}", "overridden"),
                "another node page, same commit": _cold(client, f"/ui/nodes/{other}", "overridden"),
                "commit page (computes the plan)": _cold(client, f"/ui/commits/{head}", "changed,"),
            }
            for name, ms in cold.items():
                print(f"  cold: {name:<49} {ms:8.1f} ms")
            _cold(
                client, "/ui/", "the agents as asked at"
            )  # the first sweep over: what follows is warm
            verdicts = []
            for name, path in pages.items():
                values = [_time(client, path) for _ in range(args.requests)]
                med, worst = statistics.median(values), max(values)
                verdict = ""
                if name in TARGETED:
                    verdicts.append(med <= TARGET_MS)
                    verdict = (
                        f"  target <= {TARGET_MS:.0f} ms  {'PASS' if med <= TARGET_MS else 'FAIL'}"
                    )
                print(f"  {name:<40} median {med:8.1f} ms  max {worst:8.1f} ms{verdict}")
        fleet.ctx.rollouts.close()
        fleet.ctx.state.close()
    print("PASS" if all(verdicts) else "FAIL")
    return 0 if all(verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
