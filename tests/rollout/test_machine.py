"""The rollout state machine, driven with a fake clock and scripted agent reports."""

from __future__ import annotations

import sqlite3

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from treadle.rollout import machine as m
from treadle.rollout.machine import NodeStatus, Observation, Publish, Rollback, State
from treadle.rollout.store import RolloutStore

SHA = "c" * 40
OK = Observation(generation=2, apply_ok=True, healthy=True)


def rollout(
    policy: str = "halt", *, approval: bool = False, budget: int = 0, immediate: bool = False
) -> m.Rollout:
    waves = (
        m.Wave("canary", ("n1",), soak_s=60, timeout_s=600, allowed_failures=0),
        m.Wave(
            "rest",
            ("n2", "n3", "n4"),
            soak_s=60,
            timeout_s=600,
            allowed_failures=budget,
            approval=approval,
        ),
    )
    return m.Rollout(commit=SHA, waves=waves, failure_policy=policy, immediate=immediate)


EXPECTED = {n: 2 for n in ("n1", "n2", "n3", "n4")}


def run_wave(r: m.Rollout, t: float, reports: dict[str, Observation]) -> tuple[m.Rollout, list]:
    r, actions = m.step(r, t, {}, EXPECTED, None)
    assert r.state is State.PUBLISHING and isinstance(actions[0], Publish)
    r = m.published(r, t)
    return m.step(r, t + 1, reports, EXPECTED, None)


def test_wave_passes_only_after_the_soak_time_of_healthy_reports() -> None:
    r, _ = run_wave(rollout(), 0, {"n1": OK})
    assert r.state is State.SOAKING and r.progress["n1"].status is NodeStatus.APPLIED
    r, _ = m.step(r, 30, {"n1": OK}, EXPECTED, None)
    assert r.state is State.SOAKING
    r, _ = m.step(r, 61, {"n1": OK}, EXPECTED, None)
    assert (r.state, r.wave) == (State.PENDING, 1)


def test_full_rollout_completes_wave_by_wave() -> None:
    r, _ = run_wave(rollout(), 0, {"n1": OK})
    r, _ = m.step(r, 100, {"n1": OK}, EXPECTED, None)
    r, actions = m.step(r, 101, {}, EXPECTED, None)
    assert actions == [Publish(1, ("n2", "n3", "n4"))]
    r = m.published(r, 101)
    everyone = {n: OK for n in ("n2", "n3", "n4")}
    r, _ = m.step(r, 102, everyone, EXPECTED, None)
    r, _ = m.step(r, 200, everyone, EXPECTED, None)
    r, _ = m.step(r, 201, {}, EXPECTED, None)
    assert r.state is State.COMPLETE


def test_unhealthy_canary_halts_and_later_waves_are_never_published() -> None:
    r, actions = run_wave(rollout(), 0, {"n1": Observation(2, True, False)})
    assert r.state is State.HALTED and "n1: unhealthy" in r.reason
    later, actions = m.step(r, 1000, {}, EXPECTED, None)
    assert later is r and actions == []


def test_unhealthy_canary_with_rollback_policy_rolls_back_the_reached_nodes() -> None:
    r, actions = run_wave(rollout("rollback"), 0, {"n1": Observation(2, False, True)})
    assert r.state is State.ROLLING_BACK and actions == [Rollback(("n1",))]
    assert m.rolled_back(r).state is State.ROLLED_BACK


def test_node_that_never_reports_fails_at_the_timeout_never_passes() -> None:
    r, _ = run_wave(rollout(), 0, {})
    r, _ = m.step(r, 599, {}, EXPECTED, None)
    assert r.state is State.SOAKING
    r, _ = m.step(r, 600, {}, EXPECTED, None)
    assert r.state is State.HALTED and "timed out" in r.reason


def test_missing_report_restarts_the_soak() -> None:
    r, _ = run_wave(rollout(), 0, {"n1": OK})
    r, _ = m.step(r, 50, {}, EXPECTED, None)  # scrape failed: no data
    r, _ = m.step(r, 70, {"n1": OK}, EXPECTED, None)
    assert r.progress["n1"].status is NodeStatus.APPLIED and r.progress["n1"].since == 70


