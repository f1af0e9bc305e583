"""Team: the unit that owns apps and grants roles to its members."""

from __future__ import annotations

from django.conf import settings
from django.db import models


class Team(models.Model):
    """A group of users that owns apps.

    Every user has a personal team named after them (`personal_for`), which they own; team names
    and user names share one name space.
    """

    name = models.CharField(max_length=40, unique=True)
    personal_for = models.OneToOneField(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="personal_team",
        help_text="Set on a user's personal team.",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def is_personal(self) -> bool:
        return self.personal_for_id is not None
