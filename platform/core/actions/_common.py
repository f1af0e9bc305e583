"""What every action shares: audit records, locking, and enqueueing work after commit."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from django.db import transaction

from core.models import App, AuditEvent, Team

if TYPE_CHECKING:
    from celery import Task
    from django.contrib.auth.models import User

log = logging.getLogger("core.actions")

# Enqueueing must not hang a request when the broker is away: a couple of quick retries, then
# the error is logged (the periodic reconcile, a later stage, repairs a lost message).
_RETRY_POLICY = {"max_retries": 2, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5}


def audit(
    *,
    actor: User | None,
    action: str,
    team: Team | None = None,
    app: App | None = None,
    data: dict[str, Any] | None = None,
) -> AuditEvent:
    if app is not None and team is None:
        team = app.team
    return AuditEvent.objects.create(
        actor=actor,
        actor_name=actor.get_username() if actor is not None else "system",
        action=action,
        team=team,
        team_name=team.name if team is not None else "",
        app=app,
        app_name=app.name if app is not None else "",
        data=data or {},
    )


def enqueue_on_commit(task: Task[Any, Any], **kwargs: Any) -> None:
    """Send `task` with keyword arguments once the current transaction commits."""

    def send() -> None:
        try:
            task.apply_async(kwargs=kwargs, retry=True, retry_policy=_RETRY_POLICY)
        except Exception:
            log.exception("could not enqueue %s(%s)", task.name, kwargs)

    transaction.on_commit(send)


def lock_app(app: App) -> App:
    """Re-read the app with a row lock, so concurrent releases get distinct version numbers."""
    return App.objects.select_for_update().select_related("team").get(pk=app.pk)


def lock_team(team: Team) -> Team:
    return Team.objects.select_for_update().get(pk=team.pk)
