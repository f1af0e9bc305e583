"""Reading the agents' reports from the real Redis streams into Host and Container rows."""

from __future__ import annotations

import base64
import json
import secrets
import time
from datetime import timedelta
from typing import Any

import pytest
import redis
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from controlplane.celery import app as celery_app
from core.models import Container, Host, HostState
from router.table import APPS_KEY, decode_app
from runtime.agent.reports import EVENTS_STREAM, Heartbeat, Reporter
from scheduler import tasks
from scheduler.ingest import GROUP, _read, ingest
from scheduler.reconcile import reconcile_app
from tests.scheduler.conftest import containers, scale

pytestmark = pytest.mark.django_db


@pytest.fixture
def placed(app, hosts, member, agents, django_capture_on_commit_callbacks) -> list[Container]:
    scale(member, app, web=2)
    with django_capture_on_commit_callbacks(execute=True):
        reconcile_app(app.pk)
    return sorted(containers(app), key=lambda c: c.number)


def consumer() -> str:
    return f"test-{secrets.token_hex(4)}"


def report(r: redis.Redis, c: Container, state: str, **extra: Any) -> None:
    assert c.host is not None
    Reporter(r, c.host.name).event(c.id, state, **extra)


def beat(r: redis.Redis, host: Host, *, at: float | None = None, ids: list[str] = ()) -> None:
    Reporter(r, host.name).heartbeat(Heartbeat(
        host=host.name, time=at or time.time(), cpus=8, memory_mb=16000, memory_available_mb=12000,
        load1=0.5, memory_reserved_mb=1024, daemon="up",
        containers=[{"id": i, "state": "running", "ip": "10.0.0.2", "memory_mb": 64} for i in ids],
    ), interval_s=10)


def test_it_records_container_states_and_addresses(placed, r) -> None:
    web1, web2 = placed
    report(r, web1, "running", address="10.9.0.2:5000")
    report(r, web1, "ready", address="10.9.0.2:5000")
    report(r, web2, "running", address="10.9.1.2:5000")
    result = ingest(r, consumer())
    web1.refresh_from_db()
    web2.refresh_from_db()
    assert (web1.state, web1.address) == ("ready", "10.9.0.2:5000") and web1.started_at is not None
    assert (web2.state, web2.address) == ("running", "10.9.1.2:5000")
    assert result.apps == {web1.app_id}


def test_it_never_moves_a_container_back_to_an_earlier_state(placed, r) -> None:
    web1, _ = placed
    report(r, web1, "ready", address="10.9.0.2:5000")
    report(r, web1, "running", address="10.9.0.2:5000")  # late, out of order
    ingest(r, consumer())
    web1.refresh_from_db()
    assert web1.state == "ready"


def test_it_records_an_exit_code(placed, r) -> None:
    web1, _ = placed
    report(r, web1, "exited", exit_code=3)
    ingest(r, consumer())
    web1.refresh_from_db()
    assert (web1.state, web1.exit_code) == ("exited", 3) and web1.finished_at is not None


def test_it_records_when_a_container_got_ready_and_why_one_failed(placed, r) -> None:
    web1, web2 = placed
    report(r, web1, "ready", address="10.9.0.2:5000")
    report(r, web2, "failed", message="not ready before its deadline")
    ingest(r, consumer())
    web1.refresh_from_db()
    web2.refresh_from_db()
    assert web1.ready_at is not None and web1.started_at == web1.ready_at
    assert (web2.state, web2.message, web2.ready_at) == ("failed", "not ready before its deadline", None)


def test_it_ignores_events_for_containers_it_does_not_know(db, r) -> None:
    Reporter(r, "nowhere").event("gone.web.1.abcdef", "exited", exit_code=0)
    assert ingest(r, consumer()).apps == set()


