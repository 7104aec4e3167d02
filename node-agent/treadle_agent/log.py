"""Structured logs: one line per event, ``text`` for people or ``json`` for collectors.

An event is a dotted name (``fetch.failed``, ``verify.refused``) plus fields.
Call sites never format messages themselves, so the JSON form carries every
field as a value a log pipeline can filter on::

    log = get_logger("fetch")
    log.warning("fetch.failed", url=url, reason="timeout")

    text: 2026-11-22T02:31:07Z WARNING fetch.failed url=http://... reason=timeout
    json: {"ts":"2026-11-22T02:31:07Z","level":"WARNING","event":"fetch.failed","url":"http://...","reason":"timeout"}
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, TextIO

FORMATS = ("text", "json")
_ROOT = "treadle_agent"


class EventLogger:
    """A thin front for :mod:`logging` that takes an event name and fields."""

    __slots__ = ("_logger",)

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger

    def _log(self, level: int, event: str, fields: dict[str, Any]) -> None:
        if self._logger.isEnabledFor(level):
            self._logger.log(level, event, extra={"fields": fields})

    def debug(self, event: str, **fields: Any) -> None:
        self._log(logging.DEBUG, event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._log(logging.INFO, event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._log(logging.WARNING, event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._log(logging.ERROR, event, fields)


def get_logger(component: str) -> EventLogger:
    """The event logger of one component of the agent (``fetch``, ``verify``, ``agent``...)."""
    return EventLogger(logging.getLogger(f"{_ROOT}.{component}"))


def _timestamp(record: logging.LogRecord) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.created))


class TextFormatter(logging.Formatter):
    """``<ts> <LEVEL> <event> key=value ...``; values with spaces are quoted."""

    def format(self, record: logging.LogRecord) -> str:
        parts = [_timestamp(record), record.levelname, record.getMessage()]
        for key, value in getattr(record, "fields", {}).items():
            text = value if isinstance(value, str) else json.dumps(value, default=str)
            if not text or any(c.isspace() or c in '"=' for c in text):
                text = json.dumps(text)
            parts.append(f"{key}={text}")
        return " ".join(parts)


class JsonFormatter(logging.Formatter):
    """One JSON object per line; ``ts``, ``level`` and ``event`` first, then the fields."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {"ts": _timestamp(record), "level": record.levelname, "event": record.getMessage()}
        for key, value in getattr(record, "fields", {}).items():
            doc.setdefault(key, value)
        return json.dumps(doc, default=str, ensure_ascii=False, separators=(",", ":"))


def configure(fmt: str = "text", *, stream: TextIO | None = None, level: int = logging.INFO) -> None:
    """Send the agent's events to ``stream`` (stderr by default) in format ``fmt``.

    Raises:
        ValueError: ``fmt`` is not one of :data:`FORMATS`.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown log format {fmt!r}; use one of {', '.join(FORMATS)}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger(_ROOT)
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False
