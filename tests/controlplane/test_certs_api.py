"""Certificates over the REST API and the `paas certs` commands (in process, real API)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from core import actions
from core.models import Certificate
from tests.controlplane import certgen
from tests.controlplane.inprocess_cli import InProcessCli
from tests.controlplane.test_api import assert_error, call, client_for

pytestmark = pytest.mark.django_db
PATH = "apps/web1/domains/www.example.com/certificate"


@pytest.fixture(autouse=True)
def data_dir(settings: Any, tmp_path: Path) -> Path:
    settings.DATA_DIR = tmp_path
    return tmp_path


@pytest.fixture
def www(acme: Any, web1: Any) -> Any:
    return actions.domain_add(actor=acme.member, app=web1, hostname="www.example.com")


def test_it_adds_shows_replaces_and_removes_a_certificate(acme, web1, www) -> None:
    client = client_for(acme.member)
    made = certgen.leaf(["www.example.com", "*.example.com"])
    added = call(client, "PUT", PATH, {"chain": made.pem, "key": made.key_pem})
    assert added.status_code == 201, added.content
    body = added.json()
    assert body["hostname"] == "www.example.com"
    assert body["names"] == ["www.example.com", "*.example.com"]
    assert body["fingerprint"] == made.fingerprint
    assert body["days_left"] in (89, 90)
    assert set(body) == {"hostname", "names", "fingerprint", "subject", "issuer", "not_before",
                         "not_after", "days_left", "created_at", "updated_at"}
    shown = call(client_for(acme.viewer), "GET", PATH)
    assert shown.status_code == 200 and shown.json() == body
    assert "PRIVATE" not in added.content.decode() + shown.content.decode()

    again = certgen.leaf(["www.example.com"])
    replaced = call(client, "PUT", "apps/web1/domains/WWW.Example.com./certificate/",
                    {"chain": again.pem, "key": again.key_pem})
    assert replaced.status_code == 200 and replaced.json()["fingerprint"] == again.fingerprint

    assert call(client, "DELETE", PATH).status_code == 204
    assert_error(call(client, "GET", PATH), 404, "not_found")
    assert_error(call(client, "DELETE", PATH), 404, "not_found")


def test_it_shows_each_domains_certificate_summary_in_the_listing(acme, web1, www) -> None:
    actions.domain_add(actor=acme.member, app=web1, hostname="shop.example.com")
    made = certgen.leaf(["www.example.com"])
    actions.cert_set(actor=acme.member, app=web1, hostname="www.example.com", chain=made.pem,
                     key=made.key_pem)
    listed = call(client_for(acme.viewer), "GET", "apps/web1/domains").json()
    assert [d["hostname"] for d in listed] == ["shop.example.com", "www.example.com"]
    assert listed[0]["certificate"] is None
    summary = listed[1]["certificate"]
    assert summary["names"] == ["www.example.com"] and summary["fingerprint"] == made.fingerprint
    assert summary["not_after"].startswith(made.cert.not_valid_after_utc.strftime("%Y-%m-%dT"))


@pytest.mark.parametrize(("body", "status", "code", "field"), [
    ({"chain": "nonsense", "key": "nonsense"}, 400, "invalid", "chain"),
    ({"chain": "$cert"}, 400, "invalid", "key"),
    ({"chain": "$cert", "key": "$key", "extra": 1}, 400, "invalid", "extra"),
    ({"chain": "$cert", "key": "$other"}, 400, "invalid", "key"),
    ({"chain": "$cert" + "#" * 70000, "key": "$key"}, 413, "too_large", "chain"),
    ({"chain": ["$cert"], "key": "$key"}, 400, "invalid", "chain"),
])
def test_it_refuses_bad_input_with_a_message_per_field(acme, web1, www, body, status, code, field) -> None:
    made, other = certgen.leaf(["www.example.com"]), certgen.leaf(["www.example.com"])

    def fill(value: Any) -> Any:
        if isinstance(value, list):
            return [fill(v) for v in value]
        if isinstance(value, str):
            return (value.replace("$cert", made.pem).replace("$key", made.key_pem)
                    .replace("$other", other.key_pem))
        return value

    response = call(client_for(acme.member), "PUT", PATH, {k: fill(v) for k, v in body.items()})
    assert_error(response, status, code, field)
    assert not Certificate.objects.exists()


def test_it_refuses_a_non_object_body(acme, web1, www) -> None:
    assert_error(call(client_for(acme.member), "PUT", PATH, raw="[1]"), 400, "invalid")


@pytest.mark.parametrize(("persona", "method", "status"), [
    ("viewer", "PUT", 403), ("viewer", "DELETE", 403),
    ("stranger", "GET", 404), ("stranger", "PUT", 404), ("stranger", "DELETE", 404),
])
def test_it_lets_only_deployers_change_certificates(acme, web1, www, persona, method, status) -> None:
    made = certgen.leaf(["www.example.com"])
    actions.cert_set(actor=acme.member, app=web1, hostname="www.example.com", chain=made.pem,
                     key=made.key_pem)
    other = certgen.leaf(["www.example.com"])
    body = {"chain": other.pem, "key": other.key_pem} if method == "PUT" else None
    response = call(client_for(acme.user(persona)), method, PATH, body)
    assert_error(response, status, "forbidden" if status == 403 else "not_found")
    assert Certificate.objects.get().fingerprint == made.fingerprint


def test_it_answers_404_for_a_domain_the_app_does_not_have(acme, web1) -> None:
    made = certgen.leaf(["www.example.com"])
    error = assert_error(call(client_for(acme.member), "PUT", PATH,
                              {"chain": made.pem, "key": made.key_pem}), 404, "not_found")
    assert "paas domains:add www.example.com" in error["message"]


# --- the CLI ---------------------------------------------------------------------------------


@pytest.fixture
def paas(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Iterator[InProcessCli]:
    with InProcessCli(monkeypatch, capsys) as cli:
        yield cli


def _files(tmp_path: Path, made: certgen.Made) -> tuple[str, str]:
    chain, key = tmp_path / "chain.pem", tmp_path / "key.pem"
    chain.write_text(made.pem)
    key.write_text(made.key_pem)
    return str(chain), str(key)


def test_it_adds_lists_and_removes_certificates_from_the_cli(acme, web1, www, paas, tmp_path, data_dir) -> None:
    cli = paas.as_user(acme.member)
    assert cli("certs", "-a", "web1").out.startswith("web1 has no certificates")
    made = certgen.leaf(["www.example.com"])
    result = cli("certs:add", "www.example.com", *_files(tmp_path, made), "-a", "web1")
    assert result.code == 0, result.err
    assert result.out.startswith("Certificate for www.example.com on web1: www.example.com, expires ")
    listed = cli("certs", "-a", "web1")
    header, row = listed.out.splitlines()
    assert header.split() == ["HOSTNAME", "NAMES", "EXPIRES", "DAYS", "LEFT"]
    assert row.split()[0:2] == ["www.example.com", "www.example.com"]
    assert row.split()[-1] in ("89", "90")
    info = cli("certs:info", "www.example.com", "-a", "web1").out
    assert f"SHA-256:    {made.fingerprint}\n" in info
    assert "Names:      www.example.com\n" in info and "Issuer:     CN=www.example.com\n" in info
    as_json = cli("certs", "-a", "web1", "--json")
    assert '"fingerprint": "' + made.fingerprint + '"' in as_json.out
    assert cli("certs:remove", "www.example.com", "-a", "web1").out.strip() == (
        "Removed the certificate of www.example.com from web1.")
    assert not Certificate.objects.exists()
    gone = cli("certs:info", "www.example.com", "-a", "web1")
    assert gone.code == 1 and gone.err.strip() == "paas: 'www.example.com' has no certificate."


def test_it_shows_the_apis_reason_when_the_cli_upload_is_refused(acme, web1, www, paas, tmp_path) -> None:
    made = certgen.leaf(["shop.example.com"])
    result = paas.as_user(acme.member)("certs:add", "www.example.com", *_files(tmp_path, made),
                                       "-a", "web1")
    assert result.code == 1 and result.out == ""
    assert "not valid for 'www.example.com': it covers shop.example.com" in result.err
    assert "Traceback" not in result.err


def test_it_says_which_file_the_cli_cannot_read(acme, web1, www, paas, tmp_path) -> None:
    cli = paas.as_user(acme.member)
    chain, key = _files(tmp_path, certgen.leaf(["www.example.com"]))
    missing = cli("certs:add", "www.example.com", str(tmp_path / "nope.pem"), key, "-a", "web1")
    assert missing.code == 1
    assert missing.err.strip() == (f"paas: Cannot read the certificate chain file "
                                   f"{tmp_path / 'nope.pem'}: No such file or directory.")
    binary = tmp_path / "key.der"
    binary.write_bytes(b"\x30\x82\xff\xfe")
    der = cli("certs:add", "www.example.com", chain, str(binary), "-a", "web1")
    assert der.code == 1 and "is not PEM text" in der.err
    big = tmp_path / "big.pem"
    big.write_text("x" * 70000)
    assert "larger than 64 KiB" in cli("certs:add", "www.example.com", str(big), key, "-a", "web1").err
    directory = cli("certs:add", "www.example.com", str(tmp_path), key, "-a", "web1")
    assert directory.code == 1 and "Cannot read the certificate chain file" in directory.err
    assert not Certificate.objects.exists()


def test_it_shows_in_the_domain_listing_which_domains_have_https(acme, web1, www, paas) -> None:
    actions.domain_add(actor=acme.member, app=web1, hostname="shop.example.com")
    made = certgen.leaf(["www.example.com"])
    actions.cert_set(actor=acme.member, app=web1, hostname="www.example.com", chain=made.pem,
                     key=made.key_pem)
    lines = paas.as_user(acme.viewer)("domains", "-a", "web1").out.splitlines()
    assert lines[0].split() == ["HOSTNAME", "ADDED", "HTTPS"]
    assert lines[1].split()[0] == "shop.example.com"
    assert lines[1].endswith("no certificate (paas certs:add)")
    expires = made.cert.not_valid_after_utc.strftime("%Y-%m-%d")
    assert lines[2].split()[0] == "www.example.com"
    assert lines[2].endswith((f"until {expires} (89 days)", f"until {expires} (90 days)"))