def test_old_generation_is_not_counted_as_applied() -> None:
    r, _ = run_wave(rollout(), 0, {"n1": Observation(1, True, True)})
    assert r.progress["n1"].status is NodeStatus.PENDING


def test_failures_within_budget_let_the_rollout_go_on_and_over_budget_halt() -> None:
    def second_wave(budget: int, failing: int) -> m.Rollout:
        r, _ = run_wave(rollout(budget=budget), 0, {"n1": OK})
        r, _ = m.step(r, 100, {"n1": OK}, EXPECTED, None)
        r, _ = m.step(r, 101, {}, EXPECTED, None)
        r = m.published(r, 101)
        reports = {
            n: (Observation(2, True, False) if i < failing else OK)
            for i, n in enumerate(("n2", "n3", "n4"))
        }
        r, _ = m.step(r, 102, reports, EXPECTED, None)
        r, _ = m.step(r, 300, reports, EXPECTED, None)
        return r

    assert second_wave(budget=1, failing=1).state is State.PENDING  # passed wave 2, going on
    assert second_wave(budget=1, failing=2).state is State.HALTED


def test_outside_a_window_waits_with_the_reason_and_immediate_bypasses_it() -> None:
    r, actions = m.step(
        rollout(), 0, {}, EXPECTED, "outside every change window (mon 08:00-17:00 UTC)"
    )
    assert (r.state, actions) == (State.WAITING, []) and "change window" in r.reason
    r, actions = m.step(rollout(immediate=True), 0, {}, EXPECTED, "outside every change window")
    assert r.state is State.PUBLISHING


def test_immediate_rollout_skips_the_soak() -> None:
    r, _ = run_wave(rollout(immediate=True), 0, {"n1": OK})
    assert (r.state, r.wave) == (State.PENDING, 1)


def test_approval_gate_holds_the_wave_until_approved() -> None:
    r, _ = run_wave(rollout(approval=True), 0, {"n1": OK})
    r, _ = m.step(r, 100, {"n1": OK}, EXPECTED, None)
    r, actions = m.step(r, 101, {}, EXPECTED, None)
    assert r.state is State.WAITING and "approval" in r.reason and actions == []
    r, actions = m.step(m.approve(r), 102, {}, EXPECTED, None)
    assert r.state is State.PUBLISHING and actions == [Publish(1, ("n2", "n3", "n4"))]


def test_paused_rollout_does_not_move_until_resumed() -> None:
    r = m.pause(rollout())
    assert m.step(r, 0, {}, EXPECTED, None) == (r, [])
    assert m.step(m.resume(r), 0, {}, EXPECTED, None)[0].state is State.PUBLISHING


def test_operator_actions_on_a_finished_rollout_are_refused() -> None:
    done = m.abort(rollout())
    with pytest.raises(m.TransitionError, match="aborted"):
        m.approve(done)


def test_publishing_state_republishes_after_a_restart() -> None:
    r, _ = m.step(rollout(), 0, {}, EXPECTED, None)
    again, actions = m.step(r, 5, {}, EXPECTED, None)
    assert again.state is State.PUBLISHING and actions == [Publish(0, ("n1",))]


def test_store_round_trips_every_field_and_resumes_after_reopen(tmp_path) -> None:
    db = tmp_path / "state.db"
    conn = sqlite3.connect(db)
    store = RolloutStore(conn)
    r, _ = run_wave(rollout(approval=True), 0, {"n1": OK})
    r = m.approve(m.pause(r))
    rid = store.create(rollout(approval=True), now=0)
    store.save(rid, r, now=1)
    conn.close()
    reopened = RolloutStore(sqlite3.connect(db))
    assert reopened.get(rid) == r
    assert reopened.active() == (rid, r)
    assert [e["state"] for e in reopened.events(rid)] == ["pending", "soaking (paused)"]
    reopened.save(rid, m.supersede(r, "d" * 40), now=2)
    assert reopened.active() is None and reopened.latest()[1].state is State.SUPERSEDED


