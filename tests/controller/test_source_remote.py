"""Fetching and pushing over ssh and http(s) with credentials, against real servers on 127.0.0.1.

ssh: OpenSSH's sshd with a deploy key; the server's host key must be in
~/.ssh/known_hosts (libgit2 reads it under its home directory, pointed at a
temp dir here). http: git's own http-backend behind Basic authentication,
the way a forge asks for a token. Every refusal is checked to end with a
clear SourceError, never a hang (libgit2 asks again after a refused
credential).
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pygit2
import pytest

from support.git_servers import HttpGitServer, SshGitServer, make_tls
from treadle.daemon import config as config_mod
from treadle.daemon.fetch import GitCredentials, GitSource, set_timeouts
from treadle.errors import SourceError, UsageError
from treadle.rollout.revert import write_revert_branch

TOKEN = "tok-3f9c2a7e"


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    """libgit2's home directory (where it reads .ssh/known_hosts), a temp dir for the test."""
    saved = pygit2.settings.homedir
    path = tmp_path / "home"
    (path / ".ssh").mkdir(parents=True)
    pygit2.settings.homedir = str(path)
    yield path
    pygit2.settings.homedir = saved


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[SshGitServer]:
    server = SshGitServer(tmp_path / "sshd")
    yield server
    server.stop()


@pytest.fixture
def http_git(repo, tmp_path: Path) -> Iterator[HttpGitServer]:
    server = HttpGitServer(repo.bare.parent, "deploy", TOKEN)
    yield server
    server.stop()


def _trust(home: Path, line: str) -> None:
    (home / ".ssh" / "known_hosts").write_text(line)


def test_ssh_fetch_with_a_deploy_key_and_a_known_host(repo, sshd, home, tmp_path: Path) -> None:
    repo.write("a.txt", "1\n")
    head = repo.commit_and_push("first")
    _trust(home, sshd.known_hosts_line())
    source = GitSource(
        sshd.url(repo.bare),
        "main",
        tmp_path / "state",
        GitCredentials(ssh_key_file=sshd.client_key),
    )
    assert source.fetch() == head


@pytest.mark.parametrize("known", ["missing", "another key"])
def test_ssh_server_whose_host_key_is_not_known_is_refused(
    repo, sshd, home, tmp_path: Path, known: str
) -> None:
    repo.write("a.txt", "1\n")
    repo.commit_and_push("first")
    if known == "another key":  # what a man in the middle would present
        _trust(home, sshd.known_hosts_line(sshd.other_key))
    source = GitSource(
        sshd.url(repo.bare),
        "main",
        tmp_path / "state",
        GitCredentials(ssh_key_file=sshd.client_key),
    )
    with pytest.raises(SourceError, match="known_hosts"):
        source.fetch()
    assert source.repo.references.get(source.tracking_ref) is None  # nothing was fetched


def test_ssh_key_the_server_does_not_accept_fails_once_with_a_clear_error(
    repo, sshd, home, tmp_path: Path
) -> None:
    repo.write("a.txt", "1\n")
    repo.commit_and_push("first")
    _trust(home, sshd.known_hosts_line())
    source = GitSource(
        sshd.url(repo.bare), "main", tmp_path / "state", GitCredentials(ssh_key_file=sshd.other_key)
    )
    with pytest.raises(SourceError, match="refused the ssh key"):
        source.fetch()


def test_revert_branch_is_pushed_over_ssh_with_the_deploy_key(
    repo, sshd, home, tmp_path: Path
) -> None:
    repo.write("a.txt", "good\n")
    repo.commit_and_push("good")
    repo.write("a.txt", "bad\n")
    bad = repo.commit_and_push("bad change")
    _trust(home, sshd.known_hosts_line())
    creds = GitCredentials(ssh_key_file=sshd.client_key)
    source = GitSource(sshd.url(repo.bare), "main", tmp_path / "state", creds)
    source.fetch()
    branch = write_revert_branch(
        source.path, source.url, bad, source.head(), "canary failed", creds
    )
    upstream = pygit2.Repository(str(repo.bare))
    pushed = upstream.references.get(f"refs/heads/{branch.name}")
    assert pushed is not None and str(pushed.target) == branch.commit
    assert upstream[pushed.target].tree["a.txt"].data == b"good\n"


