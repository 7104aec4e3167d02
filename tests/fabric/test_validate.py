"""`treadle validate`: one test per class of bad input, each with its file:line:col and message."""

from __future__ import annotations

import json
import os

import pytest

NODE1 = "sites/s1/c1/nodes/n1.yaml"


def invalid(cli, fabric, *extra: str) -> str:
    """Run validate, assert exit 1, return the printed diagnostics."""
    outcome = cli("validate", str(fabric.root), *extra)
    assert outcome.code == 1, outcome
    return outcome.err


def test_valid_fabric_exits_0(cli, fabric):
    outcome = cli("validate", str(fabric.root))
    assert (outcome.code, outcome.out.strip()) == (0, "ok: 2 nodes valid")


def test_yaml_syntax_error_is_located(cli, fabric):
    fabric.write(NODE1, "kind: Node\naddress: [10.0.0.1\n")
    assert f"{NODE1}:3:1: while parsing a flow sequence" in invalid(cli, fabric)


def test_duplicate_key_is_located_at_the_second_key(cli, fabric):
    fabric.write(NODE1, "kind: Node\naddress: 10.0.0.1\naddress: 10.0.0.9\n")
    assert f"{NODE1}:3:1: duplicate key 'address' (first at line 2)" in invalid(cli, fabric)


def test_schema_violation_names_the_json_path(cli, fabric):
    fabric.write(NODE1, "kind: Node\naddress: 10.0.0.1\nservices:\n  sshd: {state: sleeping}\n")
    err = invalid(cli, fabric)
    assert f"{NODE1}:4:10: $.services.sshd.state: " in err
    assert "sleeping" in err


def test_unknown_field_is_located_at_the_field(cli, fabric):
    fabric.write(NODE1, "kind: Node\naddress: 10.0.0.1\npackges: {vim: {}}\n")
    assert (
        f"{NODE1}:3:1: $: Additional properties are not allowed ('packges' was unexpected)"
        in invalid(cli, fabric)
    )


def test_unknown_profile_is_reported_at_the_line_that_names_it(cli, fabric):
    fabric.write(NODE1, "kind: Node\naddress: 10.0.0.1\nprofiles:\n  - base\n  - gpu\n")
    assert (
        f"{NODE1}:5:5: unknown profile 'gpu' (hint: create profiles/gpu.yaml or fix the name; known: base)"
        in invalid(cli, fabric)
    )


def test_profile_cycle_is_reported_with_its_chain(cli, fabric):
    fabric.write("profiles/a.yaml", "kind: Profile\nprofiles: [b]\n")
    fabric.write("profiles/b.yaml", "kind: Profile\nprofiles: [a]\n")
    fabric.write(NODE1, "kind: Node\naddress: 10.0.0.1\nprofiles: [a]\n")
    assert "profiles/b.yaml:2:12: profile cycle: a -> b -> a" in invalid(cli, fabric)


def test_unknown_template_is_reported_where_the_file_names_it(cli, fabric):
    fabric.write(NODE1, "kind: Node\naddress: 10.0.0.1\nfiles:\n  /etc/motd: {template: motd.j2}\n")
    assert (
        f"{NODE1}:4:15: unknown template 'motd.j2' (node n1) (hint: add templates/motd.j2"
        in invalid(cli, fabric)
    )


def test_template_error_names_the_template_line_and_the_node(cli, fabric):
    fabric.write("templates/chrony.conf.j2", "# chrony\n{{ data.ntp.sevrers | join(' ') }}\n")
    err = invalid(cli, fabric)
    assert (
        "templates/chrony.conf.j2:2:1: template error: 'dict object' has no attribute 'sevrers' (rendering n1 and 1 other nodes)"
        in err
    )


def test_template_syntax_error_is_located(cli, fabric):
    fabric.write("templates/chrony.conf.j2", "line one\n{% for s in data.ntp.servers %}\n")
    err = invalid(cli, fabric)
    assert "templates/chrony.conf.j2:2:1: template syntax error: Unexpected end of template" in err
    assert (
        len(err.strip().splitlines()) == 2
    )  # once, not once more per node that uses it; then the summary line


def test_template_cannot_include_outside_templates(cli, fabric):
    fabric.write("templates/chrony.conf.j2", "{% include '../fabric.yaml' %}\n")
    assert "templates/chrony.conf.j2:1:1: unknown template '../fabric.yaml' included" in invalid(
        cli, fabric
    )


