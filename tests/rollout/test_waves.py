"""Wave assignment: deterministic, shares per cluster respected, every changed node exactly once."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from treadle.rollout.policy import RolloutPolicy, WaveSpec, from_doc
from treadle.rollout.waves import Candidate, assign, plan_rollout

POLICY = from_doc(
    {
        "kind": "RolloutPolicy",
        "waves": [
            {"name": "canary", "selector": {"labels": {"canary": "true"}}},
            {"name": "ten-percent", "fraction": 0.1},
            {"name": "rest", "fraction": 1.0},
        ],
    }
)


def fleet(clusters: dict[str, int], canaries: set[str] = frozenset()) -> list[Candidate]:
    out = []
    for cluster, size in clusters.items():
        for i in range(size):
            name = f"{cluster}-{i:03d}"
            out.append(
                Candidate(name, "site1", cluster, {"canary": "true"} if name in canaries else {})
            )
    return out


def test_canary_then_ten_percent_of_each_cluster_then_the_rest() -> None:
    nodes = fleet({"batch": 31, "storage": 21}, canaries={"batch-000"})
    waves = dict((spec.name, ns) for spec, ns in assign(POLICY, nodes))
    assert waves["canary"] == ("batch-000",)
    per_cluster = Counter(n.split("-")[0] for n in waves["ten-percent"])
    assert per_cluster == {"batch": 3, "storage": 2}  # floor(0.1 * 30), floor(0.1 * 21)
    assert len(waves["rest"]) == 52 - 1 - 5


def test_small_cluster_contributes_nothing_to_a_fractional_wave() -> None:
    waves = dict((spec.name, ns) for spec, ns in assign(POLICY, fleet({"login": 4})))
    assert waves["ten-percent"] == ()
    assert len(waves["rest"]) == 4


def test_pinned_node_joins_its_wave_and_no_other() -> None:
    nodes = fleet({"batch": 20}) + [
        Candidate("special", "site1", "batch", {"canary": "true"}, pinned_wave="rest")
    ]
    waves = dict((spec.name, ns) for spec, ns in assign(POLICY, nodes))
    assert "special" in waves["rest"] and "special" not in waves["canary"]


def test_nodes_no_wave_selects_join_the_last_wave() -> None:
    policy = RolloutPolicy(
        waves=(
            WaveSpec("canary", labels={"canary": "true"}),
            WaveSpec("storage-only", clusters=frozenset({"storage"})),
        )
    )
    waves = assign(policy, fleet({"batch": 2, "storage": 1}))
    assert waves[1][1] == ("batch-000", "batch-001", "storage-000")


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.dictionaries(st.sampled_from(["a", "b", "c", "d"]), st.integers(0, 40), max_size=4),
    fraction=st.floats(0.01, 1.0),
    seed=st.randoms(use_true_random=False),
)
def test_assignment_is_a_deterministic_partition_within_each_clusters_share(
    sizes, fraction, seed
) -> None:
    policy = RolloutPolicy(
        waves=(WaveSpec("first", fraction=fraction), WaveSpec("rest", fraction=1.0))
    )
    nodes = fleet(sizes)
    shuffled = list(nodes)
    seed.shuffle(shuffled)
    first, second = assign(policy, nodes), assign(policy, shuffled)
    assert first == second
    everyone = [n for _, ns in first for n in ns]
    assert sorted(everyone) == sorted(c.name for c in nodes)  # each node exactly once
    per_cluster = Counter(n.split("-")[0] for n in first[0][1])
    for cluster, count in per_cluster.items():
        assert count <= fraction * sizes[cluster] + 1e-6


def test_plan_rollout_sets_each_waves_failure_budget_from_its_size() -> None:
    policy = RolloutPolicy(
        waves=(WaveSpec("all", fraction=1.0, budget_percent=10, budget_count=1),)
    )
    r = plan_rollout("a" * 40, policy, fleet({"batch": 50}))
    assert r.waves[0].allowed_failures == 5
