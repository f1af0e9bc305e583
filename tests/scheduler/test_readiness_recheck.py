"""Readiness on the control plane's side (real database and redis-server, agents recorded): a
web container that runs but never hears back from its agent's check is asked about again at half
its boot timeout and failed past the whole of it, and a failure quotes the check the container
was started with (recorded on its row), whatever the formation says now. Plus the agent's side:
a check sent again while one still polls the container ends at once."""

from __future__ import annotations

import base64
import inspect
import json
import os
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis

from core import actions
from core.models import App, Container, Formation, ReleaseStatus
from runtime.agent.app import make_app
from runtime.agent.config import AgentSettings
from runtime.agent.core import CHECK_STALE_S, Agent
from runtime.agent.reports import Reporter
from scheduler import dispatch
from scheduler.reconcile import READINESS_GRACE_S, READINESS_KEY, readiness_of
from tests.scheduler.conftest import containers, scale

pytestmark = pytest.mark.django_db


@pytest.fixture
def checks(r: redis.Redis, app: App) -> Any:
    yield
    r.delete(f"paas:logs:{app.name}")


def at(t: float) -> datetime:
    return datetime.fromtimestamp(t, tz=UTC)


def running(c: Container, t: float, address: str = "10.9.0.7:5000") -> None:
    """Record the agent's `running` event (its check of readiness is then under way)."""
    Container.objects.filter(pk=c.pk).update(state="running", started_at=at(t), address=address)


def set_web(member: Any, app: App, **settings: Any) -> None:
    actions.formation_scale(actor=member, app=app, updates=[{"type": "web", **settings}])


def test_it_asks_the_agent_again_when_a_running_container_has_no_readiness_result_by_half_its_timeout(
        app, hosts, agents, member, run, checks) -> None:
    set_web(member, app, boot_timeout_s=20)
    run(app)
    (c,) = containers(app)
    t0 = c.created_at.timestamp() + 1
    running(c, t0)
    out = run(app, now=t0 + 5)
    assert agents.readies == [] and out.plan.retry_at == t0 + 10, "it looks again at half-time"
    out = run(app, now=t0 + 10.5)
    assert agents.readies == [(c.host.name, c.id, "10.9.0.7:5000",
                               {"type": "tcp", "path": "/", "timeout_s": 20.0}, t0 + 20)]
    assert out.plan.retry_at == t0 + 20 + READINESS_GRACE_S, "and again when it would time out"
    assert Container.objects.get(pk=c.pk).readiness_asked_at == at(t0 + 10.5)
    run(app, now=t0 + 12)
    assert len(agents.readies) == 1, "asked once"
    Container.objects.filter(pk=c.pk).update(state="ready", ready_at=at(t0 + 13))
    run(app, now=t0 + 14)
    assert app.current_release().status == ReleaseStatus.DEPLOYED


def test_it_fails_a_release_whose_running_container_never_hears_back_within_its_own_timeout(
        app, hosts, agents, member, run, checks, deploy) -> None:
    """The agent that polled it was killed and its check lost, the one asked again too: the
    release fails at the boot timeout the container was started with, not the formation's new
    one, and the release before it goes on serving."""
    run(app)
    (old,) = containers(app)
    Container.objects.filter(pk=old.pk).update(state="ready", address="10.9.0.6:5000",
                                               ready_at=old.created_at)
    run(app)
    v1 = app.current_release()
    assert v1.status == ReleaseStatus.DEPLOYED
    set_web(member, app, readiness_path="/healthz", boot_timeout_s=20)
    v2 = deploy(app)
    run(app)
    (new,) = [c for c in containers(app) if c.release_id == v2.pk]
    t0 = new.created_at.timestamp() + 1
    running(new, t0)
    set_web(member, app, readiness_path="/up", boot_timeout_s=300)
    run(app, now=t0 + 20 + READINESS_GRACE_S - 1)
    v2.refresh_from_db()
    assert v2.status == ReleaseStatus.PENDING, "the agent's own verdict still has time to come"
    run(app, now=t0 + 20 + READINESS_GRACE_S + 1)
    v2.refresh_from_db()
    assert v2.status == ReleaseStatus.FAILED
    assert v2.status_reason == "web.1 did not answer GET /healthz with 2xx or 3xx within 20 s"
    run(app, now=t0 + 40)
    assert [c.id for c in containers(app)] == [old.id], "v1 serves alone"
    v1.refresh_from_db()
    assert v1.status == ReleaseStatus.DEPLOYED
    assert agents.stops[-1] == (new.host.name, new.id)


def test_it_quotes_the_containers_own_timeout_when_its_agent_failed_it(
        app, hosts, agents, member, run, checks) -> None:
    set_web(member, app, boot_timeout_s=20)
    run(app)
    (c,) = containers(app)
    set_web(member, app, boot_timeout_s=45)
    Container.objects.filter(pk=c.pk).update(state="failed", message="not ready before its deadline",
                                             finished_at=at(c.created_at.timestamp() + 21))
    run(app)
    assert app.current_release().status_reason == (
        "web.1 did not accept connections on $PORT within 20 s")


