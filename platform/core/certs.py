"""TLS certificates of custom domains: checking what a user uploads, and the router's files.

`parse` is pure: it takes the PEM texts a user gave and either returns what the platform keeps
(the chain and the key re-encoded, the names, the validity, the fingerprint) or raises an
`Invalid`/`TooLarge` whose message says what to fix. The file functions write what the router
reads (router/tls.py): `<certs dir>/<host>.pem` with the chain and then the key,
`_wildcard.<parent>.pem` for `*.<parent>`. `default.pem` is the operator's and never written here.
"""

from __future__ import annotations

import contextlib
import datetime
import itertools
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from core.errors import TooLarge, invalid_field

MAX_PEM_BYTES = 64 * 1024
MAX_CHAIN_CERTS = 10
# A custom domain as core.validators.hostname allows it (two labels at least, so never
# `default`), or `*.` before one.
_HOST_FILE_RE = re.compile(r"^(\*\.)?[a-z0-9-]+(\.[a-z0-9-]+)+$")
_DECRYPT_HINT = "decrypt it first (`openssl pkey -in key.pem -out key-plain.pem`) and give that file"


@dataclass(frozen=True)
class ParsedCertificate:
    """What the platform keeps of an uploaded certificate and key."""

    chain: str  # PEM, leaf first, re-encoded (no comments or stray text)
    key: str  # PEM, PKCS#8, unencrypted
    names: list[str]  # the leaf's subjectAltName DNS names, lowercase
    fingerprint: str  # SHA-256 of the leaf's DER, lowercase hex
    not_before: datetime.datetime
    not_after: datetime.datetime
    subject: str
    issuer: str

    def router_pem(self) -> str:
        return router_pem(self.chain, self.key)


def router_pem(chain: str, key: str) -> str:
    """The router's file: the chain, then the key (what ssl.load_cert_chain reads)."""
    return chain.rstrip("\n") + "\n" + key.rstrip("\n") + "\n"


def covers(hostname: str, names: list[str]) -> bool:
    """Whether a certificate for `names` is valid for `hostname` (RFC 6125 section 6.4.3).

    A wildcard name covers exactly one label (`*.example.com` covers `www.example.com`, not
    `example.com` nor `a.b.example.com`); a wildcard hostname needs the same wildcard name.
    """
    hostname = hostname.lower().rstrip(".")
    for raw in names:
        name = raw.lower().rstrip(".")
        if name == hostname:
            return True
        if name.startswith("*.") and not hostname.startswith("*."):
            first, _, rest = hostname.partition(".")
            if first and rest == name[2:]:
                return True
    return False