def test_http_fetch_and_revert_push_with_a_token(repo, http_git, tmp_path: Path) -> None:
    repo.write("a.txt", "good\n")
    repo.commit_and_push("good")
    repo.write("a.txt", "bad\n")
    bad = repo.commit_and_push("bad change")
    token = tmp_path / "token"
    token.write_text(f"{TOKEN}\n")
    creds = GitCredentials(https_token_file=token)
    source = GitSource(http_git.url(repo.bare, user="deploy"), "main", tmp_path / "state", creds)
    assert source.fetch() == bad
    branch = write_revert_branch(source.path, source.url, bad, bad, "canary failed", creds)
    assert pygit2.Repository(str(repo.bare)).references.get(f"refs/heads/{branch.name}") is not None


def test_http_token_is_read_at_every_fetch_so_it_can_be_rotated(
    repo, http_git, tmp_path: Path
) -> None:
    repo.write("a.txt", "1\n")
    repo.commit_and_push("first")
    token = tmp_path / "token"
    token.write_text("expired-token")
    source = GitSource(
        http_git.url(repo.bare, user="deploy"),
        "main",
        tmp_path / "state",
        GitCredentials(https_token_file=token),
    )
    with pytest.raises(SourceError, match="refused the token"):
        source.fetch()
    token.write_text(TOKEN)
    assert source.fetch() == repo.git("rev-parse", "HEAD")


def test_http_server_asking_for_credentials_the_controller_lacks(
    repo, http_git, tmp_path: Path
) -> None:
    repo.write("a.txt", "1\n")
    repo.commit_and_push("first")
    with pytest.raises(SourceError, match="https_token_file"):
        GitSource(http_git.url(repo.bare), "main", tmp_path / "state").fetch()


@pytest.fixture
def https_git(repo, tmp_path: Path) -> Iterator[tuple[HttpGitServer, Path]]:
    """The token-protected git server over TLS, its certificate signed by a private CA; (server, ca.pem)."""
    ca, cert, key = make_tls(tmp_path / "tls")
    server = HttpGitServer(repo.bare.parent, "deploy", TOKEN, tls=(cert, key))
    yield server, ca
    server.stop()


