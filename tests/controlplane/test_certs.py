"""Checking an uploaded certificate and key (core.certs.parse), and the router's files."""

from __future__ import annotations

import datetime
import os
import ssl
import stat
from pathlib import Path

import pytest

from core import certs
from core.errors import Invalid, TooLarge
from router.tls import cert_file_names
from tests.controlplane import certgen
from tests.controlplane.certgen import NOW


def refused(field: str, hostname: str, chain: object, key: object) -> str:
    with pytest.raises(Invalid) as caught:
        certs.parse(hostname, chain, key)
    assert list(caught.value.fields) == [field]
    return caught.value.message


def test_it_accepts_a_certificate_for_the_hostname_and_keeps_its_metadata() -> None:
    made = certgen.leaf(["www.example.com", "example.com"])
    parsed = certs.parse("www.example.com", made.pem, made.key_pem)
    assert parsed.names == ["www.example.com", "example.com"]
    assert parsed.fingerprint == made.fingerprint
    assert parsed.not_after == made.cert.not_valid_after_utc
    assert parsed.not_before == made.cert.not_valid_before_utc
    assert parsed.subject == "CN=www.example.com"
    assert parsed.chain == made.pem and parsed.key == made.key_pem


def test_it_accepts_an_rsa_key_in_the_traditional_format_and_stores_it_as_pkcs8() -> None:
    from cryptography.hazmat.primitives import serialization

    made = certgen.leaf(["shop.example.com"], rsa_key=True)
    traditional = made.key.private_bytes(serialization.Encoding.PEM,
                                         serialization.PrivateFormat.TraditionalOpenSSL,
                                         serialization.NoEncryption()).decode()
    assert traditional.startswith("-----BEGIN RSA PRIVATE KEY-----")
    parsed = certs.parse("shop.example.com", made.pem, traditional)
    assert parsed.key == made.key_pem


def test_it_accepts_a_chain_with_the_leaf_first_and_drops_text_around_the_blocks() -> None:
    authority = certgen.ca()
    made = certgen.leaf(["www.example.com"], issuer=authority)
    parsed = certs.parse("www.example.com", f"subject=www\n{made.pem}\nissuer=ca\n{authority.pem}",
                         made.key_pem)
    assert parsed.chain == made.pem + authority.pem
    assert parsed.issuer == "CN=Test CA"


def test_it_refuses_a_chain_in_the_wrong_order() -> None:
    authority = certgen.ca()
    made = certgen.leaf(["www.example.com"], issuer=authority)
    message = refused("chain", "www.example.com", authority.pem + made.pem, made.key_pem)
    assert "server's own certificate first" in message


def test_it_accepts_a_wildcard_certificate_for_one_label_below_it() -> None:
    made = certgen.leaf(["*.example.com"])
    assert certs.parse("shop.example.com", made.pem, made.key_pem).names == ["*.example.com"]
    assert "not valid for 'a.b.example.com'" in refused("chain", "a.b.example.com", made.pem,
                                                        made.key_pem)
    assert "not valid for 'example.com'" in refused("chain", "example.com", made.pem, made.key_pem)


@pytest.mark.parametrize(("hostname", "names", "expected"), [
    ("www.example.com", ["www.example.com"], True),
    ("WWW.Example.com.", ["www.EXAMPLE.com"], True),
    ("www.example.com", ["*.example.com"], True),
    ("example.com", ["*.example.com"], False),
    ("a.b.example.com", ["*.example.com"], False),
    ("www.example.org", ["*.example.com", "example.org"], False),
    ("*.example.com", ["*.example.com"], True),
    ("*.example.com", ["www.example.com", "example.com"], False),
    ("*.a.example.com", ["*.example.com"], False),
])
def test_it_matches_names_as_tls_clients_do(hostname: str, names: list[str], expected: bool) -> None:
    assert certs.covers(hostname, names) is expected


def test_it_needs_the_wildcard_name_for_a_wildcard_domain() -> None:
    made = certgen.leaf(["*.example.com"])
    assert certs.parse("*.example.com", made.pem, made.key_pem).names == ["*.example.com"]
    other = certgen.leaf(["www.example.com"])
    assert "not valid for '*.example.com'" in refused("chain", "*.example.com", other.pem,
                                                      other.key_pem)


def test_it_refuses_a_key_that_is_not_the_certificates() -> None:
    made, stranger = certgen.leaf(["www.example.com"]), certgen.leaf(["www.example.com"])
    assert "does not belong to the certificate" in refused("key", "www.example.com", made.pem,
                                                           stranger.key_pem)


