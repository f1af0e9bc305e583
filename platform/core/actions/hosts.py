from __future__ import annotations

import secrets
from typing import TYPE_CHECKING

from django.db import IntegrityError, transaction

from core import authz, validators
from core.actions._common import audit, enqueue_on_commit
from core.errors import Conflict
from core.models import Host, HostState
from core.models.api_token import token_digest

if TYPE_CHECKING:
    from django.contrib.auth.models import User

HOST_TOKEN_PREFIX = "paashost_"


def host_register(
    *,
    actor: User,
    name: str,
    address: str,
    memory_mb: int,
    cpus: int,
    labels: dict[str, str] | None = None,
) -> tuple[Host, str]:
    """Add a host that may run containers. Return it and its agent token (shown once)."""
    authz.require_staff(actor, "register hosts")
    validators.host_name(name)
    address = validators.ip_address(address)
    validators.positive_int(memory_mb, "memory_mb", 16 * 1024 * 1024)
    validators.positive_int(cpus, "cpus", 4096)
    clean_labels = validators.labels(labels)
    token = HOST_TOKEN_PREFIX + secrets.token_urlsafe(30)
    with transaction.atomic():
        if Host.objects.filter(name=name).exists():
            raise Conflict(f"A host named '{name}' is already registered.", fields={"name": ["Taken."]})
        try:
            with transaction.atomic():
                host = Host.objects.create(name=name, address=address, memory_mb=memory_mb,
                                           cpus=cpus, labels=clean_labels,
                                           token_digest=token_digest(token))
        except IntegrityError:
            raise Conflict(f"A host named '{name}' is already registered.") from None
        audit(actor=actor, action="host.register",
              data={"name": name, "address": address, "memory_mb": memory_mb, "cpus": cpus})
    return host, token


def host_drain(*, actor: User, host: Host) -> Host:
    """Stop placing containers on a host and ask for its containers to move elsewhere."""
    from core import tasks

    authz.require_staff(actor, "drain hosts")
    with transaction.atomic():
        Host.objects.filter(pk=host.pk).update(state=HostState.DRAINING)
        host.refresh_from_db()
        audit(actor=actor, action="host.drain", data={"name": host.name})
        enqueue_on_commit(tasks.host_reconcile, host_id=host.pk)
    return host


def host_label(*, actor: User, host: Host, changes: dict[str, str | None]) -> Host:
    """Set (name: value) or remove (name: None) labels of a host; apps then re-place."""
    from core import tasks

    authz.require_staff(actor, "label hosts")
    clean = validators.label_changes(changes)
    with transaction.atomic():
        host = Host.objects.select_for_update().get(pk=host.pk)
        labels = dict(host.labels or {})
        for key, value in clean.items():
            if value is None:
                labels.pop(key, None)
            else:
                labels[key] = value
        host.labels = labels
        host.save(update_fields=["labels"])
        audit(actor=actor, action="host.label", data={"name": host.name, "changes": clean})
        # Apps waiting for a host with these labels (and the host's own apps) re-place.
        for app_id in _apps_to_replace(host):
            enqueue_on_commit(tasks.app_reconcile, app_id=app_id)
    return host


def _apps_to_replace(host: Host) -> list[int]:
    from core.models import Container, Formation

    constrained = Formation.objects.filter(quantity__gt=0).exclude(constraints={})
    on_host = Container.objects.filter(host=host)
    return sorted(set(constrained.values_list("app_id", flat=True))
                  | set(on_host.values_list("app_id", flat=True)))