def _fetch_in_child(
    url: str, state: Path, token: Path, ca: Path | None
) -> subprocess.CompletedProcess[str]:
    """Fetch in a fresh interpreter: a CA added to libgit2's TLS context cannot be removed again."""
    code = (
        "import sys; from pathlib import Path; from treadle.daemon.fetch import GitCredentials, GitSource\n"
        "from treadle.errors import SourceError\n"
        "ca = Path(sys.argv[4]) if sys.argv[4] else None\n"
        "try:\n"
        "    creds = GitCredentials(https_token_file=Path(sys.argv[3]), https_ca_file=ca)\n"
        "    print(GitSource(sys.argv[1], 'main', Path(sys.argv[2]), creds).fetch())\n"
        "except SourceError as e:\n"
        "    print(f'SourceError: {e}'); sys.exit(1)\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code, url, str(state), str(token), str(ca or "")],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_https_server_signed_by_an_unknown_ca_is_refused(repo, https_git, tmp_path: Path) -> None:
    repo.write("a.txt", "1\n")
    repo.commit_and_push("first")
    server, _ = https_git
    token = tmp_path / "token"
    token.write_text(TOKEN)
    done = _fetch_in_child(server.url(repo.bare, user="deploy"), tmp_path / "state", token, None)
    assert done.returncode == 1 and "identity does not verify" in done.stdout, (
        done.stdout + done.stderr
    )


def test_https_server_signed_by_the_configured_private_ca_is_fetched_from(
    repo, https_git, tmp_path: Path
) -> None:
    repo.write("a.txt", "1\n")
    head = repo.commit_and_push("first")
    server, ca = https_git
    token = tmp_path / "token"
    token.write_text(TOKEN)
    done = _fetch_in_child(server.url(repo.bare, user="deploy"), tmp_path / "state", token, ca)
    assert done.returncode == 0 and done.stdout.strip() == head, done.stdout + done.stderr


def _config(
    tmp_path: Path, extra: str, repository: str = "https://git.example.org/fabric.git"
) -> Path:
    path = tmp_path / "controller.toml"
    path.write_text(
        f'repository = "{repository}"\nstate_dir = "s"\npublish_dir = "p"\nsigning_key = "k"\n{extra}'
    )
    return path


def test_config_resolves_the_credential_files_next_to_it(tmp_path: Path) -> None:
    (tmp_path / "deploy_key").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    (tmp_path / "token").write_text("t\n")
    cfg = config_mod.load(
        _config(tmp_path, 'ssh_key_file = "deploy_key"\nhttps_token_file = "token"\n')
    )
    assert cfg.source.credentials == GitCredentials(
        ssh_key_file=tmp_path / "deploy_key", https_token_file=tmp_path / "token"
    )


@pytest.mark.parametrize(
    ("extra", "repository", "message"),
    [
        (
            'ssh_key_file = "missing_key"\n',
            "ssh://git@git.example.org/fabric.git",
            "ssh_key_file: .*missing_key does not exist",
        ),
        (
            'https_token_file = "missing_token"\n',
            "https://git.example.org/fabric.git",
            "cannot read .*missing_token",
        ),
        (
            'https_token_file = "empty_token"\n',
            "https://git.example.org/fabric.git",
            "empty_token is empty",
        ),
        (
            'https_token_file = "token"\n',
            "http://git.example.org/fabric.git",
            "send the token in clear",
        ),
        (
            'https_ca_file = "missing_ca.pem"\n',
            "https://git.example.org/fabric.git",
            "https_ca_file: .*missing_ca.pem does not exist",
        ),
    ],
)
def test_config_refuses_unusable_credentials_naming_the_key_and_the_fix(
    tmp_path: Path, extra: str, repository: str, message: str
) -> None:
    (tmp_path / "empty_token").write_text("\n")
    (tmp_path / "token").write_text("t\n")
    with pytest.raises(UsageError, match=message):
        config_mod.load(_config(tmp_path, extra, repository))


def test_controller_process_deploys_from_an_ssh_repository(
    make_fabric, start_controller, sshd, tmp_path: Path
) -> None:
    """The real controller, configured with a deploy key, its user's known_hosts holding the server's key."""
    repo, fabric = make_fabric(sites=1, clusters=1, nodes=2)
    home = tmp_path / "controller-home"
    (home / ".ssh").mkdir(parents=True)
    _trust(home, sshd.known_hosts_line())
    ctl = start_controller(
        sshd.url(repo.bare), f'ssh_key_file = "{sshd.client_key}"\n', env={"HOME": str(home)}
    )
    ctl.wait_deployed(repo.git("rev-parse", "HEAD"))
    assert set(ctl.envelopes()) == {n.name for n in fabric.nodes}


@pytest.mark.parametrize("scheme", ["http", "ssh"])
def test_a_server_that_accepts_and_then_says_nothing_fails_the_fetch_instead_of_hanging(
    tmp_path: Path, scheme: str
) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    accepted: list[socket.socket] = []
    threading.Thread(target=lambda: accepted.append(listener.accept()[0]), daemon=True).start()
    saved = pygit2.settings.server_connect_timeout, pygit2.settings.server_timeout
    source = GitSource(
        f"{scheme}://git@127.0.0.1:{listener.getsockname()[1]}/fabric.git",
        "main",
        tmp_path / "state",
    )
    set_timeouts(connect_ms=500, io_ms=500)
    try:
        with pytest.raises(SourceError, match="fetch of branch 'main' failed: .*[Tt]imed out"):
            source.fetch()
    finally:
        pygit2.settings.server_connect_timeout, pygit2.settings.server_timeout = saved
        listener.close()
