from __future__ import annotations

from typing import TYPE_CHECKING

from django.conf import settings
from django.db import IntegrityError, transaction

from core import authz, validators
from core.actions._common import audit, enqueue_on_commit
from core.authz import Verb
from core.errors import Conflict, NotFound, invalid_field
from core.models import App, Domain

if TYPE_CHECKING:
    from django.contrib.auth.models import User


def domain_add(*, actor: User, app: App, hostname: str) -> Domain:
    """Route a custom hostname to the app."""
    from core import tasks

    hostname = validators.hostname(hostname)
    platform_domain = str(settings.PAAS_DOMAIN).lower()
    if hostname == platform_domain or hostname.endswith("." + platform_domain):
        raise invalid_field(
            "hostname", f"Hostnames under '{platform_domain}' belong to the platform's own apps."
        )
    with transaction.atomic():
        authz.require_app(actor, Verb.APP_DEPLOY, app)
        if Domain.objects.filter(hostname=hostname).exists():
            raise Conflict(f"The domain '{hostname}' is already in use.",
                           fields={"hostname": ["Taken."]})
        try:
            with transaction.atomic():
                domain = Domain.objects.create(app=app, hostname=hostname)
        except IntegrityError:
            raise Conflict(f"The domain '{hostname}' is already in use.") from None
        audit(actor=actor, action="domain.add", app=app, data={"hostname": hostname})
        enqueue_on_commit(tasks.app_reconcile, app_id=app.pk)
    return domain


def domain_remove(*, actor: User, app: App, hostname: str) -> None:
    """Stop routing a custom hostname to the app."""
    from core import tasks

    with transaction.atomic():
        authz.require_app(actor, Verb.APP_DEPLOY, app)
        deleted, _ = Domain.objects.filter(app=app, hostname=str(hostname).lower()).delete()
        if not deleted:
            raise NotFound(f"'{hostname}' is not a domain of '{app.name}'.")
        audit(actor=actor, action="domain.remove", app=app, data={"hostname": hostname})
        enqueue_on_commit(tasks.app_reconcile, app_id=app.pk)
