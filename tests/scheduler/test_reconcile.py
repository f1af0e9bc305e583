"""The reconcile task with a real database and redis-server; the agents are a recorder."""

from __future__ import annotations

import base64
import json
from collections import Counter
from typing import Any

import pytest
import redis

from controlplane.celery import app as celery_app
from core import actions, tasks
from core.models import App, Container, Host, HostState, ReleaseStatus
from router.table import APPS_KEY, decode_app
from scheduler import dispatch
from scheduler.reconcile import LOCK_KEY, reconcile_app
from tests.scheduler.conftest import containers, mark, scale
from tests.scheduler.fakes import RecordingDispatcher

pytestmark = pytest.mark.django_db


def endpoints(r: redis.Redis, app: App) -> list[str]:
    raw = r.hget(APPS_KEY, app.name)
    return [] if raw is None else [e.key for e in decode_app(app.name, raw).endpoints]


def test_it_places_the_formation_and_sends_each_spec_to_its_hosts_queue(
        app, hosts, member, agents: RecordingDispatcher, run) -> None:
    scale(member, app, web=2, worker=1)
    out = run(app)
    rows = containers(app)
    assert sorted(c.name for c in rows) == ["web.1", "web.2", "worker.1"]
    assert {c.state for c in rows} == {"starting"}
    assert len({c.host_id for c in rows if c.type == "web"}) == 2
    assert sorted(out.started) == sorted(c.id for c in rows)
    sent = {spec["id"]: (host, spec) for host, spec in agents.runs}
    for c in rows:
        host, spec = sent[c.id]
        assert host == c.host.name
        assert spec["app"] == app.name and spec["release"] == app.current_release().version and spec["image"].startswith("sha256:")
    web = next(spec for _, spec in agents.runs if spec["process_type"] == "web")
    assert web["command"] == ["/bin/sh", "-c", "httpd -f -p $PORT"]
    assert web["port"] == 5000 and web["env"]["PORT"] == "5000"
    assert web["readiness"]["type"] == "tcp" and web["readiness"]["timeout_s"] == 60
    worker = next(spec for _, spec in agents.runs if spec["process_type"] == "worker")
    assert worker["port"] is None and "PORT" not in worker["env"]


def test_it_does_nothing_the_second_time(app, hosts, member, agents, run) -> None:
    scale(member, app, web=2)
    run(app)
    sent = len(agents.runs)
    again = run(app)
    assert again.started == [] and again.stopped == []
    assert len(agents.runs) == sent and agents.stops == []
    assert len(containers(app)) == 2


def test_it_gives_the_release_config_to_the_container(app, hosts, member, agents, run) -> None:
    actions.config_set(actor=member, app=app, values={"GREETING": "hello"})
    run(app)
    assert agents.runs[0][1]["env"]["GREETING"] == "hello"
    assert agents.runs[0][1]["env"]["DYNO"] == "web.1"


def test_it_writes_ready_web_endpoints_to_the_route_table(app, hosts, member, agents, run, r) -> None:
    scale(member, app, web=2)
    run(app)
    assert endpoints(r, app) == []
    web1, web2 = sorted((c for c in containers(app)), key=lambda c: c.number)
    mark(web1, "ready", "10.9.0.5:5000")
    mark(web2, "running", "10.9.1.5:5000")
    run(app)
    assert endpoints(r, app) == ["10.9.0.5:5000"]
    mark(web2, "ready")
    run(app)
    assert endpoints(r, app) == ["10.9.0.5:5000", "10.9.1.5:5000"]


