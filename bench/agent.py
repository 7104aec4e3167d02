"""Agent benchmark: the cost of a no-op run over 1,000 managed files, and of verification.

Sets up a node in a temporary directory (keys from ``treadle keys generate``,
a signed manifest of 1,000 files served by an HTTP server on 127.0.0.1, an
agent.toml applying into a temp root), lets the agent converge once, then
measures, beside issue 3's targets:

    treadle-agent once, whole process, no-op over 1,000 files   <= 0.4 s wall, <= 40 MB peak RSS
    in-daemon no-op cycle over 1,000 files                       <= 30 ms
    idle daemon RSS (treadle-agent run, after its first cycle)   <= 40 MB
        measured twice: restarted on the manifest it verified before (no
        signature or schema stack loaded), and after verifying a new one
    verify of a 1 MB manifest (signature, schema, checks)        <= 20 ms
        in-process (``once``); the daemon verifies in a child process
        (verify.py), whose cost, spawn included, is printed beside it

The figures they were set against (1,000 files in sync, same machine):
``cf-agent`` no-op 0.47 s wall and 24 MB RSS; ``puppet apply`` no-op 4.1 s
and 95 MB; a bare stat+sha256 of the files 0.05 s.

"Whole process" is the real console script, interpreter start-up and imports
included; the server answers 304 to the stored ETag, as a controller does for
an unchanged manifest. Wall times are medians of several runs; RSS is the
agent process's maximum RSS (GNU time) or, for the idle daemon, its VmRSS.

It reports, it does not judge a build: exit 0 whatever the numbers, 1 only
when the agent fails outright, 2 on a usage error.

    python bench/agent.py [--files 1000] [--runs 7]
"""

from __future__ import annotations

import argparse
import hashlib
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

TARGET_ONCE_S = 0.4
TARGET_ONCE_RSS_MB = 40.0
TARGET_CYCLE_MS = 30.0
TARGET_IDLE_RSS_MB = 40.0
TARGET_VERIFY_MS = 20.0
NODE = "bench-node"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    body = b""
    etag = ""

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802
        cls = type(self)
        if self.headers.get("If-None-Match") == cls.etag:
            self.send_response(304)
            self.send_header("ETag", cls.etag)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("ETag", cls.etag)
        self.send_header("Content-Length", str(len(cls.body)))
        self.end_headers()
        self.wfile.write(cls.body)


def _manifest(n_files: int, generation: int = 1, filler: int = 0) -> dict:
    from treadle_agent.contract.manifest import format_time

    files = []
    for i in range(n_files):
        text = f"# managed file {i}\nvalue = {i}\n" + ("x" * filler)
        files.append(
            {
                "type": "file",
                "path": f"/etc/bench/d{i % 20:02d}/f{i:04d}.conf",
                "ensure": "present",
                "content": text,
                "sha256": hashlib.sha256(text.encode()).hexdigest(),
                "mode": "0644",
                "owner": None,
                "group": None,
                "notify": [],
                "requires": [],
            }
        )
    now = time.time()
    return {
        "apiVersion": "treadle.dev/v1",
        "kind": "NodeManifest",
        "metadata": {
            "node": NODE,
            "site": "s",
            "cluster": "c",
            "address": "127.0.0.1",
            "fabric": "bench",
            "generation": generation,
            "commit": None,
            "issued": format_time(now),
            "expires": format_time(now + 86400),
            "lifecycle": "production",
            "labels": {},
        },
        "resources": sorted(files, key=lambda r: r["path"]),
        "health": [],
    }


def _setup(work: Path, n_files: int) -> tuple[Path, ThreadingHTTPServer, list]:
    from treadle.keygen import generate
    from treadle_agent.contract.envelope import load_signer, sign_payload
    from treadle_agent.contract.manifest import canonical_json

    generate(work / "keys")
    signers = [load_signer(str(work / "keys" / "treadle.key"))]
    envelope = sign_payload(canonical_json(_manifest(n_files)), signers)
    _Handler.body, _Handler.etag = envelope, f'"{hashlib.sha256(envelope).hexdigest()}"'
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
    (work / "root").mkdir()
    (work / "proc-sys").mkdir()
    config = work / "agent.toml"
    config.write_text(
        f'node = "{NODE}"\nmanifest_urls = ["http://127.0.0.1:{httpd.server_address[1]}/v1/nodes/{{node}}/manifest"]\n'
        f'trust_root = "keys/trust-root.json"\nstate_dir = "state"\nroot = "root"\nmetrics_listen = "127.0.0.1:0"\n'
        f'package_manager = "none"\nservice_manager = "none"\nproc_sys = "proc-sys"\nretries = 0\n'
        f"interval_s = 3600\njitter_s = 0\n"
    )
    return config, httpd, signers


def _agent_command() -> list[str]:
    script = Path(sys.executable).with_name("treadle-agent")
    return [str(script)] if script.exists() else [sys.executable, "-m", "treadle_agent.cli"]


