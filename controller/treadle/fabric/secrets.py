"""Secret files of the fabric: age ciphertexts the controller publishes but cannot open.

    secrets/<name>.age          the ciphertext (binary or armored age), made by ``treadle secret encrypt``
    secrets/<name>.recipients   who it is encrypted to: one ``age1...`` recipient a line, ``#`` comments
                                (the format of ``age -R``); age stanzas do not name their recipients,
                                so this list is what ``treadle validate`` checks against node identities

A file resource names the ciphertext (``secret: secrets/munge.key.age``); the
manifest carries the binary age file, base64, and its sha256. Only nodes whose
``identity:`` is listed, and the admin recipients of fabric.yaml
(``secrets.admins``), can decrypt it.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import Protocol

from treadle.fabric.source import entries_of

SECRET_DIR = "secrets/"
AGE_MAGIC = b"age-encryption.org/v1\n"
ARMOR_BEGIN = b"-----BEGIN AGE ENCRYPTED FILE-----"
ARMOR_END = b"-----END AGE ENCRYPTED FILE-----"
RECIPIENT = re.compile(r"age1[02-9ac-hj-np-z]{58}")


class SecretFileError(ValueError):
    """A ciphertext or recipients file that cannot be used; ``line`` is 1-based, 0 for the whole file."""

    def __init__(self, path: str, line: int, message: str, hint: str) -> None:
        super().__init__(f"{path}:{line}: {message}")
        self.path, self.line, self.message, self.hint = path, line, message, hint


@dataclass(frozen=True, slots=True)
class Secret:
    name: str  # secrets/<name>.age
    ciphertext: bytes  # the binary age file
    recipients: tuple[str, ...]


def recipients_path(name: str) -> str:
    """``secrets/munge.key.age`` -> ``secrets/munge.key.recipients``."""
    return name.removesuffix(".age") + ".recipients"


def parse_ciphertext(name: str, data: bytes) -> bytes:
    """The binary age file of ``data`` (binary, or armored as ``age -a`` writes it)."""
    stripped = data.strip()
    if stripped.startswith(ARMOR_BEGIN):
        if not stripped.endswith(ARMOR_END):
            raise SecretFileError(
                name,
                0,
                "the armored age file has no END line",
                "encrypt it again with treadle secret encrypt",
            )
        body = b"".join(stripped[len(ARMOR_BEGIN) : -len(ARMOR_END)].split())
        try:
            data = base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError) as e:
            raise SecretFileError(
                name,
                0,
                "the armored age file is not valid base64",
                "encrypt it again with treadle secret encrypt",
            ) from e
    if not data.startswith(AGE_MAGIC):
        raise SecretFileError(
            name,
            1,
            "not an age file (no age-encryption.org/v1 header)",
            "encrypt it with treadle secret encrypt; never commit the plaintext",
        )
    return data


def parse_recipients(path: str, text: bytes) -> tuple[str, ...]:
    """The recipients of a recipients file, in order, without repeats."""
    out: list[str] = []
    try:
        lines = text.decode("utf-8").split(
            "\n"
        )  # lines as git and editors count them (not str.splitlines: \f, \x1c...)
    except UnicodeDecodeError as e:
        raise SecretFileError(path, 0, "not UTF-8 text", "one age1... recipient a line") from e
    for number, line in enumerate(lines, start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if not RECIPIENT.fullmatch(line):
            raise SecretFileError(
                path,
                number,
                "not an age X25519 recipient (age1... and 58 characters)",
                "one recipient a line, as treadle-agent enroll printed it; # starts a comment",
            )
        if line not in out:
            out.append(line)
    if not out:
        raise SecretFileError(
            path, 0, "lists no recipient", "run treadle secret rekey, or encrypt the secret again"
        )
    return tuple(out)


def format_recipients(recipients: dict[str, str]) -> bytes:
    """A recipients file: ``{recipient: who}``, one a line with a comment naming whose it is."""
    lines = ["# Written by treadle secret: the age recipients this secret is encrypted to."]
    lines += [f"# {who}\n{r}" for r, who in recipients.items()]
    return ("\n".join(lines) + "\n").encode()


class _Readable(Protocol):
    def entries(self) -> dict[str, str]: ...

    def read(self, path: str) -> bytes: ...


def read_secret(src: _Readable, name: str) -> Secret:
    """The ciphertext ``name`` and its recipients, from a fabric source (a work tree or a revision)."""
    rpath = recipients_path(name)
    entries = entries_of(src)  # once per secret per node: never a copy of the listing
    for path in (name, rpath):
        if path not in entries:
            raise SecretFileError(
                path,
                0,
                "is not in the fabric repository",
                "create it with treadle secret encrypt (the ciphertext and its .recipients)",
            )
    return Secret(
        name, parse_ciphertext(name, src.read(name)), parse_recipients(rpath, src.read(rpath))
    )
