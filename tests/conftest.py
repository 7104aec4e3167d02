"""Settings every suite shares: a git identity, so tests that commit work on a fresh machine."""

from __future__ import annotations

import os

for key, value in {
    "GIT_AUTHOR_NAME": "Treadle Test",
    "GIT_AUTHOR_EMAIL": "test@treadle.invalid",
    "GIT_COMMITTER_NAME": "Treadle Test",
    "GIT_COMMITTER_EMAIL": "test@treadle.invalid",
}.items():
    os.environ.setdefault(key, value)
