"""One-off runs (`paas run`): who may start and stop them, and their audit events.

The runs themselves live in the scheduler (Redis, no model); the caller hands over the function
that starts or stops one, and it runs inside the action's transaction after the permission
check, so a refused or failed start leaves no audit event.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from django.db import transaction

from core import authz, validators
from core.actions._common import audit
from core.authz import Verb
from core.models import App

if TYPE_CHECKING:
    from django.contrib.auth.models import User

COMMAND_AUDIT_CHARS = 500


def run_create(
    *, actor: User, app: App, size: object = None,
    launch: Callable[[int, float], Mapping[str, Any]],
) -> Mapping[str, Any]:
    """Start a one-off with `launch(memory_mb, cpu)` for someone allowed to deploy; return it.

    `size` is `basic` (the default) or a memory like `1G`, as for `paas scale`.
    """
    _name, memory_mb, cpu = validators.size(size if size is not None else validators.BASIC_SIZE[0])
    with transaction.atomic():
        authz.require_app(actor, Verb.APP_DEPLOY, app)
        run = launch(memory_mb, cpu if cpu is not None else 1.0)
        command = " ".join(str(a) for a in run.get("command") or [])
        audit(actor=actor, action="run.create", app=app,
              data={"id": run.get("id"), "name": run.get("name"), "release": run.get("release"),
                    "host": run.get("host"), "command": command[:COMMAND_AUDIT_CHARS]})
    return run


def run_stop(*, actor: User, app: App, run: Mapping[str, Any], stop: Callable[[], None]) -> None:
    """Stop a one-off (someone allowed to deploy; Ctrl-C in `paas run`)."""
    with transaction.atomic():
        authz.require_app(actor, Verb.APP_DEPLOY, app)
        stop()
        audit(actor=actor, action="run.stop", app=app,
              data={"id": run.get("id"), "name": run.get("name")})
