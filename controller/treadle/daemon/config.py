"""controller.toml: read, validated against ``schemas/controller-config.json``, turned into frozen settings.

The schema is the one source of truth for the format; this module only adds
what a schema cannot say (files that must exist, a port that must fit in 16
bits) and resolves relative paths against the directory of the config file,
so a config can be moved together with its keys. Every error names the file,
the key and the fix.

Before the schema, every value is checked for what TOML can say and a
schema or a path cannot take: a TOML date or time where text is expected,
control characters (a NUL in a path would only fail much later), values
longer than :data:`MAX_VALUE_CHARS`, path components longer than 255 bytes
and nesting deeper than the parser's recursion allows.

Raises:
    UsageError: the file is missing, not TOML, breaks the schema, or names a
        file that does not exist. Never anything else: a malformed value is
        always exit 2 with the key and the fix.
"""

from __future__ import annotations

import datetime
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import treadle_schemas
from treadle.daemon.fetch import GitCredentials, read_token
from treadle.errors import SourceError, UsageError

SCHEMA = "controller-config.json"
#: Longest text value accepted (a path, a URL, a signer URI).
MAX_VALUE_CHARS = 4096
#: Keys whose value is a file or directory path (relative to the config file), or may be one.
PATH_KEYS = frozenset(
    {
        "repository",
        "state_dir",
        "publish_dir",
        "signing_key",
        "ssh_key_file",
        "https_token_file",
        "https_ca_file",
        "webhook_secret_file",
        "admin_token_file",
        "commit_policy.allowed_signers",
    }
)
_CONTROL = re.compile("[\x00-\x1f\x7f]")
#: The schema's defaults, top level and per table: the only place a default of controller.toml is written.
DEFAULTS = treadle_schemas.defaults(SCHEMA)
HEALTH_DEFAULTS = treadle_schemas.defaults(SCHEMA, "health")
POLICY_DEFAULTS = treadle_schemas.defaults(SCHEMA, "commit_policy")
RETENTION_DEFAULTS = treadle_schemas.defaults(SCHEMA, "retention")


@dataclass(frozen=True, slots=True)
class SourceSettings:
    repository: str  # URL or local path (already absolute when it was a relative path)
    branch: str
    poll_interval_s: float
    credentials: GitCredentials = GitCredentials()


@dataclass(frozen=True, slots=True)
class StoreSettings:
    state_dir: Path
    publish_dir: Path


@dataclass(frozen=True, slots=True)
class SigningSettings:
    signing_keys: tuple[
        str, ...
    ]  # key file paths (absolute) or securesystemslib signer URIs; each signs every manifest
    manifest_lifetime_s: int
    resign_before_s: int

    @property
    def signing_key(self) -> str:
        """The first signer (the only one of a single-key config)."""
        return self.signing_keys[0]


@dataclass(frozen=True, slots=True)
class PolicySettings:
    require_signed: bool
    allowed_signers: Path | None


@dataclass(frozen=True, slots=True)
class ApiSettings:
    host: str
    port: int
    webhook_secret: (
        bytes | None
    )  # the content of webhook_secret_file, stripped of surrounding whitespace
    admin_token: bytes | None = (
        None  # the content of admin_token_file; None: operator actions from loopback only
    )
    console_read: str = DEFAULTS[
        "console_read"
    ]  # who reads the console without the admin token: loopback, anyone, nobody


@dataclass(frozen=True, slots=True)
class HealthSettings:
    source: str
    prometheus_url: str | None
    scrape_timeout_s: float  # per agent: connect, send and read together
    interval_s: float  # between the end of one round of observation and the start of the next
    scrape_concurrency: int = HEALTH_DEFAULTS[
        "scrape_concurrency"
    ]  # connections open at once, at most
    scrape_round_s: float = float(
        HEALTH_DEFAULTS["scrape_round_s"]
    )  # one round over every agent of a wave, at most
    stale_after_s: float = float(
        HEALTH_DEFAULTS["stale_after_s"]
    )  # an observation older than this is unknown


@dataclass(frozen=True, slots=True)
class RetentionSettings:
    """What history is kept; see README "Retention and cleanup" (defaults as in the schema)."""

    rollouts_kept: int = RETENTION_DEFAULTS[
        "rollouts_kept"
    ]  # finished rollouts, with their events and previous manifests
    history_kept: int = RETENTION_DEFAULTS[
        "history_kept"
    ]  # deployment rows, and refusal rows, each
    mirror_max_packs: int = RETENTION_DEFAULTS[
        "mirror_max_packs"
    ]  # git gc the mirror above this many pack files
    revert_branches_kept: int = RETENTION_DEFAULTS[
        "revert_branches_kept"
    ]  # treadle/revert-* branches in the mirror


@dataclass(frozen=True, slots=True)
class ControllerConfig:
    path: Path
    source: SourceSettings
    store: StoreSettings
    signing: SigningSettings
    policy: PolicySettings
    api: ApiSettings
    health: HealthSettings
    retention: RetentionSettings = RetentionSettings()


