from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from django.db import transaction

from core import authz, validators
from core.actions._common import audit, lock_app
from core.actions.releases import release_create
from core.authz import Verb
from core.errors import Invalid, TooLarge
from core.models import App, ConfigVar, Release

if TYPE_CHECKING:
    from django.contrib.auth.models import User


def _change(
    *, actor: User, app: App, values: Mapping[str, object], action: str
) -> Release:
    if not isinstance(values, Mapping) or not values:
        raise Invalid("Give at least one config key to set or unset.")
    problems: dict[str, list[str]] = {}
    first: Invalid | TooLarge | None = None
    to_set: dict[str, str] = {}
    to_unset: set[str] = set()
    for key, value in values.items():
        try:
            validators.config_key(key)
            if value is None:
                to_unset.add(key)
            else:
                to_set[key] = validators.config_value(key, value)
        except (Invalid, TooLarge) as exc:
            first = first or exc
            for field, messages in exc.fields.items():
                problems.setdefault(field, []).extend(messages)
    if first is not None:
        raise type(first)(first.message, fields=problems)

    with transaction.atomic():
        authz.require_app(actor, Verb.APP_DEPLOY, app)
        app = lock_app(app)
        current = {var.key: var for var in ConfigVar.objects.filter(app=app)}
        keys_after = (set(current) | set(to_set)) - to_unset
        if len(keys_after) > validators.CONFIG_MAX_KEYS:
            raise TooLarge(f"An app may have at most {validators.CONFIG_MAX_KEYS} config keys.")
        for key in sorted(to_unset & set(current)):
            current.pop(key).delete()
        for key, value in sorted(to_set.items()):
            var = current.get(key) or ConfigVar(app=app, key=key)
            var.value = value
            var.save()
            current[key] = var
        config = {key: var.value for key, var in current.items()}
        parts = []
        if to_set:
            parts.append("Set " + ", ".join(sorted(to_set)))
        if to_unset:
            parts.append("Unset " + ", ".join(sorted(to_unset)))
        current_release = app.current_release()
        release = release_create(
            actor=actor,
            app=app,
            build=current_release.build if current_release else None,
            config=config,
            description="; ".join(parts),
        )
        # Keys only: values never go into the audit log.
        audit(actor=actor, action=action, app=app,
              data={"set": sorted(to_set), "unset": sorted(to_unset), "version": release.version})
    return release


def config_set(
    *, actor: User, app: App, values: Mapping[str, str | None]
) -> Release:
    """Set config values (a None value unsets that key) and make a new release."""
    return _change(actor=actor, app=app, values=values, action="config.set")


def config_unset(*, actor: User, app: App, keys: Iterable[str]) -> Release:
    """Unset config keys (absent keys are ignored) and make a new release."""
    return _change(actor=actor, app=app, values=dict.fromkeys(keys), action="config.unset")