def test_it_deploys_a_new_release_new_containers_first(app, hosts, member, agents, run, r, deploy) -> None:
    run(app)
    (old,) = containers(app)
    mark(old, "ready", "10.9.0.7:5000")
    run(app)
    v1 = old.release.version
    v2 = deploy(app).version
    run(app)
    rows = containers(app)
    assert sorted(c.release.version for c in rows) == [v1, v2], "the old one keeps serving"
    assert agents.stops == []
    new = next(c for c in rows if c.release.version == v2)
    mark(new, "ready", "10.9.1.7:5000")
    run(app)
    assert [c.release.version for c in containers(app)] == [v2]
    assert agents.stops == [(old.host.name, old.id)]
    assert endpoints(r, app) == ["10.9.1.7:5000"]


def test_it_takes_containers_out_of_the_routes_before_stopping_them(app, hosts, member, run, r, monkeypatch) -> None:
    seen: list[list[str]] = []

    class Watching(RecordingDispatcher):
        def stop(self, host: str, container_id: str, timeout_s: float) -> None:
            seen.append(endpoints(r, app))
            super().stop(host, container_id, timeout_s)

    monkeypatch.setattr(dispatch, "current", Watching())
    scale(member, app, web=2)
    run(app)
    for i, c in enumerate(containers(app)):
        mark(c, "ready", f"10.9.0.{10 + i}:5000")
    run(app)
    scale(member, app, web=1)
    run(app)
    assert len(seen) == 1 and len(seen[0]) == 1


def test_it_marks_a_release_deployed_once_every_container_is_ready(app, hosts, run) -> None:
    run(app)
    release = app.current_release()
    assert release.status == ReleaseStatus.PENDING
    mark(containers(app)[0], "ready", "10.9.0.8:5000")
    run(app)
    release.refresh_from_db()
    assert release.status == ReleaseStatus.DEPLOYED


def test_it_fails_a_release_that_never_gets_ready_and_keeps_the_previous_one(
        app, hosts, agents, run, r, deploy) -> None:
    run(app)
    (old,) = containers(app)
    mark(old, "ready", "10.9.0.9:5000")
    run(app)
    v2 = deploy(app)
    run(app)
    new = next(c for c in containers(app) if c.release_id == v2.pk)
    mark(new, "failed")
    run(app)
    v2.refresh_from_db()
    assert v2.status == ReleaseStatus.FAILED
    run(app)
    assert [c.id for c in containers(app)] == [old.id], "the failed release's container is removed"
    assert endpoints(r, app) == ["10.9.0.9:5000"]


def test_it_replaces_a_crashed_container_after_a_back_off(app, hosts, agents, run) -> None:
    run(app)
    (c,) = containers(app)
    mark(c, "exited")
    Container.objects.filter(pk=c.pk).update(finished_at=c.created_at)
    t = c.created_at.timestamp()
    assert run(app, now=t + 0.5).started == [], "inside the first second of back-off"
    out = run(app, now=t + 1.5)
    assert out.stopped == [c.id] and len(out.started) == 1
    (again,) = containers(app)
    assert again.restarts == 1 and again.number == 1


def test_it_moves_containers_off_a_down_host(app, hosts, member, agents, run) -> None:
    scale(member, app, web=3)
    run(app)
    victim = containers(app)[0].host
    Host.objects.filter(pk=victim.pk).update(state=HostState.DOWN)
    run(app)
    rows = containers(app)
    assert len(rows) == 3 and victim.pk not in {c.host_id for c in rows}
    assert Counter(c.host_id for c in rows).most_common(1)[0][1] == 2


def test_it_places_nothing_without_a_ready_host(app, hosts, agents, run) -> None:
    Host.objects.update(state=HostState.DRAINING)
    out = run(app)
    assert out.started == [] and out.plan.unplaced and containers(app) == []


def test_it_holds_a_lock_per_app(app, hosts, agents, r) -> None:
    lock = r.lock(LOCK_KEY.format(app_id=app.pk), timeout=30)
    assert lock.acquire(blocking=False)
    try:
        assert reconcile_app(app.pk, wait_s=0.2).status == "locked"
        assert containers(app) == [] and agents.runs == []
    finally:
        lock.release()
    assert reconcile_app(app.pk).status == "done"
    assert len(containers(app)) == 1


