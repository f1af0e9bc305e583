from __future__ import annotations

from typing import TYPE_CHECKING

from django.contrib.auth import get_user_model
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import IntegrityError, transaction

from core import authz, validators
from core.actions._common import audit
from core.errors import Conflict, Invalid, invalid_field
from core.models import Membership, Role, Team

if TYPE_CHECKING:
    from django.contrib.auth.models import User


def user_create(
    *,
    actor: User | None,
    username: str,
    email: str = "",
    password: str | None = None,
    is_staff: bool = False,
) -> User:
    """Create a user and their personal team (named after them, which they own).

    `actor=None` is the platform itself (bootstrap, management commands); otherwise a staff user.
    Without a password the user cannot log in with one (tokens only).
    """
    if actor is not None:
        authz.require_staff(actor, "create users")
    validators.team_name(username, field="username")
    if email:
        try:
            validate_email(email)
        except ValidationError:
            raise invalid_field("email", f"'{email}' is not an e-mail address.") from None
    user_model = get_user_model()
    if password is not None:
        try:
            validate_password(password, user_model(username=username, email=email))
        except ValidationError as exc:
            raise Invalid(" ".join(exc.messages), fields={"password": exc.messages}) from None
    with transaction.atomic():
        if user_model.objects.filter(username=username).exists() or Team.objects.filter(name=username).exists():
            raise Conflict(f"The name '{username}' is taken.", fields={"username": ["Taken."]})
        try:
            with transaction.atomic():
                user = user_model.objects.create_user(
                    username=username, email=email, password=password
                )
        except IntegrityError:  # created at the same moment by someone else
            raise Conflict(f"The name '{username}' is taken.", fields={"username": ["Taken."]}) from None
        if is_staff:
            user.is_staff = True
            user.save(update_fields=["is_staff"])
        team = Team.objects.create(name=username, personal_for=user)
        Membership.objects.create(team=team, user=user, role=Role.OWNER)
        audit(actor=actor, action="user.create", team=team,
              data={"username": username, "is_staff": is_staff})
    return user
