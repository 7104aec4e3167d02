"""Plan benchmark: `treadle plan` on a large fabric, against issue 6's targets.

Generates a 10,000-node fabric (bench/gen_fabric.py, 10 sites x 20 clusters x
50 nodes) as a git repository, commits two changes on their own branches and
times ``treadle plan main BRANCH --format markdown`` in a fresh process each
(cold: interpreter start-up, imports, an empty parse cache):

    one node's file changed                 <= 3 s wall
    a site-wide change (1,000 nodes)        <= 5 s wall, Markdown under 65,536 characters

The plan must not render the fabric twice: both revisions are loaded in
full, but only the nodes that read a changed file are rendered (the JSON's
stats.head_rendered and stats.untouched are printed). One full render
(``treadle validate``, cold) is printed for reference: a one-node plan should
cost less than it, the loading of the files being all they share. It reports,
it does not judge a build: exit 0 whatever the numbers, 1 when a plan fails
outright, 2 on a usage or environment error.

    python bench/plan.py                 # generates into a temporary directory (a minute)
    python bench/plan.py --sites 2       # 2,000 nodes, 100-node site change (quicker)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gen_fabric  # noqa: E402  (a sibling script, not an installed module)

TARGET_ONE_NODE_S = 3.0
TARGET_SITE_S = 5.0
TARGET_COMMENT_CHARS = 65_536
TREADLE = [sys.executable, "-m", "treadle.cli"]


class BenchError(Exception):
    """A plan failed or could not be run."""


@dataclass(frozen=True)
class Run:
    label: str
    wall_s: float
    changed: int
    head_rendered: int
    untouched: int
    markdown_chars: int


def _git(root: Path, *args: str) -> None:
    env = {**os.environ, **gen_fabric.GIT_ENV}
    try:
        subprocess.run(
            ["git", "-c", "commit.gpgsign=false", "-c", "gc.auto=0", *args],
            cwd=root,
            env=env,
            check=True,
            capture_output=True,
            text=True,
        )
    except subprocess.CalledProcessError as e:
        raise BenchError(f"git {' '.join(args)} failed: {e.stderr.strip()}") from e


def _branch(root: Path, name: str, path: str, old: str, new: str) -> None:
    """A branch off main that replaces ``old`` by ``new`` in one file."""
    _git(root, "checkout", "-q", "-b", name, "main")
    file = root / path
    text = file.read_text(encoding="utf-8")
    if old not in text:
        raise BenchError(f"{path}: {old!r} not found (did bench/gen_fabric.py change?)")
    file.write_text(text.replace(old, new, 1), encoding="utf-8")
    _git(root, "commit", "-q", "-am", f"bench: {name}")
    _git(root, "checkout", "-q", "main")


def _plan(root: Path, branch: str, label: str) -> Run:
    start = time.perf_counter()
    md = subprocess.run(
        [*TREADLE, "plan", str(root), "main", branch], capture_output=True, text=True
    )
    wall = time.perf_counter() - start
    if md.returncode != 0:
        raise BenchError(
            f"treadle plan main {branch} exited {md.returncode}: {md.stderr.strip()[:500]}"
        )
    js = subprocess.run(
        [*TREADLE, "plan", str(root), "main", branch, "--format", "json"],
        capture_output=True,
        text=True,
    )
    if js.returncode != 0:
        raise BenchError(
            f"treadle plan --format json exited {js.returncode}: {js.stderr.strip()[:500]}"
        )
    doc = json.loads(js.stdout)
    return Run(
        label,
        wall,
        doc["summary"]["changed"],
        doc["stats"]["head_rendered"],
        doc["stats"]["untouched"],
        len(md.stdout),
    )


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def _validate_wall(root: Path) -> float:
    """Wall time of one full render in a fresh process (``treadle validate --rev main``): the floor of a plan."""
    start = time.perf_counter()
    done = subprocess.run(
        [*TREADLE, "validate", str(root), "--rev", "main"], capture_output=True, text=True
    )
    if done.returncode != 0:
        raise BenchError(f"treadle validate exited {done.returncode}: {done.stderr.strip()[:500]}")
    return time.perf_counter() - start


def report(nodes: int, one: Run, site: Run, validate_s: float) -> str:
    rows = [
        f"fabric: {nodes:,} nodes; for reference, one full render (treadle validate, cold): {validate_s:.2f} s",
        f"{'measurement':<44}{'value':>14}  {'target':>12}  verdict",
        f"{'one-node change: plan wall (cold)':<44}{one.wall_s:>12.2f} s  {'<= 3 s':>12}  {_verdict(one.wall_s <= TARGET_ONE_NODE_S)}",
        f"{'  nodes changed / HEAD nodes rendered':<44}{f'{one.changed} / {one.head_rendered}':>14}  {'1 / 1':>12}  "
        f"{_verdict(one.head_rendered == one.changed == 1)}",
        f"{'  nodes rendered in neither revision':<44}{one.untouched:>14,}  {f'{nodes - 1:,}':>12}  "
        f"{_verdict(one.untouched == nodes - 1)}",
        f"{'site-wide change: plan wall (cold)':<44}{site.wall_s:>12.2f} s  {'<= 5 s':>12}  {_verdict(site.wall_s <= TARGET_SITE_S)}",
        f"{'  nodes changed / HEAD nodes rendered':<44}{f'{site.changed} / {site.head_rendered}':>14}",
        f"{'  Markdown comment':<44}{site.markdown_chars:>10,} ch  {'< 65,536':>12}  "
        f"{_verdict(site.markdown_chars < TARGET_COMMENT_CHARS)}",
    ]
    return "\n".join(rows)


def run(out: Path, sites: int) -> str:
    fabric = gen_fabric.generate(out, sites=sites, clusters=20, nodes=50, seed=1, git=True)
    node = fabric.nodes[len(fabric.nodes) // 2]
    node_path = (
        Path(node.path).relative_to(out).as_posix()
        if Path(node.path).is_absolute()
        else str(node.path)
    )
    _branch(out, "one-node", node_path, "lifecycle: production", "lifecycle: draining")
    _branch(
        out,
        "site-wide",
        f"sites/{fabric.sites[0]}/site.yaml",
        "servers: !append [",
        "servers: !append [ntp-b.example.org, ",
    )
    _git(
        out, "repack", "-a", "-d", "-q"
    )  # a CI checkout is a packed clone, not 10,000 loose objects
    validate_s = _validate_wall(out)
    one = _plan(out, "one-node", "one node")
    site = _plan(out, "site-wide", "site")
    return report(len(fabric.nodes), one, site, validate_s)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sites",
        type=int,
        default=10,
        help="sites of 20 x 50 nodes each (default 10: 10,000 nodes)",
    )
    args = parser.parse_args(argv)
    if args.sites < 1:
        parser.error("--sites must be at least 1")
    try:
        with tempfile.TemporaryDirectory(prefix="treadle-plan-bench-") as tmp:
            print(run(Path(tmp) / "fabric", args.sites))
    except (BenchError, gen_fabric.GeneratorError) as e:
        print(f"bench/plan.py: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
