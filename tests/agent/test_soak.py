"""An agent runs for months: many cycles leave its descriptors, threads and state directory as they were.

The agent runs in-process against the real HTTP server on 127.0.0.1, one
fetcher across all cycles as in the daemon (``Agent.run``). Every few cycles
a new generation is served (files added, changed and removed), in between the
server answers 304, and now and then it answers an error or nothing at all.
"""

from __future__ import annotations

import os
import threading

import anyio

CYCLES = 200


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def files_under(path) -> int:  # type: ignore[no-untyped-def]
    return sum(1 for p in path.rglob("*") if p.is_file())


def test_two_hundred_cycles_leave_descriptors_threads_and_the_state_dir_flat(node, kit) -> None:  # type: ignore[no-untyped-def]
    node.serve(kit.manifest_doc(generation=1))
    agent = node.start()
    samples = []

    async def many() -> None:
        generation = 1
        try:
            for i in range(CYCLES):
                if i % 5 == 0:
                    generation += 1
                    files = {
                        f"/etc/soak/{generation % 7}.conf": f"g{generation}\n",
                        "/etc/motd": f"{generation}\n",
                    }
                    node.serve(kit.manifest_doc(generation=generation, files=files))
                elif i % 23 == 0:
                    node.serve(b"not an envelope")  # refused, counted; the last good one stays
                result = await agent.cycle()
                assert result is not None
                if i >= 20:
                    samples.append(
                        (
                            open_descriptors(),
                            threading.active_count(),
                            files_under(node.tmp / "state"),
                            files_under(node.tmp / "root"),
                        )
                    )
        finally:
            await agent.fetcher.aclose()

    anyio.run(many)
    first = samples[0]
    for fds, threads, state_files, root_files in samples:
        assert fds <= first[0] + 2, (
            fds,
            first,
        )  # a keep-alive connection may be re-opened, never piled up
        # The test server answers each connection on a thread of its own, and anyio resolves addresses on a
        # worker thread: one of each may be finishing while the next starts. Never more.
        assert threads <= first[1] + 2, (threads, first)
        assert state_files <= first[2] + 1, (
            state_files,
            first,
        )  # no temp file or set-aside copy left per cycle
        assert root_files <= 8, root_files  # at most the seven rotating files and /etc/motd
    assert node.sample("treadle_agent_applied_generation") == 1 + CYCLES // 5
