"""Custom domains and destroyed apps in the route table the router follows."""

from __future__ import annotations

import secrets
from typing import Any

import pytest
import redis

from core import actions
from core.models import App
from router.table import APPS_KEY, DOMAINS_KEY
from scheduler import tasks
from scheduler.reconcile import routes_sync

pytestmark = pytest.mark.django_db


def domains_of(r: redis.Redis, app: App) -> set[str]:
    return {h.decode() for h, a in r.hgetall(DOMAINS_KEY).items() if a.decode() == app.name}


@pytest.fixture
def hostname() -> str:
    return f"www-{secrets.token_hex(3)}.example.org"


def test_it_routes_an_apps_custom_domains(app: App, member: Any, r: redis.Redis, hostname: str) -> None:
    actions.domain_add(actor=member, app=app, hostname=hostname)
    routes_sync(app.name, app.pk)
    assert domains_of(r, app) == {hostname}


def test_it_routes_a_wildcard_domain_as_the_router_reads_it(app: App, member: Any, r: redis.Redis,
                                                            hostname: str) -> None:
    wildcard = "*." + hostname
    actions.domain_add(actor=member, app=app, hostname=wildcard)
    routes_sync(app.name, app.pk)
    assert domains_of(r, app) == {wildcard}  # the router matches `*.` keys itself (tests/router)


def test_it_stops_routing_a_removed_domain(app: App, member: Any, r: redis.Redis, hostname: str) -> None:
    actions.domain_add(actor=member, app=app, hostname=hostname)
    routes_sync(app.name, app.pk)
    actions.domain_remove(actor=member, app=app, hostname=hostname)
    assert routes_sync(app.name, app.pk) is True
    assert domains_of(r, app) == set()
    assert routes_sync(app.name, app.pk) is False


def test_it_leaves_other_apps_domains_alone(app: App, member: Any, r: redis.Redis, hostname: str) -> None:
    other = f"other-{secrets.token_hex(3)}.example.org"
    r.hset(DOMAINS_KEY, other, "some-other-app")
    try:
        routes_sync(app.name, app.pk)
        assert r.hget(DOMAINS_KEY, other) == b"some-other-app"
    finally:
        r.hdel(DOMAINS_KEY, other)


def test_it_takes_a_destroyed_app_and_its_domains_out_of_the_table(
    app: App, member: Any, r: redis.Redis, hostname: str
) -> None:
    actions.domain_add(actor=member, app=app, hostname=hostname)
    r.hset(APPS_KEY, app.name, '{"endpoints": ["10.9.0.5:5000"], "maintenance": false}')
    routes_sync(app.name, app.pk)
    tasks.app_teardown.run(app_name=app.name)
    assert r.hget(APPS_KEY, app.name) is None
    assert domains_of(r, app) == set()
