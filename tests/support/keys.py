"""The controller's signing key as `treadle keys generate` writes it, for tests that start a controller by hand."""

from __future__ import annotations

from pathlib import Path


def write_signing_key(path: Path) -> Path:
    """A new Ed25519 private key at ``path`` (PKCS#8 PEM, unencrypted: the format the controller reads); ``path``.

    Why not `treadle keys generate`: a test that needs only the controller's key
    saves a process per test, and writes it where its controller.toml points.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path
