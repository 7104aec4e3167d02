"""The secret-file parsers on arbitrary bytes: a SecretFileError with a line inside the file, or a usable result."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from treadle.fabric.secrets import (
    AGE_MAGIC,
    ARMOR_BEGIN,
    ARMOR_END,
    SecretFileError,
    parse_ciphertext,
    parse_recipients,
)

RECIPIENT = b"age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"
PIECES = [
    RECIPIENT,
    b"\n",
    b"\r\n",
    b"#",
    b" ",
    b"\xff",
    b"age1",
    AGE_MAGIC,
    ARMOR_BEGIN,
    ARMOR_END,
    b"YWdl",
    b"=",
    b"\x00",
]

#: Found by the fuzz tests below or by hand: each stays a regression case.
RECIPIENT_CORPUS = [
    (b"", 0),
    (b"# only a comment\n", 0),
    (RECIPIENT + b"\nnope\n", 2),
    (b"\xff\n", 0),
    (b"\n" + RECIPIENT.upper() + b"\n", 2),
    (RECIPIENT + b"x", 1),
    (b"\x0cYWdl", 1),
    (RECIPIENT + b"\r\n\x1cX\n", 2),
]
CIPHER_CORPUS = [
    b"",
    ARMOR_BEGIN,
    ARMOR_BEGIN + b"\n!!\n" + ARMOR_END,
    ARMOR_BEGIN + b"\nYWdl\n" + ARMOR_END,
    b"plain text",
]


@pytest.mark.parametrize(("data", "line"), RECIPIENT_CORPUS)
def test_recipient_corpus(data: bytes, line: int) -> None:
    with pytest.raises(SecretFileError) as e:
        parse_recipients("r", data)
    assert e.value.line == line


@pytest.mark.parametrize("data", CIPHER_CORPUS)
def test_ciphertext_corpus(data: bytes) -> None:
    with pytest.raises(SecretFileError):
        parse_ciphertext("c", data)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(st.binary(max_size=20), st.sampled_from(PIECES)), max_size=10))
def test_recipients_file_parser(parts: list[bytes]) -> None:
    data = b"".join(parts)
    try:
        found = parse_recipients("r", data)
    except SecretFileError as e:
        assert 0 <= e.line <= data.count(b"\n") + 1
        return
    assert found and len(set(found)) == len(found) and all(r.encode() in data for r in found)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(st.binary(max_size=20), st.sampled_from(PIECES)), max_size=10))
def test_ciphertext_parser(parts: list[bytes]) -> None:
    try:
        box = parse_ciphertext("c", b"".join(parts))
    except SecretFileError:
        return
    assert box.startswith(AGE_MAGIC)
