"""`paas login` leaves git able to push without asking: `paas git-credential` answers git."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from paas_cli.credentials import Credentials
from paas_cli.gitcredential import answer, helper_command, parse_request
from tests.gitserver.conftest import Git, Server, Team, remote_url, unique

PAAS = str(Path(sys.executable).parent / "paas")
CREDS = Credentials(server="http://paas.example:8000", token="paas_secret")


def test_it_answers_get_for_the_logged_in_server_with_the_token() -> None:
    request = parse_request("protocol=http\nhost=paas.example:8000\npath=git/x.git\n\nignored=1\n")
    assert answer("get", request, CREDS) == "username=paas\npassword=paas_secret\n"


@pytest.mark.parametrize("request_text", [
    "protocol=http\nhost=other.example:8000\n",
    "protocol=https\nhost=paas.example:8000\n",
    "protocol=http\nhost=paas.example\n",
    "garbage without equals\n",
])
def test_it_says_nothing_for_other_servers(request_text: str) -> None:
    assert answer("get", parse_request(request_text), CREDS) == ""


def test_it_says_nothing_when_logged_out_or_asked_to_store_or_erase() -> None:
    request = parse_request("protocol=http\nhost=paas.example:8000\n")
    assert answer("get", request, None) == ""
    assert answer("store", request, CREDS) == ""
    assert answer("erase", request, CREDS) == ""


def test_it_quotes_the_helper_for_the_shell() -> None:
    assert helper_command("/opt/my tools/paas") == "!'/opt/my tools/paas' git-credential"


@pytest.mark.slow
def test_it_pushes_without_asking_after_paas_login(server: Server, team: Team, git: Git) -> None:
    env = git.env()
    login = subprocess.run([PAAS, "login", "--server", server.url, "--token", team.owner_token],
                           env=env, capture_output=True, text=True, timeout=60)
    assert login.returncode == 0, login.stderr
    assert "git will push to" in login.stderr
    git.commit({"Procfile": "web: httpd -f -p $PORT\n"})

    result = git.run("push", remote_url(server, team.app, None), "main")  # no token in the URL

    assert "-----> Released v" in result.stderr
    helper = git.run("config", "--global", "--get-all", f"credential.{server.url}.helper").stdout
    assert helper.strip() == f"!{PAAS} git-credential"
    # A second login replaces the helper rather than adding another.
    again = subprocess.run([PAAS, "login", "--server", server.url, "--token", team.owner_token],
                           env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stderr
    helpers = git.run("config", "--global", "--get-all", f"credential.{server.url}.helper").stdout
    assert helpers.strip().splitlines() == [f"!{PAAS} git-credential"]


@pytest.mark.slow
def test_it_deploys_with_login_apps_create_and_git_push_paas_main(
    server: Server, team: Team, git: Git,
) -> None:
    env = git.env()

    def paas(*args: str) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([PAAS, *args], cwd=git.dir, env=env, capture_output=True,
                                text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        return result

    paas("login", "--server", server.url, "--token", team.owner_token)
    name = unique("fresh")
    created = paas("apps:create", name)
    assert "Git remote paas added" in created.stdout
    git.commit({"Procfile": "web: httpd -f -p $PORT\n"})

    result = git.run("push", "paas", "main")

    assert "remote: -----> Procfile app detected" in result.stderr
    assert f"remote:        http://{name}.apps.test deployed" in result.stderr
