"""Every write to the domain, one function per mutation.

Each action runs in a transaction, checks permission through `core.authz`, writes an
`AuditEvent`, and enqueues its follow-up work with `transaction.on_commit`. Bad input raises a
`core.errors.ActionError` before anything is written (or inside the transaction, which then rolls
back). Views, the API, tasks and the dashboard call these; none of them change models directly.
"""

from __future__ import annotations

from core.actions.apps import app_create, app_destroy
from core.actions.builds import build_create, build_finish
from core.actions.certs import cert_remove, cert_set
from core.actions.config import config_set, config_unset
from core.actions.domains import domain_add, domain_remove
from core.actions.formation import formation_scale
from core.actions.hosts import host_drain, host_label, host_register
from core.actions.releases import release_create, release_rollback
from core.actions.teams import member_add, member_remove, member_role_set, team_create, team_destroy
from core.actions.tokens import token_create, token_revoke
from core.actions.users import user_create

__all__ = [
    "app_create",
    "app_destroy",
    "build_create",
    "build_finish",
    "cert_remove",
    "cert_set",
    "config_set",
    "config_unset",
    "domain_add",
    "domain_remove",
    "formation_scale",
    "host_drain",
    "host_label",
    "host_register",
    "member_add",
    "member_remove",
    "member_role_set",
    "release_create",
    "release_rollback",
    "team_create",
    "team_destroy",
    "token_create",
    "token_revoke",
    "user_create",
]
