"""Reads that more than one front end needs (the API and the dashboard)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.contrib.auth import get_user_model
from django.db.models import OuterRef, Subquery

from core.errors import Invalid, invalid_field
from core.models import App, Release

if TYPE_CHECKING:
    from django.contrib.auth.models import User


def user_find(identifier: object) -> User:
    """The active user with this user name or e-mail address (for adding members)."""
    if not isinstance(identifier, str) or not identifier:
        raise invalid_field("username", "Give the user's name or e-mail address.")
    users = get_user_model().objects.filter(is_active=True)
    field = "email" if "@" in identifier else "username"
    matches = list(users.filter(**{f"{field}__iexact" if field == "email" else field: identifier})[:2])
    if len(matches) != 1:
        what = "e-mail address" if field == "email" else "name"
        if len(matches) > 1:
            raise Invalid(f"More than one user has the {what} '{identifier}'; use the user name.",
                          fields={field: ["Ambiguous."]})
        raise Invalid(f"No user with the {what} '{identifier}'.", fields={field: ["No such user."]})
    return matches[0]


def current_releases(apps: list[App]) -> dict[int, Release]:
    """Each app's current (newest) release, in one query: app id → release."""
    latest = Release.objects.filter(app=OuterRef("app")).order_by("-version").values("version")[:1]
    rows = Release.objects.filter(app__in=apps, version=Subquery(latest)).select_related(
        "build", "created_by"
    )
    return {row.app_id: row for row in rows}
