"""AuditEvent: who did what to which team or app."""

from __future__ import annotations

from django.conf import settings
from django.db import models


class AuditEvent(models.Model):
    """One action's record; names are copied so it outlives the team, app or user."""

    team = models.ForeignKey(
        "core.Team", on_delete=models.SET_NULL, null=True, blank=True, related_name="events"
    )
    team_name = models.CharField(max_length=40, blank=True)
    app = models.ForeignKey(
        "core.App", on_delete=models.SET_NULL, null=True, blank=True, related_name="events"
    )
    app_name = models.CharField(max_length=30, blank=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True,
        related_name="+",
    )
    actor_name = models.CharField(max_length=150, blank=True)
    action = models.CharField(max_length=40, help_text="<noun>.<verb>, e.g. config.set")
    data = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.actor_name} {self.action}"
