"""Platform lines in the app's log stream: what the scheduler did and what it saw happen."""

from __future__ import annotations

import logging
import secrets
import socket
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from django.db import transaction
from django.test import override_settings

from core.models import App
from router.metrics import logs_key
from runtime.agent.reports import Reporter
from scheduler import applog
from scheduler.ingest import ingest
from tests.scheduler.conftest import containers, mark, scale

pytestmark = pytest.mark.django_db


@pytest.fixture
def logged(app: App, r: redis.Redis) -> Iterator[Any]:
    """The app's platform lines so far, as (tag, line), and only those."""

    def lines() -> list[tuple[str, str]]:
        got = [(f[b"tag"].decode(), f[b"line"].decode()) for _id, f in r.xrange(logs_key(app.name))]
        return [(t, line) for t, line in got if t.startswith("paas[")]

    yield lines
    r.delete(logs_key(app.name))


def test_it_says_a_release_is_deploying_where_each_container_starts_and_when_it_is_deployed(
    app: App, hosts: Any, agents: Any, run: Any, logged: Any,
) -> None:
    run(app)
    (c,) = containers(app)
    v = app.current_release().name
    assert logged() == [("paas[scheduler]", f"Deploying {v}"),
                        ("paas[web.1]", f"Starting ({v}) on {c.host.name}")]
    mark(c, "ready", "10.9.0.8:5000")
    run(app)
    run(app)  # once only
    assert logged()[2:] == [("paas[scheduler]", f"Release {v} is deployed")]


def test_it_says_a_type_is_scaled_and_which_containers_stop(
    app: App, hosts: Any, member: Any, agents: Any, run: Any, logged: Any,
) -> None:
    run(app)
    mark(containers(app)[0], "ready", "10.9.0.8:5000")
    run(app)
    before = len(logged())
    scale(member, app, web=3)
    run(app)
    new = logged()[before:]
    assert new[0] == ("paas[scheduler]", "Scaling web to 3")
    assert sorted(t for t, _line in new[1:]) == ["paas[web.2]", "paas[web.3]"]
    for c in containers(app):
        mark(c, "ready", f"10.9.0.{c.number}:5000")
    run(app)
    before = len(logged())
    scale(member, app, web=1)
    run(app)
    assert logged()[before:] == [("paas[scheduler]", "Scaling web to 1"),
                                 ("paas[web.2]", "Stopping"), ("paas[web.3]", "Stopping")]


def test_it_says_why_a_release_failed(
    app: App, hosts: Any, agents: Any, run: Any, logged: Any, deploy: Any,
) -> None:
    run(app)
    mark(containers(app)[0], "ready", "10.9.0.9:5000")
    run(app)
    v2 = deploy(app)
    run(app)
    new = next(c for c in containers(app) if c.release_id == v2.pk)
    mark(new, "failed")
    run(app)
    assert ("paas[scheduler]", f"Release {v2.name} failed: web.1 failed: it could not be started") \
        in logged()


@pytest.mark.parametrize("state,extra,said", [
    ("exited", {"exit_code": 1}, "Crashed: exited with code 1"),
    ("oom", {"exit_code": 137}, "Was OOM-killed (limit 512 MB)"),
    ("failed", {"message": "image sha256:ab not found"}, "Failed: image sha256:ab not found"),
])
def test_it_says_how_a_container_ended_by_itself(
    app: App, hosts: Any, agents: Any, run: Any, logged: Any, r: redis.Redis,
    django_capture_on_commit_callbacks: Any, state: str, extra: dict[str, Any], said: str,
) -> None:
    run(app)
    (c,) = containers(app)
    before = len(logged())
    Reporter(r, c.host.name).event(c.id, state, **extra)
    with django_capture_on_commit_callbacks(execute=True):
        ingest(r, f"test-{secrets.token_hex(4)}")
        ingest(r, f"test-{secrets.token_hex(4)}")  # nothing new: nothing said twice
    assert logged()[before:] == [("paas[web.1]", said)]


def test_a_line_of_a_rolled_back_transaction_is_never_written(
    app: App, logged: Any, django_capture_on_commit_callbacks: Any,
) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        with pytest.raises(RuntimeError), transaction.atomic():
            applog.write(app.name, "never")
            raise RuntimeError
        applog.write(app.name, "kept")
    assert logged() == [("paas[scheduler]", "kept")]


def test_redis_away_costs_the_line_not_the_callers_work(
    app: App, caplog: pytest.LogCaptureFixture, django_capture_on_commit_callbacks: Any,
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with override_settings(REDIS_URL=f"redis://127.0.0.1:{port}/0"), \
            caplog.at_level(logging.WARNING), django_capture_on_commit_callbacks(execute=True):
        applog.write(app.name, "lost")
    assert f"could not write to the log of {app.name}" in caplog.text


def test_it_names_a_container_from_its_id() -> None:
    assert applog.container_name("shop.web.12.a1b2c3") == "web.12"
    assert applog.container_name("odd-id") == "odd-id"


def test_a_destroyed_apps_log_stream_goes_with_it(app: App, r: redis.Redis) -> None:
    from scheduler import tasks

    r.xadd(logs_key(app.name), {"time": "1", "tag": "app[web.1]", "line": "bye"})
    tasks.app_teardown.run(app_name=app.name)
    assert r.exists(logs_key(app.name)) == 0
