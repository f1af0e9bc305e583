"""The agent's side of a one-off with a real runtime daemon and redis-server (no Celery): the
output stream, the exit entry, the time limit, the removal, and a spec it cannot run."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

import pytest
import redis

from runtime.agent.config import AgentSettings
from runtime.agent.core import Agent
from runtime.agent.oneoff import TIMEOUT_LABEL, resume_oneoffs, run_oneoff, run_stream
from runtime.agent.reports import Reporter
from runtime.images import ImageStore
from runtime.tinyimage import build_tiny_image
from tests.runtime.daemon_fixtures import Daemon, daemon_fixture, rt_fixture

pytestmark = [pytest.mark.root, pytest.mark.slow]
# The runtime tests' daemon (one per module, stopped and its containers removed at the end) and
# `rt`, which removes the containers a test made after it, pass or fail.
daemon = daemon_fixture
rt = rt_fixture


@pytest.fixture
def agent(rt: Daemon, r: redis.Redis) -> Agent:
    settings = AgentSettings(redis_url=os.environ["REDIS_URL"], host=f"t-{secrets.token_hex(3)}",
                             runtime_root=Path(rt.root), daemon_socket=rt.root / "daemon.sock")
    return Agent(settings, Reporter(r, settings.host))


@pytest.fixture
def image(daemon: Daemon) -> str:
    store = ImageStore(daemon.root / "images")
    return store.resolve(build_tiny_image(store)).digest


def spec(daemon: Daemon, image: str, command: list[str]) -> dict[str, Any]:
    cid = f"a{secrets.token_hex(3)}.run.1.{secrets.token_hex(3)}"
    daemon.made.append(cid)
    return {"id": cid, "app": cid.split(".")[0], "release": 1, "process_type": "run", "image": image,
            "command": command, "env": {"GREETING": "hi"}, "memory_mb": 64, "pids_limit": 64,
            "network": {"mode": "none", "nat": False}, "labels": {TIMEOUT_LABEL: "60"}}


def entries(r: redis.Redis, cid: str) -> list[dict[str, str]]:
    return [{k.decode(): v.decode() for k, v in f.items()} for _i, f in r.xrange(run_stream(cid))]


def test_it_streams_the_lines_then_the_exit_and_removes_the_container(
        daemon: Daemon, agent: Agent, image: str, r: redis.Redis) -> None:
    s = spec(daemon, image, ["/bin/sh", "-c", "echo $GREETING; echo two >&2; echo three; exit 7"])
    result = run_oneoff(agent, s, timeout_s=60)
    assert result["exit_code"] == 7
    got = entries(r, s["id"])
    assert [e.get("state") for e in got[:2]] == ["starting", "running"]
    # Each stream in order (the two pipes are read side by side, so not interleaved exactly).
    assert [e["line"] for e in got if e.get("stream") == "stdout"] == ["hi", "three"]
    assert [e["line"] for e in got if e.get("stream") == "stderr"] == ["two"]
    assert got[-1]["exit"] == "7" and got[-1]["message"] == ""
    assert 0 < r.ttl(run_stream(s["id"])) <= 3600
    assert s["id"] not in {c["id"] for c in daemon.client.list()}


def test_it_stops_a_one_off_at_its_time_limit(daemon: Daemon, agent: Agent, image: str, r: redis.Redis) -> None:
    s = spec(daemon, image, ["/bin/sh", "-c", "echo waiting; exec sleep 100"])
    result = run_oneoff(agent, s, timeout_s=1)
    assert result["message"] == "it was stopped after its time limit of 1 s"
    last = entries(r, s["id"])[-1]
    assert last["exit"] not in ("", "0") and last["message"] == result["message"]
    assert s["id"] not in {c["id"] for c in daemon.client.list()}


def test_it_ends_the_stream_with_the_reason_when_the_image_is_missing(
        daemon: Daemon, agent: Agent, r: redis.Redis) -> None:
    s = spec(daemon, "sha256:" + "1" * 64, ["true"])
    result = run_oneoff(agent, s, timeout_s=60)
    assert result["ok"] is False
    last = entries(r, s["id"])[-1]
    assert last["exit"] == "" and "not found" in last["message"]


def test_a_restarted_agent_follows_a_running_one_off_again_without_repeating_lines(
        daemon: Daemon, agent: Agent, image: str, r: redis.Redis) -> None:
    import time

    s = spec(daemon, image, ["/bin/sh", "-c", "echo one; sleep 1; echo two; exit 4"])
    # The agent before the restart: it started the one-off and shipped its first line.
    assert agent.run(s)["ok"]
    key = run_stream(s["id"])
    for fields in ({"state": "starting"}, {"state": "running"},
                   {"stream": "stdout", "line": "one", "time": ""}):
        r.xadd(key, fields)
    assert resume_oneoffs(agent) == [s["id"]]
    deadline = time.monotonic() + 30
    while "exit" not in entries(r, s["id"])[-1]:
        assert time.monotonic() < deadline, entries(r, s["id"])
        time.sleep(0.1)
    got = entries(r, s["id"])
    assert [e["line"] for e in got if "line" in e] == ["one", "two"]
    assert got[-1]["exit"] == "4"
    while s["id"] in {c["id"] for c in daemon.client.list()}:  # removed just after the exit entry
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_a_runtime_daemon_restart_neither_ends_nor_repeats_a_one_offs_output(
        daemon: Daemon, agent: Agent, image: str, r: redis.Redis) -> None:
    import threading
    import time

    s = spec(daemon, image, ["/bin/sh", "-c", "echo one; sleep 3; echo two; exit 5"])
    result: dict[str, Any] = {}
    follower = threading.Thread(target=lambda: result.update(run_oneoff(agent, s, timeout_s=60)))
    follower.start()
    try:
        deadline = time.monotonic() + 30
        while not any(e.get("line") == "one" for e in entries(r, s["id"])):
            assert time.monotonic() < deadline, entries(r, s["id"])
            time.sleep(0.05)
        daemon.stop()  # the container goes on running without its daemon
        daemon.start()
    finally:
        follower.join(timeout=60)
    assert result.get("exit_code") == 5, result
    assert [e["line"] for e in entries(r, s["id"]) if "line" in e] == ["one", "two"]
