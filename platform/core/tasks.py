"""Celery tasks the actions enqueue once their transaction commits.

Tasks take primitive ids, keyword-only, and return quietly when the row is gone. They record the
request and hand the work to the scheduler by task name (`scheduler.*`, see
`platform/scheduler/tasks.py`), so `core` never imports the scheduler.
"""

from __future__ import annotations

import logging

from django.utils import timezone

from controlplane.celery import app as celery_app
from core.models import App, Container, Host

log = logging.getLogger(__name__)


# Celery ships without type hints, hence the ignores on its decorator.
@celery_app.task(name="core.app_reconcile", ignore_result=True)  # type: ignore[untyped-decorator]
def app_reconcile(*, app_id: int) -> None:
    """Record that an app's containers should be reconciled, and have the scheduler do it."""
    updated = App.objects.filter(pk=app_id).update(reconcile_requested_at=timezone.now())
    if updated:
        celery_app.send_task("scheduler.app_reconcile", kwargs={"app_id": app_id})


@celery_app.task(name="core.app_teardown", ignore_result=True)  # type: ignore[untyped-decorator]
def app_teardown(*, app_name: str) -> None:
    """Have the scheduler take a destroyed app's routes down (its containers follow)."""
    celery_app.send_task("scheduler.app_teardown", kwargs={"app_name": app_name})


@celery_app.task(name="core.host_reconcile", ignore_result=True)  # type: ignore[untyped-decorator]
def host_reconcile(*, host_id: int) -> None:
    """Re-place the containers of a host that is draining or down: reconcile each app on it."""
    host = Host.objects.filter(pk=host_id).first()
    if host is None:
        return
    app_ids = sorted(set(Container.objects.filter(host=host).values_list("app_id", flat=True)))
    log.info("host %s is %s: reconciling %d apps", host.name, host.state, len(app_ids))
    for app_id in app_ids:
        celery_app.send_task("scheduler.app_reconcile", kwargs={"app_id": app_id})
