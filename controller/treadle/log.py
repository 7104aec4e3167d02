"""Structured logs: one line per event, ``event key=value ...`` or one JSON object.

Events are named (``cycle.deployed``, ``gate.refused``, ``api.listening``) so a
log pipeline can select them without parsing prose; the fields are the facts.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, TextIO

LOGGER = logging.getLogger("treadle.controller")


class _Formatter(logging.Formatter):
    def __init__(self, as_json: bool) -> None:
        super().__init__()
        self.as_json = as_json

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = getattr(record, "fields", {})
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        if self.as_json:
            return json.dumps({"ts": ts, "level": record.levelname.lower(), "event": record.getMessage(), **fields},
                              default=str, ensure_ascii=False)
        parts = " ".join(f"{k}={_text(v)}" for k, v in fields.items())
        return f"{ts} {record.levelname.lower():7} {record.getMessage()} {parts}".rstrip()


def _text(v: Any) -> str:
    s = v if isinstance(v, str) else json.dumps(v, default=str, ensure_ascii=False)
    return json.dumps(s, ensure_ascii=False) if (not s or any(c in s for c in ' "=\n')) else s


def configure(*, as_json: bool = False, level: int = logging.INFO, stream: TextIO | None = None) -> None:
    """Send the controller's events to ``stream`` (stderr by default), replacing earlier handlers."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(_Formatter(as_json))
    LOGGER.handlers[:] = [handler]
    LOGGER.setLevel(level)
    LOGGER.propagate = False


def event(name: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log event ``name`` with ``fields``."""
    LOGGER.log(level, name, extra={"fields": fields})


def warning(name: str, **fields: Any) -> None:
    event(name, logging.WARNING, **fields)


def error(name: str, **fields: Any) -> None:
    event(name, logging.ERROR, **fields)
