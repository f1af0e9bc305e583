"""Fixtures for the scheduler's tasks: a deployed app, registered hosts, the real redis-server,
and the agent boundary replaced by a recorder."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from core import actions
from core.models import App, Container, Host, Release
from router.table import APPS_KEY, route_app_delete
from scheduler import dispatch
from scheduler.reconcile import reconcile_app
from tests.scheduler.fakes import RecordingDispatcher

DIGEST = "sha256:" + "cd" * 32
COMMIT = "89abcdef0123456789abcdef0123456789abcdef"


@pytest.fixture
def r() -> redis.Redis:
    url = os.environ.get("REDIS_URL")
    assert url, "REDIS_URL is not set: run the suite through scripts/with-test-services"
    return redis.Redis.from_url(url)


@pytest.fixture
def agents(monkeypatch: pytest.MonkeyPatch) -> RecordingDispatcher:
    fake = RecordingDispatcher()
    monkeypatch.setattr(dispatch, "current", fake)
    return fake


@pytest.fixture
def member(db: None) -> Any:
    owner = actions.user_create(actor=None, username=f"o-{secrets.token_hex(3)}")
    team = actions.team_create(actor=owner, name=f"t-{secrets.token_hex(3)}")
    owner.team = team
    return owner


@pytest.fixture
def staff(db: None) -> Any:
    return actions.user_create(actor=None, username=f"s-{secrets.token_hex(3)}", is_staff=True)


@pytest.fixture
def deploy(member: Any) -> Callable[..., Release]:
    """Finish a build of `app` with a web and a worker process; returns its release."""

    def go(app: App, digest: str = DIGEST, web: str = "httpd -f -p $PORT") -> Release:
        build = actions.build_create(actor=member, app=app, commit=COMMIT)
        release = actions.build_finish(actor=member, build=build, succeeded=True, image_digest=digest,
                                       process_types={"web": web, "worker": "sleep 1000"})
        assert release is not None
        return release

    return go


@pytest.fixture
def app(member: Any, r: redis.Redis, deploy: Callable[..., Release]) -> Iterator[App]:
    """A deployed app with a unique name (the route table is shared by the session)."""
    a = actions.app_create(actor=member, name=f"s{secrets.token_hex(4)}", team=member.team)
    deploy(a)
    yield a
    if r.hexists(APPS_KEY, a.name):
        route_app_delete(r, a.name)


@pytest.fixture
def run(django_capture_on_commit_callbacks: Any) -> Callable[..., Any]:
    """Reconcile and run what waits for the commit (routes, agent tasks)."""

    def go(app: App, now: float | None = None) -> Any:
        with django_capture_on_commit_callbacks(execute=True):
            return reconcile_app(app.pk, now=now)

    return go


@pytest.fixture
def hosts(staff: Any) -> list[Host]:
    suffix = secrets.token_hex(3)
    return [
        actions.host_register(actor=staff, name=f"h{i}-{suffix}", address=f"10.9.{i}.1",
                              memory_mb=4096, cpus=4)[0]
        for i in range(3)
    ]


def scale(member: Any, app: App, **quantities: int) -> None:
    actions.formation_scale(actor=member, app=app,
                            updates=[{"type": t, "quantity": q} for t, q in quantities.items()])


def containers(app: App) -> list[Container]:
    return list(Container.objects.filter(app=app).select_related("host", "release"))


def mark(c: Container, state: str, address: str | None = None) -> None:
    """Record a container's state (and address) as the ingestion of an agent event would."""
    changes: dict[str, Any] = {"state": state}
    if address is not None:
        changes["address"] = address
    Container.objects.filter(pk=c.pk).update(**changes)
