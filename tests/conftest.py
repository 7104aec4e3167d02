"""Settings every suite shares: a git identity, so tests that commit work on a fresh machine; and, in CI,
fuzz tests that draw the same examples on every run.

With ``CI`` set (as the CI runner does), Hypothesis is derandomized: a landing is judged on a known set of
examples, and a failure reproduces exactly. Elsewhere every run draws new examples, which is how the fuzz
tests keep finding things (each find goes into the test's regression corpus); `TREADLE_FUZZ_EXAMPLES` and
`bench/differential.py` run longer searches.
"""

from __future__ import annotations

import io
import logging
import os

import pytest
from hypothesis import settings

settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

for key, value in {
    "GIT_AUTHOR_NAME": "Treadle Test",
    "GIT_AUTHOR_EMAIL": "test@treadle.invalid",
    "GIT_COMMITTER_NAME": "Treadle Test",
    "GIT_COMMITTER_EMAIL": "test@treadle.invalid",
}.items():
    os.environ.setdefault(key, value)


@pytest.fixture
def stream():
    """A stream to log into (the log tests of both programs); the loggers' set-up is put back afterwards
    (caplog elsewhere relies on propagation)."""
    loggers = [logging.getLogger(n) for n in ("", "treadle_agent", "treadle", "httpx", "httpcore")]
    saved = [(list(lg.handlers), lg.propagate, lg.level) for lg in loggers]
    yield io.StringIO()
    for lg, (handlers, propagate, level) in zip(loggers, saved, strict=True):
        lg.handlers[:] = handlers
        lg.propagate = propagate
        lg.setLevel(level)
