"""Celery tasks the actions enqueue once their transaction commits.

Tasks take primitive ids, keyword-only, and return quietly when the row is gone. The scheduler
that turns a requested reconcile into placed containers belongs to a later stage of the
platform: for now these tasks only *record* that work was requested (a timestamp on the app, a
log line). They do not start, stop or move any container yet.
"""

from __future__ import annotations

import logging

from django.utils import timezone

from controlplane.celery import app as celery_app
from core.models import App, Host

log = logging.getLogger(__name__)


# Celery ships without type hints, hence the ignores on its decorator.
@celery_app.task(name="core.app_reconcile", ignore_result=True)  # type: ignore[untyped-decorator]
def app_reconcile(*, app_id: int) -> None:
    """Record that an app's containers should be reconciled with its release and formation."""
    updated = App.objects.filter(pk=app_id).update(reconcile_requested_at=timezone.now())
    if updated:
        celery_app.send_task("scheduler.app_reconcile", kwargs={"app_id": app_id})  # scheduler/tasks.py


@celery_app.task(name="core.app_teardown", ignore_result=True)  # type: ignore[untyped-decorator]
def app_teardown(*, app_name: str) -> None:
    """Record that a destroyed app's containers, routes and logs should be removed."""
    log.info("teardown requested for destroyed app %s (no scheduler consumes it yet)", app_name)


@celery_app.task(name="core.host_reconcile", ignore_result=True)  # type: ignore[untyped-decorator]
def host_reconcile(*, host_id: int) -> None:
    """Record that a host's containers should be re-placed (it is draining or down)."""
    host = Host.objects.filter(pk=host_id).first()
    if host is not None:
        log.info("reconcile requested for host %s in state %s (no scheduler yet)", host.name, host.state)
