"""cert_set and cert_remove: the record, the audit log, and the router's file after commit."""

from __future__ import annotations

import ssl
import stat
from collections.abc import Iterator
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.db import connection, transaction

from core import actions, tasks
from core.actions.certs import certs_dir
from core.errors import Forbidden, Invalid, NotFound
from core.models import AuditEvent, Certificate, Domain
from tests.controlplane import certgen

pytestmark = pytest.mark.django_db


@pytest.fixture
def data_dir(settings: Any, tmp_path: Path) -> Path:
    settings.DATA_DIR = tmp_path
    return tmp_path


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict[str, Any]]]:
    """Tasks the actions enqueue after commit, recorded instead of sent to the broker
    (test_tasks.py sends them to a real redis-server)."""
    record: list[tuple[str, dict[str, Any]]] = []
    for task in (tasks.app_reconcile, tasks.app_teardown):
        monkeypatch.setattr(task, "apply_async",
                            lambda *, kwargs, _name=task.name, **_: record.append((_name, kwargs)))
    return record


@pytest.fixture
def committed(django_capture_on_commit_callbacks: Any, sent: Any) -> Iterator[Any]:
    """A context manager that runs the after-commit work of what happens inside it."""
    yield lambda: django_capture_on_commit_callbacks(execute=True)


@pytest.fixture
def www(acme: Any, web1: Any) -> Domain:
    return actions.domain_add(actor=acme.member, app=web1, hostname="www.example.com")


def router_file(data_dir: Path, name: str = "www.example.com.pem") -> Path:
    return data_dir / "router" / "certs" / name


def test_it_writes_the_routers_file_after_commit(acme, web1, www, data_dir, committed) -> None:
    made = certgen.leaf(["www.example.com"])
    with committed():
        cert = actions.cert_set(actor=acme.member, app=web1, hostname="WWW.example.com",
                                chain=made.pem, key=made.key_pem)
        assert not router_file(data_dir).exists()  # not before the commit
    assert certs_dir() == data_dir / "router" / "certs"
    path = router_file(data_dir)
    assert path.read_text() == made.pem + made.key_pem
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(str(path))
    assert cert.fingerprint == made.fingerprint and cert.names == ["www.example.com"]
    event = AuditEvent.objects.get(action="cert.add")
    assert event.data["hostname"] == "www.example.com"
    assert event.data["fingerprint"] == made.fingerprint
    assert "PRIVATE" not in str(event.data)


def test_it_keeps_the_key_encrypted_at_rest(acme, web1, www, data_dir, committed) -> None:
    made = certgen.leaf(["www.example.com"])
    with committed():
        actions.cert_set(actor=acme.member, app=web1, hostname="www.example.com",
                         chain=made.pem, key=made.key_pem)
    with connection.cursor() as cursor:
        cursor.execute("SELECT key_encrypted, chain FROM core_certificate")
        stored_key, stored_chain = cursor.fetchone()
    assert "PRIVATE KEY" not in stored_key and "BEGIN CERTIFICATE" in stored_chain
    assert Certificate.objects.get().key == made.key_pem


def test_it_replaces_a_certificate_in_place(acme, web1, www, data_dir, committed) -> None:
    first, second = certgen.leaf(["www.example.com"]), certgen.leaf(["*.example.com"])
    with committed():
        actions.cert_set(actor=acme.member, app=web1, hostname="www.example.com",
                         chain=first.pem, key=first.key_pem)
    with committed():
        actions.cert_set(actor=acme.admin, app=web1, hostname="www.example.com",
                         chain=second.pem, key=second.key_pem)
    assert Certificate.objects.get().fingerprint == second.fingerprint
    assert router_file(data_dir).read_text() == second.pem + second.key_pem
    assert [e.action for e in AuditEvent.objects.filter(action__startswith="cert.")
            .order_by("pk")] == ["cert.add", "cert.replace"]


