"""Follow-up work goes to the real broker (redis-server) once the transaction commits."""

from __future__ import annotations

import base64
import json
import os

import pytest
import redis

from controlplane.celery import app as celery_app
from core import actions, tasks

pytestmark = pytest.mark.django_db


@pytest.fixture
def broker() -> redis.Redis:
    url = os.environ.get("REDIS_URL")
    assert url, "run under scripts/with-test-services (it starts redis-server)"
    client = redis.Redis.from_url(url)
    queue = celery_app.conf.task_default_queue
    before = client.lrange(queue, 0, -1)
    yield client
    # Remove only the messages this test added.
    for message in client.lrange(queue, 0, -1):
        if message not in before:
            client.lrem(queue, 1, message)


def _task_messages(client: redis.Redis) -> list[tuple[str, dict[str, object]]]:
    found = []
    for raw in client.lrange(celery_app.conf.task_default_queue, 0, -1):
        message = json.loads(raw)
        body = json.loads(base64.b64decode(message["body"]))
        found.append((message["headers"]["task"], body[1]))
    return found


def test_it_sends_a_reconcile_to_redis_after_commit(acme, deployed, broker, django_capture_on_commit_callbacks) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        actions.formation_scale(actor=acme.member, app=deployed,
                                updates=[{"type": "web", "quantity": 2}])
    assert ("core.app_reconcile", {"app_id": deployed.pk}) in _task_messages(broker)


def test_it_records_a_requested_reconcile(deployed) -> None:
    tasks.app_reconcile.run(app_id=deployed.pk)
    deployed.refresh_from_db()
    assert deployed.reconcile_requested_at is not None


def test_it_returns_quietly_when_the_app_is_gone(db) -> None:
    tasks.app_reconcile.run(app_id=123456)
    tasks.host_reconcile.run(host_id=123456)


def test_it_keeps_a_committed_change_when_the_broker_is_away(acme, deployed, monkeypatch, caplog, django_capture_on_commit_callbacks) -> None:
    from kombu.exceptions import OperationalError

    def refuse(*args: object, **kwargs: object) -> None:
        raise OperationalError("Error 111 connecting to 127.0.0.1:1. Connection refused.")

    monkeypatch.setattr(tasks.app_reconcile, "apply_async", refuse)
    with django_capture_on_commit_callbacks(execute=True):
        actions.formation_scale(actor=acme.member, app=deployed,
                                updates=[{"type": "web", "quantity": 4}])
    assert deployed.formation.get(type="web").quantity == 4
    assert "could not enqueue core.app_reconcile" in caplog.text


def test_it_hands_a_destroyed_app_to_the_scheduler(broker) -> None:
    tasks.app_teardown.run(app_name="gone-app")
    assert ("scheduler.app_teardown", {"app_name": "gone-app"}) in _task_messages(broker)


def test_it_reconciles_every_app_with_containers_on_a_drained_host(acme, deployed, broker) -> None:
    from core.models import Container

    host, _token = actions.host_register(actor=acme.staff, name="drained-1", address="10.9.0.1",
                                         memory_mb=1024, cpus=1)
    Container.objects.create(id=f"{deployed.name}.web.1.abc123", app=deployed,
                             release=deployed.releases.order_by("-version").first(), type="web",
                             number=1, host=host)
    tasks.host_reconcile.run(host_id=host.pk)
    assert ("scheduler.app_reconcile", {"app_id": deployed.pk}) in _task_messages(broker)
