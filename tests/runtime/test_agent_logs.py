"""The agent's log shipper against the runtime's on-disk log layout and a real Redis.

The container directories here are written the way the runtime's init writes them (state.json,
`container.log` with `<RFC 3339 time> <stream> <line>` lines, rotation to `container.log.1`);
test_agent_logs_daemon.py runs the same shipper against real containers of a real daemon.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from runtime.agent.logship import (
    MARKER_KEY,
    LogShipper,
    LogShipSettings,
    container_tag,
    logs_key,
    parse_line,
)


@pytest.fixture
def client() -> Iterator[redis.Redis[bytes]]:
    url = os.environ.get("REDIS_URL")
    assert url, "REDIS_URL is not set: run the suite through scripts/with-test-services"
    c: redis.Redis[bytes] = redis.Redis.from_url(url)
    yield c
    c.close()


class Host:
    """A runtime root with containers whose logs the test writes, and shippers to follow them."""

    def __init__(self, root: Path, client: redis.Redis[bytes]) -> None:
        self.root = root
        self.containers = root / "containers"
        self.containers.mkdir(parents=True)
        self.client = client
        self.name = f"h-{secrets.token_hex(4)}"
        self.app = f"logs-{secrets.token_hex(4)}"
        self.clock = 0

    def container(self, name: str = "web.1", app: str | None = None) -> Path:
        ptype, n = name.split(".")
        app = app or self.app
        cid = f"{app}.{ptype}.{n}.{secrets.token_hex(3)}"
        d = self.containers / cid
        d.mkdir()
        spec = {"id": cid, "app": app, "process_type": ptype, "labels": {"paas.process": name}}
        (d / "state.json").write_text(json.dumps({"spec": spec, "state": "running"}))
        return d

    def write(self, d: Path, *lines: str, stream: str = "stdout") -> None:
        with open(d / "container.log", "ab") as f:
            for line in lines:
                self.clock += 1
                stamp = f"2026-11-27T23:{self.clock // 60 % 60:02d}:{self.clock % 60:02d}.000250Z"
                f.write(f"{stamp} {stream} {line}\n".encode())

    def rotate(self, d: Path) -> None:
        os.replace(d / "container.log", d / "container.log.1")

    def shipper(self, client: redis.Redis[bytes] | None = None, **settings: int) -> LogShipper:
        return LogShipper(self.containers, self.root / "logship" / f"{self.name}.json",
                          client or self.client, self.name,
                          LogShipSettings(poll_s=0.01, **settings))

    def lines(self, app: str | None = None) -> list[tuple[str, str]]:
        entries = self.client.xrange(logs_key(app or self.app))
        return [(f[b"tag"].decode(), f[b"line"].decode()) for _id, f in entries]

    def cleanup(self) -> None:
        keys = [logs_key(self.app), MARKER_KEY.format(host=self.name)]
        self.client.delete(*keys, *self.client.keys(f"{logs_key(self.app)}-*"))


@pytest.fixture
def host(tmp_path: Path, client: redis.Redis[bytes]) -> Iterator[Host]:
    h = Host(tmp_path / "runtime", client)
    try:
        yield h
    finally:
        h.cleanup()


def refused_client() -> redis.Redis[bytes]:
    """A client of a port where nothing listens: Redis as an agent sees it while it is down."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return redis.Redis(port=port, socket_connect_timeout=1)


def test_it_ships_each_line_tagged_with_the_containers_name_and_its_own_time(host: Host) -> None:
    web = host.container("web.1")
    host.write(web, "listening on 5000", "GET / 200")
    host.write(web, "warning: slow", stream="stderr")
    assert host.shipper().step() == 3
    entries = host.client.xrange(logs_key(host.app))
    assert [(f[b"tag"], f[b"line"]) for _id, f in entries] == [
        (b"app[web.1]", b"listening on 5000"), (b"app[web.1]", b"GET / 200"),
        (b"app[web.1]", b"warning: slow"),
    ]
    assert entries[0][1][b"time"] == b"1795820401.000250"  # 2026-11-27T23:00:01.000250Z


