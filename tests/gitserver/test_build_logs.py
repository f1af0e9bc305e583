"""A build's output in the Redis stream `paas:build-logs:<build id>` while it runs (real git,
real gunicorn, real redis-server), and a Redis outage that does not touch the build."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import time
import uuid

import pytest
import redis

from gitserver.buildlog import DONE_TTL_S, BuildLogStream, build_logs_key
from tests.gitserver.conftest import Git, Server, SlowBuildpack, Team, remote_url
from tests.gitserver.test_push import PROCFILE_APP

pytestmark = pytest.mark.slow


def _stream_lines(r: redis.Redis[bytes], key: str) -> list[dict[str, str]]:
    return [{k.decode(): v.decode() for k, v in f.items()} for _id, f in r.xrange(key)]


def _wait_for(r: redis.Redis[bytes], key: str, done: object) -> list[dict[str, str]]:
    """The stream's entries once `done(lines)` holds (or what there is after a minute)."""
    deadline = time.monotonic() + 60
    while True:
        entries = _stream_lines(r, key)
        if done([e["line"] for e in entries]) or time.monotonic() > deadline:  # type: ignore[operator]
            return entries
        time.sleep(0.1)


def test_it_streams_a_builds_lines_into_redis_while_it_runs_in_order(
    server: Server, team: Team, git: Git, slow_buildpack: SlowBuildpack,
) -> None:
    r = redis.Redis.from_url(server.env["REDIS_URL"])
    git.commit({**PROCFILE_APP, ".buildpacks": slow_buildpack.url + "\n"})
    push = subprocess.Popen(["git", "push", remote_url(server, team.app, team.owner_token), "main"],
                            cwd=git.dir, env=git.env(), stderr=subprocess.PIPE, text=True)
    try:
        assert push.stderr is not None
        seen: list[str] = []
        while not any("step three" in line for line in seen):
            line = push.stderr.readline()
            assert line, "".join(seen)
            seen.append(line)
        build_id = server.query(
            f"from core.models import Build\nout = Build.objects.get(app__name={team.app!r}).pk")
        assert isinstance(build_id, int)
        key = build_logs_key(build_id)
        # The build is still waiting in bin/compile: its lines so far are already in the stream.
        running = _wait_for(r, key, lambda lines: "step three" in lines)
        lines = [e["line"] for e in running]
        assert lines[0].startswith("-----> Building ") and f"(build {build_id})" in lines[0]
        assert lines.index("step one") < lines.index("step two") < lines.index("step three")
        assert {e["tag"] for e in running} == {"build"}
        assert all(float(e["time"]) > 0 for e in running)
        slow_buildpack.release()
        rest = push.stderr.read()
        assert push.wait() == 0, "".join(seen) + rest
    finally:
        if push.poll() is None:
            push.kill()
            push.wait()

    final = [e["line"] for e in _wait_for(
        r, key, lambda lines: bool(lines) and lines[-1].endswith(" deployed"))]
    stored = server.query(
        f"from core.models import Build\nout = Build.objects.get(pk={build_id}).log")
    assert isinstance(stored, str)
    # Every line the Build row keeps, in the same order, then the release lines said after it.
    assert final[:len(stored.splitlines())] == stored.splitlines()
    assert final[-1] == f"       http://{team.app}.apps.test deployed"
    assert any(line.startswith("-----> Released v") for line in final[-3:])
    deadline = time.monotonic() + 60
    while r.ttl(key) > DONE_TTL_S and time.monotonic() < deadline:
        time.sleep(0.1)  # the writer sets the day's expiry just after the last line
    assert 0 < r.ttl(key) <= DONE_TTL_S


def test_it_writes_a_fast_builds_many_lines_in_order() -> None:
    url = os.environ.get("REDIS_URL")
    assert url, "REDIS_URL is not set: run the suite through scripts/with-test-services"
    build_id = 10**9 + uuid.uuid4().int % 10**9  # a key no other test writes
    r = redis.Redis.from_url(url)
    stream = BuildLogStream(build_id, url)
    try:
        for n in range(3000):
            stream.add(f"line {n}")
        stream.close()
        assert stream.wait(60)
        lines = [e["line"] for e in _stream_lines(r, build_logs_key(build_id))]
        assert lines == [f"line {n}" for n in range(3000)]
        assert stream.dropped == 0
        assert 0 < r.ttl(build_logs_key(build_id)) <= DONE_TTL_S
    finally:
        r.delete(build_logs_key(build_id))


def test_it_carries_on_without_the_stream_when_redis_is_unreachable(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    caplog.set_level(logging.WARNING, logger="gitserver.buildlog")
    stream = BuildLogStream(1, f"redis://127.0.0.1:{port}/0")
    for n in range(200):
        stream.add(f"line {n}")  # neither raises nor waits for Redis
    stream.close()
    assert stream.wait(60)
    assert stream.dropped == 200
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "carrying on without" in warnings[0]
