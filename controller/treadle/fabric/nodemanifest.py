"""A node's merged overlay body turned into its NodeManifest (schemas/manifest.json).

Every field is always present (null or [] when unset) so that the agent and
the digest never depend on which level happened to spell a default out.
Modes are four octal digits ("644" -> "0644"), sysctl values strings, health
timeouts integers; resources come in treadle_agent.contract.manifest.sort_resources
order and health checks by name. File content is the rendered template or
``content``; an absent file or symlink carries no content, digest or target.

Problems found while building (a file with both or neither template and
content, a health check with no type...) are returned with the key path that
caused them; the renderer locates them in the overlay that set that path.
"""

from __future__ import annotations

import base64
import hashlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from treadle.fabric.canonical import (
    FILE_CLOSE,
    FILE_OPEN,
    KIND_KEY,
    MANIFEST_HEAD,
    encode_canonical,
    encode_str,
)
from treadle.fabric.secrets import Secret, SecretFileError, recipients_path
from treadle.fabric.templates import TemplateProblem
from treadle_agent.contract.manifest import API_VERSION, KIND, canonical_json

HEALTH_TYPES = ("tcp", "http", "service", "file", "command")
DEFAULT_HEALTH_TIMEOUT_S = 5


@dataclass(frozen=True, slots=True)
class BuildProblem:
    """A problem in the merged body at ``keypath`` (located later through the overlay chain)."""

    keypath: tuple[Any, ...]
    code: str
    message: str
    hint: str = ""
    at: tuple[str, int] | None = (
        None  # a direct location (template file, line) instead of a key path
    )


def normalize_mode(mode: Any) -> str | None:
    """``"644"`` -> ``"0644"``; None stays None (the schema already refused other shapes)."""
    if mode is None:
        return None
    return str(mode).lstrip("0").zfill(4)


class Memo:
    """Resources and their canonical bytes, shared between the nodes of one render.

    The copy-on-write merge hands every node of a cluster the *same* section
    objects unless the node overrides them, so resources are built once per
    distinct section (or file spec and content) and encoded once; a node's
    manifest is then assembled from shared parts. Entries keep their keys'
    objects alive, so an ``id`` is never reused while it is a key here.
    """

    def __init__(self) -> None:
        self._sections: dict[
            tuple[str, int], tuple[Any, list[dict[str, Any]], list[BuildProblem]]
        ] = {}
        self._files: dict[tuple[str, int, str | None], tuple[Any, dict[str, Any]]] = {}
        self._encoded: dict[int, tuple[Any, bytes]] = {}
        self._file_parts: dict[tuple[str, int], tuple[Any, dict[str, Any], bytes | None]] = {}
        self._lists: dict[int, tuple[Any, bytes]] = {}
        self._parts: dict[int, tuple[Any, tuple[list[dict[str, Any]], ...], int]] = {}

    def section(
        self,
        name: str,
        value: Any,
        build: Callable[[Any, list[BuildProblem]], list[dict[str, Any]]],
        problems: list[BuildProblem],
    ) -> list[dict[str, Any]]:
        key = (name, id(value))
        hit = self._sections.get(key)
        if hit is None or hit[0] is not value:
            found: list[BuildProblem] = []
            hit = self._sections[key] = (value, build(value, found), found)
        problems += hit[2]
        return hit[1]

    def file(self, path: str, spec: Any, content: str | None) -> dict[str, Any]:
        key = (path, id(spec), content)
        hit = self._files.get(key)
        if hit is None or hit[0] is not spec:
            bare, middle = self._file_shape(path, spec)
            sha = (
                hashlib.sha256(content.encode("utf-8")).hexdigest() if content is not None else None
            )
            resource = {**bare, "content": content, "sha256": sha}
            hit = self._files[key] = (spec, resource)
            if middle is not None and content is not None:
                self._encode_file(resource, content, sha, middle)  # type: ignore[arg-type]
        return hit[1]

    def _file_shape(self, path: str, spec: Any) -> tuple[dict[str, Any], bytes | None]:
        """The file resource of ``spec`` without content, and its canonical bytes between content and sha256.

        Most file resources are one template rendered per node: every field
        but content and sha256 is the same for all of them, so those fields
        are built and encoded once per spec, and only the content per node.
        The bytes are None when the encoding does not have the expected shape
        (the resource is then encoded whole, later).
        """
        key = (path, id(spec))
        hit = self._file_parts.get(key)
        if hit is None or hit[0] is not spec:
            bare = _file_resource(path, spec, None)
            encoded = encode_canonical(bare)
            usable = (
                encoded.startswith(FILE_OPEN)
                and encoded.endswith(FILE_CLOSE)
                and encoded.count(b'"content":') == 1
            )
            hit = self._file_parts[key] = (
                spec,
                bare,
                encoded[len(FILE_OPEN) : -len(FILE_CLOSE)] if usable else None,
            )
        return hit[1], hit[2]

    def _encode_file(self, resource: dict[str, Any], content: Any, sha: str, middle: bytes) -> None:
        """Pre-encode a file resource from its spec's bytes and its content (text only; anything else is encoded whole)."""
        if type(content) is not str:
            return
        try:
            text = encode_str(content).encode("utf-8")
        except UnicodeEncodeError:
            return  # a lone surrogate: canonical_json reports it when the manifest is encoded
        encoded = b"".join(
            (b'{"content":', text, middle, b',"sha256":"', sha.encode("ascii"), b'","type":"file"}')
        )
        self._encoded[id(resource)] = (resource, encoded)

    def resources(self, parts: tuple[list[dict[str, Any]], ...], own: int) -> list[dict[str, Any]]:
        """``parts`` joined into one resource list, remembered so that it is encoded section by section.

        Every part but ``parts[own]`` (the node's files) is a section list
        shared between nodes, whose bytes are joined once per render.
        """
        resources = [r for part in parts for r in part]
        self._parts[id(resources)] = (resources, parts, own)
        return resources

    def encoded(self, value: Any) -> bytes:
        """``canonical_json(value)``, once per shared object."""
        hit = self._encoded.get(id(value))
        if hit is None or hit[0] is not value:
            hit = self._encoded[id(value)] = (value, encode_canonical(value))
        return hit[1]

    def encoded_items(self, items: list[Any]) -> bytes:
        """The canonical items of a list joined by commas (the list's bytes without brackets)."""
        hit = self._parts.get(id(items))
        if hit is None or hit[0] is not items:
            return b",".join(self.encoded(r) for r in items)
        _, parts, own = hit
        joined = (
            b",".join(self.encoded(r) for r in part) if i == own else self._joined(part)
            for i, part in enumerate(parts)
        )
        return b",".join(b for b in joined if b)

    def _joined(self, items: list[Any]) -> bytes:
        """``encoded_items`` of a shared section list, once per list."""
        hit = self._lists.get(id(items))
        if hit is None or hit[0] is not items:
            hit = self._lists[id(items)] = (items, b",".join(self.encoded(r) for r in items))
        return hit[1]


