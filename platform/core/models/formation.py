"""Formation: how many processes of each type an app runs, and how big each is."""

from __future__ import annotations

from django.db import models

# The process type a build may declare to run once per release before it goes live (migrations);
# it is a phase of the roll-out, never a formation row.
RELEASE_PHASE = "release"


class Formation(models.Model):
    app = models.ForeignKey("core.App", on_delete=models.CASCADE, related_name="formation")
    type = models.CharField(max_length=30)
    quantity = models.PositiveSmallIntegerField(default=0)
    size = models.CharField(max_length=10, default="basic")
    memory_mb = models.PositiveIntegerField(default=512)
    cpu = models.FloatField(default=1.0, help_text="CPU shares (1.0 = one core's fair share)")
    constraints = models.JSONField(
        default=dict, blank=True, help_text="Host labels every container of the type needs."
    )
    readiness_path = models.CharField(
        max_length=200, blank=True,
        help_text="HTTP path answered with 2xx/3xx when ready; empty: a TCP connect to $PORT.",
    )
    boot_timeout_s = models.PositiveIntegerField(
        null=True, blank=True, help_text="Seconds to get ready; empty: the platform's default."
    )

    class Meta:
        ordering = ["app_id", "type"]
        constraints = [
            models.UniqueConstraint(fields=["app", "type"], name="formation_unique_app_type"),
        ]

    def __str__(self) -> str:
        return f"{self.type}={self.quantity}:{self.size}"
