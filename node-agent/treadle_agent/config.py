"""agent.toml: read, validated against ``schemas/agent-config.json``, turned into frozen settings.

The schema is the one source of truth for the keys, types and defaults, and
it is checked by the real validator (``treadle_schemas.errors``, jsonschema-rs);
this module adds what a schema cannot say (the trust root must exist, a port
must fit in 16 bits) and resolves relative paths against the directory of the
config file, so a node's config can ship together with its trust root.
Every error names the file, the key and the fix; all schema errors are
reported, one line each.

Loading jsonschema-rs costs about 12 MB and 20 ms, which every
``treadle-agent once`` would pay for a file that rarely changes. So, as the
agent does for a stored manifest (verify.py, ``Verifier.restore``), a
validation is remembered: after one succeeds, the state dir gets

    <state_dir>/config-validated.json   {"config_sha256", "schema_sha256"}

(the sha256 of the config file's bytes and of the installed agent-config.json),
and the next load skips the schema check when both digests match. Any
mismatch, or a missing or unreadable record, validates again. The TOML parse
and the semantic checks run on every load. The state dir is root-only, like
the stored envelope: whoever can write the record could as well write the
envelope or the config itself.

The daemon must not keep jsonschema-rs loaded for hours, so with
``isolate_validation`` the check runs in a short-lived child process, which
validates and writes the record, as the daemon's verification child does:

    python -m treadle_agent.config --check PATH   # exit 0 with the file's sha256 on stdout, 2 with the errors

No value in the file can crash the agent (README, "Security"): a TOML date or
time where the schema wants a string, an infinite or NaN number, a NUL in any
string, or a manifest URL that does not parse is a ConfigError naming the key
and the fix (exit 2), like a schema error. The file must be private, as OpenSSH
requires of its configs: owned by root or the agent's user, not writable by
group or others (``contract.files.check_private``).

Raises:
    ConfigError: the file is missing, not private, not TOML, breaks the schema,
        holds a value above, or names a trust root that does not exist.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import importlib.util
import json
import math
import subprocess
import sys
import tomllib
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import treadle_schemas  # reading defaults does not load jsonschema-rs; the first validation does
from treadle_agent.contract.log import get_logger
from treadle_agent.errors import AgentError, ConfigError

SCHEMA = "agent-config.json"
#: The record of the last successful validation, in the state dir.
RECORD = "config-validated.json"

log = get_logger("config")


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
    package_manager: str  # auto | apt | dnf | none | simulated
    service_manager: str  # auto | systemd | none | simulated
    sysctl_dir: str
    proc_sys: str
    package_lists_max_age_s: float = 86400.0


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


def load(
    path: str | Path, *, isolate_validation: bool = False, remember: bool = True
) -> AgentConfig:
    """Read and validate agent.toml at ``path``; the schema check is skipped when recorded (module docstring).

    ``isolate_validation`` runs a needed schema check in a child process, so
    jsonschema-rs is never loaded here (the daemon does this). ``remember``
    False validates without recording it (``check`` writes nothing).

    Raises:
        ConfigError: see the module docstring; also when the check process
            cannot run or the file changed while it was checked.
    """
    path = Path(path)
    data = _read(path)
    raw = _parse(data, path)
    config_sha256 = hashlib.sha256(data).hexdigest()
    if _is_validated(raw, path, config_sha256):
        return _build(raw, path)
    if isolate_validation:
        check_isolated(path, config_sha256)
        return _build(raw, path)  # the child validated these very bytes (same digest)
    config = from_dict(raw, path)
    if not remember:
        return config
    why = _remember(config.state_dir, config_sha256)
    if why:
        log.warning("config.record_failed", error=why, action="validating again on the next start")
    return config


def from_dict(raw: dict[str, Any], path: Path) -> AgentConfig:
    """Settings from an already parsed agent.toml (``path`` only for messages and relative paths).

    Always validates against the schema; no record is read or written.

    Raises:
        ConfigError: see the module docstring.
    """
    _check_schema(raw, path)
    return _build(raw, path)


def _read(path: Path) -> bytes:
    from treadle_agent.contract.files import check_private

    try:
        data = path.read_bytes()
    except FileNotFoundError as e:
        raise ConfigError(
            f"{path}: no such file (fix: pass --config with the path of agent.toml)"
        ) from e
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from e
    check_private(path, "config file")
    return data


def _parse(data: bytes, path: Path) -> dict[str, Any]:
    try:
        raw = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"{path}: not UTF-8 at byte {e.start} (fix: save the file as UTF-8)"
        ) from e
    except (
        ValueError
    ) as e:  # TOMLDecodeError, and int()'s refusal of a number of thousands of digits
        raise ConfigError(
            f"{path}: not valid TOML: {_one_line(str(e))} (fix: correct the syntax at that line)"
        ) from e
    _plain_values(raw, path)
    return raw


def _plain_values(raw: dict[str, Any], path: Path) -> None:
    """Refuse values no key of agent.toml takes and a schema check cannot report: dates, inf/NaN, NUL.

    Raises:
        ConfigError: naming the key and the fix.
    """
    stack: list[tuple[str, Any]] = [(k, v) for k, v in raw.items()]
    while stack:
        key, value = stack.pop()
        if isinstance(value, datetime.date | datetime.time):
            raise ConfigError(
                f"{path}: key {key!r}: a TOML date or time ({value}) is no value of agent.toml "
                f'(fix: quote it if it is meant as a string: {key.split("[")[0]} = "...")'
            )
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(
                f"{path}: key {key!r}: {value} is not a finite number (fix: write a number of seconds, e.g. 30)"
            )
        if isinstance(value, str) and "\0" in value:
            raise ConfigError(
                f"{path}: key {key!r}: the value contains a NUL character (fix: remove it)"
            )
        if isinstance(value, dict):
            stack.extend((f"{key}[{k!r}]", v) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((f"{key}[{n}]", v) for n, v in enumerate(value))


def _check_url(url: str, path: Path) -> str:
    """``url`` if it is an absolute http(s) URL with a host (and a valid port), else a ConfigError naming it."""
    why = ""
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError for a port out of range or not a number)
    except ValueError as e:
        why = str(e)
    else:
        if parts.scheme not in ("http", "https"):
            why = "the scheme must be http or https"
        elif not parts.hostname:
            why = "there is no host"
        elif any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in url):
            why = "it contains whitespace or a control character"
    if why:
        raise ConfigError(
            f"{path}: key 'manifest_urls': {url!r} is not a usable URL: {why} "
            '(fix: e.g. "http://controller.example:8080/v1/nodes/{node}/manifest")'
        )
    return url


def _build(raw: dict[str, Any], path: Path) -> AgentConfig:
    """The settings of a schema-valid ``raw``, after the checks a schema cannot express.

    Raises:
        ConfigError: the trust root does not exist, or the metrics port is above 65535.
    """
    doc = {**_defaults(), **raw}
    base = path.parent
    trust_root = _resolve(base, doc["trust_root"])
    if not trust_root.is_file():
        raise ConfigError(
            f"{path}: trust_root: {trust_root} does not exist "
            "(fix: point trust_root at the trust-root.json written by `treadle keys generate DIR`)"
        )
    node = doc["node"]
    if (doc["package_manager"] == "simulated") != (doc["service_manager"] == "simulated"):
        raise ConfigError(
            f'{path}: package_manager and service_manager: "simulated" is a mode of the whole host '
            '(fix: set both to "simulated", or neither)'
        )
    return AgentConfig(
        path=path,
        node=node,
        trust_root=trust_root,
        state_dir=_resolve(base, doc["state_dir"]),
        drift_policy=doc["drift_policy"],
        fetch=FetchSettings(
            manifest_urls=tuple(
                _check_url(u.replace("{node}", node), path) for u in doc["manifest_urls"]
            ),
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
            package_lists_max_age_s=float(doc["package_lists_max_age_s"]),
        ),
        metrics=_listen(doc["metrics_listen"], path),
    )


@functools.cache
def _schema_file() -> tuple[bytes, dict[str, Any]]:
    """schemas/agent-config.json from the installed treadle_schemas package: its bytes and document.

    Read as bytes next to the package rather than through ``treadle_schemas.load``:
    the file's digest is part of a config record.
    """
    spec = importlib.util.find_spec("treadle_schemas")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("the treadle_schemas package is not installed (fix: reinstall treadle)")
    data = (Path(next(iter(spec.submodule_search_locations))) / SCHEMA).read_bytes()
    return data, json.loads(data)


def schema_sha256() -> str:
    """The sha256 of the installed agent-config.json; a new schema invalidates every record."""
    return hashlib.sha256(_schema_file()[0]).hexdigest()


def _defaults() -> dict[str, Any]:
    """The schema's defaults (treadle_schemas.defaults: one reading of defaults for agent and controller)."""
    return treadle_schemas.defaults(_schema_file()[1])


