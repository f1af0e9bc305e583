"""Turn what the user typed into what the API expects (pure functions, no I/O)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

# The same rules as the API (docs/api.md), checked here too so that a typo gets a precise
# message before anything is sent.
CONFIG_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
PROCESS_TYPE = re.compile(r"[a-z][a-z0-9_-]*\Z")
MEMORY_SIZE = re.compile(r"[1-9][0-9]*[MG]B?\Z")
NAMED_SIZES = ("basic",)
MAX_QUANTITY = 100


class UsageError(ValueError):
    """The user typed something the CLI cannot turn into a request."""


def parse_assignments(pairs: tuple[str, ...] | list[str]) -> dict[str, str]:
    """Parse `KEY=VALUE` arguments into a dict; the value may be empty or contain `=`."""
    if not pairs:
        raise UsageError("Give at least one KEY=VALUE, for example: paas config:set DEBUG=1")
    result: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise UsageError(f"{pair!r} is not KEY=VALUE (the '=' is missing).")
        if not CONFIG_KEY.match(key):
            raise UsageError(
                f"{key!r} is not a valid config key: use letters, digits and _, "
                "not starting with a digit."
            )
        result[key] = value
    return result


def parse_keys(keys: tuple[str, ...] | list[str]) -> list[str]:
    """Check config keys given to config:unset."""
    if not keys:
        raise UsageError("Give at least one KEY, for example: paas config:unset DEBUG")
    for key in keys:
        if not CONFIG_KEY.match(key):
            raise UsageError(
                f"{key!r} is not a valid config key: use letters, digits and _, "
                "not starting with a digit."
            )
    return list(keys)


@dataclass(frozen=True)
class ScaleUpdate:
    """One `TYPE=QUANTITY[:SIZE]` argument of `paas scale`."""

    type: str
    quantity: int | None = None
    size: str | None = None

    def as_api(self) -> dict[str, object]:
        body: dict[str, object] = {"type": self.type}
        if self.quantity is not None:
            body["quantity"] = self.quantity
        if self.size is not None:
            body["size"] = self.size
        return body


def parse_size(text: str) -> str:
    """Check a size: `basic`, or a memory amount like `512M` or `1G`."""
    normalized = text.strip()
    if normalized.lower() in NAMED_SIZES:
        return normalized.lower()
    upper = normalized.upper()
    if MEMORY_SIZE.match(upper):
        return upper
    raise UsageError(
        f"{text!r} is not a size: use 'basic' or an amount of memory like 256M or 1G."
    )


def parse_scale(args: tuple[str, ...] | list[str]) -> list[ScaleUpdate]:
    """Parse `web=2`, `web=2:512M` or `web=512M` arguments, one update per process type."""
    if not args:
        raise UsageError("Give at least one TYPE=QUANTITY, for example: paas scale web=2")
    updates: dict[str, ScaleUpdate] = {}
    for arg in args:
        ptype, sep, spec = arg.partition("=")
        if not sep or not spec:
            raise UsageError(
                f"{arg!r} is not TYPE=QUANTITY[:SIZE] (for example web=2 or web=2:512M)."
            )
        if not PROCESS_TYPE.match(ptype):
            raise UsageError(
                f"{ptype!r} is not a process type: use lowercase letters, digits, _ and -, "
                "starting with a letter."
            )
        if ptype in updates:
            raise UsageError(f"Process type {ptype!r} is given twice.")
        quantity_text, colon, size_text = spec.partition(":")
        quantity: int | None = None
        size: str | None = None
        if colon:
            if not size_text:
                raise UsageError(f"{arg!r} has a ':' but no size after it.")
            size = parse_size(size_text)
            if quantity_text:
                quantity = _parse_quantity(quantity_text, arg)
        elif quantity_text.lstrip("+-").isdigit():
            quantity = _parse_quantity(quantity_text, arg)
        else:
            # `web=512M` changes only the size, like Heroku's `web=standard-2x`.
            size = parse_size(quantity_text)
        updates[ptype] = ScaleUpdate(type=ptype, quantity=quantity, size=size)
    return list(updates.values())


def _parse_quantity(text: str, arg: str) -> int:
    if not text.lstrip("+-").isdigit():
        raise UsageError(f"{arg!r}: the quantity {text!r} is not a whole number.")
    quantity = int(text)
    if not 0 <= quantity <= MAX_QUANTITY:
        raise UsageError(f"{arg!r}: the quantity must be between 0 and {MAX_QUANTITY}.")
    return quantity


def parse_version(text: str) -> int:
    """Turn `v3` or `3` into 3."""
    digits = text[1:] if text[:1] in ("v", "V") else text
    if not digits.isdigit() or int(digits) < 1:
        raise UsageError(f"{text!r} is not a release version: use v1, v2, ... (or 1, 2, ...).")
    return int(digits)


_GIT_PATH = re.compile(r"(?:^|/)git/([^/]+?)\.git/?\Z")


def app_from_git_url(url: str) -> str | None:
    """Return the app a `paas` remote URL points at (`.../git/<app>.git`), or None."""
    path = urlsplit(url).path if "://" in url else url
    match = _GIT_PATH.search(path)
    return match.group(1) if match else None


def normalize_server(url: str) -> str:
    """Check a server URL and drop a trailing slash; a bare host gets `http://`."""
    text = url.strip()
    if not text:
        raise UsageError("The server URL is empty.")
    if "://" not in text:
        text = "http://" + text
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UsageError(f"{url!r} is not a server URL like http://127.0.0.1:8000.")
    if parts.query or parts.fragment:
        raise UsageError(f"{url!r}: a server URL has no query or fragment.")
    return text.rstrip("/")


def parse_labels(args: tuple[str, ...] | list[str], *, removals: bool = False
                 ) -> dict[str, str | None]:
    """Parse `name=value` pairs (and, with `removals`, `name-` to remove one)."""
    found: dict[str, str | None] = {}
    for arg in args:
        if removals and arg.endswith("-") and "=" not in arg and len(arg) > 1:
            key, value = arg[:-1], None
        else:
            key, sep, text = arg.partition("=")
            if not sep or not key or not text:
                hint = " or NAME- to remove one" if removals else ""
                raise UsageError(f"{arg!r} is not NAME=VALUE (for example region=eu){hint}.")
            value = text
        if key in found:
            raise UsageError(f"Label {key!r} is given twice.")
        found[key] = value
    return found
