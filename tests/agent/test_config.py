"""agent.toml: settings, and a clear error (file, key, fix) with exit 2 for every bad one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from treadle_agent.cli import main
from treadle_agent.config import load, schema_errors
from treadle_agent.errors import ConfigError


def test_minimal_config_gets_the_schema_defaults(tmp_path, keys):
    path = tmp_path / "agent.toml"
    path.write_text(f'node = "n1"\nmanifest_urls = ["http://c/v1/nodes/{{node}}/manifest"]\n'
                    f'trust_root = "{keys.trust_root}"\nstate_dir = "state"\n')
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
    with pytest.raises(ConfigError, match="trust_root: .*nowhere.json does not exist .*treadle keys generate"):
        load(path)


def test_missing_required_key_and_broken_toml_are_errors(tmp_path):
    path = tmp_path / "agent.toml"
    path.write_text('node = "n1"\n')
    with pytest.raises(ConfigError, match="missing key 'manifest_urls'"):
        load(path)
    path.write_text('node = "n1\n')
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(path)


@pytest.mark.parametrize(
    ("extra", "key"),
    [({"bogus": 1}, "bogus"), ({"drift_policy": "fix-it"}, "drift_policy"), ({"trust_root": "/no/such/trust.json"}, "trust_root")],
)
def test_cli_exits_2_with_a_message_naming_the_key(tmp_path, keys, kit, capsys, extra, key):
    trust = extra.pop("trust_root", keys.trust_root)
    path = kit.write_config(tmp_path, trust, ["http://127.0.0.1:1/m"], **extra)
    assert main(["once", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("treadle-agent: error:") and key in err and len(err.strip().splitlines()) == 1


def test_unusable_trust_root_exits_2(tmp_path, kit, capsys):
    bad = tmp_path / "trust.json"
    bad.write_text('{"threshold": 1, "keys": {}}')
    path = kit.write_config(tmp_path, bad, ["http://127.0.0.1:1/m"])
    assert main(["once", "--config", str(path)]) == 2
    assert str(bad) in capsys.readouterr().err


def test_missing_config_file_exits_2_as_a_real_process(tmp_path):
    p = subprocess.run([sys.executable, "-m", "treadle_agent.cli", "once", "--config", str(tmp_path / "none.toml")],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "none.toml: no such file" in p.stderr


_SCHEMA = __import__("treadle_schemas").load("agent-config.json")
_values = st.one_of(
    st.text(max_size=12), st.sampled_from(["heal", "report", "auto", "apt", "none", "127.0.0.1:9731", ":0", "http://x/{node}"]),
    st.integers(min_value=-5, max_value=70_000), st.floats(allow_nan=False, allow_infinity=False, width=32), st.booleans(),
    st.lists(st.sampled_from(["http://a/m", "https://b/m", "ftp://c", ""]), max_size=3),
)


_VALID = {"node": "n1", "manifest_urls": ["http://c/m"], "trust_root": "t.json", "state_dir": "s"}


@settings(max_examples=400, deadline=None)
@given(changes=st.dictionaries(st.sampled_from(sorted(_SCHEMA["properties"]) + ["bogus"]), _values, max_size=3),
       dropped=st.sets(st.sampled_from(sorted(_VALID)), max_size=1))
def test_config_check_agrees_with_jsonschema_rs_on_any_config(changes, dropped):
    import jsonschema_rs

    config = {k: v for k, v in {**_VALID, **changes}.items() if k not in dropped}
    reference = list(jsonschema_rs.validator_for(_SCHEMA).iter_errors(config))
    assert bool(schema_errors(_SCHEMA, config)) == bool(reference)


def test_config_check_refuses_a_schema_keyword_it_does_not_implement():
    with pytest.raises(ValueError, match="not supported"):
        schema_errors({"type": "string", "maxLength": 3}, "abcd")


def test_state_dir_that_cannot_be_created_exits_2(tmp_path, keys, kit, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    path = kit.write_config(tmp_path, keys.trust_root, ["http://127.0.0.1:1/m"], state_dir=str(blocker / "state"))
    assert main(["once", "--config", str(path)]) == 2
    assert "a-file/state" in capsys.readouterr().err
