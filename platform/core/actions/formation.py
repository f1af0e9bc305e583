from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from django.db import transaction

from core import authz, validators
from core.actions._common import audit, enqueue_on_commit, lock_app
from core.authz import Verb
from core.errors import invalid_field
from core.models import App, Formation
from core.models.formation import RELEASE_PHASE

if TYPE_CHECKING:
    from django.contrib.auth.models import User

_ALLOWED_KEYS = {"type", "quantity", "size", "constraints", "readiness_path", "boot_timeout_s"}
_SETTINGS = ("constraints", "readiness_path", "boot_timeout_s")
# Only this type gets $PORT, so only its containers have a readiness check.
READINESS_TYPE = "web"


def formation_scale(
    *, actor: User, app: App, updates: Sequence[Mapping[str, object]]
) -> list[Formation]:
    """Change quantity, size, host constraints, readiness path or boot timeout of process
    types; all updates apply or none does."""
    from core import tasks

    if not isinstance(updates, Sequence) or isinstance(updates, str) or not updates:
        raise invalid_field("updates", "Give a list of updates like {\"type\": \"web\", \"quantity\": 2}.")
    parsed: list[tuple[str, int | None, tuple[str, int, float | None] | None, dict[str, object]]] = []
    seen: set[str] = set()
    for update in updates:
        if not isinstance(update, Mapping):
            raise invalid_field("updates", "Each update must be an object with a type and what to change.")
        unknown = set(update) - _ALLOWED_KEYS
        if unknown:
            raise invalid_field("updates", f"Unknown update field(s): {', '.join(sorted(map(str, unknown)))}.")
        ptype = validators.process_type(update.get("type"))
        if ptype in seen:
            raise invalid_field("type", f"Process type '{ptype}' is given twice.")
        seen.add(ptype)
        if not set(update) - {"type"}:
            raise invalid_field(
                "updates", f"Give a quantity, size, constraints, readiness_path or "
                f"boot_timeout_s for '{ptype}'.")
        qty = validators.quantity(update["quantity"]) if "quantity" in update else None
        size = validators.size(update["size"]) if "size" in update else None
        settings: dict[str, object] = {}
        if "constraints" in update:
            settings["constraints"] = validators.constraints(update["constraints"])
        for key, check in (("readiness_path", validators.readiness_path),
                           ("boot_timeout_s", validators.boot_timeout)):
            if key in update:
                settings[key] = check(update[key])
                if ptype != READINESS_TYPE and settings[key]:
                    raise invalid_field(
                        key, f"Only '{READINESS_TYPE}' containers get $PORT and a readiness "
                        f"check; '{ptype}' is ready once it runs.")
        parsed.append((ptype, qty, size, settings))

    with transaction.atomic():
        authz.require_app(actor, Verb.APP_DEPLOY, app)
        app = lock_app(app)
        rows = {row.type: row for row in Formation.objects.filter(app=app)}
        for ptype, *_ in parsed:
            if ptype == RELEASE_PHASE:
                raise invalid_field("type", "'release' runs once per release before it goes live "
                                            "(the release phase); it cannot be scaled.")
            if ptype not in rows:
                known = ", ".join(sorted(rows)) or "none yet (deploy the app first)"
                raise invalid_field("type", f"Unknown process type '{ptype}'; this app has: {known}.")
        changes = []
        for ptype, qty, size, settings in parsed:
            row = rows[ptype]
            if qty is not None:
                row.quantity = qty
            if size is not None:
                row.size, row.memory_mb = size[0], size[1]
                if size[2] is not None:
                    row.cpu = size[2]
            for key, value in settings.items():
                setattr(row, key, value)
            row.save(update_fields=["quantity", "size", "memory_mb", "cpu", *_SETTINGS])
            change: dict[str, object] = {"type": ptype, "quantity": row.quantity, "size": row.size}
            change.update(settings)
            changes.append(change)
        audit(actor=actor, action="formation.scale", app=app, data={"changes": changes})
        enqueue_on_commit(tasks.app_reconcile, app_id=app.pk)
    return sorted(rows.values(), key=lambda row: row.type)