def canonical_manifest(manifest: Mapping[str, Any], memo: Memo) -> bytes:
    """``canonical_json(manifest)``, assembled from the memo's encoded resources.

    Canonical JSON of a map is its sorted members joined, of a list its items
    joined, so the bytes equal ``canonical_json(manifest)`` exactly
    (tests/fabric/test_render.py pins it) while shared resources are encoded
    once per render instead of once per node.
    """
    if manifest["apiVersion"] != API_VERSION or manifest["kind"] != KIND:
        return canonical_json(manifest)
    return b"".join(
        (
            MANIFEST_HEAD,
            memo.encoded(manifest["health"]),
            KIND_KEY,
            encode_canonical(manifest["metadata"]),
            b',"resources":[',
            memo.encoded_items(manifest["resources"]),
            b"]}",
        )
    )


_EMPTY: dict[str, Any] = {}


def build_manifest(
    identity: Mapping[str, Any],
    fabric_name: str,
    body: Mapping[str, Any],
    render: Callable[[str], str],
    problems: list[BuildProblem],
    memo: Memo | None = None,
    secret: Callable[[str], Secret] | None = None,
) -> dict[str, Any]:
    """The manifest of one node. ``render(template_name)`` renders a template for this node.

    ``secret(name)`` reads a ciphertext and its recipients (raising
    SecretFileError); a secret file is refused unless the node's ``identity``
    is among its recipients.

    Resources are built in apply order (type, then key), which is
    ``sort_resources`` order by construction.
    """
    memo = memo or Memo()
    parts = (
        memo.section("directories", body.get("directories") or _EMPTY, _directories, problems),
        _files(
            body.get("files") or _EMPTY, render, problems, memo, secret, identity.get("identity")
        ),
        memo.section("symlinks", body.get("symlinks") or _EMPTY, _symlinks, problems),
        memo.section("packages", body.get("packages") or _EMPTY, _packages, problems),
        memo.section("sysctl", body.get("sysctl") or _EMPTY, _sysctls, problems),
        memo.section("services", body.get("services") or _EMPTY, _services, problems),
    )
    resources = memo.resources(parts, 1)
    health = memo.section("health", body.get("health") or _EMPTY, _healths, problems)
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            "node": identity["name"],
            "site": identity["site"],
            "cluster": identity["cluster"],
            "address": identity["address"],
            "fabric": fabric_name,
            "generation": 0,
            "commit": identity["commit"],
            "issued": None,
            "expires": None,
            "lifecycle": identity["lifecycle"],
            "labels": dict(identity["labels"]),
            "wave": None,
        },
        "resources": resources,
        "health": health,
    }


