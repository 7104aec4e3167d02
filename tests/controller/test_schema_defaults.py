"""Every default of controller.toml and rollout.yaml the code uses is the schema's (treadle_schemas.defaults)."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path
from typing import Any

import pytest

import treadle_schemas
from treadle.daemon import config
from treadle.rollout import policy

MINIMAL = """
repository = "fabric.git"
state_dir = "state"
publish_dir = "publish"
signing_key = "keys/controller.key"
"""

#: Each default of controller-config.json (dotted key) -> the setting it becomes, read from a loaded config.
SETTINGS = {
    "branch": lambda c: c.source.branch,
    "poll_interval_s": lambda c: c.source.poll_interval_s,
    "listen": lambda c: f"{c.api.host}:{c.api.port}",
    "console_read": lambda c: c.api.console_read,
    "manifest_lifetime_s": lambda c: c.signing.manifest_lifetime_s,
    "resign_before_s": lambda c: c.signing.resign_before_s,
    "commit_policy.require_signed": lambda c: c.policy.require_signed,
    "health.source": lambda c: c.health.source,
    "health.scrape_timeout_s": lambda c: c.health.scrape_timeout_s,
    "health.interval_s": lambda c: c.health.interval_s,
    "health.scrape_concurrency": lambda c: c.health.scrape_concurrency,
    "health.scrape_round_s": lambda c: c.health.scrape_round_s,
    "health.stale_after_s": lambda c: c.health.stale_after_s,
    "retention.rollouts_kept": lambda c: c.retention.rollouts_kept,
    "retention.history_kept": lambda c: c.retention.history_kept,
    "retention.mirror_max_packs": lambda c: c.retention.mirror_max_packs,
    "retention.revert_branches_kept": lambda c: c.retention.revert_branches_kept,
}


def _schema_defaults(doc: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Every default in ``doc``, by dotted key, found by walking the schema itself (not through the helper)."""
    found = {}
    for key, prop in doc.get("properties", {}).items():
        if "default" in prop:
            found[prefix + key] = prop["default"]
        if prop.get("type") == "object":
            found |= _schema_defaults(prop, f"{prefix}{key}.")
    return found


def test_every_controller_default_is_the_schemas() -> None:
    schema = _schema_defaults(treadle_schemas.load("controller-config.json"))
    assert set(schema) == set(SETTINGS), "map each schema default to its setting in SETTINGS"
    path = (
        Path(__file__).parent / "controller.toml"
    )  # never read: from_dict takes the parsed document
    cfg = config.from_dict(tomllib.loads(MINIMAL), path)
    for key, read in SETTINGS.items():
        assert read(cfg) == schema[key], key


def test_settings_built_without_a_file_default_as_the_schema_says() -> None:
    """The dataclass defaults (used when settings are built in code) are the schema's too."""
    schema = _schema_defaults(treadle_schemas.load("controller-config.json"))
    for cls, table in (
        (config.HealthSettings, "health"),
        (config.RetentionSettings, "retention"),
        (config.ApiSettings, ""),
    ):
        for f in dataclasses.fields(cls):
            key = f"{table}.{f.name}" if table else f.name
            if f.default is not dataclasses.MISSING and key in schema:
                assert f.default == schema[key], key
    assert config.RetentionSettings() == config.RetentionSettings(
        **treadle_schemas.defaults("controller-config.json", "retention")
    )


def test_every_rollout_default_is_the_schemas() -> None:
    doc = treadle_schemas.load("rollout.json")
    wave_schema = doc["properties"]["waves"]["items"]["properties"]
    window_schema = doc["properties"]["windows"]["items"]["properties"]
    parsed = policy.from_doc(
        {"waves": [{"name": "w"}], "windows": [{"days": ["mon"], "start": "00:00", "end": "01:00"}]}
    )
    wave, built = parsed.waves[0], policy.WaveSpec(name="w")
    for key, field in (("soak_s", "soak_s"), ("timeout_s", "timeout_s"), ("approval", "approval")):
        assert getattr(wave, field) == getattr(built, field) == wave_schema[key]["default"], key
    assert parsed.windows[0].timezone == window_schema["timezone"]["default"]
    assert (
        parsed.failure_policy
        == policy.RolloutPolicy(waves=()).failure_policy
        == doc["properties"]["failure_policy"]["default"]
    )
    # Every default rollout.json declares is one of those just checked: a new one needs a check here.
    declared = (
        {k for k, p in wave_schema.items() if "default" in p}
        | {f"windows.{k}" for k, p in window_schema.items() if "default" in p}
        | {k for k, p in doc["properties"].items() if "default" in p}
    )
    assert declared == {"soak_s", "timeout_s", "approval", "windows.timezone", "failure_policy"}


def test_the_defaults_helper_walks_tables_and_array_items() -> None:
    config_schema = _schema_defaults(treadle_schemas.load("controller-config.json"))
    health = treadle_schemas.defaults("controller-config.json", "health")
    assert health and health == {
        k.removeprefix("health."): v for k, v in config_schema.items() if k.startswith("health.")
    }
    waves = treadle_schemas.load("rollout.json")["properties"]["waves"]["items"]
    assert treadle_schemas.defaults("rollout.json", "waves") == _schema_defaults(waves)
    with pytest.raises(KeyError):
        treadle_schemas.defaults("controller-config.json", "no-such-table")