def test_an_empty_wave_keeps_its_place_in_the_wave_counts() -> None:
    waves = (
        m.Wave("canary", ("n1",), soak_s=0, timeout_s=600, allowed_failures=0),
        m.Wave("ten-percent", (), soak_s=0, timeout_s=600, allowed_failures=0),
        m.Wave("rest", ("n2", "n3"), soak_s=0, timeout_s=600, allowed_failures=0),
    )
    r, _ = run_wave(m.Rollout(commit=SHA, waves=waves), 0, {"n1": OK})
    r, _ = m.step(r, 2, {"n1": OK}, EXPECTED, None)  # canary passed
    r, actions = m.step(r, 3, {}, EXPECTED, None)  # the empty wave is skipped, rest starts
    assert (r.state, r.wave, actions) == (State.PUBLISHING, 2, [Publish(2, ("n2", "n3"))])
    counts = r.wave_counts()
    assert [c["healthy"] for c in counts] == [1, 0, 0] and [sum(c.values()) for c in counts] == [
        1,
        0,
        2,
    ]
    r = m.published(r, 3)
    r, _ = m.step(r, 4, {"n2": OK, "n3": OK}, EXPECTED, None)
    r, _ = m.step(r, 5, {}, EXPECTED, None)
    assert r.state is State.COMPLETE
    assert [c["healthy"] for c in r.wave_counts()] == [1, 0, 2]


def test_abort_of_a_halted_rollout_ends_it_and_keeps_the_halt_reason() -> None:
    r, _ = run_wave(rollout(), 0, {"n1": Observation(2, True, False)})
    assert r.state is State.HALTED
    aborted = m.abort(r)
    assert aborted.state is State.ABORTED and "n1: unhealthy" in aborted.reason
    assert aborted.reached() == ("n1",)


def test_resume_of_a_halted_rollout_rechecks_the_failed_nodes_of_its_wave() -> None:
    r, _ = run_wave(rollout(), 0, {"n1": Observation(2, True, False)})
    resumed = m.resume(r, 50)
    assert (resumed.state, resumed.wave, resumed.started_at) == (State.SOAKING, 0, 50)
    assert resumed.progress["n1"].status is NodeStatus.PENDING
    r, _ = m.step(resumed, 51, {"n1": OK}, EXPECTED, None)
    r, _ = m.step(r, 112, {"n1": OK}, EXPECTED, None)
    assert (r.state, r.wave) == (State.PENDING, 1)


def test_a_halt_reason_names_the_failing_node_and_its_checks() -> None:
    r, _ = run_wave(
        rollout(), 0, {"n1": Observation(2, True, False, failed_checks=("sshd", "ntp"))}
    )
    assert (
        r.state is State.HALTED
        and "n1: unhealthy" in r.reason
        and "sshd" in r.reason
        and "ntp" in r.reason
    )


def test_refusing_an_action_on_a_finished_rollout_says_what_to_do_instead() -> None:
    with pytest.raises(m.TransitionError, match="push a commit"):
        m.resume(m.abort(rollout()))


def test_higher_generation_than_published_never_passes_the_wave() -> None:
    # An agent that accepted generation 9 from an earlier controller refuses generation 2 as a rollback
    # and keeps reporting 9: that is not the content of this wave, so the wave fails at once, loudly.
    ahead = Observation(generation=9, apply_ok=True, healthy=True)
    r, _ = run_wave(rollout(), 0, {"n1": ahead})
    assert r.state is State.HALTED
    assert "n1: reports generation 9, above the 2 published" in r.reason and "refuses" in r.reason


def test_only_the_exact_generation_counts_as_applied() -> None:
    r, _ = run_wave(rollout(), 0, {"n1": OK})
    r, _ = m.step(r, 100, {"n1": OK}, EXPECTED, None)
    r, _ = m.step(r, 101, {}, EXPECTED, None)
    r = m.published(r, 101)
    # n2 reports an older generation: pending, never applied; at the timeout its report is named.
    r, _ = m.step(r, 102, {"n1": OK, "n2": Observation(1, True, True)}, EXPECTED, None)
    assert r.progress["n2"].status is NodeStatus.PENDING
    r, _ = m.step(r, 101 + 600, {"n1": OK, "n2": Observation(1, True, True)}, EXPECTED, None)
    assert r.state is State.HALTED
    assert "n2: timed out after 600s while pending (reports generation 1, published 2)" in r.reason


