"""``treadle secret encrypt | rekey | show-recipients``: secret files, encrypted to exactly the nodes that receive them.

A secret ``secrets/<name>.age`` is encrypted to the ``identity:`` of every node
whose files name it (``secret: secrets/<name>.age``), read from the fabric's
work tree, plus fabric.yaml's ``secrets.admins``; the list is written beside it
as ``secrets/<name>.recipients``. ``encrypt`` reads the plaintext from a file
or standard input; ``rekey`` decrypts with an admin's identity file and
encrypts again to who should read it now (a node added, retired, or
re-enrolled). No command prints a plaintext; the controller never runs them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from treadle.errors import UsageError
from treadle.fabric import WorkTreeSource
from treadle.fabric.encrypt import encrypt_secret, recipients_for
from treadle.fabric.render import secret_receivers
from treadle.fabric.secrets import (
    SECRET_DIR,
    SecretFileError,
    parse_ciphertext,
    parse_recipients,
    recipients_path,
)

_RECIPIENTS_HELP = (
    "the nodes whose files name the secret (their identity:), and fabric.yaml secrets.admins"
)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "secret",
        help="encrypt secret files to the nodes that receive them (age)",
        description="Manage secrets/<name>.age and secrets/<name>.recipients in a fabric repository.\n"
        f"Recipients are {_RECIPIENTS_HELP}.",
        epilog="examples:\n  treadle secret encrypt munge.key --in /root/munge.key --repo fabric\n"
        "  treadle secret rekey --identity ~/.config/treadle/admin.age --repo fabric\n"
        "  treadle secret show-recipients --repo fabric",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ssub = p.add_subparsers(dest="secret_command", metavar="COMMAND", required=True)
    e = ssub.add_parser(
        "encrypt",
        help="encrypt a plaintext to the secret's recipients",
        description=f"Write secrets/<name>.age, encrypted to {_RECIPIENTS_HELP},\n"
        "and secrets/<name>.recipients. The plaintext is read from --in or standard input.",
        epilog="example:\n  treadle secret encrypt munge.key --in /root/munge.key --repo fabric",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    e.add_argument("name", metavar="NAME", help="the secret: munge.key or secrets/munge.key.age")
    e.add_argument(
        "--in", dest="infile", type=Path, help="the plaintext file (default: standard input)"
    )
    r = ssub.add_parser(
        "rekey",
        help="re-encrypt secrets to who should read them now",
        description="Decrypt each secret with an admin identity and encrypt it again to\n"
        f"{_RECIPIENTS_HELP}: after a node is added, retired or re-enrolled.",
        epilog="example:\n  treadle secret rekey --identity ~/.config/treadle/admin.age --repo fabric",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    r.add_argument(
        "names", nargs="*", metavar="NAME", help="the secrets (default: every secrets/*.age)"
    )
    r.add_argument(
        "--identity",
        required=True,
        type=Path,
        help="an admin age identity file (age-keygen format)",
    )
    s = ssub.add_parser(
        "show-recipients",
        help="who each secret is encrypted to, and who should be",
        description="For each secret: the recipients listed, and the ones missing or extra\n"
        "compared with who receives it. Exit 1 when any differ (then rekey).",
        epilog="example:\n  treadle secret show-recipients --repo fabric",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    s.add_argument("names", nargs="*", metavar="NAME", help="the secrets (default: every one)")
    for q in (e, r, s):
        q.add_argument(
            "--repo",
            default=".",
            metavar="DIR",
            help="the fabric repository's work tree (default: .)",
        )
    e.set_defaults(func=cmd_encrypt)
    r.set_defaults(func=cmd_rekey)
    s.set_defaults(func=cmd_show)


def _name(name: str) -> str:
    full = name if name.startswith(SECRET_DIR) else f"{SECRET_DIR}{name}.age"
    if not full.endswith(".age") or "/" in full[len(SECRET_DIR) :] or full == f"{SECRET_DIR}.age":
        raise UsageError(f"{name!r}: a secret is secrets/<name>.age (give <name> or the path)")
    return full


def cmd_encrypt(args: argparse.Namespace) -> int:
    name, repo = _name(args.name), Path(args.repo)
    receivers, fabric = secret_receivers(WorkTreeSource(repo))
    wanted = recipients_for(args.repo, name, receivers, fabric)
    try:
        plaintext = args.infile.read_bytes() if args.infile else sys.stdin.buffer.read()
    except OSError as e:
        raise UsageError(f"{args.infile}: cannot read the plaintext: {e.strerror}") from e
    encrypt_secret(repo, name, plaintext, wanted)
    print(
        f"{name}: encrypted to {len(wanted)} recipients ({', '.join(wanted.values())}); commit it with "
        f"{recipients_path(name)}"
    )
    return 0


def _existing(repo: Path, names: list[str]) -> list[str]:
    if names:
        return [_name(n) for n in names]
    return (
        sorted(f"{SECRET_DIR}{p.name}" for p in (repo / SECRET_DIR).glob("*.age"))
        if (repo / SECRET_DIR).is_dir()
        else []
    )


def cmd_rekey(args: argparse.Namespace) -> int:
    import pyrage

    repo = Path(args.repo)
    try:
        identities = [
            pyrage.x25519.Identity.from_str(line.strip())
            for line in args.identity.read_text().splitlines()
            if line.strip() and not line.startswith("#")
        ]
    except OSError as e:
        raise UsageError(f"{args.identity}: cannot read the identity: {e.strerror}") from e
    except pyrage.IdentityError as e:
        raise UsageError(
            f"{args.identity}: not an age X25519 identity file (age-keygen format)"
        ) from e
    receivers, fabric = secret_receivers(WorkTreeSource(repo))
    names = _existing(repo, args.names)
    if not names:
        raise UsageError(f"{repo / SECRET_DIR}: no secrets/*.age to rekey")
    for name in names:
        wanted = recipients_for(args.repo, name, receivers, fabric)
        try:
            box = parse_ciphertext(name, (repo / name).read_bytes())
            plaintext = pyrage.decrypt(box, identities)
        except OSError as e:
            raise UsageError(f"{repo / name}: cannot read: {e.strerror}") from e
        except SecretFileError as e:
            raise UsageError(str(e)) from e
        except pyrage.DecryptError as e:
            raise UsageError(
                f"{repo / name}: {args.identity} cannot decrypt it (fix: use an identity of "
                "fabric.yaml secrets.admins, or encrypt the plaintext again)"
            ) from e
        encrypt_secret(repo, name, plaintext, wanted)
        print(f"{name}: re-encrypted to {len(wanted)} recipients ({', '.join(wanted.values())})")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    repo = Path(args.repo)
    receivers, fabric = secret_receivers(WorkTreeSource(repo))
    names = sorted(set(_existing(repo, args.names)) | (set() if args.names else set(receivers)))
    differ = False
    for name in names:
        try:
            listed = parse_recipients(
                recipients_path(name), (repo / recipients_path(name)).read_bytes()
            )
        except (OSError, SecretFileError):
            listed = ()
        nodes = receivers.get(name, [])
        admins = (
            (fabric.get("secrets") or {}).get("admins") or [] if isinstance(fabric, dict) else []
        )
        wanted = {ident: f"node {node}" for node, ident in nodes if ident} | {
            a: "admin" for a in admins if a
        }
        print(f"{name}:")
        for r in listed:
            print(f"  {r}  {wanted.get(r, 'EXTRA: no longer receives it (rekey)')}")
        for r, who in wanted.items():
            if r not in listed:
                print(f"  {r}  MISSING: {who} cannot decrypt it (rekey)")
        for node, ident in nodes:
            if ident is None:
                print(f"  (none)  MISSING: node {node} has no identity: (treadle-agent enroll)")
        differ = differ or set(listed) != set(wanted) or any(i is None for _, i in nodes)
    return 1 if differ else 0
