"""Where the CLI keeps the server URL and token between runs.

`$XDG_CONFIG_HOME/paas/credentials.json` (default `~/.config/paas/credentials.json`), readable by
its owner only: the token is as good as the password.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path


class CredentialsError(Exception):
    """The credentials file exists but cannot be used."""


@dataclass(frozen=True)
class Credentials:
    server: str
    token: str
    username: str = ""
    # True when `paas login` made the token from a password: `paas logout` then revokes it.
    # A token given with --token may be in use elsewhere and is only forgotten.
    revoke_on_logout: bool = False


def config_dir(environ: dict[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    base = env.get("XDG_CONFIG_HOME", "")
    # The XDG spec says a relative value is invalid and must be ignored.
    if not base or not os.path.isabs(base):
        base = os.path.join(env.get("HOME") or os.path.expanduser("~"), ".config")
    return Path(base) / "paas"


def credentials_path(environ: dict[str, str] | None = None) -> Path:
    return config_dir(environ) / "credentials.json"


def load(path: Path | None = None) -> Credentials | None:
    """Return the stored credentials, or None when the user has not logged in."""
    path = path or credentials_path()
    try:
        raw = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CredentialsError(f"cannot read {path}: {exc.strerror}") from None
    try:
        data = json.loads(raw)
        return Credentials(
            server=str(data["server"]), token=str(data["token"]),
            username=str(data.get("username", "")),
            revoke_on_logout=data.get("revoke_on_logout") is True,
        )
    except (ValueError, KeyError, TypeError):
        raise CredentialsError(
            f"{path} is damaged; run `paas logout` and log in again."
        ) from None


def save(creds: Credentials, path: Path | None = None) -> Path:
    """Write the credentials atomically, mode 0600 from the first byte on."""
    path = path or credentials_path()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    body = json.dumps(
        {"server": creds.server, "token": creds.token, "username": creds.username,
         "revoke_on_logout": creds.revoke_on_logout},
        indent=2,
    )
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        # O_CREAT's mode is filtered by the umask, and an old file keeps its mode: set it.
        os.fchmod(fd, 0o600)
        os.write(fd, (body + "\n").encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return path


def delete(path: Path | None = None) -> bool:
    """Remove the stored credentials; return whether there were any."""
    path = path or credentials_path()
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True
