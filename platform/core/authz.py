"""Who may do what: the one place that turns a user's role in a team into allowed verbs.

Actions, the REST API and the dashboard all ask here. The table mirrors docs/api.md (Roles):

| verb                 | viewer | member | admin | owner |
| -------------------- | ------ | ------ | ----- | ----- |
| app.read             | yes    | yes    | yes   | yes   |
| config.read          |        | yes    | yes   | yes   |
| app.deploy           |        | yes    | yes   | yes   |
| app.manage           |        |        | yes   | yes   |
| members.manage       |        |        | yes   | yes   |
| owners.manage        |        |        |       | yes   |

A user outside the team gets NotFound for its apps and the team itself, as if they did not exist;
a member without the verb gets Forbidden. Hosts are platform-wide: anyone reads them, staff
manage them.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

from core.errors import Forbidden, NotFound
from core.models import App, Membership, Role, Team

if TYPE_CHECKING:
    from django.contrib.auth.models import AnonymousUser, User

    Actor = User | AnonymousUser


class Verb(enum.StrEnum):
    APP_READ = "app.read"  # apps, releases, builds, formation, containers, domains, events
    CONFIG_READ = "config.read"
    APP_DEPLOY = "app.deploy"  # git push, config set/unset, scale, rollback, domains
    APP_MANAGE = "app.manage"  # create and destroy apps
    MEMBERS_MANAGE = "members.manage"  # add/remove members, change roles (not owners)
    OWNERS_MANAGE = "owners.manage"  # make or unmake owners, delete the team


_VIEWER = frozenset({Verb.APP_READ})
_MEMBER = _VIEWER | {Verb.CONFIG_READ, Verb.APP_DEPLOY}
_ADMIN = _MEMBER | {Verb.APP_MANAGE, Verb.MEMBERS_MANAGE}
_OWNER = _ADMIN | {Verb.OWNERS_MANAGE}

ROLE_VERBS: dict[Role, frozenset[Verb]] = {
    Role.VIEWER: _VIEWER,
    Role.MEMBER: _MEMBER,
    Role.ADMIN: _ADMIN,
    Role.OWNER: _OWNER,
}

_DENIED_MESSAGES: dict[Verb, str] = {
    Verb.APP_READ: "You may not read this team's apps.",
    Verb.CONFIG_READ: "Viewers may not read config values.",
    Verb.APP_DEPLOY: "Your role does not allow deploying, changing config, scaling or domains.",
    Verb.APP_MANAGE: "Only a team's admins and owners may create or destroy its apps.",
    Verb.MEMBERS_MANAGE: "Only a team's admins and owners may manage its members.",
    Verb.OWNERS_MANAGE: "Only a team's owners may make or unmake owners or delete the team.",
}


def role_of(user: Actor, team: Team) -> Role | None:
    """The user's role in the team, or None when they are not in it."""
    if not user.is_authenticated or not user.is_active:
        return None
    role = (
        Membership.objects.filter(team=team, user_id=user.pk).values_list("role", flat=True).first()
    )
    return Role(role) if role is not None else None


def allows(role: Role | None, verb: Verb) -> bool:
    return role is not None and verb in ROLE_VERBS[role]


def can(user: Actor, verb: Verb, team: Team) -> bool:
    return allows(role_of(user, team), verb)


def require(user: Actor, verb: Verb, team: Team, *, hidden: str | None = None) -> Role:
    """Return the user's role if it allows `verb` in `team`; raise otherwise.

    `hidden` is the NotFound message a non-member gets (default: the team does not exist).
    """
    role = role_of(user, team)
    if role is None:
        raise NotFound(hidden or f"Team '{team.name}' not found.")
    if verb not in ROLE_VERBS[role]:
        raise Forbidden(_DENIED_MESSAGES[verb])
    return role


def require_app(user: Actor, verb: Verb, app: App) -> Role:
    return require(user, verb, app.team, hidden=f"App '{app.name}' not found.")


def app_get(user: Actor, name: str, verb: Verb = Verb.APP_READ) -> App:
    """The app called `name` if the user may `verb` it; NotFound for strangers and unknown names."""
    app = App.objects.select_related("team").filter(name=name).first()
    if app is None:
        raise NotFound(f"App '{name}' not found.")
    require_app(user, verb, app)
    return app


def team_get(user: Actor, name: str, verb: Verb = Verb.APP_READ) -> Team:
    """The team called `name` if the user is in it and may `verb`; NotFound for strangers."""
    team = Team.objects.filter(name=name).first()
    if team is None:
        raise NotFound(f"Team '{name}' not found.")
    require(user, verb, team)
    return team


def visible_apps(user: Actor) -> list[App]:
    if not user.is_authenticated:
        return []
    return list(
        App.objects.filter(team__memberships__user_id=user.pk)
        .select_related("team", "created_by")
        .prefetch_related("formation", "domains")
        .order_by("name")
    )


def require_role_change(actor_role: Role, old: Role | None, new: Role | None) -> None:
    """Check that a member with `actor_role` may move someone from role `old` to `new`.

    None stands for "not in the team" (adding or removing). Owners are made and unmade by owners.
    """
    verb = Verb.OWNERS_MANAGE if Role.OWNER in (old, new) else Verb.MEMBERS_MANAGE
    if verb not in ROLE_VERBS[actor_role]:
        raise Forbidden(_DENIED_MESSAGES[verb])


def require_staff(user: Actor, what: str) -> None:
    if not user.is_authenticated or not user.is_active or not getattr(user, "is_staff", False):
        raise Forbidden(f"Only staff users may {what}.")
