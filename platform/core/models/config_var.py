"""ConfigVar: one environment variable of an app, encrypted at rest."""

from __future__ import annotations

from django.db import models

from core import crypto


class ConfigVar(models.Model):
    """One config key of an app; the value is stored as a Fernet token (core.crypto)."""

    app = models.ForeignKey("core.App", on_delete=models.CASCADE, related_name="config_vars")
    key = models.CharField(max_length=200)
    value_encrypted = models.TextField()

    class Meta:
        ordering = ["key"]
        constraints = [
            models.UniqueConstraint(fields=["app", "key"], name="config_var_unique_app_key"),
        ]

    def __str__(self) -> str:
        return self.key

    @property
    def value(self) -> str:
        return crypto.decrypt(self.value_encrypted)

    @value.setter
    def value(self, plaintext: str) -> None:
        self.value_encrypted = crypto.encrypt(plaintext)
