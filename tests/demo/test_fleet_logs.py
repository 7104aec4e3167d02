"""The demo's processes log to files that stay bounded however long the fleet runs."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from treadle.demo.processes import Fleet

CHATTY = "import sys, time\nwhile True:\n    sys.stdout.write('x' * 99 + '\\n'); sys.stdout.flush(); time.sleep(0.001)\n"


def _wait_size(path: Path, above: int) -> None:
    deadline = time.monotonic() + 30
    while path.stat().st_size <= above:
        assert time.monotonic() < deadline, f"{path} stayed at {path.stat().st_size} bytes"
        time.sleep(0.02)


def test_a_log_past_the_limit_is_copied_aside_and_truncated_while_the_child_keeps_writing(
    tmp_path: Path,
) -> None:
    with Fleet(tmp_path) as fleet:
        child = fleet.start("chatty", [sys.executable, "-c", CHATTY], tmp_path)
        _wait_size(child.log, 20_000)
        assert fleet.rotate_logs(max_bytes=10_000) == ["chatty"]
        rotated = tmp_path / "chatty.log.1"
        assert rotated.stat().st_size > 10_000
        assert child.log.stat().st_size < rotated.stat().st_size
        _wait_size(
            child.log, 5_000
        )  # still written to, from the start: no hole where the old bytes were
        assert (
            b"\x00" not in child.log.read_bytes()
        )  # a writer without O_APPEND would leave a hole of NULs
        assert fleet.rotate_logs(max_bytes=10**9) == []
