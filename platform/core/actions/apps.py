from __future__ import annotations

from typing import TYPE_CHECKING

from django.db import IntegrityError, transaction

from core import authz, validators
from core.actions._common import audit, enqueue_on_commit
from core.actions.releases import release_create
from core.authz import Verb
from core.errors import Conflict, Invalid
from core.models import App, Team

if TYPE_CHECKING:
    from django.contrib.auth.models import User


def app_create(*, actor: User, name: str, team: Team | None = None) -> App:
    """Create an app in a team (default: the actor's personal team) with its first release v1."""
    validators.app_name(name)
    if team is None:
        team = Team.objects.filter(personal_for_id=actor.pk).first()
        if team is None:
            raise Invalid("You have no personal team: name the team to create the app in.",
                          fields={"team": ["Required."]})
    with transaction.atomic():
        authz.require(actor, Verb.APP_MANAGE, team)
        if App.objects.filter(name=name).exists():
            raise Conflict(f"The app name '{name}' is taken.", fields={"name": ["Taken."]})
        try:
            with transaction.atomic():
                app = App.objects.create(name=name, team=team, created_by=actor)
        except IntegrityError:
            raise Conflict(f"The app name '{name}' is taken.", fields={"name": ["Taken."]}) from None
        audit(actor=actor, action="app.create", app=app, data={"name": name, "team": team.name})
        release_create(actor=actor, app=app, build=None, config={}, description="Initial release")
    return app


def app_destroy(*, actor: User, app: App) -> None:
    """Delete an app with its builds, releases, config, formation and domains, then its data
    outside the database (repository, build caches, Redis keys: `core.app_data_remove`)."""
    from core import tasks

    with transaction.atomic():
        authz.require_app(actor, Verb.APP_MANAGE, app)
        name, team = app.name, app.team
        build_ids = sorted(app.builds.values_list("pk", flat=True))
        audit(actor=actor, action="app.destroy", team=team, data={"name": name})
        # Releases protect their builds: delete releases first, then the rest cascades.
        app.releases.all().delete()
        app.delete()
        enqueue_on_commit(tasks.app_teardown, app_name=name)
        # Its repository, build caches and Redis keys: a new app of the same name starts empty.
        enqueue_on_commit(tasks.app_data_remove, app_name=name, build_ids=build_ids)
