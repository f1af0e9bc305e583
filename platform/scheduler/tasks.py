"""The scheduler's Celery tasks: thin shells over `reconcile` and `ingest`.

- `scheduler.app_reconcile(app_id=)`: one reconcile step for one app (`core.app_reconcile`,
  which every action that changes desired state enqueues, hands over to it). Re-sent after a
  second when another run holds the app's lock, and at the end of a crash back-off.
- `scheduler.app_teardown(app_name=)`: a destroyed app's routes and custom domains leave the
  route table and its log stream goes (`core.app_teardown` hands over to it).
- `scheduler.ingest()`: on the beat (every `PAAS_SCHEDULER_TICK_S`, default 2 s): read the
  agents' reports, write changed apps' routes, reconcile them.
- `scheduler.tick()`: on the beat (every 30 s): reconcile every app that runs or wants
  containers, which repairs anything a lost message left behind.
"""

from __future__ import annotations

import logging
import os
import socket
import time

from django.db.models import Q

from controlplane.celery import app as celery_app
from core.models import App
from scheduler import applog
from scheduler.ingest import ingest
from scheduler.reconcile import (
    reconcile_app,
    redis_client,
    routes_delete,
    routes_sync,
)

log = logging.getLogger(__name__)


# Celery ships without type hints, hence the ignores on its decorator.
@celery_app.task(name="scheduler.app_reconcile", ignore_result=True, acks_late=True)  # type: ignore[untyped-decorator]
def app_reconcile(*, app_id: int) -> None:
    """Move one app's containers one step towards its current release x formation."""
    out = reconcile_app(app_id)
    if out.status == "locked":
        app_reconcile.apply_async(kwargs={"app_id": app_id}, countdown=1)
        return
    if out.started or out.stopped:
        log.info("app id %s: started %s, stopped %s", app_id, out.started, out.stopped)
    if out.plan.retry_at is not None:
        app_reconcile.apply_async(kwargs={"app_id": app_id},
                                  countdown=max(0.5, out.plan.retry_at - time.time()))


@celery_app.task(name="scheduler.app_teardown", ignore_result=True, acks_late=True)  # type: ignore[untyped-decorator]
def app_teardown(*, app_name: str) -> None:
    """Take a destroyed app out of the route table and delete its log stream.

    Its Container rows went with the app; each host's next heartbeat then lists containers the
    database no longer knows, and ingestion stops them (see `ingest`).
    """
    routes_delete(app_name)
    applog.forget(app_name)


@celery_app.task(name="scheduler.ingest", ignore_result=True)  # type: ignore[untyped-decorator]
def ingest_reports() -> None:
    """Read the agents' heartbeats and container events; route and reconcile what changed."""
    result = ingest(redis_client(), consumer=f"{socket.gethostname()}-{os.getpid()}")
    for app_id, name in App.objects.filter(pk__in=result.apps).values_list("pk", "name"):
        routes_sync(name, app_id)
        app_reconcile.delay(app_id=app_id)


@celery_app.task(name="scheduler.tick", ignore_result=True)  # type: ignore[untyped-decorator]
def tick() -> None:
    """Reconcile every app that has or wants containers."""
    wanted = App.objects.filter(Q(formation__quantity__gt=0) | Q(containers__isnull=False)).distinct()
    for app_id in wanted.values_list("pk", flat=True):
        app_reconcile.delay(app_id=app_id)
