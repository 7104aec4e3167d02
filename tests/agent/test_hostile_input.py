"""No input from the network, the disk or the config crashes the agent or lowers its protection.

Each test lets the agent enforce a good generation-2 manifest first (the
``enforced`` fixture), then feeds it one hostile input over real HTTP on
127.0.0.1 (or on disk), and asserts a typed refusal, counted by reason, with
the last good manifest still enforced.
"""

from __future__ import annotations

import json

import pytest

from treadle_agent import fetch, manifest
from treadle_agent.manifest import ManifestFormatError, parse_json

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


def test_integer_of_thousands_of_digits_in_an_unsigned_envelope_member_is_refused_not_a_crash(node, kit, enforced):
    envelope = json.loads(node.server.routes[kit.MANIFEST_PATH].body)
    raw = json.dumps(envelope)[:-1].encode() + b', "n": ' + b"9" * 5000 + b"}"
    node.server.serve(raw)
    result = node.cycle()
    assert result.refused == "envelope"
    assert node.sample("treadle_agent_verify_failures_total", reason="envelope") == 1
    _still_enforcing(node, result, enforced)


def test_integer_of_thousands_of_digits_inside_a_signed_payload_is_refused_as_schema(node, kit, enforced):
    payload = json.dumps(kit.manifest_doc(generation=3)).replace('"generation": 3', '"generation": ' + "7" * 5000).encode()
    node.serve(payload)
    result = node.cycle()
    assert result.refused == "schema"
    assert node.sample("treadle_agent_verify_failures_total", reason="schema") == 1
    _still_enforcing(node, result, enforced)


@pytest.mark.parametrize("text", [b"1" * (MAX_INT_DIGITS + 1), b"-" + b"1" * (MAX_INT_DIGITS + 1),
                                  b"[" * 65 + b"]" * 65, b'{"a":' * 70 + b"1" + b"}" * 70])
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


@pytest.mark.parametrize("etag", ['"caf\xe9"', '"' + "a" * 10_000 + '"', "no-quotes", '"a" "b"', '"\x7f"'])
def test_invalid_etag_is_never_stored_nor_sent_back(node, kit, etag):
    node.start()
    envelope = node.serve(kit.manifest_doc(generation=2, files=GOOD))
    node.server.routes[kit.MANIFEST_PATH].etag = etag
    assert node.cycle().ok
    assert node.agent.etag is None
    assert json.loads((node.tmp / "state/agent-state.json").read_text())["etag"] is None
    second = node.cycle()  # before: UnicodeEncodeError on every later run, or a request header the server refuses
    assert second.ok and second.fetch_failed is None
    assert node.server.requests[-1] == (kit.MANIFEST_PATH, None)
    assert node.agent.trusted.envelope == envelope


def test_valid_etags_are_kept_and_bounded():
    valid_etag, MAX_ETAG_CHARS = fetch.valid_etag, fetch.MAX_ETAG_CHARS  # noqa: N806
    assert valid_etag('"abc"') == '"abc"' and valid_etag('W/"abc"') == 'W/"abc"' and valid_etag('""') == '""'
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