def test_it_sends_each_apps_lines_to_that_apps_stream(host: Host) -> None:
    other = f"{host.app}-b"
    host.write(host.container("web.1"), "a1")
    host.write(host.container("worker.2", app=other), "b1")
    host.shipper().step()
    assert host.lines() == [("app[web.1]", "a1")]
    assert host.lines(other) == [("app[worker.2]", "b1")]


def test_it_ships_only_what_is_new_on_each_round(host: Host) -> None:
    web, shipper = host.container(), host.shipper()
    host.write(web, "one")
    shipper.step()
    assert shipper.step() == 0
    host.write(web, "two", "three")
    assert shipper.step() == 2
    assert [line for _t, line in host.lines()] == ["one", "two", "three"]


def test_it_leaves_a_half_written_line_until_it_is_whole(host: Host) -> None:
    web, shipper = host.container(), host.shipper()
    host.write(web, "whole")
    with open(web / "container.log", "ab") as f:
        f.write(b"2026-11-27T23:59:59.000000Z stdout half")
    assert shipper.step() == 1
    with open(web / "container.log", "ab") as f:
        f.write(b" and the rest\n")
    shipper.step()
    assert [line for _t, line in host.lines()] == ["whole", "half and the rest"]


def test_it_follows_the_log_across_rotations(host: Host) -> None:
    web, shipper = host.container(), host.shipper()
    host.write(web, "1", "2")
    shipper.step()
    host.write(web, "3")  # written to the file after the shipper looked, then it rotates
    host.rotate(web)
    host.write(web, "4")
    shipper.step()
    host.write(web, "5")
    host.rotate(web)
    host.write(web, "6")
    host.rotate(web)  # twice between two rounds: "6" is only in container.log.1 now
    host.write(web, "7")
    shipper.step()
    assert [line for _t, line in host.lines()] == ["1", "2", "3", "4", "5", "6", "7"]


def test_it_starts_a_new_container_from_its_oldest_kept_line(host: Host) -> None:
    web = host.container()
    host.write(web, "old")
    host.rotate(web)
    host.write(web, "new")
    host.shipper().step()
    assert [line for _t, line in host.lines()] == ["old", "new"]


def test_it_reads_the_last_lines_of_a_container_removed_meanwhile(host: Host) -> None:
    web, shipper = host.container(), host.shipper()
    host.write(web, "started")
    shipper.step()
    host.write(web, "shutting down")
    for f in web.iterdir():
        f.unlink()
    web.rmdir()
    shipper.step()
    assert [line for _t, line in host.lines()] == ["started", "shutting down"]
    state = json.loads((host.root / "logship" / f"{host.name}.json").read_text())
    assert state["after"] == {}  # nothing kept about a container that is gone


def test_a_restarted_shipper_neither_loses_nor_repeats_lines(host: Host) -> None:
    web = host.container()
    host.write(web, "a", "b")
    first = host.shipper()
    first.step()
    first.close()
    host.write(web, "c")
    host.rotate(web)
    host.write(web, "d")
    second = host.shipper()
    second.step()
    assert [line for _t, line in host.lines()] == ["a", "b", "c", "d"]


def test_a_batch_whose_answer_was_lost_is_not_sent_twice(host: Host) -> None:
    web, shipper = host.container(), host.shipper()
    host.write(web, "a", "b")
    pipeline = host.client.pipeline

    class AnswerLost(redis.ConnectionError):
        pass

    def executes_then_fails(*args: object, **kwargs: object) -> object:
        pipe = pipeline(*args, **kwargs)  # type: ignore[arg-type]
        real = pipe.execute

        def execute(raise_on_error: bool = True) -> object:
            real(raise_on_error)
            raise AnswerLost("the connection closed before the answer came")

        pipe.execute = execute  # type: ignore[method-assign]
        return pipe

    host.client.pipeline = executes_then_fails  # type: ignore[method-assign]
    assert shipper.step() == 0 and shipper.failing
    host.client.pipeline = pipeline  # type: ignore[method-assign]
    # A fresh shipper (an agent restarted at that moment) and the same one both know.
    assert host.shipper().step() == 0
    shipper._retry_at = 0.0
    host.write(web, "c")
    shipper.step()
    assert [line for _t, line in host.lines()] == ["a", "b", "c"]


