"""controller.toml: valid files become settings; every bad one names the file, the key and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from treadle.cli import main
from treadle.daemon import config
from treadle.errors import UsageError

MINIMAL = """
repository = "fabric.git"
state_dir = "state"
publish_dir = "publish"
signing_key = "keys/controller.key"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "controller.toml"
    path.write_text(text)
    return path


def test_minimal_config_gets_defaults_and_paths_relative_to_the_file(tmp_path: Path) -> None:
    cfg = config.load(write(tmp_path, MINIMAL))
    assert cfg.source.repository == str(tmp_path / "fabric.git")
    assert cfg.source.branch == "main" and cfg.source.poll_interval_s == 30
    assert (
        cfg.store.state_dir == tmp_path / "state" and cfg.store.publish_dir == tmp_path / "publish"
    )
    assert cfg.signing.signing_key == str(tmp_path / "keys/controller.key")
    assert (cfg.api.host, cfg.api.port, cfg.api.webhook_secret) == ("127.0.0.1", 8080, None)
    assert cfg.policy.require_signed is False


def test_urls_and_signer_uris_pass_through_unchanged(tmp_path: Path) -> None:
    text = MINIMAL.replace('"fabric.git"', '"ssh://git@example.com/fabric.git"').replace(
        '"keys/controller.key"', '"gcpkms:projects/p/key#pub.json"'
    )
    cfg = config.load(write(tmp_path, text))
    assert cfg.source.repository == "ssh://git@example.com/fabric.git"
    assert cfg.signing.signing_key == "gcpkms:projects/p/key#pub.json"


def test_webhook_secret_is_read_from_its_file(tmp_path: Path) -> None:
    (tmp_path / "hook.secret").write_text("s3cret\n")
    cfg = config.load(
        write(tmp_path, MINIMAL + 'webhook_secret_file = "hook.secret"\nlisten = "0.0.0.0:9000"\n')
    )
    assert cfg.api.webhook_secret == b"s3cret" and (cfg.api.host, cfg.api.port) == ("0.0.0.0", 9000)


def test_unknown_key_is_refused_naming_file_and_schema(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "pol_interval = 3\n")
    with pytest.raises(UsageError) as e:
        config.load(path)
    assert (
        str(path) in str(e.value)
        and "pol_interval" in str(e.value)
        and "controller-config.json" in str(e.value)
    )


def test_wrong_type_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="poll_interval_s"):
        config.load(write(tmp_path, MINIMAL + 'poll_interval_s = "fast"\n'))


def test_missing_required_key_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="signing_key"):
        config.load(write(tmp_path, MINIMAL.replace('signing_key = "keys/controller.key"', "")))


def test_toml_syntax_error_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "repository = \n")
    with pytest.raises(UsageError, match="not valid TOML") as e:
        config.load(path)
    assert str(path) in str(e.value)


def test_missing_file_says_how_to_pass_it(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="--config"):
        config.load(tmp_path / "nope.toml")


def test_signed_policy_without_allowed_signers_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="commit_policy.allowed_signers"):
        config.load(write(tmp_path, MINIMAL + "[commit_policy]\nrequire_signed = true\n"))


def test_allowed_signers_file_must_exist(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        config.load(
            write(
                tmp_path,
                MINIMAL + '[commit_policy]\nrequire_signed = true\nallowed_signers = "nope"\n',
            )
        )


def test_unreadable_or_empty_webhook_secret_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="webhook_secret_file"):
        config.load(write(tmp_path, MINIMAL + 'webhook_secret_file = "missing"\n'))
    (tmp_path / "empty").write_text("  \n")
    with pytest.raises(UsageError, match="is empty"):
        config.load(write(tmp_path, MINIMAL + 'webhook_secret_file = "empty"\n'))


def test_port_out_of_range_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="65535"):
        config.load(write(tmp_path, MINIMAL + 'listen = "127.0.0.1:70000"\n'))


