"""The NodeManifest contract: canonical JSON, resource order, strict parsing.

Both sides depend on these bytes being identical for identical content: the
controller decides "changed or not" by digest and the agent refuses an equal
generation carrying other bytes. Canonical JSON here is sorted keys, no
insignificant whitespace, UTF-8 (non-ASCII kept as is), and no floating-point
numbers at all (a manifest has none: modes are strings, sysctl values are
strings, timeouts are integers), which makes it agree with RFC 8785 for every
manifest the schema admits except for object keys outside the Basic
Multilingual Plane, which the schema's key patterns exclude.

Resources are ordered by type, then by key: directories (by path, so a parent
precedes its children), files, symlinks (by path), packages, sysctl (by key),
services (by name) — the order in which an agent can apply them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from treadle_agent.contract.errors import ManifestFormatError

API_VERSION = "treadle.dev/v1"
KIND = "NodeManifest"
PAYLOAD_TYPE = "application/vnd.treadle.manifest+json"

#: Apply order of resource types; see the module docstring.
RESOURCE_ORDER: tuple[str, ...] = ("directory", "file", "symlink", "package", "sysctl", "service")
_RANK = {t: i for i, t in enumerate(RESOURCE_ORDER)}
#: The field that names a resource of each type.
KEY_FIELD = {
    "directory": "path",
    "file": "path",
    "symlink": "path",
    "package": "name",
    "sysctl": "key",
    "service": "name",
}


#: Limits of :func:`parse_json`, checked while parsing (STYLE.md: parse with limits before work). Python's
#: int() refuses more than 4,300 digits with a bare ValueError, and a deep document can exhaust the stack of a
#: validator written in another language; no manifest, envelope or state file comes near these.
MAX_INT_DIGITS = 20  # an unsigned 64-bit integer has at most 20 digits
MAX_DEPTH = 64  # nesting of arrays and objects
MAX_MEMBERS = 100_000  # members of one object


def canonical_json(obj: Any) -> bytes:
    """The canonical bytes of ``obj``.

    Raises:
        ManifestFormatError: ``obj`` contains a float (canonical form has none)
            or a value JSON cannot encode.
    """
    _refuse_floats(obj)
    try:
        return json.dumps(
            obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        ).encode("utf-8")
    except (TypeError, ValueError) as e:
        raise ManifestFormatError(f"not encodable as canonical JSON: {e}") from e


def is_plain_json(obj: Any) -> bool:
    """Whether ``obj`` is made only of dict, list, str, int, bool and None (exact types): no float, nothing foreign.

    Exact-type checks: a controller canonicalizes ~10,000 manifests per
    render, and abstract isinstance checks cost more than the encoding.
    """
    stack = [obj]
    while stack:
        o = stack.pop()
        kind = type(o)
        if kind is str or kind is int or kind is bool or o is None:
            continue
        if kind is dict:
            stack.extend(o.values())
        elif kind is list:
            stack.extend(o)
        else:
            return False
    return True


def _refuse_floats(obj: Any) -> None:
    if is_plain_json(obj):
        return
    stack = [obj]
    while stack:
        o = stack.pop()
        if isinstance(o, float):
            raise ManifestFormatError(
                f"floating-point number {o!r} has no canonical form; use an integer or a string"
            )
        if isinstance(o, Mapping):
            stack.extend(o.values())
        elif isinstance(o, list | tuple):
            stack.extend(o)


def digest(data: bytes) -> str:
    """Hex sha256 of ``data``: the content address of a manifest or a file."""
    return hashlib.sha256(data).hexdigest()


def resource_id(resource: Mapping[str, Any]) -> str:
    """``type:key``, e.g. ``file:/etc/chrony.conf``: how ``requires`` names a resource."""
    t = resource["type"]
    return f"{t}:{resource[KEY_FIELD[t]]}"


def sort_resources(resources: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Resources in apply order (see the module docstring)."""
    return sorted(resources, key=lambda r: (_RANK[r["type"]], r[KEY_FIELD[r["type"]]]))


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    if len(pairs) > MAX_MEMBERS:
        raise ManifestFormatError(
            f"an object has {len(pairs)} members, above the limit of {MAX_MEMBERS}"
        )
    d: dict[str, Any] = {}
    for k, v in pairs:
        if k in d:
            raise ManifestFormatError(f"duplicate JSON key {k!r}")
        d[k] = v
    return d


