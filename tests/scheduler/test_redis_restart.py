"""Redis restarted (and empty: no persistence): ingestion, the follower and the routes recover."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from core.models import Container
from router.table import APPS_KEY, decode_app
from runtime.agent.reports import Reporter
from scheduler import follow as follower
from scheduler import reconcile
from scheduler.follow import follow_once
from scheduler.reconcile import reconcile_app
from tests.scheduler.conftest import containers, scale

pytestmark = pytest.mark.django_db


class OwnRedis:
    """A redis-server of this test's own, on a free port, that can be restarted empty."""

    def __init__(self, work: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.work = work
        self.proc: subprocess.Popen[bytes] | None = None
        self.client = redis.Redis(port=self.port, socket_timeout=5)

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.work)], stdout=subprocess.DEVNULL)
        for _ in range(100):
            try:
                self.client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
            self.proc = None


@pytest.fixture
def own_redis(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[OwnRedis]:
    server = OwnRedis(tmp_path)
    server.start()
    monkeypatch.setattr(reconcile, "redis_client", lambda url=None: server.client)
    monkeypatch.setattr(follower, "redis_client", lambda url=None: server.client)
    try:
        yield server
    finally:
        server.stop()


def endpoints(r: redis.Redis, app: Any) -> list[str]:
    raw = r.hget(APPS_KEY, app.name)
    return [] if raw is None else sorted(e.key for e in decode_app(app.name, raw).endpoints)


def test_it_recovers_routes_and_reports_after_redis_restarts_empty(
        app, hosts, member, agents, own_redis: OwnRedis, django_capture_on_commit_callbacks) -> None:
    r = own_redis.client
    scale(member, app, web=2)
    with django_capture_on_commit_callbacks(execute=True):
        reconcile_app(app.pk)
    web1, web2 = sorted(containers(app), key=lambda c: c.number)
    for i, c in enumerate((web1, web2)):
        Reporter(r, c.host.name).event(c.id, "ready", address=f"10.9.{i}.4:5000")
    with django_capture_on_commit_callbacks(execute=True):
        follow_once(r, "t-restart", block_ms=100)
    assert endpoints(r, app) == ["10.9.0.4:5000", "10.9.1.4:5000"]

    own_redis.stop()
    own_redis.start()  # empty: no streams, no group, no route table
    assert endpoints(r, app) == []

    with django_capture_on_commit_callbacks(execute=True):
        reconcile_app(app.pk)  # what the beat's tick does for every app
    assert endpoints(r, app) == ["10.9.0.4:5000", "10.9.1.4:5000"]

    Reporter(r, web2.host.name).event(web2.id, "exited", exit_code=1)
    with django_capture_on_commit_callbacks(execute=True):
        follow_once(r, "t-restart", block_ms=100)
    assert Container.objects.get(pk=web2.pk).state == "exited"
    assert endpoints(r, app) == ["10.9.0.4:5000"]


def test_its_follower_waits_out_a_redis_outage(
        app, hosts, member, agents, own_redis: OwnRedis, django_capture_on_commit_callbacks) -> None:
    scale(member, app, web=1)
    with django_capture_on_commit_callbacks(execute=True):
        reconcile_app(app.pk)
    (web1,) = containers(app)
    stop = threading.Event()

    def outage() -> None:
        own_redis.stop()
        time.sleep(1.5)
        own_redis.start()
        Reporter(own_redis.client, web1.host.name).event(web1.id, "running", address="10.9.0.6:5000")
        time.sleep(2)
        stop.set()

    t = threading.Thread(target=outage)
    t.start()
    try:
        follower.follow(stop, block_ms=100)  # returns only when stopped: the outage is not fatal
    finally:
        stop.set()
        t.join(timeout=30)
    web1.refresh_from_db()
    assert (web1.state, web1.address) == ("running", "10.9.0.6:5000")
