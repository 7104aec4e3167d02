"""Structured logs: one line per event, fields as key=value or JSON."""

from __future__ import annotations

import json

import pytest

from treadle_agent.contract import log


def test_text_lines_quote_values_with_spaces(stream):
    log.configure("text", stream=stream)
    log.get_logger("fetch").warning(
        "fetch.failed", url="http://a/m", error="connection refused", attempt=2
    )
    line = stream.getvalue()
    assert line.count("\n") == 1
    assert ' WARNING fetch.failed url=http://a/m error="connection refused" attempt=2' in line


def test_json_lines_carry_every_field(stream):
    log.configure("json", stream=stream)
    log.get_logger("verify").info("verify.refused", reason="rollback", generation=4)
    doc = json.loads(stream.getvalue())
    assert (
        doc["event"] == "verify.refused"
        and doc["level"] == "info"
        and doc["reason"] == "rollback"
        and doc["generation"] == 4
    )


def test_unknown_format_is_refused():
    with pytest.raises(ValueError, match="unknown log format"):
        log.configure("xml")
