"""A real nginx (Debian's nginx-light) serving a publish_dir with deploy/nginx/treadle-mirror.conf.

The shipped server block is used as is, except its two marked lines: ``listen``
becomes 127.0.0.1:<port> and ``root`` the test's publish_dir. The main
configuration around it only keeps nginx's files in the test's directory.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from support import REPO as ROOT  # noqa: E402

MIRROR_CONF = ROOT / "deploy" / "nginx" / "treadle-mirror.conf"


def nginx_binary() -> str:
    found = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    if found is None:
        raise RuntimeError(
            "nginx is not installed: apt-get install nginx-light (listed in .ci/apt-packages)"
        )
    return found


def server_block(publish_dir: Path, port: int) -> str:
    """The shipped server block with its marked lines pointed at ``publish_dir`` and 127.0.0.1:``port``."""
    text = MIRROR_CONF.read_text()
    text, listens = re.subn(
        r"listen [^;]+;(\s*# TREADLE-LISTEN)", rf"listen 127.0.0.1:{port};\1", text
    )
    text, roots = re.subn(r"root [^;]+;(\s*# TREADLE-PUBLISH-DIR)", rf"root {publish_dir};\1", text)
    assert (listens, roots) == (1, 1), (
        "the marked lines of deploy/nginx/treadle-mirror.conf changed"
    )
    return text


@dataclass
class Nginx:
    workdir: Path
    port: int
    proc: subprocess.Popen  # type: ignore[type-arg]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def access(self) -> list[tuple[str, str, int]]:
        """(method, uri, status) of every request answered so far."""
        path = self.workdir / "access.log"
        lines = path.read_text().splitlines() if path.exists() else []
        return [(m, u, int(s)) for m, u, s in (line.split(" ") for line in lines)]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def start_nginx(workdir: Path, publish_dir: Path) -> Nginx:
    workdir.mkdir(parents=True, exist_ok=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (workdir / "mirror.conf").write_text(server_block(publish_dir, port))
    user = (
        "user root;" if os.geteuid() == 0 else ""
    )  # workers read the test's files, which only root may
    (workdir / "nginx.conf").write_text(f"""
daemon off;
worker_processes 1;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log notice;
{user}
worker_rlimit_nofile 16384;
events {{ worker_connections 4096; }}
http {{
    log_format mirror '$request_method $request_uri $status';
    access_log {workdir}/access.log mirror;
    client_body_temp_path {workdir}/client_body;
    proxy_temp_path {workdir}/proxy;
    include {workdir}/mirror.conf;
}}
""")
    proc = subprocess.Popen(
        [
            nginx_binary(),
            "-p",
            str(workdir),
            "-c",
            str(workdir / "nginx.conf"),
            "-e",
            str(workdir / "error.log"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    nginx = Nginx(workdir, port, proc)
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            raise RuntimeError(
                f"nginx exited: {proc.stderr.read().decode() if proc.stderr else ''}"
                f"{(workdir / 'error.log').read_text() if (workdir / 'error.log').exists() else ''}"
            )
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return nginx
        except OSError as e:
            if time.monotonic() > deadline:
                nginx.stop()
                raise RuntimeError("nginx did not listen within 30 s") from e
            time.sleep(0.05)
