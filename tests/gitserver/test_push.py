"""`git push` to `/git/<app>.git` with the real git client: the build streams and releases."""

from __future__ import annotations

import pytest

from tests.gitserver.conftest import Git, Server, Team, remote_url

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
