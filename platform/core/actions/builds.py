from __future__ import annotations

import re
from typing import TYPE_CHECKING

from django.db import transaction
from django.utils import timezone

from core import authz, validators
from core.actions._common import audit
from core.actions.releases import release_create
from core.authz import Verb
from core.errors import Conflict, invalid_field
from core.models import App, Build, BuildStatus, Release

if TYPE_CHECKING:
    from django.contrib.auth.models import User

_COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
_DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
LOG_MAX_CHARS = 1_000_000


def build_create(*, actor: User, app: App, commit: str) -> Build:
    """Record that a build of `commit` has started (a git push by someone allowed to deploy)."""
    if not isinstance(commit, str) or not _COMMIT_RE.match(commit):
        raise invalid_field("commit", "Commit must be a full 40-character lowercase hex SHA-1.")
    with transaction.atomic():
        authz.require_app(actor, Verb.APP_DEPLOY, app)
        build = Build.objects.create(app=app, commit=commit, status=BuildStatus.RUNNING,
                                     created_by=actor, started_at=timezone.now())
        audit(actor=actor, action="build.create", app=app, data={"build": build.pk, "commit": commit})
    return build


def build_finish(
    *,
    actor: User,
    build: Build,
    succeeded: bool,
    image_digest: str = "",
    process_types: dict[str, str] | None = None,
    slug_size: int | None = None,
    log: str = "",
) -> Release | None:
    """Record a build's end; a good build becomes the app's next release (returned)."""
    if succeeded:
        if not _DIGEST_RE.match(image_digest):
            raise invalid_field("image_digest", "A good build needs an image digest 'sha256:<64 hex>'.")
        if not isinstance(process_types, dict) or not all(
            isinstance(cmd, str) and cmd for cmd in process_types.values()
        ):
            raise invalid_field("process_types", "Process types must map a type to a command.")
        for ptype in process_types:
            validators.process_type(ptype)
    if slug_size is not None and (isinstance(slug_size, bool) or slug_size < 0):
        raise invalid_field("slug_size", "Slug size must be a number of bytes.")
    with transaction.atomic():
        app: App = build.app
        authz.require_app(actor, Verb.APP_DEPLOY, app)
        claimed = Build.objects.filter(
            pk=build.pk, status__in=[BuildStatus.PENDING, BuildStatus.RUNNING]
        ).update(
            status=BuildStatus.SUCCEEDED if succeeded else BuildStatus.FAILED,
            image_digest=image_digest if succeeded else "",
            process_types=(process_types or {}) if succeeded else {},
            slug_size=slug_size,
            log=log[-LOG_MAX_CHARS:],
            finished_at=timezone.now(),
        )
        if not claimed:
            raise Conflict(f"Build {build.pk} has already finished.")
        build.refresh_from_db()
        audit(actor=actor, action="build.finish", app=app,
              data={"build": build.pk, "status": build.status, "commit": build.commit})
        release = None
        if succeeded:
            release = release_create(actor=actor, app=app, build=build, config=app.config(),
                                     description=f"Deploy {build.commit[:7]}")
    return release
