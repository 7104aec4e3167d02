"""agent.toml: settings, and a clear error (file, key, fix) with exit 2 for every bad one."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import treadle_schemas
from treadle_agent.cli import main
from treadle_agent.config import RECORD, from_dict, load, schema_sha256
from treadle_agent.errors import ConfigError


def test_minimal_config_gets_the_schema_defaults(tmp_path, keys):
    path = tmp_path / "agent.toml"
    path.write_text(
        f'node = "n1"\nmanifest_urls = ["http://c/v1/nodes/{{node}}/manifest"]\n'
        f'trust_root = "{keys.trust_root}"\nstate_dir = "state"\n'
    )
    config = load(path)
    assert config.drift_policy == "heal" and config.root == Path("/")
    assert config.state_dir == tmp_path / "state"  # relative to the config file
    assert config.loop.interval_s == 60 and config.fetch.max_manifest_bytes == 16 * 1024 * 1024
    assert config.metrics.host == "127.0.0.1" and config.metrics.port == 9731
    assert config.fetch.manifest_urls == ("http://c/v1/nodes/n1/manifest",)


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        ({"bogus": 1}, "bogus"),
        ({"drift_policy": "fix-it"}, "drift_policy"),
        ({"interval_s": 0}, "interval_s"),
        ({"metrics_listen": "127.0.0.1:70000"}, "metrics_listen"),
        ({"manifest_urls": ["ftp://x"]}, "manifest_urls"),
        ({"max_manifest_bytes": 10}, "max_manifest_bytes"),
    ],
)
def test_bad_setting_is_an_error_naming_the_file_and_key(tmp_path, keys, kit, extra, key):
    path = kit.write_config(tmp_path, keys.trust_root, ["http://127.0.0.1:1/m"], **extra)
    with pytest.raises(ConfigError) as e:
        load(path)
    assert str(path) in str(e.value) and repr(key) in str(e.value) and "fix:" in str(e.value)


def test_missing_trust_root_is_an_error_with_the_fix(tmp_path, kit):
    path = kit.write_config(tmp_path, tmp_path / "nowhere.json", ["http://127.0.0.1:1/m"])
    with pytest.raises(
        ConfigError, match="trust_root: .*nowhere.json does not exist .*treadle keys generate"
    ):
        load(path)


def test_missing_required_key_and_broken_toml_are_errors(tmp_path):
    path = tmp_path / "agent.toml"
    path.write_text('node = "n1"\n')
    with pytest.raises(ConfigError, match="missing key 'manifest_urls'"):
        load(path)
    path.write_text('node = "n1\n')
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(path)
    path.write_bytes(b'node = "n\xff1"\n')
    with pytest.raises(ConfigError, match="not UTF-8 at byte 9 .*fix: save the file as UTF-8"):
        load(path)


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        ({"bogus": 1}, "bogus"),
        ({"drift_policy": "fix-it"}, "drift_policy"),
        ({"trust_root": "/no/such/trust.json"}, "trust_root"),
    ],
)
def test_cli_exits_2_with_a_message_naming_the_key(tmp_path, keys, kit, capsys, extra, key):
    trust = extra.pop("trust_root", keys.trust_root)
    path = kit.write_config(tmp_path, trust, ["http://127.0.0.1:1/m"], **extra)
    assert main(["once", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("treadle-agent: error:")
        and key in err
        and len(err.strip().splitlines()) == 1
    )


def test_unusable_trust_root_exits_2(tmp_path, kit, capsys):
    bad = tmp_path / "trust.json"
    bad.write_text('{"threshold": 1, "keys": {}}')
    path = kit.write_config(tmp_path, bad, ["http://127.0.0.1:1/m"])
    assert main(["once", "--config", str(path)]) == 2
    assert str(bad) in capsys.readouterr().err


def test_missing_config_file_exits_2_as_a_real_process(tmp_path):
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "treadle_agent.cli",
            "once",
            "--config",
            str(tmp_path / "none.toml"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 2 and "none.toml: no such file" in p.stderr


def test_state_dir_that_cannot_be_created_exits_2(tmp_path, keys, kit, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    path = kit.write_config(
        tmp_path, keys.trust_root, ["http://127.0.0.1:1/m"], state_dir=str(blocker / "state")
    )
    assert main(["once", "--config", str(path)]) == 2
    assert "a-file/state" in capsys.readouterr().err


def test_config_with_several_errors_reports_each_on_its_own_line(tmp_path, keys, kit, capsys):
    path = kit.write_config(
        tmp_path, keys.trust_root, ["ftp://x"], drift_policy="fix-it", interval_s=0
    )
    assert main(["once", "--config", str(path)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 3 and all(
        line.startswith(f"treadle-agent: error: {path}: key ") and "fix:" in line for line in lines
    )
    for key in ("'manifest_urls'[0]", "'drift_policy'", "'interval_s'"):
        assert sum(key in line for line in lines) == 1


_SCHEMA = treadle_schemas.load("agent-config.json")
_VALID = {"node": "n1", "manifest_urls": ["http://c/m"], "trust_root": "t.json", "state_dir": "s"}
_values = st.one_of(
    st.text(max_size=12),
    st.sampled_from(
        ["heal", "report", "auto", "apt", "none", "127.0.0.1:9731", ":0", "http://x/{node}"]
    ),
    st.integers(min_value=-5, max_value=70_000),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.booleans(),
    st.lists(st.sampled_from(["http://a/m", "https://b/m", "ftp://c", ""]), max_size=3),
)


@settings(max_examples=200, deadline=None)
@given(
    changes=st.dictionaries(
        st.sampled_from(sorted(_SCHEMA["properties"]) + ["bogus"]), _values, max_size=3
    ),
    dropped=st.sets(st.sampled_from(sorted(_VALID)), max_size=1),
)
def test_any_config_the_schema_refuses_is_an_error_naming_each_offending_key(changes, dropped):
    config = {k: v for k, v in {**_VALID, **changes}.items() if k not in dropped}
    errors = treadle_schemas.errors("agent-config.json", config)
    if not errors:
        return
    path = Path("/etc/treadle/agent.toml")
    with pytest.raises(ConfigError) as e:
        from_dict(config, path)
    lines = str(e.value).splitlines()
    assert len(lines) == len(errors) and all(
        line.startswith(f"{path}: ") and "fix:" in line for line in lines
    )
    named = {str(where[0]) for where, _ in errors if where} | {
        k for k in ("bogus", *dropped) if k in config or k in dropped
    }
    assert all(any(repr(k) in line for line in lines) for k in named)


# The record of a successful validation (config.py's module docstring).

_PROBE = """
import json, sys
from treadle_agent.cli import main
from treadle_agent.config import load
if sys.argv[1] == "once":
    code = main(["once", "--config", sys.argv[2]])
