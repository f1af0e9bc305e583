"""TLS certificates of custom domains (Heroku's `certs:add`), and the router's files of them.

The database is the record; each router reads `<PAAS_DATA_DIR>/router/certs/<host>.pem`. After
a commit that adds, replaces or removes a certificate, the file of that host name is made to
match the database (`router_file_sync`): written atomically, or removed. `router_files_write`
rewrites every file (`manage.py certs_write`, for a new router host or after a restore).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from django.conf import settings
from django.db import transaction

from core import authz, certs
from core.actions._common import audit
from core.authz import Verb
from core.errors import NotFound
from core.models import App, Certificate, Domain

if TYPE_CHECKING:
    from django.contrib.auth.models import User

log = logging.getLogger("core.certs")


def certs_dir() -> Path:
    """Where the router on this host looks for certificates (router.config.certs_dir)."""
    return Path(settings.DATA_DIR) / "router" / "certs"


def _domain(app: App, hostname: str, *, lock: bool = False) -> Domain:
    hostname = str(hostname).strip().lower().rstrip(".")
    rows = Domain.objects.select_for_update() if lock else Domain.objects
    domain = rows.filter(app=app, hostname=hostname).first()
    if domain is None:
        raise NotFound(f"'{hostname}' is not a domain of '{app.name}': add it first "
                       f"(`paas domains:add {hostname}`).")
    return domain


def cert_get(*, app: App, hostname: str) -> Certificate:
    """The certificate of one of the app's domains (the caller has checked read access)."""
    domain = _domain(app, hostname)
    certificate = Certificate.objects.filter(domain=domain).select_related("domain").first()
    if certificate is None:
        raise NotFound(f"'{domain.hostname}' has no certificate.")
    return certificate


def cert_set(*, actor: User, app: App, hostname: str, chain: object, key: object) -> Certificate:
    """Add or replace the certificate a custom domain is served with over HTTPS."""
    with transaction.atomic():
        authz.require_app(actor, Verb.APP_DEPLOY, app)
        domain = _domain(app, hostname, lock=True)
        parsed = certs.parse(domain.hostname, chain, key)
        certificate = Certificate.objects.filter(domain=domain).first()
        replaced = certificate is not None
        if certificate is None:
            certificate = Certificate(domain=domain)
        certificate.chain = parsed.chain
        certificate.key = parsed.key
        certificate.names = parsed.names
        certificate.fingerprint = parsed.fingerprint
        certificate.subject, certificate.issuer = parsed.subject, parsed.issuer
        certificate.not_before, certificate.not_after = parsed.not_before, parsed.not_after
        certificate.save()
        audit(actor=actor, action="cert.replace" if replaced else "cert.add", app=app,
              data={"hostname": domain.hostname, "fingerprint": parsed.fingerprint,
                    "names": parsed.names, "not_after": parsed.not_after.isoformat()})
        name = domain.hostname
        transaction.on_commit(lambda: router_file_sync(name))
    return certificate


def cert_remove(*, actor: User, app: App, hostname: str) -> None:
    """Stop serving a custom domain with its certificate (the router's file goes too)."""
    with transaction.atomic():
        authz.require_app(actor, Verb.APP_DEPLOY, app)
        domain = _domain(app, hostname, lock=True)
        deleted, _ = Certificate.objects.filter(domain=domain).delete()  # post_delete: the file
        if not deleted:
            raise NotFound(f"'{domain.hostname}' has no certificate.")
        audit(actor=actor, action="cert.remove", app=app, data={"hostname": domain.hostname})


def router_file_sync(hostname: str, directory: Path | None = None) -> None:
    """Make the router's file of `hostname` match the database: write it, or remove it.

    Runs after commit, so it reads what was committed; a failure is logged, not raised (the
    change is in the database, and `manage.py certs_write` rewrites every file).
    """
    directory = directory or certs_dir()
    try:
        row = Certificate.objects.filter(domain__hostname=hostname).first()
        if row is None:
            certs.remove_file(directory, hostname)
        else:
            certs.write_file(directory, hostname, certs.router_pem(row.chain, row.key))
    except Exception:
        log.exception("could not update the router's certificate file of %s in %s",
                      hostname, directory)


def router_files_write(directory: Path | None = None) -> list[Path]:
    """Write the router's file of every certificate; return the paths written."""
    directory = directory or certs_dir()
    written = []
    for row in Certificate.objects.select_related("domain").order_by("domain__hostname"):
        written.append(certs.write_file(directory, row.domain.hostname,
                                        certs.router_pem(row.chain, row.key)))
    return written
