"""Secret files in the fabric: `treadle secret`, `treadle validate` refusals, and the rendered manifest.

Real pyrage and the real CLI on a fabric in a temp dir; the plaintext marker
must never appear in what the controller side renders or prints.
"""

from __future__ import annotations

import base64
import json

import pyrage

NODE1, NODE2 = "sites/s1/c1/nodes/n1.yaml", "sites/s1/c1/nodes/n2.yaml"
MARKER = "PLAINTEXT-MARKER-a9e2"
KEY = "secrets/munge.key.age"


def _ids(n: int) -> list[pyrage.x25519.Identity]:
    return [pyrage.x25519.Identity.generate() for _ in range(n)]


def _setup(fabric, n1, n2, admin=None, *, n2_receives=True) -> None:  # type: ignore[no-untyped-def]
    secret = f'files:\n  /etc/munge/munge.key: {{secret: {KEY}, mode: "0400"}}\n'
    fabric.write(NODE1, f"kind: Node\naddress: 10.0.0.1\nidentity: {n1.to_public()}\n{secret}")
    fabric.write(
        NODE2,
        f"kind: Node\naddress: 10.0.0.2\nidentity: {n2.to_public()}\n"
        + (secret if n2_receives else ""),
    )
    if admin is not None:
        text = (fabric.root / "fabric.yaml").read_text()
        fabric.write("fabric.yaml", text + f"secrets:\n  admins: [{admin.to_public()}]\n")


def _encrypt(cli, fabric, tmp_path, text: str = f"{MARKER}\n"):  # type: ignore[no-untyped-def]
    plain = tmp_path / "plain"
    plain.write_text(text)
    return cli("secret", "encrypt", "munge.key", "--in", str(plain), "--repo", str(fabric.root))


def test_encrypt_renders_ciphertext_that_only_the_receiving_nodes_open(cli, fabric, tmp_path):
    n1, n2, admin = _ids(3)
    _setup(fabric, n1, n2, admin)
    done = _encrypt(cli, fabric, tmp_path)
    assert done.code == 0, done.err
    assert "3 recipients" in done.out and MARKER not in done.out + done.err
    stored = (fabric.root / KEY).read_bytes()
    assert (
        stored.startswith(b"-----BEGIN AGE ENCRYPTED FILE-----") and MARKER.encode() not in stored
    )
    listed = (fabric.root / "secrets/munge.key.recipients").read_text()
    assert {str(n1.to_public()), str(n2.to_public()), str(admin.to_public())} <= set(listed.split())
    assert cli("validate", str(fabric.root)).code == 0
    rendered = cli("render", str(fabric.root), "--node", "n1")
    assert rendered.code == 0 and MARKER not in rendered.out
    res = next(
        r for r in json.loads(rendered.out)["resources"] if r["path"] == "/etc/munge/munge.key"
    )
    assert res["content"] is None and res["mode"] == "0400"
    box = base64.b64decode(res["secret"]["age"])
    for who in (n1, n2, admin):
        assert pyrage.decrypt(box, [who]) == f"{MARKER}\n".encode()
    outsider = _ids(1)
    try:
        pyrage.decrypt(box, outsider)
        raise AssertionError("an outsider decrypted the secret")
    except pyrage.DecryptError:
        pass
    assert cli("secret", "show-recipients", "--repo", str(fabric.root)).code == 0


def test_encrypt_refuses_when_a_receiving_node_has_no_identity(cli, fabric, tmp_path):
    n1, n2 = _ids(2)
    _setup(fabric, n1, n2)
    fabric.write(
        NODE2, f"kind: Node\naddress: 10.0.0.2\nfiles:\n  /etc/munge/munge.key: {{secret: {KEY}}}\n"
    )
    done = _encrypt(cli, fabric, tmp_path)
    assert done.code == 2 and "n2" in done.err and "treadle-agent enroll" in done.err
    assert not (fabric.root / KEY).exists()


def test_validate_refuses_a_node_outside_the_recipients_at_the_secret_line(cli, fabric, tmp_path):
    n1, n2 = _ids(2)
    _setup(fabric, n1, n2, n2_receives=False)
    assert _encrypt(cli, fabric, tmp_path).code == 0  # to n1 only
    fabric.write(
        NODE2,
        f"kind: Node\naddress: 10.0.0.2\nidentity: {n2.to_public()}\nfiles:\n"
        f"  /etc/munge/munge.key: {{secret: {KEY}}}\n",
    )
    outcome = cli("validate", str(fabric.root))
    assert outcome.code == 1
    assert (
        f"{NODE2}:5:" in outcome.err
        and f"not encrypted to this node's identity {n2.to_public()}" in outcome.err
    )
    assert "treadle secret rekey" in outcome.err


