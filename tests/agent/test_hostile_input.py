"""No input from the network, the disk or the config crashes the agent or lowers its protection.

Each test lets the agent enforce a good generation-2 manifest first (the
``enforced`` fixture), then feeds it one hostile input over real HTTP on
127.0.0.1 (or on disk), and asserts a typed refusal, counted by reason, with
the last good manifest still enforced.
"""

from __future__ import annotations

import json
import os

import pytest

from treadle_agent import fetch
from treadle_agent.contract import manifest
from treadle_agent.contract.manifest import ManifestFormatError, parse_json

MAX_INT_DIGITS = getattr(manifest, "MAX_INT_DIGITS", 20)

GOOD = {"/etc/motd": "good\n"}


@pytest.fixture
def enforced(node, kit):
    node.start()
    node.serve(kit.manifest_doc(generation=2, files=GOOD))
    assert node.cycle().ok
    return node.snapshot()


def _still_enforcing(node, result, before) -> None:
    assert result.generation == 2 and result.apply_ok
    assert node.agent.trusted.manifest.generation == 2
    assert node.snapshot() == before


# --- 1: integers too large for int() ------------------------------------------------------------


def test_integer_of_thousands_of_digits_in_an_unsigned_envelope_member_is_refused_not_a_crash(
    node, kit, enforced
):
    envelope = json.loads(node.server.routes[kit.MANIFEST_PATH].body)
    raw = json.dumps(envelope)[:-1].encode() + b', "n": ' + b"9" * 5000 + b"}"
    node.server.serve(raw)
    result = node.cycle()
    assert result.refused == "envelope"
    assert node.sample("treadle_agent_verify_failures_total", reason="envelope") == 1
    _still_enforcing(node, result, enforced)


def test_integer_of_thousands_of_digits_inside_a_signed_payload_is_refused_as_schema(
    node, kit, enforced
):
    payload = (
        json.dumps(kit.manifest_doc(generation=3))
        .replace('"generation": 3', '"generation": ' + "7" * 5000)
        .encode()
    )
    node.serve(payload)
    result = node.cycle()
    assert result.refused == "schema"
    assert node.sample("treadle_agent_verify_failures_total", reason="schema") == 1
    _still_enforcing(node, result, enforced)


@pytest.mark.parametrize(
    "text",
    [
        b"1" * (MAX_INT_DIGITS + 1),
        b"-" + b"1" * (MAX_INT_DIGITS + 1),
        b"[" * 65 + b"]" * 65,
        b'{"a":' * 70 + b"1" + b"}" * 70,
    ],
)
def test_parse_json_refuses_what_is_over_its_limits_with_its_own_error(text):
    with pytest.raises(ManifestFormatError):
        parse_json(text)


def test_parse_json_accepts_integers_and_nesting_up_to_its_limits():
    assert parse_json(b"1" * MAX_INT_DIGITS) == int("1" * MAX_INT_DIGITS)
    assert parse_json(b"[" * 64 + b"]" * 64) is not None


def test_huge_content_length_header_is_no_crash(node, kit, enforced):
    """A declared length of thousands of digits: int() would refuse it; the body decides."""
    node.server.routes[kit.MANIFEST_PATH].content_length = "9" * 5000
    result = node.cycle()
    assert result.generation == 2 and result.fetch_failed in (None, "other")
    assert node.snapshot() == enforced


# --- 2: ETags --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "etag", ['"caf\xe9"', '"' + "a" * 10_000 + '"', "no-quotes", '"a" "b"', '"\x7f"']
)
def test_invalid_etag_is_never_stored_nor_sent_back(node, kit, etag):
    node.start()
    envelope = node.serve(kit.manifest_doc(generation=2, files=GOOD))
    node.server.routes[kit.MANIFEST_PATH].etag = etag
    assert node.cycle().ok
    assert node.agent.etag is None
    assert json.loads((node.tmp / "state/agent-state.json").read_text())["etag"] is None
    second = (
        node.cycle()
    )  # before: UnicodeEncodeError on every later run, or a request header the server refuses
    assert second.ok and second.fetch_failed is None
    assert node.server.requests[-1] == (kit.MANIFEST_PATH, None)
    assert node.agent.trusted.envelope == envelope


def test_valid_etags_are_kept_and_bounded():
    valid_etag, MAX_ETAG_CHARS = fetch.valid_etag, fetch.MAX_ETAG_CHARS  # noqa: N806
    assert (
        valid_etag('"abc"') == '"abc"'
        and valid_etag('W/"abc"') == 'W/"abc"'
        and valid_etag('""') == '""'
    )
    assert valid_etag('"' + "a" * (MAX_ETAG_CHARS - 2) + '"') is not None
    assert valid_etag('"' + "a" * (MAX_ETAG_CHARS - 1) + '"') is None
    assert valid_etag(None) is None and valid_etag(7) is None