def _past_canary(policy: str = "halt") -> m.Rollout:
    r, _ = run_wave(rollout(policy), 0, {"n1": OK})
    r, _ = m.step(r, 100, {"n1": OK}, EXPECTED, None)
    assert (r.state, r.wave) == (State.PENDING, 1)
    r, _ = m.step(r, 101, {"n1": OK}, EXPECTED, None)
    r = m.published(r, 101)
    assert r.state is State.SOAKING
    return r


def test_canary_turning_unhealthy_after_its_wave_passed_halts_the_rollout() -> None:
    r = _past_canary()
    rest = {n: OK for n in ("n2", "n3", "n4")}
    r, _ = m.step(r, 102, {**rest, "n1": OK}, EXPECTED, None)
    assert r.state is State.SOAKING
    r, actions = m.step(r, 150, {**rest, "n1": Observation(2, True, False)}, EXPECTED, None)
    assert r.state is State.HALTED and actions == []
    assert "wave canary (passed)" in r.reason and "n1: unhealthy" in r.reason
    # The later wave never completes: the rollout is over.
    later, _ = m.step(r, 1000, {n: OK for n in ("n1", "n2", "n3", "n4")}, EXPECTED, None)
    assert later is r


def test_passed_canary_failing_with_rollback_policy_rolls_back_every_reached_node() -> None:
    r = _past_canary("rollback")
    r, actions = m.step(r, 150, {"n1": Observation(2, False, True)}, EXPECTED, None)
    assert r.state is State.ROLLING_BACK and actions == [Rollback(("n1", "n2", "n3", "n4"))]


def test_passed_canary_is_gated_while_the_next_wave_waits_for_approval() -> None:
    r, _ = run_wave(rollout(approval=True), 0, {"n1": OK})
    r, _ = m.step(r, 100, {"n1": OK}, EXPECTED, None)
    r, _ = m.step(r, 101, {"n1": OK}, EXPECTED, None)
    assert r.state is State.WAITING
    r, _ = m.step(r, 500, {"n1": Observation(2, True, False)}, EXPECTED, None)
    assert r.state is State.HALTED and "n1: unhealthy" in r.reason


def test_passed_node_without_data_does_not_fail_the_rollout() -> None:
    r = _past_canary()
    rest = {n: OK for n in ("n2", "n3", "n4")}
    r, _ = m.step(r, 102, rest, EXPECTED, None)  # n1's scrape failed
    r, _ = m.step(r, 200, rest, EXPECTED, None)
    r, _ = m.step(r, 201, {}, EXPECTED, None)
    assert r.state is State.COMPLETE


def test_an_agent_that_accepted_a_higher_generation_fails_at_once_even_while_applying_an_older_one() -> (
    None
):
    # It applied generation 1 long ago, but holds generation 50 as its highest accepted: it refuses 2 as a rollback.
    refusing = Observation(generation=1, apply_ok=True, healthy=True, accepted=50)
    r, _ = run_wave(rollout(), 0, {"n1": refusing})
    assert (
        r.state is State.HALTED and "n1: reports generation 50, above the 2 published" in r.reason
    )


def test_a_step_told_which_reports_changed_decides_as_a_full_step() -> None:
    """Stepping with ``changed`` (only those nodes and soaks that are up are looked at) gives the same rollouts
    as stepping without it, through reports arriving, vanishing, failing and soaks ending."""
    wave = tuple(f"n{i:02d}" for i in range(20))
    r = m.Rollout("c" * 40, (m.Wave("all", wave, soak_s=10, timeout_s=1000, allowed_failures=3),))
    r, _ = m.step(r, 0, {}, {}, None)
    r = m.published(r, 0)
    expected = dict.fromkeys(wave, 1)
    good, bad = Observation(1, True, True), Observation(1, True, False)
    rounds = [
        {n: good for n in wave[:5]},
        {n: good for n in wave[:5]},  # nothing new
        {**{n: good for n in wave[:10]}},  # more report
        {**{n: good for n in wave[2:10]}, wave[10]: bad},  # two lose their report, one fails
        {**{n: good for n in wave[2:12]}, wave[10]: bad},  # soaks of the first ones are up
        {n: good for n in wave},
        {n: good for n in wave},
    ]
    full, fast, before = r, r, {}
    for t, obs in enumerate(rounds, start=1):
        changed = [n for n in wave if obs.get(n) != before.get(n)]
        full, _ = m.step(full, t * 6, obs, expected, None)
        fast, _ = m.step(fast, t * 6, obs, expected, None, changed)
        assert fast == full, t
        before = obs
    assert full.state is State.COMPLETE or full.progress


