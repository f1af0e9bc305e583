"""`git push` as root with the runtime executor: the build runs in a build container on a real
runtime daemon with networking, on the real debian stack."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.builder.runtime_fixtures import linked_stack_store, start_network_daemon, stop_daemon
from tests.gitserver.conftest import Git, Server, make_team, remote_url, running_server
from tests.runtime.daemon_fixtures import Daemon

pytestmark = [pytest.mark.root, pytest.mark.slow]


@dataclass
class BuildServer:
    server: Server
    daemon: Daemon


@pytest.fixture(scope="module")
def build_server() -> Iterator[BuildServer]:
    daemons: list[Daemon] = []

    def prepare(data: Path) -> None:
        linked_stack_store(data / "runtime" / "images")
        daemons.append(start_network_daemon(data / "runtime"))

    env = {"PAAS_BUILD_EXECUTOR": "runtime", "PAAS_BUILD_STACK": "stack:debian-13",
           "PAAS_BUILD_TIMEOUT_S": "120"}
    try:
        with running_server(env, prepare) as srv:
            try:
                yield BuildServer(srv, daemons[0])
            finally:
                while daemons:  # before the data dir, the daemon's root, goes
                    stop_daemon(daemons.pop())
    finally:
        while daemons:
            stop_daemon(daemons.pop())


def test_it_builds_a_push_in_a_build_container_and_releases_it(build_server: BuildServer, git: Git) -> None:
    team = make_team(build_server.server)
    commit = git.commit({"Procfile": "web: python3 -m http.server $PORT\n", "index.html": "hi\n",
                         ".buildpacks": "procfile\n"})
    git.run("remote", "add", "paas", remote_url(build_server.server, team.app, team.owner_token))

    err = git.run("push", "paas", "main").stderr

    assert "remote: -----> Building in an isolated build container (2048 MiB, 2 CPUs, 1024 processes)" in err, err
    assert "remote: -----> Procfile app detected" in err, err
    assert f"remote:        http://{team.app}.apps.test deployed" in err, err
    build = build_server.server.query(
        "from core.models import Build\n"
        f"b = Build.objects.get(app__name={team.app!r})\n"
        "out = dict(status=b.status, commit=b.commit, types=b.process_types)\n"
    )
    assert build == {"status": "succeeded", "commit": commit, "types": {"web": "python3 -m http.server $PORT"}}
    # The build container is gone with everything it held.
    assert build_server.daemon.client.list() == []


def test_it_rejects_a_push_whose_build_fails_in_the_container(build_server: BuildServer, git: Git) -> None:
    team = make_team(build_server.server)
    first = git.commit({"index.html": "no Procfile, and the procfile buildpack is asked for\n",
                        ".buildpacks": "procfile\n"})
    git.run("remote", "add", "paas", remote_url(build_server.server, team.app, team.owner_token))

    err = git.run("push", "paas", "main", ok=False).stderr

    assert "remote:  !     Push rejected, failed to build the app." in err, err
    assert "main -> main (build failed)" in err, err
    assert first not in git.run("ls-remote", "paas").stdout
    assert build_server.daemon.client.list() == []


def test_it_removes_the_build_container_when_the_client_hangs_up(
    build_server: BuildServer, git: Git, tmp_path: Path,
) -> None:
    server = build_server.server
    team = make_team(server)
    # A buildpack served by the same control plane (pushed to an app of its own, which builds
    # as a Procfile app): its compile says three lines, then sleeps, silent.
    bp_app = f"{team.app}-bp"
    server.query(
        "from django.contrib.auth import get_user_model\n"
        "from core.actions import app_create\n"
        f"o = get_user_model().objects.get(username={team.owner!r})\n"
        f"app_create(actor=o, name={bp_app!r}, team=o.memberships.first().team)\n"
        "out = 1\n"
    )
    bp = Git(dir=tmp_path / "bp", home=tmp_path / "bp-home")
    bp.dir.mkdir()
    bp.home.mkdir()
    bp.run("init", "-q", "-b", "main")
    bp.write({"Procfile": "web: true\n", "bin/detect": "#!/bin/sh\necho Slow\n",
              "bin/compile": "#!/bin/sh\necho 'step one'\necho 'step two'\necho 'step three'\nexec sleep 600\n"})
    for name in ("detect", "compile"):
        (bp.dir / "bin" / name).chmod(0o755)
    bp.run("add", "-A")
    bp.run("commit", "-q", "-m", "slow buildpack")
    bp.run("push", "-q", remote_url(server, bp_app, team.owner_token), "main")

    url = remote_url(server, team.app, team.owner_token)
    git.commit({"Procfile": "web: true\n", ".buildpacks": remote_url(server, bp_app, team.owner_token) + "\n"})
    push = subprocess.Popen(["git", "push", url, "main"], cwd=git.dir, env=git.env(),
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert push.stderr is not None
        seen = ""
        while "step three" not in seen:
            line = push.stderr.readline()
            assert line, seen
            seen += line
        assert "Building in an isolated build container" in seen
        assert [c["spec"]["process_type"] for c in build_server.daemon.client.list()] == ["build"]
    finally:
        os.killpg(push.pid, signal.SIGKILL)  # git and its git-remote-http helper
        push.wait()

    deadline = time.monotonic() + 60
    while True:
        status = server.query("from core.models import Build\n"
                              f"out = [b.status for b in Build.objects.filter(app__name={team.app!r})]\n")
        if status == ["failed"] and build_server.daemon.client.list() == []:
            break
        assert time.monotonic() < deadline, (status, build_server.daemon.client.list())
        time.sleep(0.5)
    log = server.query(f"from core.models import Build\nout = Build.objects.get(app__name={team.app!r}).log\n")
    assert "The git client disconnected; the build was cancelled." in str(log)