def test_admin_token_is_read_from_its_file_and_an_empty_one_is_refused(tmp_path: Path) -> None:
    (tmp_path / "admin.token").write_text("tok\n")
    assert (
        config.load(write(tmp_path, MINIMAL + 'admin_token_file = "admin.token"\n')).api.admin_token
        == b"tok"
    )
    (tmp_path / "empty.token").write_text("\n")
    with pytest.raises(UsageError, match="admin_token_file"):
        config.load(write(tmp_path, MINIMAL + 'admin_token_file = "empty.token"\n'))


def test_resigning_window_not_shorter_than_the_lifetime_is_refused_with_a_fix(
    tmp_path: Path,
) -> None:
    with pytest.raises(
        UsageError,
        match=r"resign_before_s \(86400\) must be less than manifest_lifetime_s \(86400\).*fix",
    ):
        config.load(write(tmp_path, MINIMAL + "manifest_lifetime_s = 86400\n"))


def test_prometheus_health_source_without_its_url_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="health.prometheus_url"):
        config.load(write(tmp_path, MINIMAL + '[health]\nsource = "prometheus"\n'))


@pytest.mark.parametrize(
    ("line", "words"),
    [
        (
            "repository = 1979-05-27",
            "repository: 1979-05-27 is a TOML date or time, not text; fix: quote it",
        ),
        ("branch = 07:32:00", "branch: 07:32:00 is a TOML date or time"),
        (
            'repository = "/srv/fab\\u0000ric"',
            "repository: contains the control character U+0000 at position 8; fix: remove it",
        ),
        ('state_dir = "state\\u001b"', "state_dir: contains the control character U+001B"),
        ('repository = "/srv/' + "r" * 300 + '"', "repository: the path component rrrr"),
        ('publish_dir = "' + "p" * 256 + '"', "publish_dir: the path component"),
        ('repository = "' + "/r" * 3000 + '"', "repository: 6000 characters, more than 4096"),
        ("poll_interval_s = " + "[" * 3000 + "]" * 3000, "nest too deeply"),
    ],
)
def test_malformed_values_exit_2_with_the_key_and_the_fix(
    tmp_path: Path, line: str, words: str, capsys
) -> None:
    text = 'repository = "/srv/fabric.git"\nstate_dir = "state"\npublish_dir = "publish"\nsigning_key = "k"\n'
    key = line.split(" ", 1)[0]
    text = (
        "".join(row + "\n" for row in text.splitlines() if not row.startswith(key + " "))
        + line
        + "\n"
    )
    path = tmp_path / "controller.toml"
    path.write_text(text)
    assert (
        main(["controller", "run", "--config", str(path)]) == 2
    )  # the real command, in-process: no traceback escapes
    err = capsys.readouterr().err
    assert words in err, err[-2000:]


def test_retention_settings_default_as_the_schema_says_and_bad_ones_are_refused(
    tmp_path: Path,
) -> None:
    import treadle_schemas

    schema = treadle_schemas.load("controller-config.json")
    defaults = config.load(write(tmp_path, MINIMAL)).retention
    for key, spec in schema["properties"]["retention"]["properties"].items():
        assert getattr(defaults, key) == spec["default"], key
    cfg = config.load(
        write(
            tmp_path,
            MINIMAL + "[retention]\nrollouts_kept = 3\nhistory_kept = 7\nmirror_max_packs = 2\n",
        )
    )
    assert (
        cfg.retention.rollouts_kept,
        cfg.retention.history_kept,
        cfg.retention.mirror_max_packs,
        cfg.retention.revert_branches_kept,
    ) == (3, 7, 2, 20)
    with pytest.raises(UsageError, match="retention.history_kept"):
        config.load(write(tmp_path, MINIMAL + "[retention]\nhistory_kept = 0\n"))
    with pytest.raises(UsageError, match="retention"):
        config.load(write(tmp_path, MINIMAL + "[retention]\nkeep_forever = true\n"))
