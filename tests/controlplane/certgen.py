"""Certificates for the certificate tests, made with `cryptography`: a CA, leaves it signs."""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

NOW = datetime.datetime.now(datetime.UTC)
PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


@dataclass
class Made:
    cert: x509.Certificate
    key: PrivateKey

    @property
    def pem(self) -> str:
        return self.cert.public_bytes(serialization.Encoding.PEM).decode()

    @property
    def key_pem(self) -> str:
        return self.key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()).decode()

    def encrypted_key_pem(self, password: bytes = b"secret") -> str:
        return self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(password)).decode()

    @property
    def fingerprint(self) -> str:
        return self.cert.fingerprint(hashes.SHA256()).hex()


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def ca(common_name: str = "Test CA") -> Made:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder().subject_name(_name(common_name)).issuer_name(_name(common_name))
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(NOW - datetime.timedelta(days=1))
        .not_valid_after(NOW + datetime.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return Made(cert, key)


def leaf(
    names: list[str], *, issuer: Made | None = None, rsa_key: bool = False,
    not_before: datetime.datetime | None = None, not_after: datetime.datetime | None = None,
    common_name: str | None = None,
) -> Made:
    """A server certificate for `names` (self-signed unless `issuer` is given)."""
    key: PrivateKey = (rsa.generate_private_key(public_exponent=65537, key_size=2048)
                       if rsa_key else ec.generate_private_key(ec.SECP256R1()))
    subject = _name(common_name or (names[0] if names else "no names"))
    builder = (
        x509.CertificateBuilder().subject_name(subject)
        .issuer_name(issuer.cert.subject if issuer else subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(not_before or NOW - datetime.timedelta(minutes=5))
        .not_valid_after(not_after or NOW + datetime.timedelta(days=90))
    )
    if names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
    cert = builder.sign(issuer.key if issuer else key, hashes.SHA256())
    return Made(cert, key)
