"""Canonical JSON bytes, fast: the same bytes as ``treadle_agent.contract.manifest.canonical_json``, made cheaply.

A render encodes tens of thousands of small values; ``json.dumps`` builds a
new encoder on every call, which costs as much as encoding a resource. Here
the C encoder is made once with the same settings, and values it might
judge differently (floats, foreign types, text that is not UTF-8) are
handed to canonical_json itself, so the bytes and the errors are its own.
:func:`restamped` changes the commit of an encoded manifest by splicing.
"""

from __future__ import annotations

import functools
import json.encoder
from typing import Any

from treadle_agent.contract.manifest import API_VERSION, KIND, canonical_json, is_plain_json

#: ``json.dumps(..., ensure_ascii=False)`` encodes every string with this function; so do the fast paths here.
encode_str = json.encoder.encode_basestring
#: json's C encoder made once with canonical_json's settings (json.dumps builds a new one per call,
#: which costs as much as encoding a small resource). None without the C accelerator.
_MAKE_ENCODER = getattr(json.encoder, "c_make_encoder", None)  # private to json, hence no type
_C_ENCODER = (
    _MAKE_ENCODER(None, None, encode_str, None, ":", ",", True, False, False)
    if _MAKE_ENCODER is not None
    else None
)


def encode_canonical(obj: Any) -> bytes:
    """``canonical_json(obj)``, the same bytes, without building an encoder per call.

    Anything unusual (a float, a foreign type, text that is not UTF-8) goes
    through canonical_json itself, so errors are its errors.

    Raises:
        ManifestFormatError: as canonical_json.
    """
    if _C_ENCODER is None or not is_plain_json(obj):
        return canonical_json(obj)
    try:
        return "".join(_C_ENCODER(obj, 0)).encode("utf-8")
    except (TypeError, ValueError, RecursionError):
        return canonical_json(obj)


#: The fixed bytes of a manifest before its health checks and between them and its metadata.
MANIFEST_HEAD = b'{"apiVersion":' + canonical_json(API_VERSION) + b',"health":'
KIND_KEY = b',"kind":' + canonical_json(KIND) + b',"metadata":'
#: A file resource with no content encodes as FILE_OPEN + its other fields + FILE_CLOSE.
FILE_OPEN, FILE_CLOSE = b'{"content":null', b',"sha256":null,"type":"file"}'
_COMMIT_KEY = b',"commit":'


@functools.lru_cache(maxsize=8)
def _encoded_commit(commit: str | None) -> bytes:
    return encode_canonical(commit)


def restamped(canonical: bytes, old: str | None, new: str | None) -> bytes | None:
    """The canonical bytes of a manifest with metadata.commit ``old`` changed to ``new``, by splicing.

    The first ``,"commit":`` of the bytes is metadata's: the keys before
    metadata are fixed (apiVersion, health checks) and inside a JSON string
    a quote is always escaped, so that sequence cannot occur in a value.
    None when the bytes do not have the expected shape (the caller encodes).
    """
    at = canonical.find(_COMMIT_KEY)
    if at < 0:
        return None
    at += len(_COMMIT_KEY)
    was, now = _encoded_commit(old), _encoded_commit(new)
    if canonical[at : at + len(was)] != was or canonical[at + len(was) : at + len(was) + 1] != b",":
        return None
    return b"".join((canonical[:at], now, canonical[at + len(was) :]))
