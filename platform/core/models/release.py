"""Release: an immutable, numbered pairing of a build and a config snapshot."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import models

from core import crypto


class ReleaseStatus(models.TextChoices):
    PENDING = "pending", "waiting to be rolled out"
    DEPLOYED = "deployed", "rolled out (or nothing to run)"
    RELEASING = "releasing", "its release phase is running"
    FAILED = "failed", "its containers never got ready"
    SUPERSEDED = "superseded", "a newer release replaced it before its roll-out converged"


# The only fields a saved release may change: how its roll-out went.
MUTABLE_RELEASE_FIELDS = frozenset({"status", "status_reason", "status_log"})


class ImmutableReleaseError(RuntimeError):
    """Something tried to change a release's build, config or version after creation."""


class Release(models.Model):
    """Version N of an app: build + config. Never edited; a rollback adds a new one."""

    app = models.ForeignKey("core.App", on_delete=models.CASCADE, related_name="releases")
    version = models.PositiveIntegerField()
    build = models.ForeignKey(
        "core.Build", on_delete=models.PROTECT, null=True, blank=True, related_name="releases"
    )
    config_encrypted = models.TextField(help_text="Fernet-encrypted JSON object of the config.")
    config_keys = models.JSONField(default=list, help_text="The snapshot's keys, sorted (not secret).")
    description = models.CharField(max_length=200)
    status = models.CharField(
        max_length=16, choices=ReleaseStatus.choices, default=ReleaseStatus.PENDING
    )
    status_reason = models.TextField(
        blank=True, help_text="Why the release is failed or still pending, in one line."
    )
    status_log = models.TextField(
        blank=True, help_text="The last output lines of one container that failed it."
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["app_id", "-version"]
        constraints = [
            models.UniqueConstraint(fields=["app", "version"], name="release_unique_app_version"),
            models.CheckConstraint(condition=models.Q(version__gte=1), name="release_version_gte_1"),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def name(self) -> str:
        return f"v{self.version}"

    @property
    def config(self) -> dict[str, str]:
        """The config snapshot, decrypted."""
        value = crypto.decrypt_json(self.config_encrypted)
        assert isinstance(value, dict)
        return {str(k): str(v) for k, v in value.items()}

    def set_config(self, config: dict[str, str]) -> None:
        """Fill the snapshot of a release not yet saved."""
        if self.pk is not None:
            raise ImmutableReleaseError("a saved release's config cannot change")
        self.config_encrypted = crypto.encrypt_json(config)
        self.config_keys = sorted(config)

    def save(self, *args: Any, **kwargs: Any) -> None:
        # Only the roll-out status (and why) may change once a release exists.
        changed = set(kwargs.get("update_fields") or ())
        if self.pk is not None and (not changed or not changed <= MUTABLE_RELEASE_FIELDS):
            raise ImmutableReleaseError(
                "releases are immutable: save(update_fields=[...]) may change only "
                + ", ".join(sorted(MUTABLE_RELEASE_FIELDS))
            )
        super().save(*args, **kwargs)
