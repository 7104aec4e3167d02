"""``treadle keys generate DIR [--threshold N] [--name NAME]``: signing keys and the agents' trust root.
``treadle keys trust-root OUT PUB.json... [--threshold N]``: a trust root pinning existing public keys.

Writes, for each of N Ed25519 key pairs (N = the threshold, so the trust root
can be met):

    DIR/<name>.key         PEM PKCS#8 private key, mode 0600: the controller's signing_key
    DIR/<name>.pub.json    the public key as securesystemslib JSON, with its key id
    DIR/trust-root.json    {"threshold": N, "keys": {...}}: copy to every node (agent.toml trust_root)

With N > 1 the key files are ``<name>-1.key``, ``<name>-2.key``... Nothing is
ever overwritten: if any of the files exists the command changes nothing and
exits 2, since replacing a key silently would lock every node out.

``trust-root`` writes a trust root from ``*.pub.json`` files, for a key
rotation (README "Keys"): one listing the old and the new key while the
controller signs with both, then one with the new key alone.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from treadle.keygen import generate, trust_root


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keys = subparsers.add_parser(
        "keys",
        help="manage manifest signing keys",
        epilog="example:\n  treadle keys generate /etc/treadle/keys --threshold 2",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    gen = sub.add_parser(
        "generate",
        help="write Ed25519 signing keys and a trust root into DIR",
        description="Write Ed25519 signing key pairs (as many as --threshold) and a trust root into DIR.",
        epilog="examples:\n  treadle keys generate /etc/treadle/keys\n"
        "  treadle keys generate /etc/treadle/keys --threshold 2",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    gen.add_argument("dir", type=Path, metavar="DIR")
    gen.add_argument(
        "--threshold",
        type=int,
        default=1,
        help="signatures a manifest needs; this many key pairs are written",
    )
    gen.add_argument(
        "--name", default="treadle", help="file name stem of the key files (default: treadle)"
    )
    gen.set_defaults(func=_generate)
    root = sub.add_parser(
        "trust-root",
        help="write a trust root pinning existing public keys (for a key rotation)",
        description="Write a trust root OUT that pins the public keys PUB (*.pub.json from `treadle keys generate`).",
        epilog="example:\n  treadle keys trust-root trust-root.json keys/old.pub.json keys/new.pub.json --threshold 1",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    root.add_argument("out", type=Path, metavar="OUT")
    root.add_argument("pubs", type=Path, nargs="+", metavar="PUB")
    root.add_argument(
        "--threshold",
        type=int,
        default=1,
        help="distinct keys whose signatures a manifest needs (default: 1)",
    )
    root.set_defaults(func=lambda a: print(trust_root(a.out, a.pubs, threshold=a.threshold)) or 0)


def _generate(args: argparse.Namespace) -> int:
    paths = generate(args.dir, threshold=args.threshold, name=args.name)
    for p in paths:
        print(p)
    return 0
