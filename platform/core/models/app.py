"""App: a named application owned by a team."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.conf import settings
from django.db import models

if TYPE_CHECKING:
    from core.models.release import Release


class App(models.Model):
    """An application: its builds, releases, config, formation and domains.

    The name is global (it is also the default host name `<name>.<PAAS_DOMAIN>`).
    """

    name = models.CharField(max_length=30, unique=True)
    # PROTECT: a team with apps cannot be deleted.
    team = models.ForeignKey("core.Team", on_delete=models.PROTECT, related_name="apps")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    reconcile_requested_at = models.DateTimeField(
        null=True, blank=True, help_text="When a reconcile of this app was last requested."
    )

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def url(self) -> str:
        return str(settings.PAAS_APP_URL).format(app=self.name, domain=settings.PAAS_DOMAIN)

    @property
    def default_hostname(self) -> str:
        return f"{self.name}.{settings.PAAS_DOMAIN}"

    def current_release(self) -> Release | None:
        """The newest release: releases are only ever added, so the newest is current."""
        return self.releases.order_by("-version").first()

    def config(self) -> dict[str, str]:
        """The app's config, decrypted, by key."""
        return {var.key: var.value for var in self.config_vars.order_by("key")}
