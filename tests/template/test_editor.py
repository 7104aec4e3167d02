"""Editors agree with `treadle validate`: the real yaml-language-server, over LSP on stdio, on the template.

The server (npm ``yaml-language-server``, see tests/support/npm_tools.py) gets the
template's shipped ``.vscode/settings.json`` and the schemas written by
``treadle schema export``. The files' ``$schema`` modelines name the
published URL; the test points them at the exported copies (the server must
not reach the network), then opens every YAML file of the template and
collects what the server publishes. The template is valid, so there must be
no diagnostic at all: no "Unresolved tag" for the merge tags, no schema error
for the null that ``!delete`` loads as. Two controls show the check can fail:
without the setting the merge tags are flagged, and a misspelt field is.
"""

from __future__ import annotations

import json
import queue
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import treadle_schemas
from support import copy_template
from support.npm_tools import npm_package
from treadle.cli import main


class LanguageServer:
    """yaml-language-server over stdio: JSON-RPC messages framed by Content-Length headers."""

    def __init__(self, root: Path, settings: dict[str, Any]) -> None:
        node = shutil.which("node")
        assert node is not None, "node is not installed: run .ci/install-deps"
        server = npm_package("yaml-language-server") / "bin" / "yaml-language-server"
        self.proc = subprocess.Popen(
            [node, str(server), "--stdio"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            cwd=root,
        )
        self.messages: queue.Queue[dict[str, Any]] = queue.Queue()
        self.settings, self.next_id = settings, 0
        threading.Thread(target=self._read, daemon=True).start()
        self.request(
            "initialize",
            {
                "processId": None,
                "rootUri": root.as_uri(),
                "capabilities": {
                    "workspace": {"configuration": True},
                    "textDocument": {"publishDiagnostics": {}},
                },
            },
        )
        self.notify("initialized", {})
        self.notify("workspace/didChangeConfiguration", {"settings": settings})

    def _read(self) -> None:
        out = self.proc.stdout
        assert out is not None
        while True:
            length = None
            while True:
                line = out.readline()
                if not line:
                    return
                if line in (b"\r\n", b"\n"):
                    break
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            assert length is not None
            self.messages.put(json.loads(out.read(length)))

    def _send(self, message: dict[str, Any]) -> None:
        body = json.dumps({"jsonrpc": "2.0", **message}).encode()
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)
        self.proc.stdin.flush()

    def notify(self, method: str, params: Any) -> None:
        self._send({"method": method, "params": params})

    def request(self, method: str, params: Any) -> Any:
        self.next_id += 1
        self._send({"id": self.next_id, "method": method, "params": params})
        return self.wait(lambda m: m.get("id") == self.next_id and "method" not in m)["result"]

    def wait(self, want, timeout_s: float = 60) -> dict[str, Any]:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            assert remaining > 0, "the language server did not answer in time"
            m = self.messages.get(timeout=remaining)
            if (
                "method" in m and "id" in m
            ):  # a request from the server: configuration, capability registration...
                result: Any = None
                if m["method"] == "workspace/configuration":
                    result = [self._section(item.get("section")) for item in m["params"]["items"]]
                self._send({"id": m["id"], "result": result})
                continue
            if want(m):
                return m

    def _section(self, section: str | None) -> Any:
        value: Any = self.settings
        for part in (section or "").split("."):
            if part:
                value = value.get(part) if isinstance(value, dict) else None
        return value

    def diagnostics(self, path: Path) -> list[dict[str, Any]]:
        uri = path.as_uri()
        self.notify(
            "textDocument/didOpen",
            {
                "textDocument": {
                    "uri": uri,
                    "languageId": "yaml",
                    "version": 1,
                    "text": path.read_text(),
                }
            },
        )
        m = self.wait(
            lambda m: (
                m.get("method") == "textDocument/publishDiagnostics" and m["params"]["uri"] == uri
            )
        )
        return list(m["params"]["diagnostics"])

    def close(self) -> None:
        try:
            self.request("shutdown", None)
            self.notify("exit", None)
            self.proc.wait(timeout=10)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()


def vscode_settings(root: Path) -> dict[str, Any]:
    """The template's .vscode/settings.json as the nested settings object a client sends ("yaml.x" -> yaml: {x})."""
    flat = json.loads((root / ".vscode" / "settings.json").read_text())
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        section, _, name = key.partition(".")
        nested.setdefault(section, {})[name] = value
    nested["yaml"].update({"validate": True, "schemaStore": {"enable": False}})
    return nested


def template_with_local_schemas(tmp_path: Path) -> Path:
    root = tmp_path / "fabric"
    copy_template(root)
    schemas = tmp_path / "schemas"
    assert main(["schema", "export", str(schemas)]) == 0
    for path in root.rglob("*.yaml"):
        text = path.read_text()
        assert treadle_schemas.BASE_URI in text.splitlines()[0], path
        path.write_text(text.replace(treadle_schemas.BASE_URI, schemas.as_uri() + "/", 1))
    return root


def yaml_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.yaml") if ".github" not in p.parts)


def test_the_language_server_with_the_shipped_settings_reports_nothing_on_the_template(
    tmp_path: Path,
) -> None:
    root = template_with_local_schemas(tmp_path)
    extra = root / "sites" / "meyrin" / "batch" / "nodes" / "batch-009.yaml"
    first = extra.parent.joinpath("batch-001.yaml").read_text()
    extra.write_text(
        first.replace("address: 192.0.2.11", "address: 192.0.2.99").replace(
            "labels:\n", "labels: !replace\n", 1
        )
        + "files:\n  /etc/motd: !delete\n"
    )
    assert main(["validate", str(root)]) == 0  # the same files are valid for treadle
    server = LanguageServer(root, vscode_settings(root))
    try:
        found = {str(p.relative_to(root)): server.diagnostics(p) for p in yaml_files(root)}
    finally:
        server.close()
    tagged = [
        p
        for p in found
        if "!delete" in (root / p).read_text() or "!append" in (root / p).read_text()
    ]
    assert len(found) > 15 and len(tagged) >= 4
    assert {p: d for p, d in found.items() if d} == {}, json.dumps(
        {p: d for p, d in found.items() if d}, indent=1
    )[:3000]


def test_without_the_setting_the_merge_tags_are_flagged_and_a_misspelt_field_is_always(
    tmp_path: Path,
) -> None:
    root = template_with_local_schemas(tmp_path)
    node = root / "sites" / "meyrin" / "login" / "nodes" / "login-002.yaml"
    assert "!delete" in node.read_text()
    misspelt = root / "sites" / "meyrin" / "login" / "nodes" / "login-001.yaml"
    misspelt.write_text(misspelt.read_text() + "packges: {}\n")
    settings = vscode_settings(root)
    del settings["yaml"]["customTags"]
    server = LanguageServer(root, settings)
    try:
        tags = [d["message"] for d in server.diagnostics(node)]
        field = [d["message"] for d in server.diagnostics(misspelt)]
    finally:
        server.close()
    assert any("Unresolved tag: !delete" in m for m in tags), tags
    assert any("packges" in m for m in field), field
