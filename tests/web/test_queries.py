"""No dashboard page runs more than 30 queries, however many apps, containers, releases,
config vars, domains, members and events there are."""

from __future__ import annotations

import pytest
from django.test import Client

from core import actions
from core.models import ContainerState, Role

from .conftest import Acme, deploy, login, make_host, place_containers

pytestmark = pytest.mark.django_db

MAX_QUERIES = 30


@pytest.fixture
def busy(acme: Acme) -> Acme:
    """acme with 12 apps (each deployed, with containers), 3 hosts, 30 config vars, 10 domains,
    10 extra members and a few hundred audit events."""
    hosts = [make_host(f"node-{i}", address=f"192.0.2.{i}") for i in range(1, 4)]
    for i in range(12):
        app = acme.app if i == 0 else actions.app_create(actor=acme.owner, name=f"app-{i:02d}",
                                                        team=acme.team)
        deploy(app, acme.member, commit=f"{i:040x}")
        place_containers(app, hosts[i % 3], [ContainerState.READY, ContainerState.RUNNING,
                                              ContainerState.FAILED])
    actions.config_set(actor=acme.owner, app=acme.app,
                       values={f"KEY_{i}": f"value {i}" for i in range(30)})
    for i in range(10):
        actions.domain_add(actor=acme.owner, app=acme.app, hostname=f"d{i}.shop.example")
        actions.config_set(actor=acme.member, app=acme.app, values={"ROUND": str(i)})
        user = actions.user_create(actor=None, username=f"user{i}", email=f"u{i}@example.com")
        actions.member_add(actor=acme.owner, team=acme.team, user=user, role=Role.VIEWER)
        actions.token_create(actor=acme.owner, description=f"token {i}")
    for i in range(3):
        deploy(acme.app, acme.member, commit=f"{i + 100:040x}")
    return acme


PAGES = [
    "/", "/teams/", "/teams/acme/", "/teams/acme/events/", "/hosts/", "/account/tokens/",
    "/account/password/", "/apps/shop/", "/apps/shop/metrics/", "/apps/shop/releases/",
    "/apps/shop/builds/", "/apps/shop/builds/{build}/", "/apps/shop/config/",
    "/apps/shop/config/KEY_1/reveal/", "/apps/shop/domains/", "/apps/shop/logs/",
    "/apps/shop/events/",
]
# The parts htmx reloads every few seconds (the same URLs, answering a fragment).
LIVE_PARTS = ["/", "/hosts/", "/apps/shop/", "/apps/shop/builds/{build}/", "/apps/shop/logs/"]


@pytest.mark.parametrize(("page", "htmx"), [(p, False) for p in PAGES] + [(p, True) for p in LIVE_PARTS])
def test_it_runs_at_most_30_queries_per_page(client: Client, busy: Acme, page: str, htmx: bool,
                                             django_assert_max_num_queries: object) -> None:
    url = page.format(build=busy.app.builds.order_by("id").first().pk)
    c = login(client, busy.owner)
    headers = {"HTTP_HX_REQUEST": "true"} if htmx else {}
    with django_assert_max_num_queries(MAX_QUERIES):  # type: ignore[operator]
        response = c.get(url, **headers)
    assert response.status_code == 200


def test_it_keeps_the_apps_list_query_count_flat_as_apps_grow(
    client: Client, busy: Acme, django_assert_max_num_queries: object
) -> None:
    """Twelve apps or one: the list costs the same handful of queries (no query per app)."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    c = login(client, busy.owner)
    with CaptureQueriesContext(connection) as many:
        c.get("/", HTTP_HX_REQUEST="true")
    c = login(client, busy.stranger)
    with CaptureQueriesContext(connection) as one:
        c.get("/", HTTP_HX_REQUEST="true")
    assert len(many.captured_queries) == len(one.captured_queries)