def test_it_acknowledges_what_it_stored_so_nothing_is_handled_twice(placed, r) -> None:
    web1, _ = placed
    report(r, web1, "running", address="10.9.0.2:5000")
    name = consumer()
    assert ingest(r, name).events >= 1
    assert ingest(r, name).events == 0
    assert r.xpending(EVENTS_STREAM, GROUP)["pending"] == 0


def test_it_takes_up_what_a_reader_read_but_did_not_store(placed, r) -> None:
    web1, _ = placed
    name = consumer()
    ingest(r, name)  # the group exists and this reader is up to date
    report(r, web1, "running", address="10.9.0.2:5000")
    assert _read(r, EVENTS_STREAM, name, 100), "read, then the reader died before storing"
    web1.refresh_from_db()
    assert web1.state == "starting"
    ingest(r, name)  # the same reader, restarted
    web1.refresh_from_db()
    assert web1.state == "running"


def test_it_stores_heartbeats_on_the_host(hosts, r) -> None:
    host = hosts[0]
    beat(r, host)
    ingest(r, consumer())
    host.refresh_from_db()
    assert (host.memory_mb, host.cpus, host.memory_mb_used) == (16000, 8, 1024)
    assert host.last_heartbeat_at is not None and host.state == HostState.READY


def test_it_stores_each_containers_memory_and_cpu_from_its_hosts_heartbeat(placed, r) -> None:
    by_host: dict[int, list[Container]] = {}
    for c in placed:
        by_host.setdefault(c.host.pk, []).append(c)
    for cs in by_host.values():
        figures = [{"id": c.id, "state": "running", "memory_mb": 64,
                    "memory_bytes": 10_000_000 * c.number, "cpu_percent": 12.5 * c.number}
                   for c in cs]
        Reporter(r, cs[0].host.name).heartbeat(Heartbeat(
            host=cs[0].host.name, time=time.time(), cpus=8, memory_mb=16000,
            memory_available_mb=12000, load1=0.5, memory_reserved_mb=128, daemon="up",
            containers=figures), interval_s=10)
    with CaptureQueriesContext(connection) as queries:
        ingest(r, consumer())
    updates = [q["sql"] for q in queries.captured_queries
               if q["sql"].startswith('UPDATE "core_container"')]
    assert len(updates) == len(by_host)  # one bulk update per host, not one per container
    for c in placed:
        c.refresh_from_db()
        assert (c.memory_bytes, c.cpu_percent) == (10_000_000 * c.number, 12.5 * c.number)


def test_it_clears_the_figures_of_a_container_reported_without_them(placed, r) -> None:
    web1 = placed[0]
    Container.objects.filter(pk=web1.pk).update(memory_bytes=5, cpu_percent=1.0)
    beat(r, web1.host, ids=[web1.id])  # listed, but no stats (stopped, or the stats call failed)
    ingest(r, consumer())
    web1.refresh_from_db()
    assert (web1.memory_bytes, web1.cpu_percent) == (None, None)


def test_it_marks_a_silent_host_down_and_names_its_apps(placed, r) -> None:
    host = placed[0].host
    Host.objects.filter(pk=host.pk).update(last_heartbeat_at=timezone.now() - timedelta(minutes=5))
    result = ingest(r, consumer())
    host.refresh_from_db()
    assert host.state == HostState.DOWN
    assert host.name in result.hosts_down and placed[0].app_id in result.apps


def test_it_marks_a_down_host_ready_when_it_beats_again(hosts, r) -> None:
    host = hosts[0]
    Host.objects.filter(pk=host.pk).update(state=HostState.DOWN)
    beat(r, host)
    ingest(r, consumer())
    host.refresh_from_db()
    assert host.state == HostState.READY


def test_it_stops_containers_a_returning_host_still_runs(placed, r, agents) -> None:
    host = placed[0].host
    stale = f"{placed[0].app.name}.web.7.abcdef"
    beat(r, host, ids=[placed[0].id, stale, "something-else"])
    result = ingest(r, consumer())
    assert result.stale_stopped == [stale]
    assert agents.stops == [(host.name, stale)]


