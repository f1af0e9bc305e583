"""Certificate: the TLS certificate and key a custom domain is served with."""

from __future__ import annotations

import datetime

from django.db import models, transaction
from django.db.models.signals import post_delete

from core import crypto


class Certificate(models.Model):
    """One per custom domain; the key is stored as a Fernet token (core.crypto), like config.

    The router reads a file per host name, not the database: core.certs writes it after commit
    (see core.actions.certs) and removes it when the row goes, cascades included.
    """

    domain = models.OneToOneField("core.Domain", on_delete=models.CASCADE,
                                  related_name="certificate")
    chain = models.TextField()  # PEM, leaf first
    key_encrypted = models.TextField()
    names = models.JSONField(default=list)  # the leaf's DNS names
    fingerprint = models.CharField(max_length=64)  # SHA-256 of the leaf, hex
    subject = models.CharField(max_length=500, blank=True)
    issuer = models.CharField(max_length=500, blank=True)
    not_before = models.DateTimeField()
    not_after = models.DateTimeField()
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["domain__hostname"]

    def __str__(self) -> str:
        return f"{self.domain.hostname} ({self.fingerprint[:16]})"

    @property
    def key(self) -> str:
        return crypto.decrypt(self.key_encrypted)

    @key.setter
    def key(self, plaintext: str) -> None:
        self.key_encrypted = crypto.encrypt(plaintext)

    def days_left(self, now: datetime.datetime | None = None) -> int:
        """Whole days until it expires (negative once expired)."""
        now = now or datetime.datetime.now(datetime.UTC)
        return (self.not_after - now) // datetime.timedelta(days=1)



def _removed(sender: type[Certificate], instance: Certificate, **_: object) -> None:
    """Remove the router's file after commit, if the host name has no certificate by then.

    Runs for cascades too (a domain removed, an app destroyed): Django's collector sends
    post_delete for every row once a receiver is connected. A rolled-back delete leaves the file.
    """
    from core.actions.certs import router_file_sync
    from core.models.domain import Domain

    try:
        hostname = instance.domain.hostname
    except Domain.DoesNotExist:
        return
    transaction.on_commit(lambda: router_file_sync(hostname))


post_delete.connect(_removed, sender=Certificate, dispatch_uid="core.certificate.removed")