def test_it_refuses_an_expired_certificate() -> None:
    made = certgen.leaf(["www.example.com"], not_before=NOW - datetime.timedelta(days=90),
                        not_after=NOW - datetime.timedelta(days=1))
    message = refused("chain", "www.example.com", made.pem, made.key_pem)
    assert message.startswith("The certificate expired on ")
    assert made.cert.not_valid_after_utc.strftime("%Y-%m-%d") in message


def test_it_refuses_a_certificate_that_is_not_valid_yet() -> None:
    made = certgen.leaf(["www.example.com"], not_before=NOW + datetime.timedelta(days=2))
    assert "not valid yet" in refused("chain", "www.example.com", made.pem, made.key_pem)


def test_it_refuses_a_certificate_for_another_host() -> None:
    made = certgen.leaf(["shop.example.org", "example.org"])
    message = refused("chain", "www.example.com", made.pem, made.key_pem)
    assert message == ("The certificate is not valid for 'www.example.com': it covers "
                       "shop.example.org, example.org.")


def test_it_refuses_a_certificate_without_dns_names() -> None:
    made = certgen.leaf([], common_name="www.example.com")
    assert "no DNS names" in refused("chain", "www.example.com", made.pem, made.key_pem)


def test_it_refuses_an_encrypted_key_and_says_to_decrypt_it() -> None:
    made = certgen.leaf(["www.example.com"])
    message = refused("key", "www.example.com", made.pem, made.encrypted_key_pem())
    assert "encrypted" in message and "decrypt it first" in message


@pytest.mark.parametrize(("chain", "key", "field", "words"), [
    ("hello", None, "chain", "not PEM"),
    ("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", None, "chain", "not PEM"),
    ("", None, "chain", "Give the certificate chain as PEM text"),
    (None, "garbage", "key", "not a PEM private key"),
    (None, "", "key", "Give the private key"),
    (None, 42, "key", "Give the private key"),
])
def test_it_refuses_garbage_with_a_message_about_the_field(
    chain: str | None, key: object, field: str, words: str,
) -> None:
    made = certgen.leaf(["www.example.com"])
    message = refused(field, "www.example.com", made.pem if chain is None else chain,
                      made.key_pem if key is None else key)
    assert words in message


def test_it_refuses_a_key_pasted_into_the_chain() -> None:
    made = certgen.leaf(["www.example.com"])
    assert "holds a private key" in refused("chain", "www.example.com", made.pem + made.key_pem,
                                            made.key_pem)


def test_it_refuses_files_over_64_kib() -> None:
    made = certgen.leaf(["www.example.com"])
    with pytest.raises(TooLarge) as caught:
        certs.parse("www.example.com", made.pem + "#" * 65536, made.key_pem)
    assert caught.value.fields == {"chain": [caught.value.message]}
    assert "64 KiB" in caught.value.message


# --- the router's files ----------------------------------------------------------------------


def test_it_names_files_the_way_the_router_looks_for_them() -> None:
    assert certs.file_name("www.example.com") == cert_file_names("www.example.com")[0]
    assert certs.file_name("*.example.com") == cert_file_names("shop.example.com")[1]
    for bad in ("../etc/passwd", "default", "a/b.example.com", "a..b", ""):
        with pytest.raises(ValueError):
            certs.file_name(bad)


def test_it_writes_a_file_the_router_can_load_readable_by_its_owner_only(tmp_path: Path) -> None:
    made = certgen.leaf(["www.example.com"])
    directory = tmp_path / "router" / "certs"
    path = certs.write_file(directory, "www.example.com", certs.router_pem(made.pem, made.key_pem))
    assert path == directory / "www.example.com.pem"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(str(path))  # raises if unusable
    assert os.listdir(directory) == ["www.example.com.pem"]  # no temporary file left


def test_it_replaces_a_file_by_renaming_so_readers_see_old_or_new(tmp_path: Path) -> None:
    old = certs.write_file(tmp_path, "www.example.com", "old\n")
    inode = old.stat().st_ino
    new = certs.write_file(tmp_path, "www.example.com", "new\n")
    assert new.read_text() == "new\n" and new.stat().st_ino != inode
    assert certs.remove_file(tmp_path, "www.example.com") is True
    assert certs.remove_file(tmp_path, "www.example.com") is False
    assert os.listdir(tmp_path) == []
