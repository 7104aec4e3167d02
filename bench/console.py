"""Console benchmark: server-side render time of the web console's pages at 10,000 nodes.

    python bench/console.py                   # 10,000 nodes, 20 requests per page
    python bench/console.py --nodes 1000 --requests 5

The controller's state is real (SQLite state, publish store with 10,000
envelopes, a rollout of all the nodes in the rollout database; built by
tests/console/fleet.py); the console runs in uvicorn on 127.0.0.1 and is asked
over HTTP, so a figure is the whole answer: reading the state, rendering the
template, sending it. The first overview request, which reads every manifest
into the console's node index, is reported apart (cold); the others are warm.
No agent runs: the node page's observation is "unknown" at once, so what is
timed is the controller's own work. Target (overview and node page): ≤ 300 ms.
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
sys.path.insert(0, str(ROOT))
TARGET_MS = 300.0

from tests.console.fleet import make_fleet, serving  # noqa: E402


def _time(client: httpx.Client, path: str) -> float:
    start = time.perf_counter()
    r = client.get(path)
    elapsed = (time.perf_counter() - start) * 1000
    if r.status_code != 200:
        raise SystemExit(f"{path}: {r.status_code}")
    return elapsed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=10_000)
    ap.add_argument("--requests", type=int, default=20)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        fleet = make_fleet(Path(tmp), n=args.nodes)
        print(f"console at {args.nodes} nodes (state built in {time.perf_counter() - start:.1f} s)")
        last = f"n{args.nodes - 1:03d}"
        pages = {"overview": "/ui/", "node page": f"/ui/nodes/{last}", "fabric, page 1": "/ui/nodes",
                 "fabric, search": "/ui/nodes?q=r1&site=s2", "rollouts": "/ui/rollouts",
                 "rollout (current wave)": "/ui/rollouts/1", "racks of a site": "/ui/racks?site=s1"}
        with serving(fleet.ctx) as url, httpx.Client(base_url=url, timeout=60) as client:
            print(f"  {'overview, cold (reads every manifest)':<40} {_time(client, '/ui/'):8.1f} ms")
            for name, path in pages.items():
                values = [_time(client, path) for _ in range(args.requests)]
                med, worst = statistics.median(values), max(values)
                target = name in ("overview", "node page")
                verdict = f"  target <= {TARGET_MS:.0f} ms  {'PASS' if med <= TARGET_MS else 'FAIL'}" if target else ""
                print(f"  {name:<40} median {med:8.1f} ms  max {worst:8.1f} ms{verdict}")
        fleet.ctx.rollouts.close()
        fleet.ctx.state.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
