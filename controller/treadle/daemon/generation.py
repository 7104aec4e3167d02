"""Generations: strictly increasing per node, and above what an earlier controller published.

An agent refuses a manifest whose generation is below the highest it has
accepted (a rollback). A controller that lost its state directory (a rebuilt
host, a restore from an old backup) no longer knows those generations; if it
counted from 1 again, every agent would refuse every manifest it publishes
and keep enforcing the old one.

So a generation is never just "the last one plus one": it is the largest of

- the last generation this controller reserved for the node, plus one
  (strictly increasing, whatever the clock does);
- the generation of the envelope still in the publish store, plus one, when
  the state has no record of the node (the state was lost, the store kept);
- the clock's floor: milliseconds since the Unix epoch.

The clock's floor is what survives the loss of everything: any generation an
earlier controller issued was at most its clock in milliseconds at the time,
unless that controller published one node more than once per millisecond for
long stretches (it does not: a publication is a render, a signature and a
durable write). A rebuilt controller whose clock is right therefore
publishes above whatever agents accepted. One whose clock is far behind is
caught by the rollout gate: an agent reporting a generation above the one
published for it fails its wave at once, naming the cause.

Milliseconds since the epoch are about 1.8e12 today, far below 2**53: they
stay exact in a Prometheus sample (a float64) for another 280,000 years, and
the manifest schema's ``generation`` is any non-negative integer.
"""

from __future__ import annotations


def clock_floor(now_s: float) -> int:
    """The smallest generation a controller publishes at ``now_s`` (Unix seconds)."""
    return max(0, int(now_s * 1000))


def next_generation(last: int | None, floor: int) -> int:
    """The generation after ``last`` (None: the node was never published here), at least ``floor``."""
    return max((last or 0) + 1, floor)