def test_duplicate_node_names_are_reported_in_both_clusters(cli, fabric):
    fabric.write("sites/s1/c2/cluster.yaml", "kind: Cluster\n")
    fabric.write("sites/s1/c2/nodes/n1.yaml", "kind: Node\naddress: 10.0.1.1\n")
    err = invalid(cli, fabric)
    assert f"{NODE1}:1:1: name 'n1' is also used by sites/s1/c2/nodes/n1.yaml" in err
    assert f"sites/s1/c2/nodes/n1.yaml:1:1: name 'n1' is also used by {NODE1}" in err


def test_duplicate_addresses_are_reported_at_the_address_lines(cli, fabric):
    fabric.write("sites/s1/c1/nodes/n2.yaml", "kind: Node\n\naddress: 10.0.0.1\n")
    err = invalid(cli, fabric)
    assert f"{NODE1}:2:1: address '10.0.0.1' is also used by sites/s1/c1/nodes/n2.yaml" in err
    assert "sites/s1/c1/nodes/n2.yaml:3:1: address '10.0.0.1' is also used by" in err


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("etc/motd", "is relative"),
        ("/etc/../root/.ssh/authorized_keys", "contains '..'"),
        ("/etc//motd", "is not normalized (write /etc/motd)"),
        (
            "/boot/grub/grub.cfg",
            "is outside the allowed roots (/etc, /usr/local, /opt, /var/lib, /srv)",
        ),
        ("/etc/mo\\0td", "contains a NUL byte"),
    ],
)
def test_resource_path_policy(cli, fabric, path, why):
    fabric.write(NODE1, f'kind: Node\naddress: 10.0.0.1\nfiles:\n  "{path}": {{content: x}}\n')
    err = invalid(cli, fabric)
    assert f"{NODE1}:4:3: file path" in err
    assert why in err


def test_allowed_roots_come_from_fabric_yaml(cli, fabric):
    fabric.write(NODE1, "kind: Node\naddress: 10.0.0.1\ndirectories:\n  /data/x: {}\n")
    assert "outside the allowed roots" in invalid(cli, fabric)
    text = (fabric.root / "fabric.yaml").read_text() + "policy:\n  allowed_roots: [/etc, /data]\n"
    fabric.write("fabric.yaml", text)
    assert cli("validate", str(fabric.root)).code == 0


def test_integer_mode_is_refused_with_a_quoting_hint(cli, fabric):
    fabric.write(
        NODE1, "kind: Node\naddress: 10.0.0.1\nfiles:\n  /etc/chrony.conf:\n    mode: 0600\n"
    )
    err = invalid(cli, fabric)
    assert f"{NODE1}:5:5: $.files['/etc/chrony.conf'].mode: mode 600 is an integer" in err
    assert '(hint: quote it: mode: "0600")' in err


def test_unknown_lifecycle_state_is_refused(cli, fabric):
    fabric.write(NODE1, "kind: Node\naddress: 10.0.0.1\nlifecycle: broken\n")
    assert (
        f"{NODE1}:3:1: unknown lifecycle state 'broken' (hint: one of provisioning, production"
        in invalid(cli, fabric)
    )


def test_file_with_template_and_content_after_merging_is_refused(cli, fabric):
    fabric.write(NODE1, "kind: Node\naddress: 10.0.0.1\nfiles:\n  /etc/chrony.conf: {content: x}\n")
    err = invalid(cli, fabric)
    assert (
        f"{NODE1}:4:22: file /etc/chrony.conf has both template and content after merging (node n1)"
        in err
    )


def test_file_with_neither_template_nor_content_is_refused(cli, fabric):
    fabric.write(NODE1, 'kind: Node\naddress: 10.0.0.1\nfiles:\n  /etc/motd: {mode: "0644"}\n')
    assert f"{NODE1}:4:3: file /etc/motd has neither template nor content (node n1)" in invalid(
        cli, fabric
    )


def test_symlink_in_the_work_tree_is_refused(cli, fabric):
    os.symlink("base.yaml", fabric.root / "profiles" / "alias.yaml")
    assert "profiles/alias.yaml:1:1: symlink in the fabric repository" in invalid(cli, fabric)


def test_submodules_are_refused(cli, fabric):
    fabric.write(".gitmodules", '[submodule "x"]\n  path = x\n  url = https://example.org/x.git\n')
    (fabric.root / "vendor" / ".git").mkdir(parents=True)
    err = invalid(cli, fabric)
    assert ".gitmodules:1:1: the fabric repository declares submodules" in err
    assert "vendor:1:1: submodule in the fabric repository" in err