def test_it_buffers_while_redis_is_away_and_ships_when_it_is_back(host: Host) -> None:
    web = host.container()
    host.write(web, "before")
    shipper = host.shipper()
    shipper.step()
    shipper.redis = refused_client()
    host.write(web, "during 1", "during 2")
    assert shipper.step() == 0 and shipper.failing
    shipper.redis, shipper._retry_at = host.client, 0.0
    assert shipper.step() == 2
    assert [line for _t, line in host.lines()] == ["before", "during 1", "during 2"]


def test_it_drops_and_counts_what_overflows_its_buffer_while_redis_is_away(
    host: Host, caplog: pytest.LogCaptureFixture
) -> None:
    web = host.container()
    shipper = host.shipper(buffer_lines=10)
    shipper.step()  # resumed: Redis was there at the start
    shipper.redis = refused_client()
    host.write(web, *[f"line {i}" for i in range(25)])
    shipper.step()  # the send fails: from now on what does not fit is dropped
    shipper.step()
    assert shipper.dropped == 15
    shipper.redis, shipper._retry_at = host.client, 0.0
    shipper.step()
    assert [line for _t, line in host.lines()] == [f"line {i}" for i in range(10)]
    assert "dropped 15 container log lines" in caplog.text
    host.write(web, "after")
    shipper.step()
    assert host.lines()[-1] == ("app[web.1]", "after")


def test_a_full_buffer_only_pauses_reading_while_redis_takes_lines(host: Host) -> None:
    web = host.container()
    host.write(web, *[f"line {i}" for i in range(95)])
    shipper = host.shipper(buffer_lines=10, batch_lines=4)
    assert shipper.step() == 95
    assert shipper.dropped == 0


def test_it_waits_for_redis_before_it_starts(host: Host) -> None:
    host.write(host.container(), "hello")
    shipper = host.shipper(client=refused_client())
    assert shipper.step() == 0 and shipper.failing
    shipper.redis, shipper._retry_at = host.client, 0.0
    assert shipper.step() == 1


def test_it_tags_containers_by_label_then_by_id_then_by_type() -> None:
    assert container_tag({"labels": {"paas.process": "web.3"}}) == "app[web.3]"
    assert container_tag({"id": "shop.worker.2.ab12", "process_type": "worker"}) == "app[worker.2]"
    assert container_tag({"id": "t1234-c", "process_type": "web"}) == "app[web]"


def test_it_keeps_a_line_in_another_format_whole() -> None:
    when, text = parse_line(b"no timestamp here")
    assert text == "no timestamp here" and float(when) > 0
    assert parse_line(b"2026-11-27T23:59:59.5Z stderr bad \xff") == ("1795823999.500000", "bad \ufffd")


@pytest.mark.slow
def test_the_agent_process_ships_logs_and_resumes_where_it_stopped(host: Host) -> None:
    web = host.container("web.1")
    host.write(web, "one", "two")
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PAAS_RUNTIME_DIR=str(host.root), PAAS_AGENT_LOG_POLL_S="0.05")

    def agent_until(n: int) -> list[str]:
        log = (host.root / "agent.log").open("a")
        proc = subprocess.Popen([sys.executable, "-m", "runtime.agent", "--host", host.name],
                                cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 60
            while len(got := [line for _t, line in host.lines()]) < n:
                assert proc.poll() is None, (host.root / "agent.log").read_text()
                assert time.monotonic() < deadline, (host.root / "agent.log").read_text()
                time.sleep(0.05)
            return got
        finally:
            proc.terminate()
            proc.wait(timeout=30)
            log.close()

    assert agent_until(2) == ["one", "two"]
    host.write(web, "three")
    assert agent_until(3) == ["one", "two", "three"]


def test_a_host_without_containers_yet_is_quietly_nothing_to_ship(
    tmp_path: Path, client: redis.Redis[bytes], caplog: pytest.LogCaptureFixture
) -> None:
    shipper = LogShipper(tmp_path / "runtime" / "containers", tmp_path / "state.json", client,
                         f"h-{secrets.token_hex(4)}")
    with caplog.at_level(logging.WARNING):
        assert shipper.step() == 0
    assert caplog.text == ""
    client.delete(shipper.marker)