def test_stored_invalid_etag_is_dropped_when_read_back(node, kit, enforced):
    state = node.tmp / "state/agent-state.json"
    for name in ("agent-state.json", "agent-state.copy.json"):
        doc = json.loads((node.tmp / "state" / name).read_text())
        doc["etag"] = '"' + "x" * 20_000 + '"'
        (node.tmp / "state" / name).write_text(json.dumps(doc))
    node.start()
    assert node.agent.etag is None
    assert node.cycle().ok
    assert node.server.requests[-1][1] is None
    assert json.loads(state.read_text())["etag"] != doc["etag"]


# --- 10: config values that pass TOML, then crashed --------------------------------------------------


def _main(*args: str) -> int:
    from treadle_agent.cli import main

    return main(list(args))


@pytest.mark.parametrize(
    ("key", "toml", "says"),
    [
        ("node", "node = 1979-05-27", "a TOML date or time"),
        ("root", "root = 1979-05-27T07:32:00Z", "a TOML date or time"),
        ("state_dir", 'state_dir = "/tmp/st\\u0000x"', "NUL"),
        ("node", 'node = "a\\u0000b"', "NUL"),
        ("manifest_urls", 'manifest_urls = ["http://[::1/x"]', "not a usable URL"),
        ("manifest_urls", 'manifest_urls = ["http://127.0.0.1:99999/x"]', "not a usable URL"),
        ("manifest_urls", 'manifest_urls = ["http:///x"]', "not a usable URL"),
        ("interval_s", "interval_s = nan", "not a finite number"),
        ("retries", "retries = 1" + "0" * 5000, "not valid TOML"),
    ],
)
@pytest.mark.parametrize("command", ["once", "check", "run"])
def test_config_value_that_would_crash_is_exit_2_naming_the_key(
    tmp_path, kit, keys, capsys, key, toml, says, command
):
    path = kit.write_config(tmp_path, keys.trust_root, ["http://127.0.0.1:9/x"])
    lines = [line for line in path.read_text().splitlines() if not line.startswith(f"{key} =")]
    path.write_text("\n".join([*lines, toml]) + "\n")
    assert _main(command, "--config", str(path)) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith(f"treadle-agent: error: {path}") and says in err and "Traceback" not in err
    )
    if key != "retries":
        assert repr(key) in err and "fix:" in err


# --- 3: the trust root, the state dir and the config must be private and usable ----------------------


def test_trust_root_with_a_garbage_key_is_exit_2_and_the_last_good_manifest_stays(
    node, kit, enforced, capsys
):
    doc = json.loads(node.keys.trust_root.read_text())
    for key in doc["keys"].values():
        key["keyval"]["public"] = "zz" * 32
    node.keys.trust_root.write_text(json.dumps(doc))
    assert _main("once", "--config", str(node.config_path)) == 2
    assert "not a usable public key" in capsys.readouterr().err
    assert node.snapshot() == enforced  # before: exit 1, and envelope.json moved aside as corrupt


@pytest.mark.parametrize(
    "what", ["trust root", "config file", "state dir", "directory above the trust root"]
)
@pytest.mark.parametrize("bits", [0o020, 0o002])
def test_group_or_world_writable_trust_root_config_or_state_dir_is_refused(
    node, kit, enforced, capsys, what, bits
):
    target = {
        "trust root": node.keys.trust_root,
        "config file": node.config_path,
        "state dir": node.tmp / "state",
        "directory above the trust root": node.keys.trust_root.parent,
    }[what]
    target.chmod(target.stat().st_mode & 0o7777 | bits)
    assert _main("once", "--config", str(node.config_path)) == 2
    err = capsys.readouterr().err
    assert "writable by group or others" in err and "chmod go-w" in err
    assert node.snapshot() == enforced


def test_world_writable_directory_with_the_sticky_bit_above_is_accepted(tmp_path):
    from treadle_agent.contract.files import check_private

    sticky = tmp_path / "sticky"
    sticky.mkdir()
    sticky.chmod(0o1777)
    (sticky / "f").write_text("x")
    (sticky / "f").chmod(0o600)
    check_private(sticky / "f", "trust root")


# --- 9: damaged state must not lower rollback or equivocation protection -----------------------------


def _state(node, name: str):
    return node.tmp / "state" / name