def load(path: str | Path) -> ControllerConfig:
    """Read and validate ``path``.

    Raises:
        UsageError: see the module docstring.
    """
    path = Path(path).absolute()
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise UsageError(
            f"{path}: no such file; pass --config with the path of controller.toml"
        ) from e
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"{path}: cannot read: {e}") from e
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"{path}: not valid TOML: {e}; fix the syntax at that position") from e
    except RecursionError as e:
        raise UsageError(
            f"{path}: arrays or tables nest too deeply to read; fix: flatten them"
        ) from e
    try:
        return from_dict(doc, path)
    except (
        ValueError,
        TypeError,
        OSError,
    ) as e:  # a value no check above foresaw: still exit 2, never a traceback
        raise UsageError(f"{path}: a value cannot be used: {e}; fix the key it names") from e


def from_dict(doc: dict[str, Any], path: Path) -> ControllerConfig:
    """Validate an already parsed config ``doc`` that came from ``path``.

    Raises:
        UsageError: see the module docstring.
    """
    _check_values(doc, path)
    problems = treadle_schemas.errors(SCHEMA, doc)
    if problems:
        lines = [f"{path}: {_key(p) or '(top level)'}: {msg}" for p, msg in problems]
        raise UsageError(
            "\n".join(lines) + "\nfix these keys; the format is schemas/controller-config.json"
        )
    base = path.parent
    src = {**DEFAULTS, **doc}
    policy = {**POLICY_DEFAULTS, **doc.get("commit_policy", {})}
    health = {**HEALTH_DEFAULTS, **doc.get("health", {})}
    lifetime_s, resign_s = int(src["manifest_lifetime_s"]), int(src["resign_before_s"])
    if resign_s >= lifetime_s:
        # Otherwise every manifest is due for re-signing as soon as it is signed, and every cycle
        # would publish every node under a new generation.
        raise UsageError(
            f"{path}: resign_before_s ({resign_s}) must be less than manifest_lifetime_s ({lifetime_s}); "
            f"fix: e.g. resign_before_s = {lifetime_s // 7} (a seventh of the lifetime)"
        )
    if health.get("source") == "prometheus" and not health.get("prometheus_url"):
        raise UsageError(
            f'{path}: health.source = "prometheus" needs health.prometheus_url; '
            'fix: add prometheus_url = "http://prometheus:9090" to [health]'
        )
    _check_health(health, path)
    return ControllerConfig(
        path=path,
        source=SourceSettings(
            repository=_repository(src["repository"], base),
            branch=src["branch"],
            poll_interval_s=float(src["poll_interval_s"]),
            credentials=_credentials(src, base, path),
        ),
        store=StoreSettings(
            state_dir=base / src["state_dir"], publish_dir=base / src["publish_dir"]
        ),
        signing=SigningSettings(
            signing_keys=tuple(_signing_key(k, base) for k in _as_list(src["signing_key"])),
            manifest_lifetime_s=lifetime_s,
            resign_before_s=resign_s,
        ),
        policy=_policy(policy, base, path),
        api=_api(src, base, path),
        health=HealthSettings(
            source=health["source"],
            prometheus_url=health.get("prometheus_url"),
            scrape_timeout_s=float(health["scrape_timeout_s"]),
            interval_s=float(health["interval_s"]),
            scrape_concurrency=int(health["scrape_concurrency"]),
            scrape_round_s=float(health["scrape_round_s"]),
            stale_after_s=float(health["stale_after_s"]),
        ),
        retention=RetentionSettings(**doc.get("retention", {})),
    )


def _check_health(health: dict[str, Any], path: Path) -> None:
    """An observation must outlive the round that took it plus the pause before the next, or no node ever passes.

    ``health`` has the schema's defaults filled in.
    """
    stale, round_s, interval = (
        float(health[k]) for k in ("stale_after_s", "scrape_round_s", "interval_s")
    )
    if stale <= round_s + interval:
        raise UsageError(
            f"{path}: health.stale_after_s ({stale:g}) must be more than health.scrape_round_s + "
            f"health.interval_s ({round_s + interval:g}): observations would go stale before the next "
            f"round; fix: stale_after_s = {2 * (round_s + interval):g}"
        )


def _key(instance_path: list[str | int] | tuple[str | int, ...]) -> str:
    return ".".join(str(p) for p in instance_path)


