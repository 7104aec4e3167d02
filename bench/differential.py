"""Differential run: many random commit sequences, each commit's plans and controller output checked
against full renders of both revisions (the check of tests/differential/, with a larger budget).

Each example is a sequence of commits of every kind (values at every level,
profiles, templates and includes, a computed include, defaults, nodes added,
removed and moved, a renamed profile, lifecycle changes legal and not, merge
tags, no-op edits, invalid commits and their reverts) in a fresh repository
with a fresh controller. The first mismatch is printed with the sequence that
found it (shrunk by hypothesis), ready to be added to the regression corpus in
tests/differential/test_differential.py.

    python bench/differential.py                       # 200 sequences of up to 12 commits
    python bench/differential.py --examples 1000 --max-commits 20 --seed 7

Exit 0 when nothing differed, 1 on a mismatch, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the tests' support package

from hypothesis import HealthCheck, Phase, given, seed, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from support.differential import Mismatch, operations, run_sequence  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=200, help="sequences to try (default 200)")
    parser.add_argument(
        "--max-commits", type=int, default=12, help="operations per sequence at most (default 12)"
    )
    parser.add_argument("--seed", type=int, default=None, help="hypothesis seed (default: random)")
    args = parser.parse_args(argv)
    if args.examples < 1 or args.max_commits < 1:
        parser.error("--examples and --max-commits must be at least 1")
    done = [0]
    logging.disable(logging.WARNING)  # refused commits are expected here: only mismatches are news

    @settings(
        max_examples=args.examples,
        deadline=None,
        database=None,
        derandomize=False,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.generate, Phase.shrink],
    )
    @given(ops=st.lists(operations(st), min_size=1, max_size=args.max_commits))
    def check(ops: list) -> None:  # type: ignore[type-arg]
        with tempfile.TemporaryDirectory(prefix="treadle-differential-") as workdir:
            run_sequence(Path(workdir), ops)
        done[0] += 1
        if done[0] % 10 == 0:
            print(f"  {done[0]} sequences checked, {time.monotonic() - started:.0f} s", flush=True)

    if args.seed is not None:
        check = seed(args.seed)(check)
    started = time.monotonic()
    try:
        check()
    except Mismatch as e:
        print(f"MISMATCH after {done[0]} sequences: {e}")
        return 1
    print(f"PASS: {done[0]} sequences, no mismatch, {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
