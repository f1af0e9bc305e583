from __future__ import annotations

from typing import TYPE_CHECKING

from django.db import transaction
from django.db.models import Max

from core import authz
from core.actions._common import audit, enqueue_on_commit, lock_app
from core.authz import Verb
from core.errors import Invalid, NotFound
from core.models import App, Build, ConfigVar, Formation, Release, ReleaseStatus
from core.models.formation import RELEASE_PHASE

if TYPE_CHECKING:
    from django.contrib.auth.models import User


def _formation_sync(app: App, process_types: dict[str, str]) -> None:
    """Give the app one formation row per process type of its build: web starts at 1.

    `release` is the release phase, run once per release before it goes live, never a process
    that keeps running: it gets no row.
    """
    process_types = {k: v for k, v in process_types.items() if k != RELEASE_PHASE}
    Formation.objects.filter(app=app).exclude(type__in=list(process_types)).delete()
    existing = set(Formation.objects.filter(app=app).values_list("type", flat=True))
    Formation.objects.bulk_create(
        Formation(app=app, type=ptype, quantity=1 if ptype == "web" else 0)
        for ptype in sorted(process_types)
        if ptype not in existing
    )


def release_create(
    *,
    actor: User | None,
    app: App,
    build: Build | None,
    config: dict[str, str],
    description: str,
) -> Release:
    """Make the app's next release from a build and a config snapshot, and ask for a roll-out.

    Called by the deploy, config and rollback actions; `actor=None` is the platform itself.
    """
    from core import tasks

    with transaction.atomic():
        if actor is not None:
            authz.require_app(actor, Verb.APP_DEPLOY, app)
        app = lock_app(app)
        latest = Release.objects.filter(app=app).aggregate(v=Max("version"))["v"] or 0
        release = Release(
            app=app,
            version=latest + 1,
            build=build,
            description=description[:200],
            created_by=actor,
            # A release without a build has nothing to run: it is deployed the moment it exists.
            status=ReleaseStatus.PENDING if build is not None else ReleaseStatus.DEPLOYED,
        )
        release.set_config(config)
        release.save()
        if build is not None:
            _formation_sync(app, dict(build.process_types))
        audit(actor=actor, action="release.create", app=app,
              data={"version": release.version, "description": release.description,
                    "build": build.pk if build else None})
        enqueue_on_commit(tasks.app_reconcile, app_id=app.pk)
    return release


def release_get(app: App, version: object) -> Release:
    """The app's release `3` or `v3` (a read used by the API and the rollback)."""
    text = str(version)
    digits = text[1:] if text[:1] in {"v", "V"} else text
    if not digits.isdigit() or len(digits) > 9:
        raise Invalid(f"'{text}' is not a release version like 3 or v3.",
                      fields={"version": ["Not a version."]})
    release = Release.objects.filter(app=app, version=int(digits)).select_related("build").first()
    if release is None:
        raise NotFound(f"Release v{int(digits)} of '{app.name}' not found.")
    return release


def release_rollback(
    *, actor: User, app: App, version: object = None
) -> Release:
    """Make a new release with an earlier release's build and config (default: the one before)."""
    with transaction.atomic():
        authz.require_app(actor, Verb.APP_DEPLOY, app)
        app = lock_app(app)
        current = app.current_release()
        if current is None:  # pragma: no cover - every app has v1 from app_create
            raise Invalid(f"'{app.name}' has no releases.")
        if version is None:
            if current.version == 1:
                raise Invalid(f"'{app.name}' has only v1: there is nothing to roll back to.")
            version = current.version - 1
        target = release_get(app, version)
        config = target.config
        ConfigVar.objects.filter(app=app).delete()
        for key, value in sorted(config.items()):
            var = ConfigVar(app=app, key=key)
            var.value = value
            var.save()
        release = release_create(actor=actor, app=app, build=target.build, config=config,
                                 description=f"Rollback to {target.name}")
        audit(actor=actor, action="release.rollback", app=app,
              data={"to": target.version, "version": release.version})
    return release
