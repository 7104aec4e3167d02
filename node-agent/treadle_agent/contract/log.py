"""Structured logs: one line per event, ``text`` for people or ``json`` for collectors.

An event is a dotted name (``fetch.failed``, ``verify.refused``) plus fields.
Call sites never format messages themselves, so the JSON form carries every
field as a value a log pipeline can filter on::

    log = get_logger("fetch")
    log.warning("fetch.failed", url=url, reason="timeout")

    text: 2026-11-22T02:31:07.412Z WARNING fetch.failed url=http://... reason=timeout
    json: {"ts":"2026-11-22T02:31:07.412Z","level":"warning","logger":"treadle_agent.fetch","event":"fetch.failed",...}

The controller logs through the same formatters (``treadle.log``), so both
programs write one shape.
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
    return (
        time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        + f".{int(record.msecs):03d}Z"
    )


def _event_and_fields(record: logging.LogRecord) -> tuple[str, dict[str, Any]]:
    """An event record's name and fields; a plain :mod:`logging` record (a library's) becomes event ``log``
    with its text in ``message``, so it keeps the one shape too."""
    fields = getattr(record, "fields", None)
    if fields is not None:
        return record.getMessage(), dict(fields)
    out: dict[str, Any] = {"message": record.getMessage()}
    if record.exc_info:
        out["exception"] = logging.Formatter().formatException(record.exc_info)
    return "log", out


class TextFormatter(logging.Formatter):
    """``<ts> <LEVEL> <event> key=value ...``; values with spaces are quoted."""

    def format(self, record: logging.LogRecord) -> str:
        event, fields = _event_and_fields(record)
        parts = [_timestamp(record), record.levelname, event]
        if event == "log":
            parts.append(f"logger={record.name}")
        for key, value in fields.items():
            text = (
                value
                if isinstance(value, str)
                else json.dumps(value, default=str, ensure_ascii=False)
            )
            if not text or any(c.isspace() or c in '"=' for c in text):
                text = json.dumps(text, ensure_ascii=False)
            parts.append(f"{key}={text}")
        return " ".join(parts)


class JsonFormatter(logging.Formatter):
    """One JSON object per line, the one shape of both programs::

    {"ts": "2026-11-22T02:31:07.412Z", "level": "warning", "logger": "treadle_agent.fetch",
     "event": "fetch.failed", <the event's fields>...}
    """

    def format(self, record: logging.LogRecord) -> str:
        event, fields = _event_and_fields(record)
        doc: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": event,
        }
        for key, value in fields.items():
            doc.setdefault(key, value)
        return json.dumps(doc, default=str, ensure_ascii=False, separators=(",", ":"))


#: Libraries whose INFO lines would be one per HTTP request (the controller scrapes every agent every few seconds).
_QUIET = ("httpx", "httpcore")


def configure(
    fmt: str = "text", *, stream: TextIO | None = None, level: int = logging.INFO
) -> None:
    """Send every logger's records (ours, and any library's) to ``stream`` (stderr by default) in format ``fmt``.

    The handler sits on the root logger, so nothing logs around it: a module
    using plain :mod:`logging`, or a library, comes out in the same shape.
    Used by both programs (the controller's ``treadle.log`` calls it).

    Raises:
        ValueError: ``fmt`` is not one of :data:`FORMATS`.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown log format {fmt!r}; use one of {', '.join(FORMATS)}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler._treadle = True  # type: ignore[attr-defined]  # ours, replaced by the next configure()
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_treadle", False):
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for name in (_ROOT, "treadle"):
        logging.getLogger(name).setLevel(logging.NOTSET)
        logging.getLogger(name).propagate = True
    for name in _QUIET:
        logging.getLogger(name).setLevel(max(level, logging.WARNING))