def _check_schema(raw: dict[str, Any], path: Path) -> None:
    errors = treadle_schemas.errors(SCHEMA, raw)
    if errors:
        raise ConfigError(
            "\n".join(_message(path, raw, where, message) for where, message in errors)
        )


def _message(path: Path, raw: dict[str, Any], where: Sequence[str | int], message: str) -> str:
    """One schema error as one line: the file, the key (from the instance path) and a fix hint."""
    known = _schema_file()[1]["properties"]
    message = _one_line(message)
    if where:
        key = str(where[0])
        sub = "".join(f"[{p}]" for p in where[1:])
        return f"{path}: key {key!r}{sub}: {message} (fix: {_describe(known.get(key, {}))})"
    # A top-level error (unknown or missing key) names its key only in the message.
    named = [k for k in sorted({*raw, *known}) if f"'{k}'" in message or f'"{k}"' in message]
    unknown = [k for k in named if k not in known]
    if unknown:
        return (
            f"{path}: unknown key {', '.join(map(repr, unknown))} "
            f"(fix: remove it or correct its spelling; known keys: {', '.join(sorted(known))})"
        )
    missing = [k for k in named if k not in raw]
    if missing:
        return f"{path}: missing key {missing[0]!r} (fix: add `{missing[0]} = ...`; {_describe(known[missing[0]])})"
    return f"{path}: {message} (fix: see schemas/agent-config.json)"