def test_node_file_outside_nodes_is_reported(cli, fabric):
    fabric.write("sites/s1/c1/n9.yaml", "kind: Node\naddress: 10.0.0.9\n")
    err = invalid(cli, fabric)
    assert (
        "sites/s1/c1/n9.yaml:1:1: a node file outside nodes/ (it would never be rendered) "
        "(hint: move it to sites/s1/c1/nodes/n9.yaml)"
    ) in err


def test_cluster_without_cluster_yaml_is_reported(cli, fabric):
    fabric.write("sites/s1/c9/nodes/n9.yaml", "kind: Node\naddress: 10.0.0.9\n")
    assert "sites/s1/c9/cluster.yaml:1:1: cluster s1/c9 has nodes but no cluster.yaml" in invalid(
        cli, fabric
    )


def test_oversized_file_is_refused(cli, fabric):
    fabric.write(
        "fabric.yaml",
        (fabric.root / "fabric.yaml").read_text() + "limits: {max_file_bytes: 1024}\n",
    )
    fabric.write(NODE1, "kind: Node\naddress: 10.0.0.1\ndescription: " + "x" * 2000 + "\n")
    err = invalid(cli, fabric)
    assert f"{NODE1}:1:1: file is " in err
    assert "bytes, more than limits.max_file_bytes 1024" in err


def test_oversized_rendered_manifest_is_refused(cli, fabric):
    fabric.write(
        "fabric.yaml",
        (fabric.root / "fabric.yaml").read_text() + "limits: {max_rendered_bytes: 1024}\n",
    )
    fabric.write(
        NODE1, "kind: Node\naddress: 10.0.0.1\nfiles:\n  /etc/big: {content: " + "y" * 1500 + "}\n"
    )
    assert f"{NODE1}:1:1: the rendered manifest is" in invalid(cli, fabric)


def test_alias_bomb_in_a_fabric_file_is_refused(cli, fabric):
    rows = ["kind: Node", "address: 10.0.0.1", "data:", '  a: &a ["x","x","x","x","x","x","x","x"]']
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        rows.append(f"  {name}: &{name} [" + ",".join([f"*{prev}"] * 8) + "]")
    fabric.write(NODE1, "\n".join(rows) + "\n")
    assert f"{NODE1}:10:13: aliases expand to more than" in invalid(cli, fabric)


def test_missing_fabric_yaml_is_reported(cli, fabric):
    fabric.remove("fabric.yaml")
    assert "fabric.yaml:1:1: fabric.yaml is missing" in invalid(cli, fabric)


def test_too_many_nodes_out_of_production_are_reported(cli, fabric):
    fabric.write(
        "fabric.yaml",
        (fabric.root / "fabric.yaml").read_text() + "lifecycle: {max_out_of_production: 0.4}\n",
    )
    fabric.write(NODE1, "kind: Node\naddress: 10.0.0.1\nlifecycle: draining\n")
    err = invalid(cli, fabric)
    assert (
        f"{NODE1}:3:1: cluster s1/c1 would have 1 of 2 non-retired nodes outside production, more than"
        in err
    )


def test_illegal_lifecycle_transition_from_the_base_revision(cli, fabric):
    fabric.write(NODE1, "kind: Node\naddress: 10.0.0.1\nlifecycle: provisioning\n")
    fabric.commit("provisioning")
    fabric.write(NODE1, "kind: Node\naddress: 10.0.0.1\nlifecycle: maintenance\n")
    fabric.commit("maintenance")
    err = invalid(cli, fabric, "--rev", "HEAD", "--base", "HEAD~1")
    assert (
        f"{NODE1}:3:1: lifecycle provisioning -> maintenance is not allowed "
        "(hint: from provisioning a node may go to: production, retired)"
    ) in err
    assert cli("validate", str(fabric.root), "--rev", "HEAD").code == 0


def test_fabric_yaml_can_override_the_transitions(cli, fabric):
    fabric.write(NODE1, "kind: Node\naddress: 10.0.0.1\nlifecycle: provisioning\n")
    fabric.commit("provisioning")
    text = (
        fabric.root / "fabric.yaml"
    ).read_text() + "lifecycle:\n  transitions: {provisioning: [maintenance]}\n"
    fabric.write("fabric.yaml", text)
    fabric.write(NODE1, "kind: Node\naddress: 10.0.0.1\nlifecycle: maintenance\n")
    assert cli("validate", str(fabric.root), "--base", "HEAD").code == 0


