"""GET /api/v1/apps/{app}/logs against a real Redis: the tail, filters, follow, access."""

from __future__ import annotations

import json
import os
import secrets
import socket
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from django.core.signals import request_finished
from django.db import close_old_connections
from django.test import override_settings
from rest_framework.test import APIClient

from core import actions
from core.models import App
from router.metrics import logs_key
from tests.controlplane.conftest import Acme

pytestmark = pytest.mark.django_db


@pytest.fixture
def r() -> Iterator[redis.Redis[bytes]]:
    url = os.environ.get("REDIS_URL")
    assert url, "REDIS_URL is not set: run the suite through scripts/with-test-services"
    client: redis.Redis[bytes] = redis.Redis.from_url(url)
    yield client
    client.close()


@pytest.fixture
def app(acme: Acme, r: redis.Redis[bytes]) -> Iterator[App]:
    row = actions.app_create(actor=acme.owner, name=f"logs-{secrets.token_hex(4)}", team=acme.team)
    yield row
    r.delete(logs_key(row.name))


def client_for(user: Any) -> APIClient:
    _row, token = actions.token_create(actor=user, description="test")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client


def add(r: redis.Redis[bytes], app: App, tag: str, line: str, when: float = 1795823999.25) -> str:
    return r.xadd(logs_key(app.name), {"time": str(when), "tag": tag, "line": line}).decode()


def read(response: Any) -> list[Any]:
    """The answer's JSON lines; an empty line (a keep-alive) as None."""
    assert response.status_code == 200, response.content
    assert response["Content-Type"] == "application/x-ndjson"
    body = b"".join(response.streaming_content).decode()
    return [json.loads(x) if x else None for x in body.split("\n")[:-1]]


def lines_of(items: list[Any]) -> list[str]:
    return [i["line"] for i in items if i and "line" in i]


def test_it_answers_the_last_lines_oldest_first_as_json_lines(
    acme: Acme, app: App, r: redis.Redis[bytes]
) -> None:
    for i in range(5):
        add(r, app, "app[web.1]", f"line {i}")
    items = read(client_for(acme.owner).get(f"/api/v1/apps/{app.name}/logs?lines=3"))
    assert lines_of(items) == ["line 2", "line 3", "line 4"]
    first = items[0]
    assert set(first) == {"id", "time", "tag", "line"}
    assert first["time"] == "2026-11-27T23:59:59.250000Z" and first["tag"] == "app[web.1]"


def test_it_answers_100_lines_unless_asked_for_another_number(
    acme: Acme, app: App, r: redis.Redis[bytes]
) -> None:
    pipe = r.pipeline()
    for i in range(150):
        pipe.xadd(logs_key(app.name), {"time": "1", "tag": "router", "line": f"{i}"})
    pipe.execute()
    items = read(client_for(acme.owner).get(f"/api/v1/apps/{app.name}/logs"))
    assert lines_of(items) == [str(i) for i in range(50, 150)]


def test_it_filters_by_process_type_or_container(
    acme: Acme, app: App, r: redis.Redis[bytes]
) -> None:
    add(r, app, "app[web.1]", "w1")
    add(r, app, "router", "GET /")
    add(r, app, "app[web.2]", "w2")
    add(r, app, "paas[web.2]", "web.2 crashed")
    add(r, app, "app[worker.1]", "k1")
    add(r, app, "app[webhook.1]", "not web")
    client = client_for(acme.owner)
    base = f"/api/v1/apps/{app.name}/logs"
    assert lines_of(read(client.get(f"{base}?ps=web"))) == ["w1", "w2", "web.2 crashed"]
    assert lines_of(read(client.get(f"{base}?ps=web.2"))) == ["w2", "web.2 crashed"]
    assert lines_of(read(client.get(f"{base}?ps=router"))) == ["GET /"]
    # The last N of the filtered lines, not the filter of the last N.
    assert lines_of(read(client.get(f"{base}?ps=web&lines=1"))) == ["web.2 crashed"]


