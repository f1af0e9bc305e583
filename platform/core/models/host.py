"""Host: a machine that runs app containers."""

from __future__ import annotations

from django.db import models


class HostState(models.TextChoices):
    READY = "ready"
    DRAINING = "draining"
    DOWN = "down"


class Host(models.Model):
    name = models.CharField(max_length=63, unique=True)
    address = models.GenericIPAddressField()
    state = models.CharField(max_length=10, choices=HostState.choices, default=HostState.READY)
    memory_mb = models.PositiveIntegerField(help_text="capacity")
    cpus = models.PositiveIntegerField(help_text="capacity")
    memory_mb_used = models.PositiveIntegerField(default=0)
    cpus_used = models.FloatField(default=0.0)
    labels = models.JSONField(default=dict, blank=True)
    token_digest = models.CharField(max_length=64, unique=True, help_text="SHA-256 of the host token")
    last_heartbeat_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(state__in=["ready", "draining", "down"]), name="host_state_valid"
            ),
        ]

    def __str__(self) -> str:
        return self.name