def test_its_task_writes_routes_and_asks_for_a_reconcile(placed, r) -> None:
    web1, _ = placed
    report(r, web1, "ready", address="10.9.0.2:5000")
    queue = celery_app.conf.task_default_queue
    before = r.lrange(queue, 0, -1)
    tasks.ingest_reports.run()
    new = [m for m in r.lrange(queue, 0, -1) if m not in before]
    for m in new:
        r.lrem(queue, 1, m)
    sent = [(json.loads(m)["headers"]["task"], json.loads(base64.b64decode(json.loads(m)["body"]))[1])
            for m in new]
    assert ("scheduler.app_reconcile", {"app_id": web1.app_id}) in sent
    route = decode_app(web1.app.name, r.hget(APPS_KEY, web1.app.name))
    assert [e.key for e in route.endpoints] == ["10.9.0.2:5000"]


def test_it_puts_its_tasks_on_the_beat_schedule() -> None:
    schedule = celery_app.conf.beat_schedule
    assert schedule["scheduler.ingest"]["task"] == "scheduler.ingest"
    assert schedule["scheduler.tick"]["task"] == "scheduler.tick"


def test_its_tick_asks_for_a_reconcile_of_every_app_that_runs_or_wants_containers(app, member, r) -> None:
    queue = celery_app.conf.task_default_queue
    before = r.lrange(queue, 0, -1)
    tasks.tick.run()
    new = [m for m in r.lrange(queue, 0, -1) if m not in before]
    for m in new:
        r.lrem(queue, 1, m)
    sent = [json.loads(base64.b64decode(json.loads(m)["body"]))[1] for m in new]
    assert sent.count({"app_id": app.pk}) == 1
    scale(member, app, web=0)
    before = r.lrange(queue, 0, -1)
    tasks.tick.run()
    new = [m for m in r.lrange(queue, 0, -1) if m not in before]
    for m in new:
        r.lrem(queue, 1, m)
    assert {"app_id": app.pk} not in [json.loads(base64.b64decode(json.loads(m)["body"]))[1] for m in new]


def test_its_follower_routes_and_reconciles_as_reports_arrive(placed, r, django_capture_on_commit_callbacks) -> None:
    from core.models import ReleaseStatus
    from scheduler.follow import follow_once

    for i, c in enumerate(placed):
        report(r, c, "ready", address=f"10.9.{i}.3:5000")
    with django_capture_on_commit_callbacks(execute=True):
        result = follow_once(r, consumer(), block_ms=100)
    assert result.apps == {placed[0].app_id}
    route = decode_app(placed[0].app.name, r.hget(APPS_KEY, placed[0].app.name))
    assert sorted(e.key for e in route.endpoints) == ["10.9.0.3:5000", "10.9.1.3:5000"]
    assert placed[0].app.current_release().status == ReleaseStatus.DEPLOYED


def test_it_drops_garbled_reports_without_losing_the_good_ones_in_the_same_batch(placed, r, hosts) -> None:
    from runtime.agent.reports import HEARTBEATS_STREAM

    web1, _ = placed
    r.xadd(HEARTBEATS_STREAM, {"host": hosts[0].name, "time": "soon", "data": "{"})
    r.xadd(HEARTBEATS_STREAM, {"host": hosts[1].name, "time": str(time.time()),
                               "data": json.dumps({"memory_mb": "lots", "containers": "all"})})
    r.xadd(EVENTS_STREAM, {"host": web1.host.name, "id": web1.id, "state": "sleepy", "time": "x"})
    report(r, web1, "running", address="10.9.0.2:5000")
    name = consumer()
    ingest(r, name)
    web1.refresh_from_db()
    assert web1.state == "running"
    assert ingest(r, name).events == 0, "nothing is left to retry"
    assert r.xpending(HEARTBEATS_STREAM, GROUP)["pending"] == 0