def _directories(section: Mapping[str, Any], problems: list[BuildProblem]) -> list[dict[str, Any]]:
    return [_directory(p, s) for p, s in sorted(section.items())]


def _symlinks(section: Mapping[str, Any], problems: list[BuildProblem]) -> list[dict[str, Any]]:
    return [_symlink(p, s, problems) for p, s in sorted(section.items())]


def _packages(section: Mapping[str, Any], problems: list[BuildProblem]) -> list[dict[str, Any]]:
    return [_package(n, s) for n, s in sorted(section.items())]


def _sysctls(section: Mapping[str, Any], problems: list[BuildProblem]) -> list[dict[str, Any]]:
    return [
        {"type": "sysctl", "key": k, "value": str(v), "requires": []}
        for k, v in sorted(section.items())
    ]


def _services(section: Mapping[str, Any], problems: list[BuildProblem]) -> list[dict[str, Any]]:
    return [_service(n, s) for n, s in sorted(section.items())]


def _healths(section: Mapping[str, Any], problems: list[BuildProblem]) -> list[dict[str, Any]]:
    return [h for n, s in sorted(section.items()) if (h := _health(n, s, problems)) is not None]


def _files(
    section: Mapping[str, Any],
    render: Callable[[str], str],
    problems: list[BuildProblem],
    memo: Memo,
    secret: Callable[[str], Secret] | None = None,
    node_identity: str | None = None,
) -> list[dict[str, Any]]:
    out = []
    for path, spec in sorted(section.items()):
        if "secret" in spec and spec.get("ensure", "present") == "present":
            resource = _secret_file(path, spec, secret, node_identity, problems)
            out += [resource] if resource is not None else []
            continue
        ok, content = _file_content(path, spec, render, problems)
        if ok:
            out.append(memo.file(path, spec, content))
    return out


def _secret_file(
    path: str,
    spec: Mapping[str, Any],
    secret: Callable[[str], Secret] | None,
    node_identity: str | None,
    problems: list[BuildProblem],
) -> dict[str, Any] | None:
    """The resource of a secret file: the ciphertext, refused unless this node is one of its recipients."""
    name, at = spec["secret"], ("files", path, "secret")
    if "template" in spec or "content" in spec:
        problems.append(
            BuildProblem(
                at,
                "file-content",
                f"file {path} has a secret and a template or content after merging",
                "keep one: set the others to !delete in the overlay that overrides them",
            )
        )
        return None
    if secret is None:
        problems.append(BuildProblem(at, "secret", f"file {path}: secrets cannot be read here"))
        return None
    try:
        found = secret(name)
    except SecretFileError as e:
        problems.append(
            BuildProblem(at, "secret", f"{e.path}:{max(e.line, 1)}: {e.message}", e.hint)
        )
        return None
    if node_identity is None:
        problems.append(
            BuildProblem(
                at,
                "secret",
                f"file {path} is a secret, and this node has no identity to decrypt it",
                "run treadle-agent enroll on the node and record what it prints as identity: "
                "in its node file, then treadle secret rekey",
            )
        )
        return None
    if node_identity not in found.recipients:
        problems.append(
            BuildProblem(
                at,
                "secret",
                f"{name} is not encrypted to this node's identity {node_identity} "
                f"(not in {recipients_path(name)})",
                f"run treadle secret rekey {name}",
            )
        )
        return None
    box = found.ciphertext
    return {
        "type": "file",
        "path": path,
        "ensure": "present",
        "content": None,
        "sha256": None,
        "secret": {
            "age": base64.b64encode(box).decode("ascii"),
            "sha256": hashlib.sha256(box).hexdigest(),
        },
        "mode": normalize_mode(spec.get("mode")) or "0600",
        "owner": spec.get("owner"),
        "group": spec.get("group"),
        "notify": sorted(set(spec.get("notify") or [])),
        "requires": _requires(spec),
    }


