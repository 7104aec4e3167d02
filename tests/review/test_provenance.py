"""Provenance of changed values: touched lines are found by block, and lookups respect their budget."""

from __future__ import annotations

from treadle.fabric import GitRevisionSource, ParseCache
from treadle.review.provenance import Explainer, ProvenanceBudget, block_end

KEYPATHS = (
    "files./etc/chrony.conf.template",
    "data.ntp.servers",
    "data.ntp.makestep.limit",
    "address",
    "lifecycle",
    "labels.rack",
    "sysctl.kernel.panic",
    "packages.smartmontools",
    "services.slurmd.state",
)


def test_a_value_counts_as_touched_when_a_line_of_its_block_changed():
    lines = [
        "data:",
        "  ntp:",
        "    servers:",
        "      - a",
        "      - b",
        "    makestep: 1",
        "other: 2",
    ]
    assert block_end(lines, 3, 5) == 5  # servers: its two items
    assert block_end(lines, 2, 3) == 6  # ntp: everything below it
    assert block_end(lines, 6, 5) == 6
    assert (
        block_end(["servers:", "- a", "- b", "x: 1"], 1, 1) == 3
    )  # list items at the key's own indentation


def test_lookups_stop_at_the_budget_and_are_counted(fabric_repo):
    src, cache = GitRevisionSource(fabric_repo.root, "main"), ParseCache()
    budget = ProvenanceBudget(lookups=1)
    explainer = Explainer(src, cache, {}, budget)
    assert explainer.lookup("batch-001", "address") is not None
    assert explainer.lookup("batch-001", "lifecycle") is None
    assert budget.spent == 1
