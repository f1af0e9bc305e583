from __future__ import annotations

from typing import TYPE_CHECKING

from django.db import transaction
from django.utils import timezone

from core.actions._common import audit
from core.errors import NotFound, invalid_field
from core.models import ApiToken
from core.models.api_token import new_token, token_digest

if TYPE_CHECKING:
    from django.contrib.auth.models import User


def token_create(*, actor: User, description: str = "") -> tuple[ApiToken, str]:
    """Make an API token for the actor. Return the row and the token, which is never shown again."""
    if not isinstance(description, str) or len(description) > 200:
        raise invalid_field("description", "Description must be text of at most 200 characters.")
    if not actor.is_authenticated or not actor.is_active:
        raise NotFound("No such user.")
    token = new_token()
    with transaction.atomic():
        row = ApiToken.objects.create(
            user=actor, description=description.strip(), prefix=token[:12], digest=token_digest(token)
        )
        audit(actor=actor, action="token.create", data={"id": row.pk, "prefix": row.prefix,
                                                        "description": row.description})
    return row, token


def token_revoke(*, actor: User, token: ApiToken) -> None:
    """Revoke one of the actor's own tokens; it stops working at once."""
    with transaction.atomic():
        updated = ApiToken.objects.filter(
            pk=token.pk, user_id=actor.pk, revoked_at__isnull=True
        ).update(revoked_at=timezone.now())
        if not updated:
            raise NotFound(f"Token {token.pk} not found.")
        audit(actor=actor, action="token.revoke", data={"id": token.pk, "prefix": token.prefix})
