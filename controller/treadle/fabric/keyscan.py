"""Plaintext private keys committed to the fabric repository by mistake, located for ``treadle validate``.

Every file the source lists is searched, line by line, for the markers of a
private key in a known format: a PEM or OpenSSH ``-----BEGIN ... PRIVATE
KEY-----`` header, a PGP private key block, an age identity
(``AGE-SECRET-KEY-1`` and its 58 characters). A finding names file and line
and never repeats the key. Files the source refused (too large, symlinks) are
already reported by the layout checks and are not read.
"""

from __future__ import annotations

import re

from treadle.errors import Diagnostic
from treadle.fabric.source import Source

#: (what, pattern) per known format; a match in any line of any file is a finding.
_FORMATS = (
    ("a PEM or OpenSSH private key", re.compile(rb"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----")),
    ("a PGP private key block", re.compile(rb"-----BEGIN PGP PRIVATE KEY BLOCK-----")),
    ("an age identity", re.compile(rb"AGE-SECRET-KEY-1[02-9AC-HJ-NP-Z]{58}", re.IGNORECASE)),
)

HINT = (
    "a private key in git is readable by everyone who can read the repository, history included: "
    "remove it, rotate the key, and keep only its public part or an encrypted copy in the fabric"
)


def scan(src: Source) -> list[Diagnostic]:
    """One ``plaintext-key`` diagnostic per line of a fabric file that holds a private key in a known format."""
    found = []
    for path in sorted(src.entries()):
        data = src.read(path)
        if b"PRIVATE KEY" not in data and b"AGE-SECRET-KEY-1" not in data.upper():
            continue  # the fast path: almost every file
        for number, line in enumerate(
            data.split(b"\n"), start=1
        ):  # lines as git and editors count them
            for what, pattern in _FORMATS:
                match = pattern.search(line)
                if match:
                    found.append(
                        Diagnostic(
                            path,
                            number,
                            match.start() + 1,
                            "plaintext-key",
                            f"{what} in plain text",
                            HINT,
                        )
                    )
                    break
    return found