def _text(field: str, value: object, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise invalid_field(field, f"Give the {what} as PEM text.")
    if len(value.encode()) > MAX_PEM_BYTES:
        message = f"The {what} is larger than {MAX_PEM_BYTES // 1024} KiB: is it the right file?"
        raise TooLarge(message, fields={field: [message]})
    return value


def _when(moment: datetime.datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def _load_chain(text: str) -> list[x509.Certificate]:
    if "PRIVATE KEY-----" in text:
        raise invalid_field("chain", "The certificate chain holds a private key: give the key "
                                     "separately, and only certificates in the chain.")
    try:
        chain = x509.load_pem_x509_certificates(text.encode())
    except ValueError:
        raise invalid_field(
            "chain", "The certificate chain is not PEM: expected one or more blocks starting "
                     "with '-----BEGIN CERTIFICATE-----'."
        ) from None
    if len(chain) > MAX_CHAIN_CERTS:
        raise invalid_field("chain", f"The chain has {len(chain)} certificates; at most "
                                     f"{MAX_CHAIN_CERTS} are accepted.")
    for position, (cert, issuer) in enumerate(itertools.pairwise(chain), start=1):
        try:
            cert.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
            raise invalid_field(
                "chain", f"Certificate {position} of the chain is not issued by certificate "
                         f"{position + 1}: put the server's own certificate first, then each "
                         "one's issuer."
            ) from None
    return chain


def _load_key(text: str) -> rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey:
    if "ENCRYPTED" in text:
        raise invalid_field("key", f"The private key is encrypted: {_DECRYPT_HINT}.")
    try:
        key = serialization.load_pem_private_key(text.encode(), password=None)
    except TypeError:  # "Password was not given but private key is encrypted"
        raise invalid_field("key", f"The private key is encrypted: {_DECRYPT_HINT}.") from None
    except (ValueError, UnsupportedAlgorithm):
        raise invalid_field(
            "key", "The private key is not a PEM private key: expected a block starting with "
                   "'-----BEGIN PRIVATE KEY-----' (or RSA/EC PRIVATE KEY)."
        ) from None
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
                      | ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
        raise invalid_field("key", "The private key must be an RSA, EC or EdDSA key.")
    return key


def _spki(public_key: object) -> bytes:
    return public_key.public_bytes(  # type: ignore[attr-defined, no-any-return]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def parse(
    hostname: str, chain: object, key: object, *, now: datetime.datetime | None = None
) -> ParsedCertificate:
    """Check a certificate chain and key for `hostname`; return what to keep, or raise."""
    chain_text = _text("chain", chain, "certificate chain")
    key_text = _text("key", key, "private key")
    certs = _load_chain(chain_text)
    private_key = _load_key(key_text)
    leaf = certs[0]
    if _spki(leaf.public_key()) != _spki(private_key.public_key()):
        raise invalid_field("key", "The private key does not belong to the certificate: their "
                                   "public keys differ. Give the key the certificate was made for.")
    now = now or datetime.datetime.now(datetime.UTC)
    not_before, not_after = leaf.not_valid_before_utc, leaf.not_valid_after_utc
    if now < not_before:
        raise invalid_field("chain", f"The certificate is not valid yet: it starts on "
                                     f"{_when(not_before)}.")
    if now > not_after:
        raise invalid_field("chain", f"The certificate expired on {_when(not_after)}.")
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [name.lower() for name in san.get_values_for_type(x509.DNSName)]
    except x509.ExtensionNotFound:
        names = []
    if not names:
        raise invalid_field("chain", "The certificate names no DNS names (subjectAltName); "
                                     "clients ignore the common name, so it would match nothing.")
    if not covers(hostname, names):
        raise invalid_field(
            "chain", f"The certificate is not valid for '{hostname}': it covers "
                     f"{', '.join(names)}."
        )
    return ParsedCertificate(
        chain="".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in certs),
        key=private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()).decode(),
        names=names,
        fingerprint=leaf.fingerprint(hashes.SHA256()).hex(),
        not_before=not_before,
        not_after=not_after,
        subject=leaf.subject.rfc4514_string()[:500],
        issuer=leaf.issuer.rfc4514_string()[:500],
    )


# --- the router's files ----------------------------------------------------------------------


def file_name(hostname: str) -> str:
    """The router's file for a host name (router.tls.cert_file_names looks for it)."""
    hostname = hostname.lower().rstrip(".")
    if not _HOST_FILE_RE.match(hostname):
        raise ValueError(f"not a host name for a certificate file: {hostname!r}")
    if hostname.startswith("*."):
        return f"_wildcard.{hostname[2:]}.pem"
    return f"{hostname}.pem"


def write_file(directory: Path, hostname: str, content: str) -> Path:
    """Replace the host's file atomically: a temporary file beside it, fsync, rename.

    The file is 0600 and the directory 0700 (the files hold private keys); the router never
    sees a half-written file, only the old one or the new one.
    """
    path = directory / file_name(hostname)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as out:  # mkstemp made it 0600
            out.write(content)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)
    return path


def remove_file(directory: Path, hostname: str) -> bool:
    """Remove the host's file; False when there was none."""
    try:
        (directory / file_name(hostname)).unlink()
    except FileNotFoundError:
        return False
    _fsync_dir(directory)
    return True


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
