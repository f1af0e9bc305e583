"""The agent against the real runtime daemon (its tests otherwise use a protocol fake)."""

from __future__ import annotations

import os
import secrets
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from runtime.agent.config import AgentSettings
from runtime.agent.core import Agent
from runtime.agent.reports import EVENTS_STREAM, ContainerEvent, Reporter
from runtime.images import ImageStore
from runtime.tinyimage import build_tiny_image
from tests.runtime.daemon_fixtures import Daemon, daemon_fixture

pytestmark = [pytest.mark.root, pytest.mark.slow]
daemon = daemon_fixture


@pytest.fixture
def agent(daemon: Daemon) -> Iterator[Agent]:
    url = os.environ.get("REDIS_URL")
    assert url, "REDIS_URL is not set: run the suite through scripts/with-test-services"
    build_tiny_image(ImageStore(daemon.root / "images"))
    settings = AgentSettings.from_env(
        {"REDIS_URL": url, "PAAS_RUNTIME_DIR": str(daemon.root)}, host=f"h-{secrets.token_hex(4)}"
    )
    try:
        yield Agent(settings, Reporter(redis.Redis.from_url(url), settings.host))
    finally:
        daemon.cleanup()


def spec(daemon: Daemon, command: list[str]) -> dict[str, Any]:
    return {
        "id": daemon.new_id("agent"),
        "app": "web1",
        "release": 1,
        "process_type": "web",
        "image": "tiny",
        "command": command,
        "memory_mb": 64,
        "pids_limit": 64,
        "network": {"mode": "none", "nat": False},
    }


def events_of(agent: Agent, cid: str, n: int) -> list[ContainerEvent]:
    r = agent.reporter.redis
    deadline = time.monotonic() + 60
    while True:
        # Only this test's entries: others share the stream (some garbled on purpose).
        mine = [{k.decode(): v.decode() for k, v in f.items()} for _id, f in r.xrange(EVENTS_STREAM)]
        got = [ContainerEvent.from_fields(d) for d in mine
               if d.get("host") == agent.settings.host and d.get("id") == cid]
        if len(got) >= n or time.monotonic() > deadline:
            return got
        time.sleep(0.1)


def test_it_runs_and_stops_a_real_container(agent: Agent, daemon: Daemon) -> None:
    s = spec(daemon, ["/bin/sleep", "60"])
    result = agent.run(s)
    assert result["ok"] is True, result
    assert daemon.client.inspect(s["id"])["state"] == "running"
    first, second = agent.heartbeat().containers[0], agent.heartbeat().containers[0]
    assert first["state"] == "running"
    assert first["memory_bytes"] > 0 and "cpu_percent" not in first  # read from its cgroup
    assert second["cpu_percent"] >= 0
    assert agent.stop(s["id"], timeout_s=5)["ok"] is True
    assert [e.state for e in events_of(agent, s["id"], 3)] == ["starting", "running", "exited"]
    assert s["id"] not in [c["id"] for c in daemon.client.list()]


def test_it_relays_a_real_containers_exit_code(agent: Agent, daemon: Daemon) -> None:
    stop = threading.Event()
    relay = threading.Thread(target=agent.relay_events, args=(stop,), daemon=True)
    relay.start()
    try:
        time.sleep(0.5)  # let the relay subscribe first; the outcome is not timed
        s = spec(daemon, ["/bin/sh", "-c", "sleep 1; exit 3"])
        assert agent.run(s)["ok"] is True
        got = events_of(agent, s["id"], 3)
        assert [(e.state, e.exit_code) for e in got][-1] == ("exited", 3)
    finally:
        stop.set()
