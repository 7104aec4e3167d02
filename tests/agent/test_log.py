"""Structured logs: one line per event, fields as key=value or JSON."""

from __future__ import annotations

import io
import json
import logging

import pytest

from treadle_agent import log


@pytest.fixture
def stream():
    """A stream to log into; the logger's set-up is put back afterwards (caplog elsewhere relies on propagation)."""
    loggers = [logging.getLogger(n) for n in ("", "treadle_agent", "treadle", "httpx", "httpcore")]
    saved = [(list(lg.handlers), lg.propagate, lg.level) for lg in loggers]
    yield io.StringIO()
    for lg, (handlers, propagate, level) in zip(loggers, saved, strict=True):
        lg.handlers[:] = handlers
        lg.propagate = propagate
        lg.setLevel(level)


def test_text_lines_quote_values_with_spaces(stream):
    log.configure("text", stream=stream)
    log.get_logger("fetch").warning("fetch.failed", url="http://a/m", error="connection refused", attempt=2)
    line = stream.getvalue()
    assert line.count("\n") == 1
    assert ' WARNING fetch.failed url=http://a/m error="connection refused" attempt=2' in line


def test_json_lines_carry_every_field(stream):
    log.configure("json", stream=stream)
    log.get_logger("verify").info("verify.refused", reason="rollback", generation=4)
    doc = json.loads(stream.getvalue())
    assert doc["event"] == "verify.refused" and doc["level"] == "info" and doc["reason"] == "rollback" and doc["generation"] == 4


def test_unknown_format_is_refused():
    with pytest.raises(ValueError, match="unknown log format"):
        log.configure("xml")