def test_damaged_stored_envelope_does_not_reopen_equivocation(node, kit, enforced):
    _state(node, "envelope.json").write_bytes(b'{"payload": "damaged')
    node.start()
    node.serve(
        kit.manifest_doc(generation=2, files={"/etc/motd": "other content, same generation\n"})
    )
    result = node.cycle()
    assert result.refused == "equivocation"  # before: accepted, and applied
    assert node.sample("treadle_agent_verify_failures_total", reason="equivocation") == 1
    assert (node.tmp / "root/etc/motd").read_text() == "good\n"


@pytest.mark.parametrize(
    "gone",
    [
        ("envelope.json", "agent-state.json"),
        ("envelope.json", "agent-state.copy.json"),
        ("agent-state.json", "agent-state.copy.json"),
    ],
)
def test_any_two_trusted_state_files_gone_still_refuse_a_rollback(node, kit, enforced, gone):
    node.serve(kit.manifest_doc(generation=5, files=GOOD))
    assert node.cycle().ok
    for name in gone:
        _state(node, name).unlink()
    node.start()
    assert node.agent.trusted.highest_generation == 5
    node.serve(kit.manifest_doc(generation=4, files={"/etc/motd": "old\n"}))
    assert node.cycle().refused == "rollback"
    assert (node.tmp / "root/etc/motd").read_text() == "good\n"


def test_missing_state_files_are_written_again_at_start(node, kit, enforced):
    _state(node, "agent-state.json").unlink()
    node.start()
    assert json.loads(_state(node, "agent-state.json").read_text())["generation"] == 2
    assert (
        _state(node, "agent-state.json").read_bytes()
        == _state(node, "agent-state.copy.json").read_bytes()
    )


@pytest.mark.parametrize(
    "entry",
    [
        [1, 2],
        "x",
        {"want": 3},
        {"created": "yes"},
        {"stat": "x"},
        {"stat": [1, 2]},
        {"sha256": 5},
        {"want": None, "created": False, "stat": [1, 2, 3, 4, 5, 6, "7"]},
    ],
)
def test_wrongly_typed_inventory_entry_is_dropped_and_the_run_recovers(node, kit, enforced, entry):
    inventory = _state(node, "inventory.json")
    doc = json.loads(inventory.read_text())
    doc["resources"]["file:/etc/motd"] = entry
    doc["resources"]["file:/etc/other"] = {
        "want": None,
        "created": True,
        "stat": [1] * 7,
        "sha256": "a" * 64,
    }
    inventory.write_text(json.dumps(doc))
    node.start()
    first, second = node.cycle(), node.cycle()  # before: a traceback on every run
    assert first.ok and second.ok
    doc = json.loads(inventory.read_text())
    assert (
        doc["resources"]["file:/etc/motd"]["want"] is not None
        and "file:/etc/other" not in doc["resources"]
    )


def test_inventory_entry_with_a_relative_path_is_dropped_not_pruned_every_run(node, kit, enforced):
    """Found by the state fuzzer: an entry ``file:etc/motd`` marked created could never be removed (its path
    is refused), so every later run failed pruning it. It is dropped when read, like any wrongly shaped one."""
    inventory = _state(node, "inventory.json")
    doc = json.loads(inventory.read_text())
    doc["resources"]["file:etc/motd"] = {
        "want": None,
        "created": True,
        "stat": [1] * 7,
        "sha256": None,
    }
    doc["resources"]["directory:/srv/../etc"] = {"want": None, "created": True}
    inventory.write_text(json.dumps(doc))
    node.start()
    first, second = node.cycle(), node.cycle()
    assert first.ok and second.ok
    kept = json.loads(inventory.read_text())["resources"]
    assert (
        "file:etc/motd" not in kept
        and "directory:/srv/../etc" not in kept
        and "file:/etc/motd" in kept
    )


def test_wrongly_typed_pending_restarts_are_dropped(node, kit, enforced):
    inventory = _state(node, "inventory.json")
    doc = json.loads(inventory.read_text())
    doc["pending_restarts"] = [1, {"x": 2}]
    inventory.write_text(json.dumps(doc))
    node.start()
    assert node.cycle().ok
    assert json.loads(inventory.read_text())["pending_restarts"] == []


# --- 11: the way back from a fast-forward: rotating the trust root resets the generation floor --------

FAST_FORWARD = 10**18


