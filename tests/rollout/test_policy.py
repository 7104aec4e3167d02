"""rollout.yaml semantics: windows in their time zone, freezes, and meaningful errors."""

from __future__ import annotations

import datetime as dt

import pytest

from treadle.rollout.policy import DEFAULT_POLICY, PolicyError, from_doc


def at(text: str) -> float:
    return dt.datetime.fromisoformat(text).timestamp()


def policy(**extra):
    return from_doc({"kind": "RolloutPolicy", "waves": [{"name": "all"}], **extra})


def test_change_window_is_read_in_its_own_time_zone() -> None:
    p = policy(
        windows=[
            {
                "days": ["mon", "tue", "wed", "thu", "fri"],
                "start": "08:00",
                "end": "17:00",
                "timezone": "Europe/Zurich",
            }
        ]
    )
    # Monday 2026-11-23 07:30 UTC is 08:30 in Zurich (CET, UTC+1): inside.
    assert p.blocked(at("2026-11-23T07:30:00+00:00")) is None
    # 16:30 UTC is 17:30 in Zurich: outside, and the reason names the window.
    reason = p.blocked(at("2026-11-23T16:30:00+00:00"))
    assert reason is not None and "08:00-17:00 Europe/Zurich" in reason
    # Saturday: outside.
    assert p.blocked(at("2026-11-28T10:00:00+00:00")) is not None


def test_freeze_blocks_with_its_reason_and_ends() -> None:
    p = policy(
        freezes=[
            {"from": "2026-12-20T00:00:00Z", "until": "2027-01-04T00:00:00Z", "reason": "year-end"}
        ]
    )
    assert "year-end" in p.blocked(at("2026-12-25T12:00:00+00:00"))
    assert p.blocked(at("2027-01-04T00:00:01+00:00")) is None


def test_no_rollout_file_means_one_wave_without_soak() -> None:
    assert from_doc(None) is DEFAULT_POLICY
    assert [w.name for w in DEFAULT_POLICY.waves] == ["all"] and DEFAULT_POLICY.waves[0].soak_s == 0


@pytest.mark.parametrize(
    "extra, message",
    [
        (
            {
                "windows": [
                    {"days": ["mon"], "start": "08:00", "end": "17:00", "timezone": "Mars/Olympus"}
                ]
            },
            "unknown time zone",
        ),
        (
            {"windows": [{"days": ["mon"], "start": "18:00", "end": "06:00"}]},
            "ends before it starts",
        ),
        (
            {"freezes": [{"from": "2027-01-02T00:00:00Z", "until": "2027-01-01T00:00:00Z"}]},
            "ends before it starts",
        ),
    ],
)
def test_meaningless_policy_is_refused_with_the_fix(extra, message) -> None:
    with pytest.raises(PolicyError, match=message):
        policy(**extra)


def test_duplicate_wave_names_are_refused() -> None:
    with pytest.raises(PolicyError, match="unique"):
        from_doc({"kind": "RolloutPolicy", "waves": [{"name": "a"}, {"name": "a"}]})