def _no_float(s: str) -> Any:
    raise ManifestFormatError(f"floating-point number {s} is not allowed in a manifest")


def _no_constant(s: str) -> Any:
    raise ManifestFormatError(f"{s} is not allowed in a manifest")


def _bounded_int(s: str) -> int:
    if len(s.lstrip("-")) > MAX_INT_DIGITS:
        raise ManifestFormatError(
            f"an integer of {len(s.lstrip('-'))} digits is above the limit of {MAX_INT_DIGITS}"
        )
    return int(s)


def _check_depth(doc: Any) -> None:
    stack = [(doc, 1)]
    while stack:
        o, depth = stack.pop()
        kind = type(o)
        if kind is dict or kind is list:
            if depth > MAX_DEPTH:
                raise ManifestFormatError(f"nesting deeper than the limit of {MAX_DEPTH}")
            stack.extend(
                (v, depth + 1)
                for v in (o.values() if kind is dict else o)
                if type(v) in (dict, list)
            )


def parse_json(data: bytes) -> Any:
    """Strictly parse JSON bytes: UTF-8, no duplicate keys, no floats, no NaN/Infinity, within the limits
    (:data:`MAX_INT_DIGITS`, :data:`MAX_DEPTH`, :data:`MAX_MEMBERS`).

    Raises:
        ManifestFormatError: on any of those, or on malformed/truncated JSON.
    """
    try:
        text = data.decode("utf-8")
        doc = json.loads(
            text,
            object_pairs_hook=_no_duplicates,
            parse_float=_no_float,
            parse_constant=_no_constant,
            parse_int=_bounded_int,
        )
    except ManifestFormatError:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError) as e:  # JSONDecodeError is a ValueError
        raise ManifestFormatError(f"malformed JSON: {e}") from e
    _check_depth(doc)
    return doc


@dataclass(frozen=True, slots=True)
class Manifest:
    """A parsed manifest together with the exact bytes it came from."""

    raw: bytes
    doc: Mapping[str, Any]

    @property
    def metadata(self) -> Mapping[str, Any]:
        return self.doc["metadata"]

    @property
    def node(self) -> str:
        return self.metadata["node"]

    @property
    def generation(self) -> int:
        return self.metadata["generation"]

    @property
    def digest(self) -> str:
        return digest(self.raw)

    @property
    def resources(self) -> list[Mapping[str, Any]]:
        return self.doc["resources"]

    @property
    def health(self) -> list[Mapping[str, Any]]:
        return self.doc["health"]


def stamp(
    doc: Mapping[str, Any], *, generation: int, commit: str | None, issued: str, expires: str
) -> dict[str, Any]:
    """A copy of manifest ``doc`` with the signing-time metadata filled in.

    ``issued`` and ``expires`` are RFC 3339 UTC strings with second precision
    (``2026-01-31T12:00:00Z``), see :func:`format_time`.
    """
    out = dict(doc)
    out["metadata"] = {
        **doc["metadata"],
        "generation": generation,
        "commit": commit,
        "issued": issued,
        "expires": expires,
    }
    return out


def format_time(ts: float) -> str:
    """RFC 3339 UTC, second precision: the only time format in a manifest."""
    import time

    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(ts)))


def parse_time(s: str) -> float:
    """Inverse of :func:`format_time` (seconds since the epoch)."""
    import calendar
    import time

    return float(calendar.timegm(time.strptime(s, "%Y-%m-%dT%H:%M:%SZ")))
