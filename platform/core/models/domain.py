"""Domain: a custom host name routed to an app."""

from __future__ import annotations

from django.db import models


class Domain(models.Model):
    app = models.ForeignKey("core.App", on_delete=models.CASCADE, related_name="domains")
    hostname = models.CharField(max_length=253, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["hostname"]

    def __str__(self) -> str:
        return self.hostname
