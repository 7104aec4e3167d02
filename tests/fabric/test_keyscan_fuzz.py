"""The plaintext-key scan on arbitrary bytes: never raises, never repeats what it found, lines within the file."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from treadle.fabric import keyscan

MARKERS = [
    b"-----BEGIN PRIVATE KEY-----",
    b"-----BEGIN PGP PRIVATE KEY BLOCK-----",
    b"AGE-SECRET-KEY-1" + b"Q" * 58,
    b"\r",
    b"\n",
    b"\x00",
    b"PRIVATE KEY",
    b"age-secret-key-1",
]

#: Found by the fuzz test below or by hand: each stays a regression case.
CORPUS = [
    b"",
    b"\n",
    b"\r\n-----BEGIN PRIVATE KEY-----",
    b"x-----BEGIN A B PRIVATE KEY-----\r",
    b"AGE-SECRET-KEY-1" + b"Q" * 57,
    b"\xff\xfePRIVATE KEY\n",
]


class _Bytes:
    commit = None
    label = "fuzz"

    def __init__(self, data: bytes) -> None:
        self.data = data

    def entries(self) -> dict[str, str]:
        return {"f": "0"}

    def read(self, path: str) -> bytes:
        return self.data

    def problems(self) -> list:  # type: ignore[type-arg]
        return []


def _check(data: bytes) -> None:
    found = keyscan.scan(_Bytes(data))
    lines = data.split(b"\n")
    for d in found:
        assert 1 <= d.line <= len(lines) and d.code == "plaintext-key"
        assert "SECRET-KEY" not in d.message and "BEGIN" not in d.message


def test_the_corpus() -> None:
    for data in CORPUS:
        _check(data)
    assert len(keyscan.scan(_Bytes(CORPUS[2]))) == 1 and not keyscan.scan(_Bytes(CORPUS[4]))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(st.binary(max_size=40), st.sampled_from(MARKERS)), max_size=12))
def test_arbitrary_bytes(parts: list[bytes]) -> None:
    _check(b"".join(parts))