def _check_values(doc: dict[str, Any], path: Path) -> None:
    """Refuse what the schema cannot see or say well (see the module docstring), naming the key; no recursion."""
    todo: list[tuple[tuple[str | int, ...], Any]] = [((), doc)]
    while todo:
        keys, value = todo.pop()
        key = _key(keys)
        if isinstance(value, dict):
            todo.extend(((*keys, k), v) for k, v in value.items())
        elif isinstance(value, list):
            todo.extend(((*keys, i), v) for i, v in enumerate(value))
        elif isinstance(value, datetime.date | datetime.time):  # datetime.datetime is a date
            raise UsageError(
                f"{path}: {key}: {value.isoformat()} is a TOML date or time, not text; "
                f'fix: quote it ({key.rsplit(".", 1)[-1]} = "...") if it is meant as text'
            )
        elif isinstance(value, str):
            bad = _CONTROL.search(value)
            if bad is not None:
                raise UsageError(
                    f"{path}: {key}: contains the control character U+{ord(bad.group()):04X} "
                    f"at position {bad.start()}; fix: remove it"
                )
            if len(value) > MAX_VALUE_CHARS:
                raise UsageError(
                    f"{path}: {key}: {len(value)} characters, more than {MAX_VALUE_CHARS}; fix: shorten it"
                )
            if key in PATH_KEYS and "://" not in value:
                long = next((part for part in value.split("/") if len(part.encode()) > 255), None)
                if long is not None:
                    raise UsageError(
                        f"{path}: {key}: the path component {long[:40]}... is {len(long.encode())} bytes, "
                        "more than the 255 a file name may have; fix: shorten it"
                    )


def _repository(value: str, base: Path) -> str:
    # URLs (scheme://) and scp-like ssh addresses (user@host:path) pass through;
    # anything else is a local path, made absolute so the state dir's clone
    # does not depend on the current directory.
    if "://" in value or (":" in value and "@" in value.split(":", 1)[0]):
        return value
    return str((base / value).absolute())


def _credentials(doc: dict[str, Any], base: Path, path: Path) -> GitCredentials:
    key = base / doc["ssh_key_file"] if "ssh_key_file" in doc else None
    if key is not None and not key.is_file():
        raise UsageError(
            f"{path}: ssh_key_file: {key} does not exist; fix the path, or create a deploy key with "
            f"`ssh-keygen -t ed25519 -N '' -f {key}` and grant its .pub read access to the repository"
        )
    token = base / doc["https_token_file"] if "https_token_file" in doc else None
    if token is not None:
        try:
            read_token(token)
        except SourceError as e:
            raise UsageError(f"{path}: {e}") from e
        url = urlparse(doc["repository"])
        if url.scheme == "http" and url.hostname not in ("127.0.0.1", "::1", "localhost"):
            raise UsageError(
                f"{path}: https_token_file: the repository URL {doc['repository']} is plain http, which would "
                "send the token in clear to another machine; use its https:// URL"
            )
    ca = base / doc["https_ca_file"] if "https_ca_file" in doc else None
    if ca is not None and not ca.is_file():
        raise UsageError(
            f"{path}: https_ca_file: {ca} does not exist; fix the path (a PEM file with the CA certificate "
            "that signs the git server's certificate)"
        )
    return GitCredentials(ssh_key_file=key, https_token_file=token, https_ca_file=ca)


def _as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def _signing_key(value: str, base: Path) -> str:
    scheme = value.split(":", 1)[0] if ":" in value else ""
    if len(scheme) > 1 and scheme.replace("-", "").isalnum():
        return value  # a signer URI such as file2:..., envvar:..., gcpkms:... (len > 1: not a drive letter)
    return str(base / value)


def _policy(policy: dict[str, Any], base: Path, path: Path) -> PolicySettings:
    require = bool(policy["require_signed"])
    signers = policy.get("allowed_signers")
    if require and not signers:
        raise UsageError(
            f"{path}: commit_policy.allowed_signers: required when commit_policy.require_signed is true; "
            "set it to an OpenSSH allowed_signers file"
        )
    signers_path = base / signers if signers else None
    if signers_path is not None and not signers_path.is_file():
        raise UsageError(
            f"{path}: commit_policy.allowed_signers: {signers_path} does not exist; create it or fix the path"
        )
    return PolicySettings(require_signed=require, allowed_signers=signers_path)


def _api(doc: dict[str, Any], base: Path, path: Path) -> ApiSettings:
    host, _, port_text = doc["listen"].rpartition(":")
    port = int(port_text)
    if port > 65535:
        raise UsageError(
            f"{path}: listen: port {port} is above 65535; use a port between 0 and 65535"
        )
    secret = _secret_file(doc, "webhook_secret_file", base, path, "the shared secret")
    token = _secret_file(doc, "admin_token_file", base, path, "a long random token")
    console_read = doc["console_read"]
    if console_read == "nobody" and token is None:
        raise UsageError(
            f'{path}: console_read = "nobody" needs admin_token_file (the console would be unreadable); '
            'set admin_token_file or choose "loopback"'
        )
    return ApiSettings(
        host=host or "127.0.0.1",
        port=port,
        webhook_secret=secret,
        admin_token=token,
        console_read=console_read,
    )


def _secret_file(doc: dict[str, Any], key: str, base: Path, path: Path, what: str) -> bytes | None:
    if key not in doc:
        return None
    secret_path = base / doc[key]
    try:
        secret = secret_path.read_bytes().strip()
    except OSError as e:
        raise UsageError(
            f"{path}: {key}: cannot read {secret_path}: {e.strerror}; fix the path"
        ) from e
    if not secret:
        raise UsageError(f"{path}: {key}: {secret_path} is empty; write {what} into it")
    return secret
