"""Who may push and fetch: API tokens as basic-auth passwords, team roles, unknown apps."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.gitserver.conftest import Git, Server, Team, remote_url, unique

pytestmark = pytest.mark.slow

APP: dict[str, str | bytes] = {"Procfile": "web: httpd -f -p $PORT\n"}


def test_it_refuses_a_wrong_token(server: Server, team: Team, git: Git) -> None:
    git.commit(APP)
    result = git.run("push", remote_url(server, team.app, "paas_" + "x" * 40), "main", ok=False)
    assert "Authentication failed" in result.stderr


def test_it_asks_for_credentials_when_none_are_given(server: Server, team: Team, git: Git) -> None:
    git.commit(APP)
    result = git.run("push", remote_url(server, team.app, None), "main", ok=False)
    # git would prompt; prompts are off, so it says it could not read a user name.
    assert "could not read Username" in result.stderr


def test_it_accepts_any_user_name_with_a_good_token(server: Server, team: Team, git: Git) -> None:
    git.commit(APP)
    result = git.run("push", remote_url(server, team.app, team.owner_token, user="whoever"), "main")
    assert "-----> Released v" in result.stderr


def test_it_hides_another_teams_app(server: Server, team: Team, git: Git) -> None:
    stranger = server.query(
        "from core.actions import token_create, user_create\n"
        f"u = user_create(actor=None, username={unique('str')!r}, email='s@example.com')\n"
        "out = token_create(actor=u, description='t')[1]\n"
    )
    assert isinstance(stranger, str)
    git.commit(APP)
    result = git.run("push", remote_url(server, team.app, stranger), "main", ok=False)
    assert f"remote: App '{team.app}' not found." in result.stderr
    assert "not found" in result.stderr


def test_it_says_an_unknown_app_does_not_exist(server: Server, team: Team, git: Git) -> None:
    git.commit(APP)
    missing = unique("nope")
    result = git.run("push", remote_url(server, missing, team.owner_token), "main", ok=False)
    assert f"remote: App '{missing}' not found." in result.stderr


def test_it_lets_viewers_fetch_but_not_push(server: Server, team: Team, git: Git,
                                              tmp_path: Path) -> None:
    commit = git.commit(APP)
    git.run("push", remote_url(server, team.app, team.owner_token), "main")
    viewer_url = remote_url(server, team.app, team.viewer_token)

    git.run("clone", "-q", viewer_url, str(tmp_path / "clone"))
    assert Git(dir=tmp_path / "clone", home=git.home).head() == commit

    git.commit({"index.txt": "more\n"})
    refused = git.run("push", viewer_url, "main", ok=False)
    assert "remote: Your role does not allow deploying" in refused.stderr


def test_it_speaks_only_the_smart_protocol(server: Server, team: Team) -> None:
    resp = httpx.get(f"{server.url}/git/{team.app}.git/info/refs",
                     auth=("x", team.owner_token), timeout=10)
    assert resp.status_code == 403
    assert "smart HTTP" in resp.text
