from __future__ import annotations

from typing import TYPE_CHECKING

from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction

from core import authz, validators
from core.actions._common import audit, lock_team
from core.authz import Verb
from core.errors import Conflict, NotFound, invalid_field
from core.models import Membership, Role, Team

if TYPE_CHECKING:
    from django.contrib.auth.models import User


def team_create(*, actor: User, name: str) -> Team:
    """Create a team; the actor becomes its owner."""
    validators.team_name(name)
    if not actor.is_authenticated:
        raise NotFound("No such user.")
    with transaction.atomic():
        # A team may not take a user's name: that name belongs to their personal team.
        taken = (
            Team.objects.filter(name=name).exists()
            or get_user_model().objects.filter(username=name).exists()
        )
        if taken:
            raise Conflict(f"The team name '{name}' is taken.", fields={"name": ["Taken."]})
        try:
            with transaction.atomic():
                team = Team.objects.create(name=name)
        except IntegrityError:
            raise Conflict(f"The team name '{name}' is taken.", fields={"name": ["Taken."]}) from None
        Membership.objects.create(team=team, user=actor, role=Role.OWNER)
        audit(actor=actor, action="team.create", team=team, data={"name": name})
    return team


def team_destroy(*, actor: User, team: Team) -> None:
    """Delete a team that has no apps (owners only; a personal team stays)."""
    with transaction.atomic():
        team = lock_team(team)
        authz.require(actor, Verb.OWNERS_MANAGE, team)
        if team.is_personal:
            raise Conflict("A personal team cannot be deleted.")
        if team.apps.exists():
            names = ", ".join(team.apps.values_list("name", flat=True)[:10])
            raise Conflict(f"Team '{team.name}' still has apps ({names}); destroy them first.")
        audit(actor=actor, action="team.destroy", team=None, data={"name": team.name})
        team.delete()


def _role(value: object) -> Role:
    try:
        return Role(str(value))
    except ValueError:
        raise invalid_field(
            "role", "Role must be one of owner, admin, member, viewer."
        ) from None


def _owner_count(team: Team) -> int:
    return Membership.objects.filter(team=team, role=Role.OWNER).count()


def member_add(
    *, actor: User, team: Team, user: User, role: str
) -> Membership:
    """Add a user to a team with a role (admins add non-owners; owners add anyone)."""
    new = _role(role)
    with transaction.atomic():
        team = lock_team(team)
        actor_role = authz.require(actor, Verb.MEMBERS_MANAGE, team)
        authz.require_role_change(actor_role, None, new)
        if Membership.objects.filter(team=team, user_id=user.pk).exists():
            raise Conflict(f"'{user.get_username()}' is already a member of '{team.name}'.")
        membership = Membership.objects.create(team=team, user=user, role=new)
        audit(actor=actor, action="member.add", team=team,
              data={"username": user.get_username(), "role": new.value})
    return membership


def _membership(team: Team, user: User) -> Membership:
    membership = Membership.objects.filter(team=team, user_id=user.pk).first()
    if membership is None:
        raise NotFound(f"'{user.get_username()}' is not a member of '{team.name}'.")
    return membership


def member_remove(*, actor: User, team: Team, user: User) -> None:
    """Remove a user from a team; a team always keeps at least one owner."""
    with transaction.atomic():
        team = lock_team(team)
        actor_role = authz.require(actor, Verb.MEMBERS_MANAGE, team)
        membership = _membership(team, user)
        old = Role(membership.role)
        authz.require_role_change(actor_role, old, None)
        if old is Role.OWNER and _owner_count(team) == 1:
            raise Conflict(f"'{user.get_username()}' is the last owner of '{team.name}'.")
        membership.delete()
        audit(actor=actor, action="member.remove", team=team,
              data={"username": user.get_username(), "role": old.value})


def member_role_set(
    *, actor: User, team: Team, user: User, role: str
) -> Membership:
    """Change a member's role (to or from owner: owners only; the last owner stays owner)."""
    new = _role(role)
    with transaction.atomic():
        team = lock_team(team)
        actor_role = authz.require(actor, Verb.MEMBERS_MANAGE, team)
        membership = _membership(team, user)
        old = Role(membership.role)
        authz.require_role_change(actor_role, old, new)
        if old is new:
            return membership
        if old is Role.OWNER and _owner_count(team) == 1:
            raise Conflict(f"'{user.get_username()}' is the last owner of '{team.name}'.")
        membership.role = new
        membership.save(update_fields=["role"])
        audit(actor=actor, action="member.role_set", team=team,
              data={"username": user.get_username(), "from": old.value, "to": new.value})
    return membership