else:
    code = load(sys.argv[2], isolate_validation=True).node
print(json.dumps([code, "jsonschema_rs" in sys.modules]))
"""


def _probe(mode: str, path: Path) -> tuple[object, bool]:
    """Run ``once`` (or a daemon's load) in a fresh process: its result, and whether jsonschema-rs got loaded."""
    p = subprocess.run(
        [sys.executable, "-c", _PROBE, mode, str(path)], capture_output=True, text=True, timeout=60
    )
    assert p.returncode == 0, p.stderr
    code, loaded = json.loads(p.stdout.strip().splitlines()[-1])
    return code, loaded


def _record(config: Path, state_dir: Path | None = None) -> Path:
    return (state_dir or config.parent / "state") / RECORD


def _stamp(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_ino, st.st_mtime_ns


def test_valid_config_is_validated_once_and_the_digests_recorded(tmp_path, keys, kit):
    path = kit.write_config(tmp_path, keys.trust_root, ["http://127.0.0.1:1/m"])
    config = load(path)
    record = config.state_dir / RECORD
    assert json.loads(record.read_bytes()) == {
        "config_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "schema_sha256": schema_sha256(),
    }
    assert record.stat().st_mode & 0o777 == 0o600


def test_unchanged_config_is_not_validated_again(tmp_path, keys, kit):
    path = kit.write_config(tmp_path, keys.trust_root, ["http://127.0.0.1:1/m"])
    assert _probe("once", path) == (1, True)  # the fetch fails (exit 1); the config was validated
    before = _stamp(_record(path))
    assert _probe("once", path) == (1, False)  # no validator was even imported
    load(path)
    assert _stamp(_record(path)) == before  # a validation would have replaced the record


def test_config_with_a_changed_value_is_validated_again_and_its_error_reported(tmp_path, keys, kit):
    path = kit.write_config(
        tmp_path, keys.trust_root, ["http://127.0.0.1:1/m"], drift_policy="heal"
    )
    load(path)
    recorded = _record(path).read_bytes()
    path.write_bytes(path.read_bytes().replace(b'"heal"', b'"heax"'))  # same length, one byte
    with pytest.raises(
        ConfigError,
        match=f"{path}: key 'drift_policy': .*heax.* \\(fix: use one of 'heal', 'report'",
    ):
        load(path)
    assert _record(path).read_bytes() == recorded  # a refused config is not recorded


def test_config_with_a_valid_change_is_validated_again_and_recorded(tmp_path, keys, kit):
    path = kit.write_config(tmp_path, keys.trust_root, ["http://127.0.0.1:1/m"], interval_s=5)
    load(path)
    before = _stamp(_record(path))
    path.write_bytes(path.read_bytes().replace(b"interval_s = 5", b"interval_s = 6"))
    assert load(path).loop.interval_s == 6
    assert _stamp(_record(path)) != before
    assert (
        json.loads(_record(path).read_bytes())["config_sha256"]
        == hashlib.sha256(path.read_bytes()).hexdigest()
    )


@pytest.mark.parametrize(
    "content",
    [b"", b"{not json", b"[1, 2]", b'{"config_sha256": "00", "schema_sha256": "00"}', b"\xff\xfe"],
)
def test_corrupt_or_tampered_record_means_validating_again(tmp_path, keys, kit, content):
    path = kit.write_config(tmp_path, keys.trust_root, ["http://127.0.0.1:1/m"])
    _record(path).parent.mkdir(mode=0o700)
    _record(path).write_bytes(content)
    assert _probe("once", path) == (1, True)
    assert (
        json.loads(_record(path).read_bytes())["config_sha256"]
        == hashlib.sha256(path.read_bytes()).hexdigest()
    )


def test_record_of_a_matching_config_is_not_trusted_for_a_bad_one(tmp_path, keys, kit):
    good = kit.write_config(tmp_path, keys.trust_root, ["http://127.0.0.1:1/m"])
    load(good)
    path = good.with_name("other.toml")
    path.write_bytes(good.read_bytes() + b"bogus = 1\n")  # the same state dir, other bytes
    with pytest.raises(ConfigError, match="unknown key 'bogus'"):
        load(path)


def test_record_made_under_another_schema_means_validating_again(tmp_path, keys, kit):
    path = kit.write_config(tmp_path, keys.trust_root, ["http://127.0.0.1:1/m"])
    load(path)
    record = json.loads(_record(path).read_bytes())
    _record(path).write_text(
        json.dumps({**record, "schema_sha256": hashlib.sha256(b"an older schema").hexdigest()})
    )
    assert _probe("once", path) == (1, True)
    assert json.loads(_record(path).read_bytes()) == record


def test_daemon_validates_in_a_child_process_and_never_loads_the_validator(tmp_path, keys, kit):
    path = kit.write_config(tmp_path, keys.trust_root, ["http://127.0.0.1:1/m"])
    assert _probe("daemon", path) == ("node-1", False)
    assert (
        json.loads(_record(path).read_bytes())["config_sha256"]
        == hashlib.sha256(path.read_bytes()).hexdigest()
    )


def test_daemon_with_a_bad_config_exits_2_with_the_child_process_errors(
    tmp_path, keys, kit, capsys
):
    path = kit.write_config(
        tmp_path, keys.trust_root, ["http://127.0.0.1:1/m"], bogus=1, drift_policy="fix-it"
    )
    assert main(["run", "--config", str(path)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and all(
        line.startswith(f"treadle-agent: error: {path}: ") for line in lines
    )
    assert any("unknown key 'bogus'" in line for line in lines) and any(
        "'drift_policy'" in line for line in lines
    )
    assert not _record(path).exists()


def test_validation_that_cannot_be_recorded_still_loads_and_is_logged(tmp_path, keys, kit, caplog):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    path = kit.write_config(
        tmp_path, keys.trust_root, ["http://127.0.0.1:1/m"], state_dir=str(blocker / "state")
    )
    with caplog.at_level("WARNING", logger="treadle_agent"):
        assert load(path).node
    assert any(r.getMessage() == "config.record_failed" for r in caplog.records)


def test_config_check_process_without_a_path_exits_2_with_its_usage():
    p = subprocess.run(
        [sys.executable, "-m", "treadle_agent.config"], capture_output=True, text=True, timeout=60
    )
    assert p.returncode == 2 and "usage: python -m treadle_agent.config --check PATH" in p.stderr