def test_several_errors_are_all_reported_in_one_run(cli, fabric):
    fabric.write(NODE1, "kind: Node\naddress: 10.0.0.2\nprofiles: [nope]\n")
    fabric.write(
        "profiles/base.yaml", "kind: Profile\nfiles:\n  /etc/x: {content: a, mode: 0644}\n"
    )
    fabric.write(
        "sites/s1/site.yaml", "kind: Site\nprofiles: [base]\nlabels: {site: s1}\nlabels: {}\n"
    )
    err = invalid(cli, fabric)
    lines = err.strip().splitlines()
    assert (
        lines.pop()
        == "invalid: 6 problem(s); 0 node(s) rendered and checked, 2 not rendered because a file they use has errors"
    )
    assert len(lines) >= 4
    assert any("unknown profile 'nope'" in line for line in lines)
    assert any("mode 644 is an integer" in line for line in lines)
    assert any("duplicate key 'labels'" in line for line in lines)
    assert any("address '10.0.0.2' is also used" in line for line in lines)
    assert lines == sorted(lines)


def test_json_format_lists_diagnostics(cli, fabric):
    fabric.write(NODE1, "kind: Node\naddress: 10.0.0.1\nlifecycle: broken\n")
    outcome = cli("validate", str(fabric.root), "--format", "json")
    report = json.loads(outcome.out)
    assert outcome.code == 1
    assert report["ok"] is False
    assert report["diagnostics"][0] | {"hint": ""} == {
        "file": NODE1,
        "line": 3,
        "col": 1,
        "code": "lifecycle",
        "message": "unknown lifecycle state 'broken'",
        "hint": "",
    }


def test_templates_run_sandboxed(cli, fabric):
    fabric.write("templates/chrony.conf.j2", "{{ data.__class__.__mro__ }}\n")
    assert (
        "templates/chrony.conf.j2:1:1: template error: access to attribute '__class__'"
        in invalid(cli, fabric)
    )


def test_templates_cannot_modify_the_shared_data(cli, fabric):
    fabric.write("templates/chrony.conf.j2", "{{ data.ntp.servers.append('evil.example') }}\n")
    assert (
        "templates/chrony.conf.j2:1:1: template error: access to attribute 'append' of 'list' object is unsafe"
        in invalid(cli, fabric)
    )


def test_fabric_document_at_the_top_level_is_reported_but_tool_configs_are_not(cli, fabric):
    fabric.write(".gitlab-ci.yml", "stages: [validate]\n")
    fabric.write("mkdocs.yml", "site_name: docs\n")
    assert cli("validate", str(fabric.root)).code == 0
    fabric.write("n9.yaml", "kind: Node\naddress: 10.0.0.9\n")
    expected = (
        "n9.yaml:1:1: a Node file at the top level is not part of the fabric "
        "(hint: move it to sites/<site>/<cluster>/nodes/<node>.yaml)"
    )
    assert expected in invalid(cli, fabric)


def test_templates_cannot_build_huge_strings(cli, fabric):
    fabric.write("templates/chrony.conf.j2", "{{ 'x' * 1000000000 }}\n")
    assert "templates/chrony.conf.j2:1:1: template error: repetition builds more than" in invalid(
        cli, fabric
    )


def test_a_base_whose_node_file_does_not_parse_assumes_no_lifecycle_transition(cli, fabric):
    fabric.write(NODE1, "kind: Node\naddress: 10.0.0.1\nlifecycle: maintenance\n")
    fabric.commit("maintenance")
    fabric.write(
        NODE1, "kind: Node\naddress: [10.0.0.1\nlifecycle: maintenance\n"
    )  # a YAML syntax error
    fabric.commit("broken")
    fabric.write(NODE1, "kind: Node\naddress: 10.0.0.1\nlifecycle: maintenance\n")
    fabric.commit("revert the syntax error")
    # The revert is valid against the broken base: its state there is unknown, not "production".
    done = cli("validate", str(fabric.root), "--rev", "HEAD", "--base", "HEAD~1")
    assert done.code == 0, done


def test_setuid_mode_is_refused_unless_policy_special_modes_allows_the_path(cli, fabric):
    fabric.write(
        NODE1,
        'kind: Node\naddress: 10.0.0.1\nfiles:\n  /usr/local/bin/tool:\n    content: x\n    mode: "4755"\n',
    )
    err = invalid(cli, fabric)
    assert (
        f"{NODE1}:6:5: file '/usr/local/bin/tool': mode 4755 has setuid, setgid or sticky bits"
        in err
    )
    assert "policy.special_modes" in err
    text = (
        fabric.root / "fabric.yaml"
    ).read_text() + "policy:\n  special_modes: [/usr/local/bin/*]\n"
    fabric.write("fabric.yaml", text)
    assert cli("validate", str(fabric.root)).code == 0