def test_it_records_the_check_a_container_was_started_with_on_its_row_not_in_redis(
        app, hosts, agents, member, run, checks, r) -> None:
    set_web(member, app, readiness_path="/healthz", boot_timeout_s=20)
    scale(member, app, web=1, worker=1)
    run(app)
    by_type = {c.type: c for c in containers(app)}
    web, worker = by_type["web"], by_type["worker"]
    assert (web.readiness_type, web.readiness_path, web.readiness_timeout_s) == ("http", "/healthz", 20)
    assert web.readiness_asked_at is None
    (_host, spec), = [(h, s) for h, s in agents.runs if s["id"] == web.id]
    assert spec["readiness"] == {"type": "http", "path": "/healthz", "timeout_s": 20.0}
    assert (worker.readiness_type, worker.readiness_path, worker.readiness_timeout_s) == (None, None, None)
    assert not r.exists(READINESS_KEY.format(app=app.name))
    set_web(member, app, readiness_path="", boot_timeout_s=45)
    now = Formation.objects.get(app=app, type="web")
    assert readiness_of(web, now, 60) == {"type": "http", "path": "/healthz", "timeout_s": 20.0}


def test_it_falls_back_on_the_formation_for_a_container_recorded_without_its_check(
        app, hosts, agents, member, run, checks) -> None:
    """A row from before the check was kept on it (its columns NULL after the upgrade)."""
    set_web(member, app, boot_timeout_s=20)
    run(app)
    (c,) = containers(app)
    Container.objects.filter(pk=c.pk).update(readiness_type=None, readiness_path=None,
                                             readiness_timeout_s=None)
    set_web(member, app, boot_timeout_s=45)
    t0 = c.created_at.timestamp() + 1
    running(c, t0)
    run(app, now=t0 + 21)
    assert agents.readies == [], "not asked before half the formation's timeout"
    run(app, now=t0 + 23)
    assert agents.readies[0][3] == {"type": "tcp", "path": "/", "timeout_s": 45.0}
    assert agents.readies[0][4] == t0 + 45


def test_it_fails_a_container_recorded_without_its_check_at_the_formations_timeout(
        app, hosts, agents, member, run, checks) -> None:
    set_web(member, app, readiness_path="/up", boot_timeout_s=30)
    run(app)
    (c,) = containers(app)
    Container.objects.filter(pk=c.pk).update(readiness_type=None, readiness_path=None,
                                             readiness_timeout_s=None)
    t0 = c.created_at.timestamp() + 1
    running(c, t0)
    run(app, now=t0 + 30 + READINESS_GRACE_S + 1)
    assert app.current_release().status == ReleaseStatus.FAILED
    assert app.current_release().status_reason == (
        "web.1 did not answer GET /up with 2xx or 3xx within 30 s")


class _Running:
    def inspect(self, cid: str) -> dict[str, Any]:
        return {"id": cid, "state": "running"}


def test_the_agent_lets_one_readiness_check_poll_a_container_at_a_time(r: redis.Redis,
                                                                        tmp_path: Path) -> None:
    host = f"rr-{secrets.token_hex(3)}"
    settings = AgentSettings(redis_url="redis://unused", host=host, runtime_root=tmp_path,
                             daemon_socket=tmp_path / "sock")
    agent = Agent(settings, Reporter(r, host), daemon=_Running())  # type: ignore[arg-type]
    assert agent.readiness_claim("c1", "first", now=100.0)
    assert not agent.readiness_claim("c1", "again", now=101.0), "a check sent again ends at once"
    assert agent.readiness_claim("c1", "first", now=101.5), "the first goes on polling"
    assert agent.readiness_claim("c2", "again", now=101.5), "other containers are not held up"
    assert agent.readiness_claim("c1", "again", now=101.5 + CHECK_STALE_S), "a lost one is taken over"
    agent.readiness_done("c1", "first")  # a late answer of the lost chain frees nothing
    assert not agent.readiness_claim("c1", "third", now=102.0 + CHECK_STALE_S)
    agent.readiness_done("c1", "again")
    assert agent.readiness_claim("c1", "third", now=102.0 + CHECK_STALE_S)


def test_it_sends_the_check_again_through_the_real_broker_as_the_agents_task_takes_it(
        r: redis.Redis, tmp_path: Path) -> None:
    host = f"h-ready-{secrets.token_hex(3)}"
    queue = f"host.{host}"
    try:
        dispatch.CeleryDispatcher().ready(host, "app.web.1.abcdef", "10.9.0.7:5000",
                                          {"type": "http", "path": "/healthz", "timeout_s": 20},
                                          1_800_000_020.0)
        (message,) = [json.loads(m) for m in r.lrange(queue, 0, -1)]
        kwargs = json.loads(base64.b64decode(message["body"]))[1]
        assert message["headers"]["task"] == "agent.container_ready"
        assert kwargs == {"container_id": "app.web.1.abcdef", "address": "10.9.0.7:5000",
                          "kind": "http", "path": "/healthz", "deadline": 1_800_000_020.0}
        settings = AgentSettings(redis_url=os.environ["REDIS_URL"], host=host,
                                 runtime_root=tmp_path, daemon_socket=tmp_path / "sock")
        agent_app = make_app(settings, Agent(settings, Reporter(r, host), daemon=_Running()))  # type: ignore[arg-type]
        task = agent_app.tasks["agent.container_ready"]
        inspect.signature(task.run).bind(**kwargs)  # the agent's task takes exactly these
    finally:
        r.delete(queue)