def test_it_writes_nothing_when_the_certificate_is_refused(acme, web1, www, data_dir, committed) -> None:
    made = certgen.leaf(["shop.example.com"])
    with committed(), pytest.raises(Invalid, match=r"not valid for 'www\.example\.com'"):
        actions.cert_set(actor=acme.member, app=web1, hostname="www.example.com",
                         chain=made.pem, key=made.key_pem)
    assert not Certificate.objects.exists() and not router_file(data_dir).exists()
    assert not AuditEvent.objects.filter(action__startswith="cert.").exists()


def test_it_writes_nothing_when_the_transaction_rolls_back(acme, web1, www, data_dir, committed) -> None:
    made = certgen.leaf(["www.example.com"])
    with committed(), pytest.raises(RuntimeError), transaction.atomic():
        actions.cert_set(actor=acme.member, app=web1, hostname="www.example.com",
                         chain=made.pem, key=made.key_pem)
        raise RuntimeError("something after it failed")
    assert not Certificate.objects.exists() and not router_file(data_dir).exists()


@pytest.mark.parametrize(("persona", "error"), [("viewer", Forbidden), ("stranger", NotFound)])
def test_it_lets_only_deployers_set_a_certificate(acme, web1, www, data_dir, committed, persona, error) -> None:
    made = certgen.leaf(["www.example.com"])
    with committed(), pytest.raises(error):
        actions.cert_set(actor=acme.user(persona), app=web1, hostname="www.example.com",
                         chain=made.pem, key=made.key_pem)
    assert not Certificate.objects.exists() and not router_file(data_dir).exists()


def test_it_refuses_a_hostname_that_is_not_the_apps_domain(acme, web1, www, data_dir) -> None:
    other = actions.app_create(actor=acme.owner, name="web2", team=acme.team)
    made = certgen.leaf(["www.example.com"])
    with pytest.raises(NotFound, match=r"'www\.example\.com' is not a domain of 'web2'"):
        actions.cert_set(actor=acme.member, app=other, hostname="www.example.com",
                         chain=made.pem, key=made.key_pem)


def _add(acme: Any, app: Any, committed: Any, hostname: str = "www.example.com") -> certgen.Made:
    made = certgen.leaf([hostname])
    with committed():
        actions.cert_set(actor=acme.member, app=app, hostname=hostname, chain=made.pem,
                         key=made.key_pem)
    return made


def test_it_removes_a_certificate_and_its_file(acme, web1, www, data_dir, committed) -> None:
    _add(acme, web1, committed)
    with committed():
        actions.cert_remove(actor=acme.member, app=web1, hostname="www.example.com")
        assert router_file(data_dir).exists()  # until the commit
    assert not router_file(data_dir).exists() and not Certificate.objects.exists()
    assert Domain.objects.filter(hostname="www.example.com").exists()
    assert AuditEvent.objects.filter(action="cert.remove").count() == 1
    with pytest.raises(NotFound, match="has no certificate"):
        actions.cert_remove(actor=acme.member, app=web1, hostname="www.example.com")


def test_it_keeps_the_file_when_a_removal_rolls_back(acme, web1, www, data_dir, committed) -> None:
    _add(acme, web1, committed)
    with committed(), pytest.raises(RuntimeError), transaction.atomic():
        actions.cert_remove(actor=acme.member, app=web1, hostname="www.example.com")
        raise RuntimeError("something after it failed")
    assert router_file(data_dir).exists() and Certificate.objects.exists()


def test_it_removes_the_file_when_the_domain_is_removed(acme, web1, www, data_dir, committed) -> None:
    _add(acme, web1, committed)
    with committed():
        actions.domain_remove(actor=acme.member, app=web1, hostname="www.example.com")
    assert not router_file(data_dir).exists() and not Certificate.objects.exists()