def test_rendered_manifest_carries_the_special_modes_policy_for_the_agent_only_where_it_is_used(
    cli, fabric
):
    text = (
        fabric.root / "fabric.yaml"
    ).read_text() + "policy:\n  special_modes: [/usr/local/bin/*]\n"
    fabric.write("fabric.yaml", text)
    outcome = cli("render", str(fabric.root), "--node", "n1")
    assert outcome.code == 0, outcome
    assert "special_modes" not in json.loads(outcome.out)["metadata"]
    fabric.write(
        NODE1,
        'kind: Node\naddress: 10.0.0.1\nfiles:\n  /usr/local/bin/tool:\n    content: x\n    mode: "4755"\n',
    )
    outcome = cli("render", str(fabric.root), "--node", "n1")
    assert outcome.code == 0, outcome
    assert json.loads(outcome.out)["metadata"]["special_modes"] == ["/usr/local/bin/*"]


def _recipient() -> str:
    import pyrage

    return str(pyrage.x25519.Identity.generate().to_public())


def test_a_node_identity_is_accepted_when_it_is_an_age_recipient(cli, fabric):
    fabric.write(NODE1, f"kind: Node\naddress: 10.0.0.1\nidentity: {_recipient()}\n")
    assert cli("validate", str(fabric.root)).code == 0


def test_a_node_identity_that_is_not_an_age_recipient_is_located(cli, fabric):
    fabric.write(NODE1, "kind: Node\naddress: 10.0.0.1\nidentity: AGE-SECRET-KEY-1QQQ\n")
    assert f"{NODE1}:3:" in invalid(cli, fabric)


def test_two_nodes_with_one_identity_are_reported_at_the_identity_lines(cli, fabric):
    same = _recipient()
    fabric.write(NODE1, f"kind: Node\naddress: 10.0.0.1\nidentity: {same}\n")
    fabric.write(
        "sites/s1/c1/nodes/n2.yaml", f"kind: Node\naddress: 10.0.0.2\n\nidentity: {same}\n"
    )
    err = invalid(cli, fabric)
    assert f"{NODE1}:3:1: identity '{same}' is also used by sites/s1/c1/nodes/n2.yaml" in err
    assert "sites/s1/c1/nodes/n2.yaml:4:1: identity" in err and "treadle-agent enroll" in err


def _age_identity() -> str:
    import pyrage

    return str(pyrage.x25519.Identity.generate())


def test_plaintext_private_keys_anywhere_in_the_repo_are_located_and_never_echoed(cli, fabric):
    age_key = _age_identity()
    fabric.write("files/munge.key", "# pasted by mistake\n" + age_key + "\n")
    fabric.write(
        "notes/tls.pem",
        "\n\n-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEI\n-----END EC PRIVATE KEY-----\n",
    )
    fabric.write("notes/ssh", "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXk\n")
    fabric.write(NODE1, f"kind: Node\naddress: 10.0.0.1\ndata:\n  k: '  {age_key.lower()}'\n")
    err = invalid(cli, fabric)
    assert "files/munge.key:2:1: an age identity in plain text" in err
    assert "notes/tls.pem:3:1: a PEM or OpenSSH private key in plain text" in err
    assert "notes/ssh:1:1: a PEM or OpenSSH private key in plain text" in err
    assert f"{NODE1}:4:" in err and "rotate the key" in err
    assert age_key not in err and age_key.lower() not in err and "MHcCAQEEI" not in err


def test_public_keys_and_mentions_of_key_formats_pass(cli, fabric):
    fabric.write("files/README", "AGE-SECRET-KEY-1 lines and -----BEGIN PUBLIC KEY----- are fine\n")
    fabric.write("files/cert.pem", "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    assert cli("validate", str(fabric.root)).code == 0


def test_a_plaintext_key_is_refused_in_json_output_too(cli, fabric):
    fabric.write("files/k", "-----BEGIN RSA PRIVATE KEY-----\n")
    outcome = cli("validate", str(fabric.root), "--format", "json")
    report = json.loads(outcome.out)
    assert outcome.code == 1 and not report["ok"]
    assert [(d["file"], d["line"], d["code"]) for d in report["diagnostics"]] == [
        ("files/k", 1, "plaintext-key")
    ]