def test_fast_forwarded_generation_blocks_honest_manifests_until_the_trust_root_is_rotated(
    node, kit, make_keys, enforced
):
    node.serve(kit.manifest_doc(generation=FAST_FORWARD, files=GOOD))
    assert node.cycle().ok
    node.serve(kit.manifest_doc(generation=5, files={"/etc/motd": "honest\n"}))
    assert node.cycle().refused == "rollback"
    new = make_keys()  # the operator rotates to a new key, and the controller signs with it
    node.start(trust_root=new.trust_root)
    assert node.agent.trusted.highest_generation == 0
    node.serve(kit.manifest_doc(generation=5, files={"/etc/motd": "honest\n"}), signers=new.signers)
    result = node.cycle()
    assert result.ok and result.generation == 5  # before: refused as a rollback for ever
    assert (node.tmp / "root/etc/motd").read_text() == "honest\n"
    node.start()  # and the new floor holds across a restart
    node.serve(kit.manifest_doc(generation=4, files=GOOD), signers=new.signers)
    assert node.cycle().refused == "rollback"


def test_reformatting_the_trust_root_is_no_rotation(node, kit, enforced):
    node.serve(kit.manifest_doc(generation=7, files=GOOD))
    assert node.cycle().ok
    doc = json.loads(node.keys.trust_root.read_text())
    node.keys.trust_root.write_text(json.dumps(doc, indent=4) + "\n")
    node.start()
    assert node.agent.trusted.highest_generation == 7
    node.serve(kit.manifest_doc(generation=6, files=GOOD))
    assert node.cycle().refused == "rollback"


# --- 6: hard links and special mode bits ------------------------------------------------------------


def _file_manifest(
    kit,
    path: str,
    content: str,
    mode: str,
    special_modes: list[str] | None = None,
    generation: int = 3,
):
    doc = kit.manifest_doc(generation=generation, files={path: content})
    doc["resources"][0]["mode"] = mode
    if special_modes is not None:
        doc["metadata"]["special_modes"] = special_modes
    return doc


def test_mode_change_through_a_planted_hard_link_is_refused_and_the_outside_file_keeps_its_mode(
    node, kit, enforced
):
    outside = node.tmp / "shadow"
    outside.write_text("secret\n")
    outside.chmod(0o600)
    os.link(outside, node.tmp / "root/etc/linked")
    node.serve(_file_manifest(kit, "/etc/linked", "secret\n", "0644"))
    result = node.cycle()
    assert not result.apply_ok
    assert outside.stat().st_mode & 0o7777 == 0o600  # before: 0644, through the link
    assert node.sample("treadle_agent_resources", type="file", status="failed") == 1
    report = node.agent.applier.check(node.agent.trusted.manifest)
    assert [r.status for r in report.results] == [
        "would_change"
    ]  # still owed, never forced through the link


def test_content_change_of_a_hard_linked_file_replaces_the_name_and_leaves_the_other_file(
    node, kit, enforced
):
    outside = node.tmp / "shadow"
    outside.write_text("secret\n")
    outside.chmod(0o600)
    os.link(outside, node.tmp / "root/etc/linked")
    node.serve(_file_manifest(kit, "/etc/linked", "public\n", "0644"))
    assert node.cycle().ok
    assert outside.read_text() == "secret\n" and outside.stat().st_mode & 0o7777 == 0o600
    assert (node.tmp / "root/etc/linked").read_text() == "public\n"


def test_hard_links_to_a_file_the_agent_created_do_not_block_its_mode(node, kit, enforced):
    os.link(node.tmp / "root/etc/motd", node.tmp / "root/etc/motd.link")
    node.serve(_file_manifest(kit, "/etc/motd", "good\n", "0600"))
    assert node.cycle().ok
    assert (node.tmp / "root/etc/motd").stat().st_mode & 0o7777 == 0o600


@pytest.mark.parametrize("mode", ["4755", "2755", "1777", "6755"])
def test_special_mode_bits_are_refused_where_the_manifest_does_not_allow_them(
    node, kit, enforced, mode
):
    node.serve(
        _file_manifest(kit, "/etc/tool", "#!/bin/sh\n", mode, special_modes=["/usr/local/bin/*"])
    )
    result = node.cycle()
    assert not result.apply_ok and result.generation == 3
    assert not (node.tmp / "root/etc/tool").exists()  # before: created setuid


def test_special_mode_bits_are_applied_where_the_manifest_allows_them(node, kit, enforced):
    node.serve(
        _file_manifest(
            kit, "/usr/local/bin/tool", "#!/bin/sh\n", "4755", special_modes=["/usr/local/bin/*"]
        )
    )
    assert node.cycle().ok
    assert (node.tmp / "root/usr/local/bin/tool").stat().st_mode & 0o7777 == 0o4755