def _requires(spec: Mapping[str, Any]) -> list[str]:
    return list(spec.get("requires") or [])


def _directory(path: str, spec: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "type": "directory",
        "path": path,
        "ensure": spec.get("ensure", "present"),
        "mode": normalize_mode(spec.get("mode")),
        "owner": spec.get("owner"),
        "group": spec.get("group"),
        "requires": _requires(spec),
    }


def _file_content(
    path: str, spec: Mapping[str, Any], render: Callable[[str], str], problems: list[BuildProblem]
) -> tuple[bool, str | None]:
    """(usable, content): the rendered template or ``content`` of a present file, None for an absent one."""
    if spec.get("ensure", "present") != "present":
        return True, None
    has_template, has_content = "template" in spec, "content" in spec
    if has_template and has_content:
        problems.append(
            BuildProblem(
                ("files", path, "content"),
                "file-content",
                f"file {path} has both template and content after merging",
                "keep one: set the other to !delete in the overlay that overrides it",
            )
        )
        return False, None
    if not has_template and not has_content:
        problems.append(
            BuildProblem(
                ("files", path),
                "file-content",
                f"file {path} has neither template nor content",
                'add template: <name>.j2 or content: "..." (content: "" for an empty file)',
            )
        )
        return False, None
    if not has_template:
        return True, spec["content"]
    try:
        return True, render(spec["template"])
    except TemplateProblem as e:
        at = None if e.line == 0 else (e.path, e.line)
        code = "unknown-template" if e.line == 0 else "template"
        problems.append(BuildProblem(("files", path, "template"), code, e.message, e.hint, at))
        return False, None


def _file_resource(path: str, spec: Mapping[str, Any], content: str | None) -> dict[str, Any]:
    sha = hashlib.sha256(content.encode("utf-8")).hexdigest() if content is not None else None
    return {
        "type": "file",
        "path": path,
        "ensure": spec.get("ensure", "present"),
        "content": content,
        "sha256": sha,
        "mode": normalize_mode(spec.get("mode")),
        "owner": spec.get("owner"),
        "group": spec.get("group"),
        "notify": sorted(set(spec.get("notify") or [])),
        "requires": _requires(spec),
    }


def _symlink(path: str, spec: Mapping[str, Any], problems: list[BuildProblem]) -> dict[str, Any]:
    ensure = spec.get("ensure", "present")
    target = spec.get("target") if ensure == "present" else None
    if ensure == "present" and not target:
        problems.append(
            BuildProblem(
                ("symlinks", path),
                "symlink-target",
                f"symlink {path} has no target",
                "add target: /path/it/points/to, or ensure: absent",
            )
        )
    return {
        "type": "symlink",
        "path": path,
        "ensure": ensure,
        "target": target,
        "requires": _requires(spec),
    }


def _package(name: str, spec: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "type": "package",
        "name": name,
        "ensure": spec.get("ensure", "present"),
        "version": spec.get("version"),
        "requires": _requires(spec),
    }


def _service(name: str, spec: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "type": "service",
        "name": name,
        "enabled": spec.get("enabled"),
        "state": spec.get("state"),
        "requires": _requires(spec),
    }


def _health(
    name: str, spec: Mapping[str, Any], problems: list[BuildProblem]
) -> dict[str, Any] | None:
    kinds = [k for k in HEALTH_TYPES if k in spec]
    if len(kinds) != 1:
        problems.append(
            BuildProblem(
                ("health", name),
                "health",
                f"health check {name!r} needs exactly one of "
                f"{', '.join(HEALTH_TYPES)}, has {', '.join(kinds) or 'none'}",
                "e.g. sshd: {tcp: 22} or chrony: {service: chronyd}",
            )
        )
        return None
    kind = kinds[0]
    check: dict[str, Any] = {
        "name": name,
        "type": kind,
        "timeout_s": max(1, math.ceil(spec.get("timeout_s", DEFAULT_HEALTH_TIMEOUT_S))),
    }
    if kind == "tcp":
        check.update(port=spec["tcp"], host=spec.get("host", "127.0.0.1"))
    elif kind == "http":
        check.update(url=spec["http"], status=spec.get("status", 200))
    elif kind == "service":
        check["service"] = spec["service"]
    elif kind == "file":
        check["path"] = spec["file"]
    else:
        check["argv"] = list(spec["command"])
    return check
