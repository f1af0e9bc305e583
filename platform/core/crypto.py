"""Encryption at rest for config values.

Config values (and each release's config snapshot) are stored encrypted with Fernet
(AES-128-CBC + HMAC-SHA256). The key is derived from Django's SECRET_KEY with HKDF-SHA256, so
every control-plane process that shares the secret key can read config, and nothing else has to
be distributed. Changing SECRET_KEY makes stored config unreadable: rotate it only together with
re-encrypting config (not offered yet).
"""

from __future__ import annotations

import base64
import functools
import json

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.conf import settings

_SALT = b"paas config encryption v1"
_INFO = b"config-vars"


class DecryptionError(RuntimeError):
    """Stored ciphertext does not decrypt with the current key (SECRET_KEY changed?)."""


@functools.lru_cache(maxsize=4)
def _fernet(secret_key: str) -> Fernet:
    raw = HKDF(algorithm=hashes.SHA256(), length=32, salt=_SALT, info=_INFO).derive(
        secret_key.encode()
    )
    return Fernet(base64.urlsafe_b64encode(raw))


def encrypt(plaintext: str) -> str:
    """Return the Fernet token (ASCII) for `plaintext`."""
    return _fernet(settings.SECRET_KEY).encrypt(plaintext.encode()).decode("ascii")


def decrypt(token: str) -> str:
    """Return the plaintext of a token made by `encrypt`."""
    try:
        return _fernet(settings.SECRET_KEY).decrypt(token.encode("ascii")).decode()
    except InvalidToken:
        raise DecryptionError(
            "stored config does not decrypt with the current SECRET_KEY"
        ) from None


def encrypt_json(value: object) -> str:
    return encrypt(json.dumps(value, sort_keys=True, separators=(",", ":")))


def decrypt_json(token: str) -> object:
    return json.loads(decrypt(token))
