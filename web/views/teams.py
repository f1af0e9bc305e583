"""Teams: create, members (add by user name or e-mail, change role, remove), audit log."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from core import actions, authz, lookups
from core.authz import Verb
from core.errors import ActionError, Forbidden, NotFound
from core.models import Role, Team
from web import reads
from web.views._common import acting_user, back_with, dashboard_view, error_page, run_action

ROLES = [role.value for role in Role]


@dashboard_view
@require_http_methods(["GET", "POST"])
def team_index(request: HttpRequest) -> HttpResponse:
    """GET: the user's teams; POST: create a team."""
    if request.method == "POST":
        return team_create(request)
    return render(request, "web/teams/list.html",
                  {"nav": "teams", "teams": reads.teams_of(request.user)})


def team_create(request: HttpRequest) -> HttpResponse:
    name = request.POST.get("name", "").strip()
    try:
        team = actions.team_create(actor=acting_user(request), name=name)
    except ActionError as exc:
        return back_with(request, reverse("web:teams"), error=exc)
    return back_with(request, reverse("web:team", args=[team.name]),
                     success=f"Created team {team.name}; you are its owner.")


def _team(request: HttpRequest, name: str) -> tuple[Team, Role]:
    team = authz.team_get(request.user, name)
    role = authz.role_of(request.user, team)
    assert role is not None  # team_get raised NotFound otherwise
    return team, role


@dashboard_view
@require_GET
def team_detail(request: HttpRequest, name: str) -> HttpResponse:
    team, role = _team(request, name)
    can_members = authz.allows(role, Verb.MEMBERS_MANAGE)
    can_owners = authz.allows(role, Verb.OWNERS_MANAGE)
    # The roles this user may hand out: admins may not make owners.
    assignable = [r for r in ROLES if can_owners or (can_members and r != Role.OWNER)]
    return render(request, "web/teams/detail.html", {
        "nav": "teams", "team": team, "role": role,
        "members": reads.members_of(team),
        "apps": reads.app_summaries(request.user, team=team),
        "can_members": can_members, "can_owners": can_owners, "assignable": assignable,
        "can_create_apps": authz.allows(role, Verb.APP_MANAGE),
    })


def _member_user(team: Team, username: str) -> object:
    user = get_user_model().objects.filter(username=username).first()
    if user is None:
        raise NotFound(f"'{username}' is not a member of '{team.name}'.")
    return user


@dashboard_view
@require_POST
def member_add(request: HttpRequest, name: str) -> HttpResponse:
    team, _ = _team(request, name)
    identifier = request.POST.get("user", "").strip()
    role = request.POST.get("role", Role.MEMBER.value)

    def add() -> object:
        authz.require(request.user, Verb.MEMBERS_MANAGE, team)
        user = lookups.user_find(identifier)
        return actions.member_add(actor=acting_user(request), team=team, user=user, role=role)

    return run_action(request, reverse("web:team", args=[name]),
                      lambda m: f"Added {m.user.get_username()} as {m.role}.", add)


@dashboard_view
@require_POST
def member_role(request: HttpRequest, name: str, username: str) -> HttpResponse:
    team, _ = _team(request, name)
    role = request.POST.get("role", "")
    url = reverse("web:team", args=[name])
    try:
        authz.require(request.user, Verb.MEMBERS_MANAGE, team)
        user = _member_user(team, username)
        actions.member_role_set(actor=acting_user(request), team=team, user=user, role=role)  # type: ignore[arg-type]
    except Forbidden as exc:
        return error_page(request, exc)
    except ActionError as exc:
        return back_with(request, url, error=exc)
    return back_with(request, url, success=f"{username} is now {role}.")


@dashboard_view
@require_POST
def member_remove(request: HttpRequest, name: str, username: str) -> HttpResponse:
    team, _ = _team(request, name)
    url = reverse("web:team", args=[name])
    try:
        authz.require(request.user, Verb.MEMBERS_MANAGE, team)
        user = _member_user(team, username)
        actions.member_remove(actor=acting_user(request), team=team, user=user)  # type: ignore[arg-type]
    except Forbidden as exc:
        return error_page(request, exc)
    except ActionError as exc:
        return back_with(request, url, error=exc)
    if username == request.user.get_username():
        return back_with(request, reverse("web:teams"), success=f"You left {team.name}.")
    return back_with(request, url, success=f"Removed {username} from {team.name}.")


@dashboard_view
@require_POST
def team_delete(request: HttpRequest, name: str) -> HttpResponse:
    """Delete a team without apps (owners only; a personal team stays)."""
    team, _ = _team(request, name)
    try:
        actions.team_destroy(actor=acting_user(request), team=team)
    except Forbidden as exc:
        return error_page(request, exc)
    except ActionError as exc:
        return back_with(request, reverse("web:team", args=[name]), error=exc)
    return back_with(request, reverse("web:teams"), success=f"Deleted team {name}.")


@dashboard_view
@require_GET
def team_events(request: HttpRequest, name: str) -> HttpResponse:
    team, role = _team(request, name)
    return render(request, "web/teams/events.html", {
        "nav": "teams", "team": team, "role": role, "events": reads.events_of_team(team)})