def test_validate_refuses_a_receiving_node_without_identity_and_a_missing_ciphertext(cli, fabric):
    fabric.write(NODE1, f"kind: Node\naddress: 10.0.0.1\nfiles:\n  /etc/k: {{secret: {KEY}}}\n")
    fabric.write("secrets/munge.key.age", "age-encryption.org/v1\n")
    fabric.write("secrets/munge.key.recipients", f"{_ids(1)[0].to_public()}\n")
    err = cli("validate", str(fabric.root)).err
    assert f"{NODE1}:4:" in err and "this node has no identity to decrypt it" in err
    fabric.write(
        NODE1,
        f"kind: Node\naddress: 10.0.0.1\nidentity: {_ids(1)[0].to_public()}\n"
        "files:\n  /etc/k: {secret: secrets/gone.age}\n",
    )
    err = cli("validate", str(fabric.root)).err
    assert "secrets/gone.age:1: is not in the fabric repository" in err


def test_a_bad_recipients_line_is_located(cli, fabric):
    me = _ids(1)[0]
    fabric.write(
        NODE1,
        f"kind: Node\naddress: 10.0.0.1\nidentity: {me.to_public()}\nfiles:\n  /etc/k: {{secret: {KEY}}}\n",
    )
    fabric.write(KEY, "age-encryption.org/v1\n")
    fabric.write("secrets/munge.key.recipients", f"# ok\n{me.to_public()}\nssh-ed25519 AAAA\n")
    err = cli("validate", str(fabric.root)).err
    assert "secrets/munge.key.recipients:3: not an age X25519 recipient" in err


def test_rekey_after_a_node_is_retired_drops_it_and_keeps_the_others(cli, fabric, tmp_path):
    n1, n2, admin = _ids(3)
    _setup(fabric, n1, n2, admin)
    assert _encrypt(cli, fabric, tmp_path).code == 0
    fabric.remove(NODE2)  # retired: its file, and so its identity, leave the fabric
    shown = cli("secret", "show-recipients", "--repo", str(fabric.root))
    assert shown.code == 1 and f"{n2.to_public()}  EXTRA" in shown.out
    admin_file = tmp_path / "admin.age"
    admin_file.write_text(f"# admin\n{admin}\n")
    done = cli("secret", "rekey", "--identity", str(admin_file), "--repo", str(fabric.root))
    assert done.code == 0, done.err
    assert "re-encrypted to 2 recipients" in done.out and MARKER not in done.out + done.err
    assert str(n2.to_public()) not in (fabric.root / "secrets/munge.key.recipients").read_text()
    box = (fabric.root / KEY).read_bytes()
    assert pyrage.decrypt(box, [n1]) == f"{MARKER}\n".encode()
    try:
        pyrage.decrypt(box, [n2])
        raise AssertionError("the retired node still decrypts the rekeyed secret")
    except pyrage.DecryptError:
        pass
    assert cli("secret", "show-recipients", "--repo", str(fabric.root)).code == 0
    assert cli("validate", str(fabric.root)).code == 0


def test_rekey_with_an_identity_that_cannot_decrypt_is_refused(cli, fabric, tmp_path):
    n1, n2 = _ids(2)
    _setup(fabric, n1, n2)
    assert _encrypt(cli, fabric, tmp_path).code == 0
    before = (fabric.root / KEY).read_bytes()
    stranger = tmp_path / "stranger.age"
    stranger.write_text(f"{_ids(1)[0]}\n")
    done = cli("secret", "rekey", "--identity", str(stranger), "--repo", str(fabric.root))
    assert done.code == 2 and "cannot decrypt it" in done.err
    assert (fabric.root / KEY).read_bytes() == before


def test_an_incremental_render_picks_up_a_rekeyed_secret(cli, fabric, tmp_path):
    from treadle.fabric import WorkTreeSource, render_fabric

    n1, n2 = _ids(2)
    _setup(fabric, n1, n2)
    assert _encrypt(cli, fabric, tmp_path, "one\n").code == 0
    first = render_fabric(WorkTreeSource(fabric.root))
    assert first.ok, first.diagnostics
    assert _encrypt(cli, fabric, tmp_path, "two\n").code == 0
    again = render_fabric(WorkTreeSource(fabric.root), previous=first, changed_paths=[KEY])
    for node in ("n1", "n2"):
        res = next(
            r
            for r in again.nodes[node].manifest["resources"]
            if r["path"] == "/etc/munge/munge.key"
        )
        assert (
            pyrage.decrypt(base64.b64decode(res["secret"]["age"]), [n1 if node == "n1" else n2])
            == b"two\n"
        )
