"""One push per app at a time, and a client that hangs up mid-build corrupts nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from tests.gitserver.conftest import Git, Server, SlowBuildpack, Team, remote_url

pytestmark = pytest.mark.slow

APP: dict[str, str | bytes] = {"Procfile": "web: httpd -f -p $PORT\n"}


def _start_push(git: Git, url: str) -> subprocess.Popen[str]:
    return subprocess.Popen(["git", "push", url, "main"], cwd=git.dir, env=git.env(),
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def _wait_for(push: subprocess.Popen[str], text: str) -> str:
    assert push.stderr is not None
    seen = ""
    while text not in seen:
        line = push.stderr.readline()
        assert line, seen
        seen += line
    return seen


def _statuses(server: Server, app: str) -> list[str]:
    out = server.query(
        "from core.models import Build\n"
        f"out = list(Build.objects.filter(app__name={app!r}).order_by('pk')"
        ".values_list('status', flat=True))\n"
    )
    assert isinstance(out, list)
    return out


def test_it_refuses_a_second_push_while_one_is_building(
    server: Server, team: Team, git: Git, slow_buildpack: SlowBuildpack,
) -> None:
    url = remote_url(server, team.app, team.owner_token)
    git.commit({**APP, ".buildpacks": slow_buildpack.url + "\n"})
    first = _start_push(git, url)
    try:
        _wait_for(first, "step three")

        second = git.run("push", "--force", url, "main", ok=False)
        assert f"another push to {team.app} is in progress" in second.stderr
        assert "[remote rejected] main -> main" in second.stderr

        slow_buildpack.release()
        assert first.wait(timeout=120) == 0
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
    assert _statuses(server, team.app) == ["succeeded"]


def test_it_cancels_and_records_the_build_when_the_client_hangs_up(
    server: Server, team: Team, git: Git, slow_buildpack: SlowBuildpack,
) -> None:
    url = remote_url(server, team.app, team.owner_token)
    git.commit({**APP, ".buildpacks": slow_buildpack.url + "\n"})
    push = _start_push(git, url)
    try:
        _wait_for(push, "step three")
    finally:
        os.killpg(push.pid, signal.SIGKILL)  # git and its git-remote-http helper
        push.wait()

    # The server notices at its next progress line; wait for the build to be recorded.
    deadline = time.monotonic() + 60
    while _statuses(server, team.app) != ["failed"]:
        assert time.monotonic() < deadline, _statuses(server, team.app)
        time.sleep(0.5)
    log = server.query(
        "from core.models import Build\n"
        f"out = Build.objects.get(app__name={team.app!r}).log\n"
    )
    assert "The git client disconnected; the build was cancelled." in str(log)
    assert "refs/heads/main" not in git.run("ls-remote", url).stdout

    # The lock is free again and the repository is sound: the next push builds.
    slow_buildpack.release()
    result = git.run("push", url, "main")
    assert "-----> Released v" in result.stderr
    assert _statuses(server, team.app) == ["failed", "succeeded"]