# -- the fast paths decide as the definition does ---------------------------------------------------

_GOOD = Observation(2, True, True)
_REPORTS = st.one_of(
    st.none(),
    st.builds(
        Observation,
        st.sampled_from([None, -1, 0, 1, 2, 2, 2, 3]),
        st.sampled_from([None, True, True, False]),
        st.sampled_from([None, True, True, False]),
        st.just(()),
        st.sampled_from([None, None, 0, 1, 2, 3]),
    ),
    st.just(_GOOD),
)
_PROGRESS = st.one_of(
    st.just(m.NodeProgress()),
    st.builds(m.NodeProgress, st.just(NodeStatus.APPLIED), st.sampled_from([None, 0.0, 5.0, 20.0])),
    st.just(m.NodeProgress(NodeStatus.HEALTHY, 1.0)),
    st.just(m.NodeProgress(NodeStatus.FAILED, 1.0, "x")),
)


def _reference_progress(
    r: m.Rollout, now: float, observations, expected
) -> dict[str, m.NodeProgress]:
    """A soak step's progress as the definition has it: every node of the wave through ``_observe``."""
    wave = r.waves[r.wave]
    soak_s = 0 if r.immediate else wave.soak_s
    timed_out = r.started_at is not None and now - r.started_at >= wave.timeout_s
    out = {}
    for n in wave.nodes:
        p = r.progress.get(n, m.NodeProgress())
        if p.status in (NodeStatus.HEALTHY, NodeStatus.FAILED):
            out[n] = p
            continue
        obs, want = observations.get(n), expected.get(n)
        q = m._observe(p, obs, want, now, soak_s, {})
        if timed_out and q.status not in (NodeStatus.HEALTHY, NodeStatus.FAILED):
            seen = (
                ""
                if obs is None or obs.generation is None or obs.generation == want
                else f" (reports generation {obs.generation}, published {want})"
            )
            q = m.NodeProgress(
                NodeStatus.FAILED, now, f"timed out after {wave.timeout_s}s while {q.status}{seen}"
            )
        out[n] = q
    return out


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(_PROGRESS, _REPORTS, st.sampled_from([None, -1, 0, 1, 2, 2, 2, 3])),
        min_size=1,
        max_size=6,
    ),
    st.sampled_from([0.0, 10.0, 30.0, 100.0]),
    st.sampled_from([0, 10]),
    st.booleans(),
)
def test_a_soak_step_moves_every_node_as_observe_defines(nodes, now, soak_s, immediate) -> None:
    """The inline path for the usual report, the one in C for many nodes, the soak index and the counts give
    what a walk of the wave through ``_observe`` gives, whatever the reports, generations, soak starts and timeouts."""
    nodes = [
        nodes[i % len(nodes)] for i in range(len(nodes) * 60)
    ]  # past the size where the C path starts
    names = tuple(f"n{i}" for i in range(len(nodes)))
    wave = m.Wave("all", names, soak_s=soak_s, timeout_s=50, allowed_failures=len(names))
    r = m.Rollout(
        SHA,
        (wave,),
        immediate=immediate,
        state=State.SOAKING,
        started_at=0.0,
        progress={n: p for n, (p, _, _) in zip(names, nodes, strict=False)},
    )
    observations = {n: o for n, (_, o, _) in zip(names, nodes, strict=False) if o is not None}
    expected = {n: w for n, (_, _, w) in zip(names, nodes, strict=False) if w is not None}
    reference = _reference_progress(r, now, observations, expected)
    new, _ = m.step(r, now, observations, expected, None)
    if new.state is State.SOAKING:
        assert new.progress == reference
        assert new.counts() == {
            s.value: sum(p.status is s for p in reference.values()) for s in NodeStatus
        }
    else:
        assert new.state is State.PENDING and all(
            p.status in (NodeStatus.HEALTHY, NodeStatus.FAILED) for p in reference.values()
        )
        assert new.finished[-1] == {
            s.value: sum(p.status is s for p in reference.values()) for s in NodeStatus
        }


