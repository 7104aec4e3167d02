"""Structured logs: one line per event, ``event key=value ...`` or one JSON object.

Events are named (``cycle.deployed``, ``gate.refused``, ``api.listening``) so a
log pipeline can select them without parsing prose; the fields are the facts.
The format is the agent's (:mod:`treadle_agent.contract.log`): both programs write one
shape, and every logger of the process, plain :mod:`logging` users and
libraries included, goes through it.
"""

from __future__ import annotations

import logging
from typing import Any, TextIO

from treadle_agent.contract import log as _shared

LOGGER = logging.getLogger("treadle.controller")


def configure(
    *, as_json: bool = False, level: int = logging.INFO, stream: TextIO | None = None
) -> None:
    """Send every logger's records to ``stream`` (stderr by default), replacing earlier handlers of ours."""
    _shared.configure("json" if as_json else "text", stream=stream, level=level)


def event(name: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log event ``name`` with ``fields``."""
    LOGGER.log(level, name, extra={"fields": fields})


def warning(name: str, **fields: Any) -> None:
    event(name, logging.WARNING, **fields)


def error(name: str, **fields: Any) -> None:
    event(name, logging.ERROR, **fields)