def test_following_gets_a_line_written_after_the_request_started(
    acme: Acme, app: App, r: redis.Redis[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PAAS_LOG_FOLLOW_MAX_S", "2")
    monkeypatch.setenv("PAAS_LOG_FOLLOW_KEEPALIVE_MS", "200")
    add(r, app, "app[web.1]", "before")
    response = client_for(acme.owner).get(f"/api/v1/apps/{app.name}/logs?follow=1&ps=web")
    add(r, app, "router", "not web")
    later = add(r, app, "app[web.1]", "after")
    items = read(response)  # until the follow's time is up
    assert lines_of(items) == ["before", "after"]
    assert None in items  # keep-alive lines while nothing new came
    assert items[-1] == {"reconnect": {"after": later}}


def test_a_reconnect_with_after_gets_only_what_came_since(
    acme: Acme, app: App, r: redis.Redis[bytes]
) -> None:
    seen = add(r, app, "app[web.1]", "seen")
    add(r, app, "app[web.1]", "new 1")
    add(r, app, "app[web.1]", "new 2")
    client = client_for(acme.owner)
    base = f"/api/v1/apps/{app.name}/logs"
    assert lines_of(read(client.get(f"{base}?after={seen}"))) == ["new 1", "new 2"]
    assert lines_of(read(client.get(f"{base}?after={seen}&lines=1"))) == ["new 2"]


def test_an_app_without_lines_answers_nothing(acme: Acme, app: App) -> None:
    assert read(client_for(acme.owner).get(f"/api/v1/apps/{app.name}/logs")) == []


@pytest.mark.parametrize("persona", ["viewer", "member", "admin", "owner"])
def test_every_member_of_the_team_reads_the_logs(
    acme: Acme, app: App, r: redis.Redis[bytes], persona: str
) -> None:
    add(r, app, "app[web.1]", "hello")
    items = read(client_for(acme.user(persona)).get(f"/api/v1/apps/{app.name}/logs"))
    assert lines_of(items) == ["hello"]


def test_a_stranger_and_an_unknown_app_get_not_found(acme: Acme, app: App) -> None:
    for client, name in [(client_for(acme.stranger), app.name), (client_for(acme.owner), "nope")]:
        response = client.get(f"/api/v1/apps/{name}/logs")
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"


def test_it_needs_a_token(app: App) -> None:
    assert APIClient().get(f"/api/v1/apps/{app.name}/logs").status_code == 401


@pytest.mark.parametrize("query,field", [
    ("lines=-1", "lines"), ("lines=abc", "lines"), ("lines=10001", "lines"),
    ("ps=WEB", "ps"), ("ps=web.x", "ps"), ("follow=maybe", "follow"), ("after=latest", "after"),
])
def test_it_refuses_bad_parameters_with_the_field_named(
    acme: Acme, app: App, query: str, field: str
) -> None:
    response = client_for(acme.owner).get(f"/api/v1/apps/{app.name}/logs?{query}")
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid" and field in error["fields"]


def test_it_says_so_when_the_log_store_cannot_be_reached(acme: Acme, app: App) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with override_settings(REDIS_URL=f"redis://127.0.0.1:{port}/0"):
        response = client_for(acme.owner).get(f"/api/v1/apps/{app.name}/logs")
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "unavailable"


def test_it_refuses_followers_past_its_limit_until_one_ends(
    acme: Acme, app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PAAS_LOG_FOLLOWERS_MAX", "1")
    client = client_for(acme.viewer)
    base = f"/api/v1/apps/{app.name}/logs"
    first = client.get(f"{base}?follow=1")
    assert first.status_code == 200
    refused = client.get(f"{base}?follow=1")
    assert refused.status_code == 503
    assert "already streams logs to 1 clients" in refused.json()["error"]["message"]
    assert client.get(base).status_code == 200  # not following: no limit
    server_closes(first)  # the client went away before the answer was ever read
    again = client.get(f"{base}?follow=1")
    assert again.status_code == 200
    server_closes(again)


def server_closes(response: Any) -> None:
    """Close an answer as the WSGI server does when its client is gone (as Django's test client
    does itself, without closing the test's database connection on the way)."""
    request_finished.disconnect(close_old_connections)
    try:
        response.close()
    finally:
        request_finished.connect(close_old_connections)


def test_lines_from_before_the_app_was_created_are_not_its_own(
    acme: Acme, app: App, r: redis.Redis[bytes]
) -> None:
    # A destroyed app of the same name wrote these (the stream outlived it).
    r.xadd(logs_key(app.name), {"time": "1", "tag": "app[web.1]", "line": "old secret"},
           id="1000-0")
    add(r, app, "app[web.1]", "mine")
    client = client_for(acme.owner)
    assert lines_of(read(client.get(f"/api/v1/apps/{app.name}/logs"))) == ["mine"]
    assert lines_of(read(client.get(f"/api/v1/apps/{app.name}/logs?after=999-0"))) == ["mine"]


def test_following_without_a_tail_starts_at_the_newest_line(
    acme: Acme, app: App, r: redis.Redis[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PAAS_LOG_FOLLOW_MAX_S", "1")
    monkeypatch.setenv("PAAS_LOG_FOLLOW_KEEPALIVE_MS", "200")
    add(r, app, "app[web.1]", "already there")
    response = client_for(acme.owner).get(f"/api/v1/apps/{app.name}/logs?follow=1&lines=0")
    add(r, app, "app[web.1]", "new")
    assert lines_of(read(response)) == ["new"]