def _one_line(text: str) -> str:
    """``text`` with every line break escaped (a TOML string may hold one), so an error stays one line."""
    return "".join(repr(c)[1:-1] if len(f"a{c}b".splitlines()) > 1 else c for c in text)


def _record_path(raw: dict[str, Any], path: Path) -> Path | None:
    """Where the record of ``raw`` would be: in its state dir, which the schema has not yet vouched for."""
    state_dir = raw.get("state_dir")
    if not isinstance(state_dir, str) or not state_dir:
        return None
    return _resolve(path.parent, state_dir) / RECORD


def _is_validated(raw: dict[str, Any], path: Path, config_sha256: str) -> bool:
    """These config bytes passed this schema before (the record says so)."""
    record = _record_path(raw, path)
    if record is None:
        return False
    try:
        doc = json.loads(record.read_bytes())
    except (OSError, ValueError):  # missing, unreadable, corrupt: validate again, which rewrites it
        return False
    return (
        isinstance(doc, dict)
        and doc.get("config_sha256") == config_sha256
        and doc.get("schema_sha256") == schema_sha256()
    )


def _remember(state_dir: Path, config_sha256: str) -> str | None:
    """Record a successful validation; returns why it could not be recorded, if so.

    Not recording is no error: the next load validates again, and an unusable
    state dir is reported by the state store.
    """
    from treadle_agent.contract.files import write_atomic

    record = {"config_sha256": config_sha256, "schema_sha256": schema_sha256()}
    try:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomic(state_dir / RECORD, json.dumps(record, sort_keys=True).encode())
    except (OSError, AgentError) as e:
        return f"{state_dir / RECORD}: cannot record the validation: {e}"
    return None


def check_isolated(path: Path, config_sha256: str, timeout_s: float = 60.0) -> None:
    """Validate ``path`` in a child process (``python -m treadle_agent.config --check``), which records it.

    ``config_sha256`` is the digest of the bytes the caller parsed; the child
    answers with the digest of those it checked, so a file replaced in
    between is not taken as checked.

    Raises:
        ConfigError: the config is invalid (the child's messages), the child
            could not run, or the file changed while it was checked.
    """
    try:
        p = subprocess.run(
            [sys.executable, "-m", "treadle_agent.config", "--check", str(path)],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired as e:
        raise ConfigError(f"{path}: the config check process overran {timeout_s:g} s") from e
    except OSError as e:
        raise ConfigError(
            f"cannot start the config check process {sys.executable}: {e.strerror}"
        ) from e
    if p.returncode == 2:
        raise ConfigError(p.stderr.strip())
    if p.returncode != 0:
        raise ConfigError(
            f"{path}: the config check process failed (exit {p.returncode}): {p.stderr.strip()[-300:]}"
        )
    if p.stdout.strip() != config_sha256:
        raise ConfigError(
            f"{path}: the file changed while it was being checked (fix: start the agent again once it is written)"
        )
    if p.stderr.strip():
        log.warning(
            "config.record_failed",
            error=p.stderr.strip(),
            action="validating again on the next start",
        )


def _child(argv: Sequence[str]) -> int:
    """The child side of :func:`check_isolated`: validate, record, print the digest of the bytes checked."""
    if len(argv) != 2 or argv[0] != "--check":
        print("usage: python -m treadle_agent.config --check PATH", file=sys.stderr)
        return 2
    path = Path(argv[1])
    try:
        data = _read(path)
        raw = _parse(data, path)
        config_sha256 = hashlib.sha256(data).hexdigest()
        if not _is_validated(raw, path, config_sha256):
            why = _remember(from_dict(raw, path).state_dir, config_sha256)
            if why:
                print(why, file=sys.stderr)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 2
    print(config_sha256)
    return 0


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
        raise ConfigError(
            f"{path}: key 'metrics_listen': port {port} is above 65535 (fix: use a port in 0..65535, e.g. 127.0.0.1:9731)"
        )
    return MetricsSettings(host=host or "0.0.0.0", port=int(port))


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1:]))
