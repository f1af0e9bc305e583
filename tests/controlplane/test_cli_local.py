"""The CLI's local parts: stored credentials and the `paas` git remote (with the real git)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from paas_cli import credentials, gitremote
from paas_cli.credentials import Credentials, CredentialsError


def test_it_stores_credentials_under_xdg_config_home_readable_by_the_owner_only(
    tmp_path: Path,
) -> None:
    env = {"XDG_CONFIG_HOME": str(tmp_path / "cfg"), "HOME": str(tmp_path / "home")}
    path = credentials.credentials_path(env)
    assert path == tmp_path / "cfg" / "paas" / "credentials.json"
    old_umask = os.umask(0o022)
    try:
        credentials.save(Credentials("http://127.0.0.1:8000", "paas_secret", "alice"), path)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert credentials.load(path) == Credentials("http://127.0.0.1:8000", "paas_secret", "alice")


def test_it_remembers_whether_logout_should_revoke_the_token(tmp_path: Path) -> None:
    path = tmp_path / "credentials.json"
    credentials.save(Credentials("http://x", "t", "bo", revoke_on_logout=True), path)
    assert credentials.load(path) == Credentials("http://x", "t", "bo", revoke_on_logout=True)
    path.write_text('{"server": "http://x", "token": "t"}')  # written before the flag existed
    loaded = credentials.load(path)
    assert loaded is not None and loaded.revoke_on_logout is False


def test_it_falls_back_to_dot_config_in_home(tmp_path: Path) -> None:
    for xdg in ("", "relative/dir"):
        env = {"XDG_CONFIG_HOME": xdg, "HOME": str(tmp_path)}
        expected = tmp_path / ".config" / "paas" / "credentials.json"
        assert credentials.credentials_path(env) == expected


def test_it_tightens_the_mode_of_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "paas" / "credentials.json"
    path.parent.mkdir()
    path.write_text("{}")
    path.chmod(0o644)
    credentials.save(Credentials("http://x", "t"), path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["credentials.json"]


def test_it_reads_no_credentials_as_not_logged_in_and_forgets_them_on_logout(
    tmp_path: Path,
) -> None:
    path = tmp_path / "credentials.json"
    assert credentials.load(path) is None
    credentials.save(Credentials("http://x", "t"), path)
    assert credentials.delete(path) is True
    assert credentials.delete(path) is False
    assert credentials.load(path) is None


def test_it_says_a_damaged_credentials_file_is_damaged(tmp_path: Path) -> None:
    path = tmp_path / "credentials.json"
    path.write_text('{"server": "http://x"')
    with pytest.raises(CredentialsError, match="damaged"):
        credentials.load(path)


def _git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "repo"
    path.mkdir()
    _git(path, "init", "-q")
    return path


def test_it_finds_the_app_from_the_paas_remote(repo: Path) -> None:
    assert gitremote.in_work_tree(repo)
    assert gitremote.app_from_remote(repo) is None
    _git(repo, "remote", "add", "paas", "http://127.0.0.1:8000/git/demo.git")
    assert gitremote.app_from_remote(repo) == "demo"
    (repo / "sub").mkdir()
    assert gitremote.app_from_remote(repo / "sub") == "demo"


def test_it_ignores_other_remotes(repo: Path) -> None:
    _git(repo, "remote", "add", "origin", "http://127.0.0.1:8000/git/other.git")
    assert gitremote.app_from_remote(repo) is None


def test_it_knows_when_it_is_outside_a_repository(tmp_path: Path) -> None:
    outside = tmp_path / "plain"
    outside.mkdir()
    assert not gitremote.in_work_tree(outside)
    assert gitremote.app_from_remote(outside) is None


def test_it_adds_the_remote_once_and_leaves_a_different_one_alone(repo: Path) -> None:
    url = "http://127.0.0.1:8000/git/demo.git"
    assert "added" in gitremote.add_remote(url, repo)
    assert gitremote.remote_url(repo) == url
    assert "already points to" in gitremote.add_remote(url, repo)
    message = gitremote.add_remote("http://127.0.0.1:8000/git/other.git", repo)
    assert "left unchanged" in message
    assert gitremote.remote_url(repo) == url


def test_it_removes_the_remote_only_when_it_points_at_the_destroyed_app(repo: Path) -> None:
    _git(repo, "remote", "add", "paas", "http://127.0.0.1:8000/git/demo.git")
    assert gitremote.remove_remote_if_app("other", repo) is False
    assert gitremote.remote_url(repo) is not None
    assert gitremote.remove_remote_if_app("demo", repo) is True
    assert gitremote.remote_url(repo) is None


def test_it_is_a_pure_http_client_that_runs_without_django() -> None:
    code = (
        "import sys\n"
        "class NoDjango:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('django', 'rest_framework', 'core', 'restapi'):\n"
        "            raise ImportError(name + ' is absent')\n"
        "sys.meta_path.insert(0, NoDjango())\n"
        "from paas_cli.main import main\n"
        "sys.exit(main(['--help']))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert "apps:create" in result.stdout
