"""`git push` to `/git/<app>.git` with the real git client: the build streams and releases."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from runtime.images import ImageStore
from tests.gitserver.conftest import Git, Server, SlowBuildpack, Team, remote_url

pytestmark = pytest.mark.slow

PROCFILE_APP: dict[str, str | bytes] = {
    "Procfile": "web: busybox httpd -f -p $PORT\nworker: sleep 1000\n",
    "index.txt": "hello\n",
}


def test_it_builds_a_pushed_procfile_app_and_releases_it(server: Server, team: Team, git: Git) -> None:
    commit = git.commit(PROCFILE_APP)
    git.run("remote", "add", "paas", remote_url(server, team.app, team.owner_token))

    result = git.run("push", "paas", "main")

    err = result.stderr
    assert "remote: -----> Procfile app detected" in err, err
    assert f"remote:        http://{team.app}.apps.test deployed" in err, err
    assert "main -> main" in err
    build = server.query(
        "from core.models import Build, App\n"
        f"b = Build.objects.get(app__name={team.app!r})\n"
        f"a = App.objects.get(name={team.app!r})\n"
        "r = a.releases.order_by('-version').first()\n"
        "out = dict(status=b.status, commit=b.commit, digest=b.image_digest, slug=b.slug_size,\n"
        "           log=b.log, types=b.process_types, release=r.version, rbuild=r.build_id,\n"
        "           bid=b.pk, dur=(b.finished_at - b.started_at).total_seconds())\n"
    )
    assert isinstance(build, dict)
    assert build["status"] == "succeeded"
    assert build["commit"] == commit
    assert build["digest"].startswith("sha256:")
    assert build["slug"] > 0
    assert build["types"] == {"web": "busybox httpd -f -p $PORT", "worker": "sleep 1000"}
    assert build["rbuild"] == build["bid"]
    assert f"remote: -----> Released v{build['release']}" in err, err
    assert "-----> Procfile app detected" in build["log"]
    assert build["dur"] >= 0
    # The image is the stack's layers with the slug on top, labelled with app, build and commit.
    store = ImageStore(server.data / "runtime" / "images")
    digest, manifest = store.manifest(f"app/{team.app}:build-{build['bid']}")
    assert digest == build["digest"]
    _tdigest, tiny = store.manifest("tiny")
    assert manifest["layers"][:-1] == tiny["layers"] and len(manifest["layers"]) == 2
    labels = store.read_json_blob(manifest["config"]["digest"])["config"]["Labels"]
    assert labels["paas.app"] == team.app
    assert labels["paas.commit"] == commit
    assert labels["paas.build"] == str(build["bid"])


def _ls_remote(git: Git, url: str) -> dict[str, str]:
    out = git.run("ls-remote", url).stdout
    return {ref: sha for sha, ref in (line.split("\t") for line in out.splitlines())}


def test_it_streams_the_build_in_order_with_progress_while_silent(
    server: Server, team: Team, git: Git, slow_buildpack: SlowBuildpack,
) -> None:
    git.commit({**PROCFILE_APP, ".buildpacks": slow_buildpack.url + "\n"})
    url = remote_url(server, team.app, team.owner_token)
    push = subprocess.Popen(["git", "push", url, "main"], cwd=git.dir, env=git.env(),
                            stderr=subprocess.PIPE, text=True)
    try:
        assert push.stderr is not None
        seen: list[str] = []
        # The build is still waiting when its lines arrive: they stream, they are not batched.
        while not any("still running bin/compile" in line for line in seen):
            line = push.stderr.readline()
            assert line, "".join(seen)
            seen.append(line)
        slow_buildpack.release()
        rest = push.stderr.read()
        assert push.wait() == 0, "".join(seen) + rest
    finally:
        if push.poll() is None:
            push.kill()
            push.wait()
    lines = [line.removeprefix("remote:").strip() for line in ("".join(seen) + rest).splitlines()]
    wanted = ["-----> Slow app detected", "step one", "step two", "step three",
              "step four", "-----> Discovering process types", "-----> Assembling the image"]
    positions = [next(i for i, line in enumerate(lines) if line == w) for w in wanted]
    assert positions == sorted(positions), lines
    released = next(i for i, line in enumerate(lines) if line.startswith("-----> Released v"))
    assert released > positions[-1]
    assert lines[released + 1] == f"http://{team.app}.apps.test deployed"


def test_it_accepts_a_push_of_many_mebibytes(server: Server, team: Team, git: Git) -> None:
    # Incompressible, so the pack is over 12 MiB on the wire: git sends it chunked.
    blob = os.urandom(12 * 1024 * 1024)
    commit = git.commit({**PROCFILE_APP, "data.bin": blob})
    url = remote_url(server, team.app, team.owner_token)

    result = git.run("push", url, "main", extra_env={"GIT_TRACE_CURL": "1",
                                                     "GIT_TRACE_CURL_NO_DATA": "1"})

    assert "Transfer-Encoding: chunked" in result.stderr  # no Content-Length: read to the end
    assert "-----> Released v" in result.stderr
    assert _ls_remote(git, url)["refs/heads/main"] == commit


def test_it_refuses_a_push_over_the_repository_size_limit(server: Server, team: Team, git: Git) -> None:
    git.commit({**PROCFILE_APP, "data.bin": os.urandom(25 * 1024 * 1024)})  # the limit is 24 MiB
    url = remote_url(server, team.app, team.owner_token)

    result = git.run("push", url, "main", ok=False)

    assert "over the limit of 24 MiB" in result.stderr
    assert "[remote rejected] main -> main" in result.stderr
    assert "refs/heads/main" not in _ls_remote(git, url)


def test_it_rejects_a_failed_build_and_leaves_the_branch_where_it_was(
    server: Server, team: Team, git: Git,
) -> None:
    good = git.commit(PROCFILE_APP)
    url = remote_url(server, team.app, team.owner_token)
    git.run("push", url, "main")
    git.run("rm", "-q", "Procfile")
    git.commit({"README": "nothing to run here\n"})

    result = git.run("push", url, "main", ok=False)

    assert "! [remote rejected] main -> main (build failed)" in result.stderr
    assert "remote:  !" in result.stderr and "Procfile" in result.stderr  # what was looked for
    assert _ls_remote(git, url)["refs/heads/main"] == good
    statuses = server.query(
        "from core.models import Build\n"
        f"out = list(Build.objects.filter(app__name={team.app!r}).order_by('pk')"
        ".values_list('status', flat=True))\n"
    )
    assert statuses == ["succeeded", "failed"]


def test_it_rejects_non_fast_forward_pushes_unless_forced(server: Server, team: Team, git: Git) -> None:
    url = remote_url(server, team.app, team.owner_token)
    git.commit(PROCFILE_APP)
    git.run("push", url, "main")
    git.commit({"index.txt": "second\n"})
    git.run("push", url, "main")
    git.run("reset", "-q", "--hard", "HEAD~1")
    rewritten = git.commit({"index.txt": "rewritten\n"})

    refused = git.run("push", url, "main", ok=False)
    assert "[rejected]" in refused.stderr and "main -> main" in refused.stderr
    assert _ls_remote(git, url)["refs/heads/main"] != rewritten

    forced = git.run("push", "--force", url, "main")
    assert "forced update" in forced.stderr
    assert _ls_remote(git, url)["refs/heads/main"] == rewritten


def test_it_deploys_master_too_and_refuses_other_branches(server: Server, team: Team, git: Git) -> None:
    url = remote_url(server, team.app, team.owner_token)
    commit = git.commit(PROCFILE_APP)

    other = git.run("push", url, "main:feature", ok=False)
    assert "[remote rejected] main -> feature (only main or master is deployed)" in other.stderr
    assert "remote:  !     feature: only main or master is deployed" in other.stderr

    master = git.run("push", url, "main:master")
    assert "-----> Released v" in master.stderr
    assert _ls_remote(git, url)["refs/heads/master"] == commit


def test_it_keeps_tags_pushed_with_the_branch(server: Server, team: Team, git: Git) -> None:
    url = remote_url(server, team.app, team.owner_token)
    commit = git.commit(PROCFILE_APP)
    git.run("tag", "-a", "-m", "first", "v1")

    # The tag's ref comes first: a tag is no deploy, so the branch still builds.
    result = git.run("push", url, "refs/tags/v1", "main")

    assert "-----> Released v" in result.stderr
    refs = _ls_remote(git, url)
    assert refs["refs/heads/main"] == commit and refs["refs/tags/v1^{}"] == commit


def test_it_clones_what_was_pushed(server: Server, team: Team, git: Git, tmp_path: Path) -> None:
    url = remote_url(server, team.app, team.owner_token)
    commit = git.commit(PROCFILE_APP)
    git.run("push", url, "main")

    git.run("clone", "-q", url, str(tmp_path / "clone"))

    assert (tmp_path / "clone" / "Procfile").read_text() == PROCFILE_APP["Procfile"]
    clone = Git(dir=tmp_path / "clone", home=git.home)
    assert clone.head() == commit