_ROUND = st.dictionaries(
    st.sampled_from([f"n{i:02d}" for i in range(12)]),
    st.sampled_from(
        [
            _GOOD,
            _GOOD,
            _GOOD,
            Observation(2, True, False),
            Observation(2, False, True),
            Observation(1, True, True),
            Observation(3, True, True),
        ]
    ),
    max_size=12,
)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.tuples(_ROUND, st.sampled_from([1, 4, 11, 40])), min_size=1, max_size=14),
    st.sampled_from([0, 1, 3]),
)
def test_steps_told_what_changed_decide_as_full_steps_through_waves(rounds, budget) -> None:
    """Through reports arriving, vanishing, turning bad (also on nodes of passed waves), soaks ending, waves
    passing and timeouts, a chain of steps told which reports changed (as the service steps: only while it
    holds what the last step returned) gives the same rollouts as steps told nothing, with the same counts."""
    names = [f"n{i:02d}" for i in range(12)]
    waves = (
        m.Wave("canary", tuple(names[:2]), 10, 60, 0),
        m.Wave("half", tuple(names[2:6]), 10, 60, budget),
        m.Wave("rest", tuple(names[6:]), 10, 60, budget),
    )
    full = fast = m.Rollout(SHA, waves)
    expected = dict.fromkeys(names, 2)
    now, previous, stepped = 0.0, None, None
    for reports, dt in rounds:
        now += dt
        changed = None
        if stepped is not None and stepped is fast:
            changed = sorted(
                n for n in set(reports) | set(previous) if reports.get(n) != previous.get(n)
            )
            changed += changed[:2]  # a node named twice is still one node that changed
        full, full_actions = m.step(full, now, reports, expected, None)
        fast, actions = m.step(fast, now, reports, expected, None, changed)
        assert fast == full and actions == full_actions
        assert (
            fast.counts()
            == full.counts()
            == {s.value: sum(p.status is s for p in full.progress.values()) for s in NodeStatus}
        )
        stepped, previous = fast, reports
        if (
            fast.state is State.PENDING
        ):  # a wave passed: the service steps again at once, with the same reports
            full, _ = m.step(full, now, reports, expected, None)
            fast, _ = m.step(fast, now, reports, expected, None, [])
            assert fast == full
            stepped = fast
        if fast.state is State.PUBLISHING:
            full, fast = m.published(full, now), m.published(fast, now)
        if not full.active:
            break


def test_a_node_that_turns_bad_as_its_wave_passes_fails_the_rollout_at_the_next_step() -> None:
    """A done node is not looked at again in its own wave; when its report turns bad in the very step its
    wave passes, the passed-wave gate of the next step (told nothing changed) still counts it."""
    waves = (m.Wave("canary", ("n1", "n2"), 10, 600, 0), m.Wave("rest", ("n3",), 10, 600, 0))
    r, _ = m.step(m.Rollout(SHA, waves), 0, {}, EXPECTED, None)
    r = m.published(r, 0)
    r, _ = m.step(r, 1, {"n1": OK}, EXPECTED, None)
    r, _ = m.step(r, 12, {"n1": OK, "n2": OK}, EXPECTED, None, ["n2"])  # n1 done, n2 soaking
    bad = {"n1": Observation(2, True, False), "n2": OK}
    r, _ = m.step(
        r, 23, bad, EXPECTED, None, ["n1"]
    )  # n2's soak is up: the wave passes, n1 done already
    assert (r.state, r.wave) == (State.PENDING, 1)
    r, _ = m.step(r, 23, bad, EXPECTED, None, [])
    assert r.state is State.HALTED and "n1: unhealthy" in r.reason