def test_it_removes_the_files_when_the_app_is_destroyed(acme, web1, data_dir, committed, sent) -> None:
    for hostname in ("www.example.com", "shop.example.com"):
        actions.domain_add(actor=acme.member, app=web1, hostname=hostname)
        _add(acme, web1, committed, hostname)
    keep = actions.app_create(actor=acme.owner, name="web2", team=acme.team)
    actions.domain_add(actor=acme.member, app=keep, hostname="keep.example.com")
    _add(acme, keep, committed, "keep.example.com")
    with committed():
        actions.app_destroy(actor=acme.admin, app=web1)
    assert sorted(p.name for p in (data_dir / "router" / "certs").iterdir()) == ["keep.example.com.pem"]
    assert ("core.app_teardown", {"app_name": "web1"}) in sent


def test_it_serves_a_wildcard_domain_from_the_wildcard_file(acme, web1, data_dir, committed) -> None:
    # The router routes `*.example.com` domains; the file is the one it looks for below it.
    Domain.objects.create(app=web1, hostname="*.example.com")
    made = certgen.leaf(["*.example.com"])
    with committed():
        actions.cert_set(actor=acme.member, app=web1, hostname="*.example.com",
                         chain=made.pem, key=made.key_pem)
    assert router_file(data_dir, "_wildcard.example.com.pem").read_text() == made.pem + made.key_pem
    with committed():
        actions.cert_remove(actor=acme.member, app=web1, hostname="*.example.com")
    assert not router_file(data_dir, "_wildcard.example.com.pem").exists()


def test_it_rewrites_every_file_with_the_management_command(acme, web1, data_dir, committed, tmp_path) -> None:
    made = {}
    for hostname in ("www.example.com", "shop.example.com"):
        actions.domain_add(actor=acme.member, app=web1, hostname=hostname)
        made[hostname] = _add(acme, web1, committed, hostname)
    directory = data_dir / "router" / "certs"
    (directory / "www.example.com.pem").unlink()
    (directory / "shop.example.com.pem").write_text("stale")
    (directory / "default.pem").write_text("the operator's own")
    out = StringIO()
    call_command("certs_write", stdout=out)
    assert out.getvalue().strip() == f"Wrote 2 certificate file(s) to {directory}."
    for hostname, one in made.items():
        assert (directory / f"{hostname}.pem").read_text() == one.pem + one.key_pem
    assert (directory / "default.pem").read_text() == "the operator's own"
    elsewhere = tmp_path / "elsewhere"
    call_command("certs_write", "--dir", str(elsewhere), stdout=StringIO())
    assert sorted(p.name for p in elsewhere.iterdir()) == ["shop.example.com.pem", "www.example.com.pem"]


def test_it_says_when_the_management_command_cannot_write(acme, web1, www, data_dir, committed, tmp_path) -> None:
    from django.core.management.base import CommandError

    _add(acme, web1, committed)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(CommandError, match="cannot write certificates to"):
        call_command("certs_write", "--dir", str(blocker / "certs"), stdout=StringIO())


def test_it_keeps_a_committed_certificate_and_logs_when_the_file_cannot_be_written(
    acme, web1, www, data_dir, committed, caplog,
) -> None:
    (data_dir / "router").write_text("in the way")  # the certs dir cannot be made
    made = certgen.leaf(["www.example.com"])
    with committed():
        actions.cert_set(actor=acme.member, app=web1, hostname="www.example.com",
                         chain=made.pem, key=made.key_pem)
    assert Certificate.objects.get().fingerprint == made.fingerprint
    assert "could not update the router's certificate file of www.example.com" in caplog.text


def test_it_says_when_the_keys_do_not_decrypt_with_this_secret_key(
    acme, web1, www, data_dir, committed, settings,
) -> None:
    from django.core.management.base import CommandError

    _add(acme, web1, committed)
    settings.SECRET_KEY = "another-secret-key-than-the-one-the-keys-were-stored-with-0123"
    with pytest.raises(CommandError, match="do not decrypt with this SECRET_KEY"):
        call_command("certs_write", stdout=StringIO())
