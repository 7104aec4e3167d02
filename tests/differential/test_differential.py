"""The differential test: random sequences of commits, each checked against full renders (see differential.py).

A bounded budget here; ``bench/differential.py --examples N`` runs longer.
The regression corpus below holds the sequences that found defects.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from support.differential import operations, run_sequence

#: Where the sequences' repositories and controllers live: a memory filesystem when there is one, so that
#: the publish store's and SQLite's flushes cost nothing (what they make durable is not what is tested here).
SCRATCH = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None

#: Sequences that once found a defect: each must pass as it stands.
CORPUS = {
    # A template added for a computed include changed nodes that neither the plan nor the controller re-rendered.
    "computed-include-target-added": [
        ("site-template", "s2", "a"),
        ("site-template", "s2", "b"),
        ("site-template", "s1", None),
    ],
    # Reverting a syntax error in a node file out of production: no transition from an unreadable base.
    "revert-of-a-broken-maintenance-node": [
        ("lifecycle", 0, 0, True),
        ("lifecycle", 0, 0, True),
        ("invalid", 6),
    ],
    # An illegal move from draining (where both other states are legal) was not generated.
    "illegal-move-from-draining": [
        ("lifecycle", 0, 6, True),
        ("lifecycle", 0, 0, False),
        ("lifecycle", 0, 0, True),
    ],
    "every-kind-once": [
        ("data", "node", "motd", 1),
        ("data", "cluster", "ntp", 2),
        ("data", "defaults", "motd", 3),
        ("data", "profile", "ntp", 4),
        ("data", "lifecycle-profile", "motd", 5),
        ("sysctl", 1),
        ("template", "header.j2", 1),
        ("add-node", 1),
        ("move-node", 0, 2),
        ("remove-node", 3),
        ("rename-profile",),
        ("merge-tag", 2),
        ("noop", 4),
        ("lifecycle", 1, 0, False),
        ("invalid", 7),
    ],
}


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_regression_corpus_plans_and_publishes_exactly_the_full_renders(name) -> None:
    with tempfile.TemporaryDirectory(prefix="treadle-differential-", dir=SCRATCH) as workdir:
        run_sequence(Path(workdir), CORPUS[name])


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(operations(st), min_size=1, max_size=6))
def test_random_commits_are_planned_and_published_exactly_as_full_renders(ops) -> None:
    with tempfile.TemporaryDirectory(prefix="treadle-differential-", dir=SCRATCH) as workdir:
        run_sequence(Path(workdir), ops)
