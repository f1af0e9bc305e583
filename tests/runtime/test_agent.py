"""The host agent: validation, driving the daemon, reports into Redis, a real Celery worker.

Redis is the real redis-server `scripts/with-test-services` starts. The runtime daemon is stood in
for by `FakeDaemon`, which speaks the daemon's socket protocol.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery

from runtime.agent.config import AgentSettings, ConfigError, queue_name
from runtime.agent.core import Agent
from runtime.agent.reports import (
    EVENTS_STREAM,
    HEARTBEATS_STREAM,
    HOST_KEY,
    ContainerEvent,
    Reporter,
)
from runtime.client import DaemonClient
from runtime.images import ImageStore
from runtime.tinyimage import build_tiny_image
from tests.runtime.agent_fakes import FakeDaemon

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def redis_url() -> str:
    url = os.environ.get("REDIS_URL")
    assert url, "REDIS_URL is not set: run the suite through scripts/with-test-services"
    return url


@pytest.fixture
def rdb(redis_url: str) -> redis.Redis[bytes]:
    return redis.Redis.from_url(redis_url)


@pytest.fixture
def runtime_dir() -> Iterator[Path]:
    # Short: a Unix socket path must fit in 108 bytes.
    d = Path(tempfile.mkdtemp(prefix="pa-"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def daemon(runtime_dir: Path) -> Iterator[FakeDaemon]:
    fake = FakeDaemon(runtime_dir / "daemon.sock")
    try:
        yield fake
    finally:
        fake.close()


@pytest.fixture
def settings(redis_url: str, runtime_dir: Path) -> AgentSettings:
    build_tiny_image(ImageStore(runtime_dir / "images"))
    host = f"h-{secrets.token_hex(4)}"
    return AgentSettings.from_env(
        {"REDIS_URL": redis_url, "PAAS_RUNTIME_DIR": str(runtime_dir)}, host=host
    )


@pytest.fixture
def agent(settings: AgentSettings, rdb: redis.Redis[bytes], daemon: FakeDaemon) -> Agent:
    return Agent(settings, Reporter(rdb, settings.host))


def events(rdb: redis.Redis[bytes], host: str) -> list[ContainerEvent]:
    out = []
    for _id, fields in rdb.xrange(EVENTS_STREAM):
        data = {k.decode(): v.decode() for k, v in fields.items()}
        if data["host"] == host:
            out.append(ContainerEvent.from_fields(data))
    return out


def wait_for_events(rdb: redis.Redis[bytes], host: str, n: int) -> list[ContainerEvent]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        got = events(rdb, host)
        if len(got) >= n:
            return got
        time.sleep(0.1)
    return events(rdb, host)


def spec(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": "web1-v3-web-1",
        "app": "web1",
        "release": 3,
        "process_type": "web",
        "image": "tiny:latest",
        "command": ["/bin/sh", "-c", "sleep 60"],
        "env": {"PORT": "5000"},
        "port": 5000,
        "memory_mb": 128,
    }
    base.update(overrides)
    return base


def test_it_runs_a_valid_spec_through_the_daemon(agent: Agent, daemon: FakeDaemon,
                                                 rdb: redis.Redis[bytes]) -> None:
    result = agent.run(spec())
    assert result["ok"] is True
    assert result["address"] == "127.0.0.1:5000"
    assert daemon.ops() == ["create", "inspect", "start"]
    create = daemon.requests[0]
    image = ImageStore(agent.settings.image_root).resolve("tiny")
    assert create["layers"] == [str(p) for p in image.layers]
    assert create["image_config"]["Cmd"] == ["/bin/sh"]
    assert create["spec"]["memory_mb"] == 128
    got = events(rdb, agent.settings.host)
    assert [(e.id, e.state) for e in got] == [("web1-v3-web-1", "starting"), ("web1-v3-web-1", "running")]
    assert (got[1].address, got[1].app, got[1].release, got[1].process_type) == (
        "127.0.0.1:5000", "web1", 3, "web")


def test_it_refuses_a_spec_with_an_unknown_field(agent: Agent, daemon: FakeDaemon,
                                                 rdb: redis.Redis[bytes]) -> None:
    result = agent.run(spec(privileged=True))
    assert result == {"ok": False, "id": "web1-v3-web-1",
                      "error": "invalid container spec: spec: unknown field(s): privileged"}
    assert daemon.ops() == []
    [event] = events(rdb, agent.settings.host)
    assert (event.id, event.state) == ("web1-v3-web-1", "failed")
    assert "unknown field(s): privileged" in event.message


def test_it_refuses_host_mounts_in_a_spec_from_the_control_plane(agent: Agent, daemon: FakeDaemon,
                                                                  rdb: redis.Redis[bytes]) -> None:
    result = agent.run(spec(mounts=[{"source": "/", "target": "/host", "readonly": False}]))
    assert result == {"ok": False, "id": "web1-v3-web-1",
                      "error": "invalid container spec: mounts: host bind mounts are not allowed in this spec"}
    assert daemon.ops() == []


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"memory_mb": 10**9}, "memory_mb: 1000000000 is out of range"),
        ({"port": 70000}, "port: 70000 is out of range"),
        ({"release": "three"}, "release: must be an integer"),
        ({"id": "../../etc"}, "id: '../../etc' is not valid"),
    ],
)
def test_it_refuses_out_of_range_or_malformed_fields(
    agent: Agent, daemon: FakeDaemon, rdb: redis.Redis[bytes], override: dict[str, Any], message: str
) -> None:
    result = agent.run(spec(**override))
    assert result["ok"] is False and message in result["error"]
    assert daemon.ops() == []
    [event] = events(rdb, agent.settings.host)
    assert event.state == "failed" and message in event.message


def test_it_refuses_a_spec_that_is_not_an_object(agent: Agent, rdb: redis.Redis[bytes]) -> None:
    result = agent.run(["not", "a", "spec"])
    assert result["ok"] is False and "must be an object" in result["error"]
    assert [e.state for e in events(rdb, agent.settings.host)] == ["failed"]


def test_it_reports_an_image_that_does_not_exist(agent: Agent, daemon: FakeDaemon,
                                                 rdb: redis.Redis[bytes]) -> None:
    result = agent.run(spec(image="sha256:" + "ab" * 32))
    assert result["ok"] is False
    assert "not found in the image store" in result["error"]
    assert daemon.ops() == []
    [event] = events(rdb, agent.settings.host)
    assert event.state == "failed" and "not found in the image store" in event.message


def test_it_starts_an_already_created_container_when_a_task_is_redelivered(
    agent: Agent, daemon: FakeDaemon
) -> None:
    agent.run(spec())
    assert agent.run(spec())["ok"] is True
    assert daemon.ops() == ["create", "inspect", "start", "create", "inspect"]


def test_it_stops_and_removes_a_container(agent: Agent, daemon: FakeDaemon,
                                          rdb: redis.Redis[bytes]) -> None:
    agent.run(spec())
    assert agent.stop("web1-v3-web-1", timeout_s=5)["ok"] is True
    assert daemon.ops()[-2:] == ["stop", "remove"]
    assert daemon.containers == {}
    assert events(rdb, agent.settings.host)[-1].state == "exited"
    assert agent.stop("web1-v3-web-1")["gone"] is True


def test_it_writes_a_heartbeat_with_capacity_and_usage(agent: Agent, rdb: redis.Redis[bytes]) -> None:
    agent.run(spec())
    beat = agent.heartbeat()
    latest = json.loads(rdb.get(HOST_KEY.format(host=agent.settings.host)) or b"{}")
    assert latest["host"] == agent.settings.host
    assert latest["cpus"] == os.cpu_count()
    assert latest["memory_mb"] > 0
    assert latest["memory_reserved_mb"] == 128
    assert latest["daemon"] == "up"
    assert [c["id"] for c in latest["containers"]] == ["web1-v3-web-1"]
    assert 0 < rdb.pttl(HOST_KEY.format(host=agent.settings.host)) <= 30_000
    hosts = [f[b"host"].decode() for _id, f in rdb.xrange(HEARTBEATS_STREAM)]
    assert agent.settings.host in hosts
    assert beat.memory_reserved_mb == 128


def runtime_metrics(rdb: redis.Redis[bytes], app: str, *beats: Any) -> dict[str, int]:
    """The app's runtime-metric fields, added up over the minutes the beats fell in."""
    total: dict[str, int] = {}
    for minute in sorted({int(b.time // 60) for b in beats}):
        for k, v in rdb.hgetall(f"paas:metrics:runtime:{app}:{minute}").items():
            total[k.decode()] = total.get(k.decode(), 0) + int(v)
    return total


def test_it_reports_each_running_containers_memory_and_cpu(agent: Agent, daemon: FakeDaemon,
                                                          rdb: redis.Redis[bytes]) -> None:
    app = f"a{secrets.token_hex(4)}"
    ids = [f"{app}.web.1.aaaaaa", f"{app}.web.2.bbbbbb"]
    for cid in ids:
        agent.run(spec(id=cid, app=app))
    daemon.usage[ids[0]] = {"memory_bytes": 50_000_000, "cpu_ns": 7_000_000_000}
    daemon.usage[ids[1]] = {"memory_bytes": 30_000_000, "cpu_ns": 1_000_000_000}
    first = agent.heartbeat()
    assert {c["id"]: c["memory_bytes"] for c in first.containers} == dict(
        zip(ids, (50_000_000, 30_000_000), strict=True))
    assert all("cpu_percent" not in c for c in first.containers)  # nothing to compare with yet

    daemon.usage[ids[0]] = {"memory_bytes": 60_000_000, "cpu_ns": 7_250_000_000}
    daemon.usage[ids[1]] = {"memory_bytes": 30_000_000, "cpu_ns": 1_000_400_000}
    second = agent.heartbeat()
    latest = json.loads(rdb.get(HOST_KEY.format(host=agent.settings.host)) or b"{}")
    by_id = {c["id"]: c for c in latest["containers"]}
    assert by_id[ids[0]]["memory_bytes"] == 60_000_000
    assert by_id[ids[0]]["cpu_percent"] > 0 and by_id[ids[1]]["cpu_percent"] > 0
    assert by_id[ids[0]]["cpu_percent"] > by_id[ids[1]]["cpu_percent"]
    assert daemon.ops().count("stats") == 4  # one call per running container per beat

    fields = runtime_metrics(rdb, app, first, second)
    assert fields["cpu_millis"] == 250
    assert fields[f"mem:{ids[0]}"] in (60_000_000, 110_000_000)  # one minute, or two
    ttl = rdb.ttl(f"paas:metrics:runtime:{app}:{int(second.time // 60)}")
    assert 3600 < ttl <= 3900

    # Sub-millisecond CPU is carried over, not lost: 0.4 ms + 0.7 ms makes 1 ms.
    daemon.usage[ids[1]] = {"memory_bytes": 30_000_000, "cpu_ns": 1_001_100_000}
    third = agent.heartbeat()
    assert runtime_metrics(rdb, app, first, second, third)["cpu_millis"] == 251


def test_its_hosts_add_up_the_cpu_and_memory_of_one_app(
    agent: Agent, daemon: FakeDaemon, redis_url: str, runtime_dir: Path, rdb: redis.Redis[bytes]
) -> None:
    app = f"a{secrets.token_hex(4)}"
    other_daemon = FakeDaemon(runtime_dir / "d2.sock")
    try:
        other_host = f"h-{secrets.token_hex(4)}"
        other = Agent(AgentSettings.from_env(
            {"REDIS_URL": redis_url, "PAAS_RUNTIME_DIR": str(runtime_dir)},
            host=other_host), Reporter(rdb, other_host), DaemonClient(runtime_dir / "d2.sock"))
        beats = []
        for n, (a, d) in enumerate(((agent, daemon), (other, other_daemon)), start=1):
            cid = f"{app}.web.{n}.abcdef"
            a.run(spec(id=cid, app=app))
            d.usage[cid] = {"memory_bytes": n * 1000, "cpu_ns": 0}
            beats.append(a.heartbeat())
            d.usage[cid] = {"memory_bytes": n * 1000, "cpu_ns": n * 100_000_000}
            beats.append(a.heartbeat())
    finally:
        other_daemon.close()
    fields = runtime_metrics(rdb, app, *beats)
    assert fields["cpu_millis"] == 300
    assert {k: v for k, v in fields.items() if k.startswith("mem:")}.keys() == {
        f"mem:{app}.web.1.abcdef", f"mem:{app}.web.2.abcdef"}


def test_it_leaves_the_figures_out_when_a_stats_call_fails(agent: Agent, daemon: FakeDaemon,
                                                           rdb: redis.Redis[bytes]) -> None:
    app = f"a{secrets.token_hex(4)}"
    agent.run(spec(id=f"{app}.web.1.cccccc", app=app))  # the fake answers stats with an error
    beat = agent.heartbeat()
    assert [set(c) for c in beat.containers] == [{"id", "state", "ip", "memory_mb"}]
    assert beat.memory_reserved_mb == 128
    assert runtime_metrics(rdb, app, beat) == {}
    assert json.loads(rdb.get(HOST_KEY.format(host=agent.settings.host)) or b"{}")["daemon"] == "up"


def test_it_says_in_its_heartbeat_when_the_daemon_is_down(
    settings: AgentSettings, rdb: redis.Redis[bytes]
) -> None:
    agent = Agent(settings, Reporter(rdb, settings.host))  # no daemon listening
    assert agent.heartbeat().daemon == "unavailable"


def test_it_relays_container_exits_from_the_daemon(agent: Agent, daemon: FakeDaemon,
                                                   rdb: redis.Redis[bytes]) -> None:
    agent.run(spec())
    stop = threading.Event()
    relay = threading.Thread(target=agent.relay_events, args=(stop,), daemon=True)
    relay.start()
    try:
        deadline = time.monotonic() + 30
        while daemon.listening() == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        daemon.exit("web1-v3-web-1", 137, state="oom")
        got = wait_for_events(rdb, agent.settings.host, 3)
        assert (got[-1].id, got[-1].state, got[-1].exit_code) == ("web1-v3-web-1", "oom", 137)
    finally:
        stop.set()
        daemon.close()
        relay.join(timeout=10)


def test_it_checks_readiness_by_connecting_to_the_port(agent: Agent) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert agent.check_ready("c", f"127.0.0.1:{port}", "tcp", "/") is True
    assert agent.check_ready("c", f"127.0.0.1:{port}", "tcp", "/") is False


def test_its_settings_refuse_a_missing_redis_url_and_a_bad_host_name() -> None:
    with pytest.raises(ConfigError, match="REDIS_URL must be set"):
        AgentSettings.from_env({}, host="h1")
    with pytest.raises(ConfigError, match="host name 'Bad_Host' is not valid"):
        AgentSettings.from_env({"REDIS_URL": "redis://x:1/0"}, host="Bad_Host")
    with pytest.raises(ConfigError, match="PAAS_AGENT_HEARTBEAT_S must be a number"):
        AgentSettings.from_env({"REDIS_URL": "redis://x:1/0", "PAAS_AGENT_HEARTBEAT_S": "often"},
                               host="h1")
    with pytest.raises(ConfigError, match="PAAS_AGENT_CONCURRENCY must be an integer"):
        AgentSettings.from_env({"REDIS_URL": "redis://x:1/0", "PAAS_AGENT_CONCURRENCY": "2.5"},
                               host="h1")
    with pytest.raises(ConfigError, match="PAAS_AGENT_CONCURRENCY must be between 1 and 64"):
        AgentSettings.from_env({"REDIS_URL": "redis://x:1/0", "PAAS_AGENT_CONCURRENCY": "0"},
                               host="h1")
    assert queue_name("h1") == "host.h1"


def test_its_settings_find_the_runtime_where_the_daemon_does(tmp_path) -> None:
    from runtime.client import runtime_root

    env = {"REDIS_URL": "redis://x:1/0", "PAAS_DATA_DIR": str(tmp_path)}
    settings = AgentSettings.from_env(env, host="h1")
    assert settings.runtime_root == runtime_root(env) == tmp_path / "runtime"
    assert settings.daemon_socket == tmp_path / "runtime" / "daemon.sock"
    env["PAAS_RUNTIME_DIR"] = str(tmp_path / "elsewhere")
    assert AgentSettings.from_env(env, host="h1").runtime_root == tmp_path / "elsewhere"


def test_its_command_says_what_is_missing_without_a_traceback() -> None:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    proc = subprocess.run([sys.executable, "-m", "runtime.agent", "--host", "h1"],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "error: REDIS_URL must be set to the controller's Redis (redis://host:port/db)")


@pytest.fixture
def worker(settings: AgentSettings, daemon: FakeDaemon, runtime_dir: Path) -> Iterator[AgentSettings]:
    """A real agent process: `python -m runtime.agent` on its own queue."""
    env = dict(os.environ, REDIS_URL=settings.redis_url, PAAS_RUNTIME_DIR=str(runtime_dir),
               PAAS_AGENT_HEARTBEAT_S="0.5")
    log = (runtime_dir / "agent.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "runtime.agent", "--host", settings.host],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield settings
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.mark.slow
def test_a_real_worker_runs_specs_from_its_queue_and_reports_them(
    worker: AgentSettings, daemon: FakeDaemon, rdb: redis.Redis[bytes]
) -> None:
    with socket.socket() as app_port:
        app_port.bind(("127.0.0.1", 0))
        app_port.listen()
        port = app_port.getsockname()[1]
        sender = Celery("controlplane-test", broker=worker.redis_url, set_as_current=False)
        sender.conf.task_serializer = "json"
        queue = queue_name(worker.host)
        sender.send_task("agent.container_run", kwargs={"spec": spec(port=port)}, queue=queue)
        sender.send_task("agent.container_run", kwargs={"spec": spec(id="bad", bogus=1)}, queue=queue)
        got = wait_for_events(rdb, worker.host, 4)
        by_state = {(e.id, e.state) for e in got}
        assert ("web1-v3-web-1", "starting") in by_state
        assert ("web1-v3-web-1", "running") in by_state
        assert ("web1-v3-web-1", "ready") in by_state
        assert ("bad", "failed") in by_state
        [ready] = [e for e in got if e.state == "ready"]
        assert ready.address == f"127.0.0.1:{port}"
    sender.send_task("agent.container_stop", kwargs={"container_id": "web1-v3-web-1"}, queue=queue)
    got = wait_for_events(rdb, worker.host, 5)
    assert got[-1].state == "exited"
    beat = json.loads(rdb.get(HOST_KEY.format(host=worker.host)) or b"{}")
    assert beat["host"] == worker.host and beat["daemon"] == "up"