def test_it_returns_quietly_when_the_app_is_gone(db, agents) -> None:
    assert reconcile_app(987654).status == "gone"


def test_it_is_what_the_control_planes_reconcile_task_hands_over_to(app, r) -> None:
    queue = celery_app.conf.task_default_queue
    before = r.lrange(queue, 0, -1)
    tasks.app_reconcile.run(app_id=app.pk)
    new = [m for m in r.lrange(queue, 0, -1) if m not in before]
    for m in new:
        r.lrem(queue, 1, m)
    sent = [(json.loads(m)["headers"]["task"], json.loads(base64.b64decode(json.loads(m)["body"]))[1])
            for m in new]
    assert ("scheduler.app_reconcile", {"app_id": app.pk}) in sent


def test_it_sends_specs_to_the_real_broker_on_the_hosts_queue(r) -> None:
    queue = "host.h-test-dispatch"
    r.delete(queue)
    try:
        dispatch.CeleryDispatcher().run("h-test-dispatch", {"id": "x"})
        dispatch.CeleryDispatcher().stop("h-test-dispatch", "x", 5)
        got = [json.loads(m) for m in r.lrange(queue, 0, -1)]
        tasks_sent = [(m["headers"]["task"], json.loads(base64.b64decode(m["body"]))[1]) for m in got]
        assert ("agent.container_run", {"spec": {"id": "x"}}) in tasks_sent
        assert ("agent.container_stop", {"container_id": "x", "timeout_s": 5}) in tasks_sent
    finally:
        r.delete(queue)


def test_it_offers_several_cpu_shares_per_core_but_never_more_memory(app, staff, member, agents, run, monkeypatch) -> None:
    monkeypatch.setenv("PAAS_CPU_OVERCOMMIT", "2")
    actions.host_register(actor=staff, name=f"one-{app.name}", address="10.9.9.1", memory_mb=2048, cpus=1)
    scale(member, app, web=3)  # 3 x (512 MB, 1.0 share) on 2048 MB and 1 core x 2 shares
    out = run(app)
    assert len(out.started) == 2 and "no ready host has room" in out.plan.unplaced[0]


def test_it_replaces_containers_whose_specs_were_lost_when_a_worker_died(app, hosts, member, run, monkeypatch) -> None:
    class Dying(RecordingDispatcher):
        def run(self, host: str, spec: dict[str, Any]) -> None:
            raise SystemExit("the worker is killed between commit and send")

    monkeypatch.setattr(dispatch, "current", Dying())
    scale(member, app, web=2)
    with pytest.raises(SystemExit):
        run(app)
    lost = {c.id for c in containers(app)}
    assert len(lost) == 2, "the rows were committed, the specs never sent"
    agents = RecordingDispatcher()
    monkeypatch.setattr(dispatch, "current", agents)
    created = min(c.created_at for c in containers(app)).timestamp()
    assert run(app, now=created + 5).started == [], "young `starting` rows are waited for"
    out = run(app, now=created + 60 + 61)
    assert set(out.stopped) == lost and len(out.started) == 2
    assert sorted(c.number for c in containers(app)) == [1, 2]
    assert {spec["id"] for _, spec in agents.runs} == set(out.started)


def test_it_rolls_out_one_at_a_time_with_a_surge_of_one(app, hosts, member, agents, run, deploy, monkeypatch) -> None:
    monkeypatch.setenv("PAAS_DEPLOY_MAX_SURGE", "1")
    scale(member, app, web=3)
    run(app)
    for i, c in enumerate(containers(app)):
        mark(c, "ready", f"10.9.0.{20 + i}:5000")
    v2 = deploy(app)
    out = run(app)
    assert len(out.started) == 1 and out.stopped == []
    assert sum(1 for c in containers(app) if c.release_id == v2.pk) == 1
