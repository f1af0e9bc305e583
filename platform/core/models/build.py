"""Build: one run of the buildpacks over one commit of an app."""

from __future__ import annotations

from django.conf import settings
from django.db import models


class BuildStatus(models.TextChoices):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class Build(models.Model):
    app = models.ForeignKey("core.App", on_delete=models.CASCADE, related_name="builds")
    status = models.CharField(
        max_length=10, choices=BuildStatus.choices, default=BuildStatus.PENDING
    )
    commit = models.CharField(max_length=40, help_text="The git commit (full SHA-1) built.")
    image_digest = models.CharField(max_length=100, blank=True)
    process_types = models.JSONField(default=dict, blank=True, help_text="type → command")
    log = models.TextField(blank=True)
    slug_size = models.BigIntegerField(null=True, blank=True, help_text="bytes")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"build {self.pk} ({self.status})"
