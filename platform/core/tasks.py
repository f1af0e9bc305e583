"""Celery tasks the actions enqueue once their transaction commits.

Tasks take primitive ids, keyword-only, and return quietly when the row is gone. They record the
request and hand the work to the scheduler by task name (`scheduler.*`, see
`platform/scheduler/tasks.py`), so `core` never imports the scheduler.
"""

from __future__ import annotations

import logging

import redis
from django.conf import settings
from django.utils import timezone

from controlplane.celery import app as celery_app
from controlplane.env import data_dir
from core import appdata
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


# While a push or build of a destroyed app runs (it has been asked to stop), try again this
# often, this many times (a push without a build step to kill may take a while to receive);
# then remove all the same.
DATA_REMOVE_RETRY_S = 5
DATA_REMOVE_ATTEMPTS = 360
# Containers run until the next heartbeat says the database no longer knows them, and a router
# flushes what it counted a moment after the route went: delete the keys once more after this.
DATA_SWEEP_AFTER_S = 120


@celery_app.task(name="core.app_data_remove", ignore_result=True, acks_late=True)  # type: ignore[untyped-decorator]
def app_data_remove(*, app_name: str, build_ids: list[int] | None = None, attempt: int = 0,
                    sweep: bool = False) -> None:
    """Remove a destroyed app's directories and Redis keys (`core.appdata`); idempotent.

    While a push or build of the app holds its lock it asks the build to stop and comes back
    later, so the build's last writes go too. `sweep` is the later second pass over the Redis keys only,
    which late writers (agents, routers) may have brought back; it leaves them alone once the
    name belongs to a new app.
    """
    client: redis.Redis[bytes] = redis.Redis.from_url(str(settings.REDIS_URL))
    ids = [int(b) for b in build_ids or ()]
    if sweep:
        if App.objects.filter(name=app_name).exists():
            log.info("app %s exists again: its Redis keys are the new app's", app_name)
            return
        count = appdata.forget_keys(client, app_name, ids)
        if count:
            log.info("app %s: deleted %d Redis keys written after it was destroyed", app_name, count)
        return
    if App.objects.filter(name=app_name).exists():
        log.warning("app name %s was taken again before the old app's data was removed; "
                    "removing it now", app_name)
    last = attempt + 1 >= DATA_REMOVE_ATTEMPTS or bool(celery_app.conf.task_always_eager)
    try:
        done = appdata.remove_app_data(data_dir(), client, app_name, ids, wait_for_builds=not last)
    except appdata.AppDataBusy:
        appdata.request_build_cancel(client, ids)
        log.info("app %s: a push or build is still running; asked it to stop, removing the "
                 "app's data in %d s", app_name, DATA_REMOVE_RETRY_S)
        app_data_remove.apply_async(
            kwargs={"app_name": app_name, "build_ids": ids, "attempt": attempt + 1},
            countdown=DATA_REMOVE_RETRY_S)
        return
    if last and attempt:
        log.warning("app %s: removed its data although a push or build still held its lock",
                    app_name)
    for path in done.refused:
        log.warning("app %s: left %s alone (outside the data directory)", app_name, path)
    log.info("app %s: removed %s and %d Redis keys", app_name,
             ", ".join(str(p) for p in done.paths) or "no directories", done.keys)
    if not celery_app.conf.task_always_eager:
        app_data_remove.apply_async(
            kwargs={"app_name": app_name, "build_ids": ids, "sweep": True},
            countdown=DATA_SWEEP_AFTER_S)


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