def _once(config: Path, work: Path) -> tuple[float, float, int]:
    """One ``treadle-agent once`` process: (wall s, peak RSS MB, exit code).

    The peak RSS comes from GNU time, which forks a small process to exec the
    agent: the ``ru_maxrss`` of a child forked from this (larger) process
    counts pages it shared with it before exec.
    """
    report = work / "time.out"
    gnu_time = shutil.which("time") or "/usr/bin/time"
    wrapper = [gnu_time, "-o", str(report), "-f", "%M"] if Path(gnu_time).exists() else []
    started = time.perf_counter()
    p = subprocess.run(
        [*wrapper, *_agent_command(), "once", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=False,
    )
    wall = time.perf_counter() - started
    if wrapper:
        rss_mb = int(report.read_text().strip().splitlines()[-1]) / 1024
    else:
        rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return wall, rss_mb, p.returncode


def _cycle_ms(config: Path, runs: int) -> float:
    import anyio

    from treadle_agent.agent import Agent
    from treadle_agent.config import load

    agent = Agent.from_config(load(config))
    agent.start()

    async def cycles() -> list[float]:
        out = []
        for _ in range(runs + 1):
            t = time.perf_counter()
            result = await agent.cycle()
            out.append((time.perf_counter() - t) * 1000)
            if not result.ok:
                raise SystemExit("the in-daemon cycle failed")
        await agent.fetcher.aclose()
        return out[1:]  # the first opens the connection

    return statistics.median(anyio.run(cycles))


def _idle_rss_mb(config: Path, work: Path, *, fresh: bool) -> float:
    """VmRSS of ``treadle-agent run`` after its first cycle.

    ``fresh``: start with an empty state dir, so the daemon verifies the
    manifest (loading the signature and schema stacks) instead of taking up the
    one it verified before under the same trust root.
    """
    if fresh:
        shutil.rmtree(work / "state")
    port_file = work / "metrics.port"
    port_file.unlink(missing_ok=True)
    p = subprocess.Popen(
        [*_agent_command(), "run", "--config", str(config), "--metrics-port-file", str(port_file)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if port_file.exists():
                url = f"http://127.0.0.1:{port_file.read_text().strip()}/metrics"
                if (
                    b"treadle_agent_applied_generation 1.0"
                    in urllib.request.urlopen(url, timeout=5).read()
                ):
                    break
            time.sleep(0.05)
        else:
            raise SystemExit("the daemon did not complete its first cycle")
        time.sleep(0.5)
        status = Path(f"/proc/{p.pid}/status").read_text()
        return (
            int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))
            / 1024
        )
    finally:
        p.terminate()
        p.wait(timeout=20)


def _isolated_verify_ms(signers: list, runs: int) -> float:
    """The same verification in the daemon's verifier process, spawn and imports included."""
    from treadle_agent.contract.envelope import sign_payload
    from treadle_agent.contract.manifest import canonical_json
    from treadle_agent.contract.trustroot import trust_root_document
    from treadle_agent.verify import IsolatedAuthenticator

    envelope = sign_payload(canonical_json(_manifest(1000, filler=960)), signers)
    isolated = IsolatedAuthenticator(
        trust_root_document({signers[0].public_key.keyid: signers[0].public_key.to_dict()}, 1)
    )
    times = []
    for _ in range(max(3, runs // 2)):
        t = time.perf_counter()
        isolated(envelope)
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def _verify_ms(signers: list, runs: int) -> tuple[float, int]:
    from treadle_agent.contract.envelope import sign_payload
    from treadle_agent.contract.manifest import canonical_json
    from treadle_agent.contract.trustroot import TrustRoot
    from treadle_agent.trust import TrustedState
    from treadle_agent.verify import Verifier

    payload = canonical_json(_manifest(1000, filler=960))
    envelope = sign_payload(payload, signers)
    trust = TrustRoot.from_bytes(
        canonical_json(
            {"threshold": 1, "keys": {signers[0].public_key.keyid: signers[0].public_key.to_dict()}}
        )
    )
    Verifier(trust, NODE, TrustedState()).accept(envelope)  # warm: imports, compiled schema
    times = []
    for _ in range(runs):
        v = Verifier(trust, NODE, TrustedState())
        t = time.perf_counter()
        v.accept(envelope)
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times), len(payload)


def _line(name: str, value: float, unit: str, target: float) -> None:
    verdict = "PASS" if value <= target else "FAIL"
    print(f"{name:<52} {value:8.1f} {unit:<3} (target <= {target:g} {unit})  {verdict}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="treadle-bench-agent-"))
    try:
        config, httpd, signers = _setup(work, args.files)
        wall, rss, code = _once(config, work)  # converge: the first run writes every file
        if code != 0:
            print(f"the first `treadle-agent once` failed with exit code {code}", file=sys.stderr)
            return 1
        runs = [_once(config, work) for _ in range(args.runs)]
        if any(code != 0 for _, _, code in runs):
            print("a no-op `treadle-agent once` failed", file=sys.stderr)
            return 1
        print(f"agent benchmark: {args.files} managed files in sync, medians of {args.runs} runs")
        _line(
            "treadle-agent once, whole process, no-op: wall",
            statistics.median(w for w, _, _ in runs) * 1000,
            "ms",
            TARGET_ONCE_S * 1000,
        )
        _line(
            "treadle-agent once, whole process, no-op: peak RSS",
            max(r for _, r, _ in runs),
            "MB",
            TARGET_ONCE_RSS_MB,
        )
        _line("in-daemon no-op cycle", _cycle_ms(config, args.runs), "ms", TARGET_CYCLE_MS)
        _line(
            "idle daemon RSS, restarted on its verified manifest",
            _idle_rss_mb(config, work, fresh=False),
            "MB",
            TARGET_IDLE_RSS_MB,
        )
        _line(
            "idle daemon RSS, after verifying a new manifest",
            _idle_rss_mb(config, work, fresh=True),
            "MB",
            TARGET_IDLE_RSS_MB,
        )
        verify_ms, size = _verify_ms(signers, args.runs)
        _line(f"verify a {size / 1e6:.1f} MB manifest", verify_ms, "ms", TARGET_VERIFY_MS)
        print(
            f"{'  the same, in the daemon verifier process':<52} {_isolated_verify_ms(signers, args.runs):8.1f} ms"
            "  (no target: once per new manifest)"
        )
        httpd.shutdown()
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
