from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from django.db import transaction

from core import authz, validators
from core.actions._common import audit, enqueue_on_commit, lock_app
from core.authz import Verb
from core.errors import invalid_field
from core.models import App, Formation

if TYPE_CHECKING:
    from django.contrib.auth.models import User

_ALLOWED_KEYS = {"type", "quantity", "size"}


def formation_scale(
    *, actor: User, app: App, updates: Sequence[Mapping[str, object]]
) -> list[Formation]:
    """Change quantity and/or size of process types; all updates apply or none does."""
    from core import tasks

    if not isinstance(updates, Sequence) or isinstance(updates, str) or not updates:
        raise invalid_field("updates", "Give a list of updates like {\"type\": \"web\", \"quantity\": 2}.")
    parsed: list[tuple[str, int | None, tuple[str, int, float | None] | None]] = []
    seen: set[str] = set()
    for update in updates:
        if not isinstance(update, Mapping):
            raise invalid_field("updates", "Each update must be an object with type, quantity, size.")
        unknown = set(update) - _ALLOWED_KEYS
        if unknown:
            raise invalid_field("updates", f"Unknown update field(s): {', '.join(sorted(map(str, unknown)))}.")
        ptype = validators.process_type(update.get("type"))
        if ptype in seen:
            raise invalid_field("type", f"Process type '{ptype}' is given twice.")
        seen.add(ptype)
        if "quantity" not in update and "size" not in update:
            raise invalid_field("updates", f"Give a quantity or a size for '{ptype}'.")
        qty = validators.quantity(update["quantity"]) if "quantity" in update else None
        size = validators.size(update["size"]) if "size" in update else None
        parsed.append((ptype, qty, size))

    with transaction.atomic():
        authz.require_app(actor, Verb.APP_DEPLOY, app)
        app = lock_app(app)
        rows = {row.type: row for row in Formation.objects.filter(app=app)}
        for ptype, _, _ in parsed:
            if ptype not in rows:
                known = ", ".join(sorted(rows)) or "none yet (deploy the app first)"
                raise invalid_field("type", f"Unknown process type '{ptype}'; this app has: {known}.")
        changes = []
        for ptype, qty, size in parsed:
            row = rows[ptype]
            if qty is not None:
                row.quantity = qty
            if size is not None:
                row.size, row.memory_mb = size[0], size[1]
                if size[2] is not None:
                    row.cpu = size[2]
            row.save(update_fields=["quantity", "size", "memory_mb", "cpu"])
            changes.append({"type": ptype, "quantity": row.quantity, "size": row.size})
        audit(actor=actor, action="formation.scale", app=app, data={"changes": changes})
        enqueue_on_commit(tasks.app_reconcile, app_id=app.pk)
    return sorted(rows.values(), key=lambda row: row.type)
