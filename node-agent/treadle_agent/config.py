"""agent.toml: read, validated against ``schemas/agent-config.json``, turned into frozen settings.

The schema is the one source of truth for the keys, types and defaults; this
module adds what a schema cannot say (the trust root must exist, a port must
fit in 16 bits) and resolves relative paths against the directory of the
config file, so a node's config can ship together with its trust root.
Every error names the file, the key and the fix.

The schema is checked by :func:`schema_errors`, a small interpreter of the
keywords it uses, not by jsonschema-rs: the agent's start-up cost counts in
every ``treadle-agent once`` (see that function).

Raises:
    ConfigError: the file is missing, not TOML, breaks the schema, or names a
        trust root that does not exist.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from treadle_agent.errors import ConfigError

SCHEMA = "agent-config.json"


@dataclass(frozen=True, slots=True)
class FetchSettings:
    """How manifests are fetched; see fetch.py."""

    manifest_urls: tuple[str, ...]  # tried in order, ``{node}`` already replaced
    connect_timeout_s: float
    read_timeout_s: float
    deadline_s: float  # whole request, headers and body; a trickling server is cut off
    max_manifest_bytes: int
    retries: int  # extra rounds over all URLs after the first
    backoff_base_s: float
    backoff_max_s: float


@dataclass(frozen=True, slots=True)
class LoopSettings:
    interval_s: float
    jitter_s: float  # a uniform random extra delay in [0, jitter_s] spreads a fleet's requests


@dataclass(frozen=True, slots=True)
class HostSettings:
    """What the host boundary needs (host.py): where to apply and which managers to use."""

    root: Path
    package_manager: str  # auto | apt | dnf | none
    service_manager: str  # auto | systemd | none
    sysctl_dir: str
    proc_sys: str


@dataclass(frozen=True, slots=True)
class MetricsSettings:
    host: str
    port: int  # 0 picks a free port (tests); the bound port is logged


@dataclass(frozen=True, slots=True)
class AgentConfig:
    path: Path  # the agent.toml this came from, for messages
    node: str
    trust_root: Path
    state_dir: Path
    drift_policy: str  # heal | report
    fetch: FetchSettings
    loop: LoopSettings
    host: HostSettings
    metrics: MetricsSettings

    @property
    def root(self) -> Path:
        return self.host.root


def load(path: str | Path) -> AgentConfig:
    """Read and validate agent.toml at ``path``.

    Raises:
        ConfigError: see the module docstring.
    """
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ConfigError(f"{path}: no such file (fix: pass --config with the path of agent.toml)") from e
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read: {e}") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e} (fix: correct the syntax at that line)") from e
    return from_dict(raw, path)


def from_dict(raw: dict[str, Any], path: Path) -> AgentConfig:
    """Settings from an already parsed agent.toml (``path`` only for messages and relative paths).

    Raises:
        ConfigError: see the module docstring.
    """
    _check_schema(raw, path)
    doc = {**_defaults(), **raw}
    base = path.parent
    trust_root = _resolve(base, doc["trust_root"])
    if not trust_root.is_file():
        raise ConfigError(
            f"{path}: trust_root: {trust_root} does not exist "
            "(fix: point trust_root at the trust-root.json written by `treadle keys generate DIR`)"
        )
    node = doc["node"]
    return AgentConfig(
        path=path,
        node=node,
        trust_root=trust_root,
        state_dir=_resolve(base, doc["state_dir"]),
        drift_policy=doc["drift_policy"],
        fetch=FetchSettings(
            manifest_urls=tuple(u.replace("{node}", node) for u in doc["manifest_urls"]),
            connect_timeout_s=float(doc["connect_timeout_s"]),
            read_timeout_s=float(doc["read_timeout_s"]),
            deadline_s=float(doc["fetch_deadline_s"]),
            max_manifest_bytes=int(doc["max_manifest_bytes"]),
            retries=int(doc["retries"]),
            backoff_base_s=float(doc["backoff_base_s"]),
            backoff_max_s=float(doc["backoff_max_s"]),
        ),
        loop=LoopSettings(interval_s=float(doc["interval_s"]), jitter_s=float(doc["jitter_s"])),
        host=HostSettings(
            root=_resolve(base, doc["root"]),
            package_manager=doc["package_manager"],
            service_manager=doc["service_manager"],
            sysctl_dir=doc["sysctl_dir"],
            proc_sys=doc["proc_sys"],
        ),
        metrics=_listen(doc["metrics_listen"], path),
    )


@functools.cache
def _schema() -> dict[str, Any]:
    """schemas/agent-config.json, read from the installed treadle_schemas package.

    Read as a file next to the package rather than through ``treadle_schemas.load``:
    importing that package loads jsonschema-rs, which the config check avoids
    (see :func:`schema_errors`).
    """
    spec = importlib.util.find_spec("treadle_schemas")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("the treadle_schemas package is not installed (fix: reinstall treadle)")
    location = Path(next(iter(spec.submodule_search_locations)))
    return json.loads((location / SCHEMA).read_text(encoding="utf-8"))


def _defaults() -> dict[str, Any]:
    return {k: p["default"] for k, p in _schema()["properties"].items() if "default" in p}


def _check_schema(raw: dict[str, Any], path: Path) -> None:
    schema = _schema()
    known = schema["properties"]
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ConfigError(
            f"{path}: unknown key {unknown[0]!r} (fix: remove it or correct its spelling; known keys: {', '.join(sorted(known))})"
        )
    missing = [k for k in schema["required"] if k not in raw]
    if missing:
        raise ConfigError(f"{path}: missing key {missing[0]!r} (fix: add `{missing[0]} = ...`; {_describe(known[missing[0]])})")
    errors = schema_errors(schema, raw)
    if errors:
        where, message = errors[0]
        key = str(where[0]) if where else "(top level)"
        sub = "".join(f"[{p}]" for p in where[1:])
        raise ConfigError(f"{path}: key {key!r}{sub}: {message} (fix: {_describe(known.get(key, {}))})")


#: The JSON Schema keywords :func:`schema_errors` implements; a schema using any
#: other validation keyword is refused, so the schema cannot outgrow this check.
SUPPORTED_KEYWORDS = frozenset({
    "$schema", "$id", "title", "description", "default",  # annotations
    "type", "enum", "const", "minimum", "exclusiveMinimum", "maximum", "minLength", "pattern",
    "minItems", "items", "properties", "required", "additionalProperties",
})
_TYPES: dict[str, Any] = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: type(v) is int or (type(v) is float and v.is_integer()),
    "number": lambda v: type(v) in (int, float),
    "boolean": lambda v: type(v) is bool,
    "array": lambda v: isinstance(v, list),
    "object": lambda v: isinstance(v, dict),
}


def schema_errors(schema: dict[str, Any], value: Any, where: tuple[str | int, ...] = ()) -> list[tuple[tuple[str | int, ...], str]]:
    """Violations of ``schema`` by ``value``, for the keyword subset agent-config.json uses.

    The agent validates its config with this rather than jsonschema-rs: that
    library costs a ``treadle-agent once`` about 9 MB and 40 ms, a fifth of
    its memory budget, for twenty keys. tests/agent/test_config.py checks
    that the two agree on generated configs.

    Raises:
        ValueError: the schema uses a keyword outside :data:`SUPPORTED_KEYWORDS`.
    """
    extra = set(schema) - SUPPORTED_KEYWORDS
    if extra:
        raise ValueError(f"agent config schema keyword(s) {sorted(extra)} are not supported by config.schema_errors")
    t = schema.get("type")
    if t is not None and not _TYPES[t](value):
        return [(where, f"{value!r} is not of type {t!r}")]
    checks = (
        ("enum", lambda e: value in e and all(type(value) is type(x) for x in e if x == value), lambda e: f"{value!r} is not one of {e!r}"),
        ("const", lambda c: value == c, lambda c: f"{value!r} is not {c!r}"),
        ("minimum", lambda m: value >= m, lambda m: f"{value!r} is less than the minimum of {m}"),
        ("exclusiveMinimum", lambda m: value > m, lambda m: f"{value!r} is less than or equal to the minimum of {m}"),
        ("maximum", lambda m: value <= m, lambda m: f"{value!r} is greater than the maximum of {m}"),
        ("minLength", lambda n: len(value) >= n, lambda n: f"{value!r} is shorter than {n} characters"),
        ("pattern", lambda p: re.search(p, value) is not None, lambda p: f"{value!r} does not match {p!r}"),
        ("minItems", lambda n: len(value) >= n, lambda n: f"{value!r} has fewer than {n} items"),
    )
    numeric = type(value) in (int, float)
    for keyword, ok, message in checks:
        if keyword not in schema:
            continue
        if keyword in ("minimum", "exclusiveMinimum", "maximum") and not numeric:
            continue
        if keyword in ("minLength", "pattern") and not isinstance(value, str):
            continue
        if keyword == "minItems" and not isinstance(value, list):
            continue
        if not ok(schema[keyword]):
            return [(where, message(schema[keyword]))]
    errors: list[tuple[tuple[str | int, ...], str]] = []
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            errors += schema_errors(schema["items"], item, (*where, i))
    if isinstance(value, dict):
        props = schema.get("properties", {})
        errors += [(where, f"{k!r} is a required property") for k in schema.get("required", ()) if k not in value]
        if schema.get("additionalProperties") is False:
            errors += [(where, f"additional property {k!r} is not allowed") for k in value if k not in props]
        for k, v in value.items():
            if k in props:
                errors += schema_errors(props[k], v, (*where, k))
    return errors


def _describe(prop: dict[str, Any]) -> str:
    """A one-line fix hint from a schema property: its allowed values, bounds, default and meaning."""
    hints = []
    if "enum" in prop:
        hints.append("use one of " + ", ".join(repr(v) for v in prop["enum"]))
    elif "type" in prop:
        hints.append(f"a {prop['type']}")
    for bound, text in (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<=")):
        if bound in prop:
            hints.append(f"{text} {prop[bound]}")
    if "pattern" in prop:
        hints.append(f"matching {prop['pattern']}")
    if "default" in prop:
        hints.append(f"default {prop['default']!r}")
    if "description" in prop:
        hints.append(prop["description"].rstrip("."))
    return "; ".join(hints) or "see schemas/agent-config.json"


def _resolve(base: Path, value: str) -> Path:
    p = Path(value)
    return p if p.is_absolute() else (base / p).resolve()


def _listen(value: str, path: Path) -> MetricsSettings:
    host, _, port = value.rpartition(":")
    if int(port) > 65535:
        raise ConfigError(f"{path}: key 'metrics_listen': port {port} is above 65535 (fix: use a port in 0..65535, e.g. 127.0.0.1:9731)")
    return MetricsSettings(host=host or "0.0.0.0", port=int(port))
