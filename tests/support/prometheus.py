"""A real Prometheus server on loopback, for the observability tests.

The scrape config is derived from the shipped example
(observability/prometheus/prometheus.yml), so the tests exercise its job
names and service discovery: only intervals, paths and the controller's
address are changed. Prometheus reads JSON as YAML, so the derived config is
written as JSON.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from ruamel.yaml import YAML

from support import REPO  # noqa: E402
from support.net import free_port  # noqa: F401 (the observability tests import it from here)

PROMETHEUS_DIR = REPO / "observability" / "prometheus"
RULE_FILES = (PROMETHEUS_DIR / "recording-rules.yml", PROMETHEUS_DIR / "alert-rules.yml")
EXAMPLE_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
INSTALL_HINT = "install Debian's `prometheus` package (listed in .ci/apt-packages)"


class PrometheusError(RuntimeError):
    """Prometheus did not start, or answered a query with an error."""


def binary(name: str) -> str:
    """Path of ``prometheus`` or ``promtool``.

    Raises:
        PrometheusError: not installed.
    """
    path = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
    if path is None:
        raise PrometheusError(f"{name} not found on PATH; {INSTALL_HINT}")
    return path


def derived_config(controller: str, targets_file: Path, interval_s: int = 1) -> dict[str, Any]:
    """The example config with test intervals, absolute rule paths and the test's targets."""
    config = YAML(typ="safe").load(EXAMPLE_CONFIG.read_text())
    config["global"].update(
        scrape_interval=f"{interval_s}s",
        scrape_timeout=f"{interval_s}s",
        evaluation_interval=f"{interval_s}s",
    )
    config["rule_files"] = [str(p) for p in RULE_FILES]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    jobs["treadle-controller"]["static_configs"] = [{"targets": [controller]}]
    jobs["treadle-agents"]["file_sd_configs"] = [
        {"files": [str(targets_file)], "refresh_interval": f"{interval_s}s"}
    ]
    return config


@dataclass
class PrometheusServer:
    """One running Prometheus process and its HTTP API."""

    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    @classmethod
    def start(
        cls, workdir: Path, config: dict[str, Any], port: int, timeout_s: float = 30
    ) -> PrometheusServer:
        """Start Prometheus with ``config`` on 127.0.0.1:``port`` and wait until it is ready.

        Raises:
            PrometheusError: not installed, exited, or not ready in time.
        """
        workdir.mkdir(parents=True, exist_ok=True)
        config_path = workdir / "prometheus.yml"
        config_path.write_text(json.dumps(config, indent=2))
        log_path = workdir / "prometheus.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [
                    binary("prometheus"),
                    f"--config.file={config_path}",
                    f"--storage.tsdb.path={workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        server = cls(f"http://127.0.0.1:{port}", process, log_path)
        try:
            server.wait_for(server._ready, timeout_s, "ready")
        except PrometheusError:
            server.stop()
            raise
        return server

    def _ready(self) -> bool:
        if self.process.poll() is not None:
            raise PrometheusError(
                f"prometheus exited with {self.process.returncode}:\n{self.log_path.read_text()}"
            )
        try:
            return httpx.get(f"{self.url}/-/ready", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def wait_for(self, condition: Callable[[], bool], timeout_s: float, what: str) -> None:
        """Poll ``condition`` until true.

        Raises:
            PrometheusError: still false after ``timeout_s``.
        """
        deadline = time.monotonic() + timeout_s
        while not condition():
            if time.monotonic() > deadline:
                raise PrometheusError(
                    f"timed out after {timeout_s}s waiting for {what}; log: {self.log_path}"
                )
            time.sleep(0.25)

    def api(self, path: str, **params: str) -> dict[str, Any]:
        """GET /api/v1/<path>; the ``data`` of a successful answer.

        Raises:
            PrometheusError: an HTTP error or an error status (e.g. a PromQL parse error).
        """
        try:
            body = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=10).json()
        except (httpx.HTTPError, ValueError) as e:
            raise PrometheusError(f"{path} {params}: {e}") from e
        if body.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> dict[str, Any]:
        """An instant query: {"resultType": ..., "result": ...}."""
        return self.api("query", query=expr)

    def vector(self, expr: str) -> list[dict[str, Any]]:
        data = self.query(expr)
        if data["resultType"] != "vector":
            raise PrometheusError(f"{expr}: a {data['resultType']}, not a vector")
        return data["result"]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
