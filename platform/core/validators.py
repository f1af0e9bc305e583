"""Rules for the names and values users type, shared by actions, the API and the dashboard."""

from __future__ import annotations

import ipaddress
import re

from core.errors import Invalid, TooLarge, invalid_field

APP_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{1,28}[a-z0-9]$")
# Names that would clash with the platform's own host names under PAAS_DOMAIN.
RESERVED_APP_NAMES = frozenset({"api", "www", "git", "admin"})
# Team names double as user names (every user has a personal team named after them).
TEAM_NAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9._-]{0,38}[a-z0-9])?$")
HOST_NAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
PROCESS_TYPE_RE = re.compile(r"^[a-z][a-z0-9_-]{0,29}$")
CONFIG_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_LABEL_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_SIZE_RE = re.compile(r"^([1-9][0-9]{0,5})([MG])B?$", re.IGNORECASE)

CONFIG_VALUE_MAX_BYTES = 32 * 1024
CONFIG_KEY_MAX_LENGTH = 200
CONFIG_MAX_KEYS = 500
QUANTITY_MAX = 100
MEMORY_MB_MIN = 64
MEMORY_MB_MAX = 65536
BASIC_SIZE = ("basic", 512, 1.0)  # name, memory MB, CPU shares


def app_name(value: object) -> str:
    msg = (
        "App name must be 3 to 30 lowercase letters, digits or dashes, start with a letter, "
        "and not end with a dash or contain '--'."
    )
    if not isinstance(value, str) or not APP_NAME_RE.match(value) or "--" in value:
        raise invalid_field("name", msg)
    if value in RESERVED_APP_NAMES:
        raise invalid_field("name", f"The app name '{value}' is reserved by the platform.")
    return value


def team_name(value: object, field: str = "name") -> str:
    if not isinstance(value, str) or not TEAM_NAME_RE.match(value) or ".." in value:
        raise invalid_field(
            field,
            "Name must be 1 to 40 lowercase letters, digits, '.', '_' or '-', "
            "starting and ending with a letter or digit.",
        )
    return value


def process_type(value: object) -> str:
    if not isinstance(value, str) or not PROCESS_TYPE_RE.match(value):
        raise invalid_field(
            "type",
            "Process type must be lowercase letters, digits, '_' or '-', starting with a letter "
            "(at most 30).",
        )
    return value


def quantity(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= QUANTITY_MAX:
        raise invalid_field("quantity", f"Quantity must be a whole number from 0 to {QUANTITY_MAX}.")
    return value


def size(value: object) -> tuple[str, int, float | None]:
    """Parse a size: `basic`, or a memory like `256M` / `1G`. Return (name, memory MB, cpu).

    An explicit memory leaves the CPU share as it was (None).
    """
    if value == BASIC_SIZE[0]:
        return BASIC_SIZE
    match = _SIZE_RE.match(value) if isinstance(value, str) else None
    if match:
        memory = int(match.group(1)) * (1024 if match.group(2).upper() == "G" else 1)
        if MEMORY_MB_MIN <= memory <= MEMORY_MB_MAX:
            unit = "G" if match.group(2).upper() == "G" else "M"
            return f"{match.group(1)}{unit}", memory, None
    raise invalid_field(
        "size",
        f"Size must be 'basic' or a memory from {MEMORY_MB_MIN}M to {MEMORY_MB_MAX // 1024}G, "
        "like '256M' or '1G'.",
    )


def config_key(value: object) -> str:
    if (
        not isinstance(value, str)
        or not CONFIG_KEY_RE.match(value)
        or len(value) > CONFIG_KEY_MAX_LENGTH
    ):
        shown = value if isinstance(value, str) else repr(value)
        raise Invalid(
            f"Config key '{shown[:60]}' is not valid: use letters, digits and '_', "
            "not starting with a digit.",
            fields={str(shown)[:60]: ["Invalid key."]},
        )
    return value


def config_value(key: str, value: object) -> str:
    if not isinstance(value, str):
        raise Invalid(
            f"Config value for '{key}' must be a string (or null to unset it).",
            fields={key: ["Must be a string."]},
        )
    if "\x00" in value:
        raise Invalid(f"Config value for '{key}' contains a NUL byte.", fields={key: ["NUL byte."]})
    if len(value.encode()) > CONFIG_VALUE_MAX_BYTES:
        raise TooLarge(
            f"Config value for '{key}' is larger than {CONFIG_VALUE_MAX_BYTES // 1024} KiB.",
            fields={key: ["Too large."]},
        )
    return value


def hostname(value: object) -> str:
    """A custom domain: a DNS name of two labels or more, or a wildcard `*.` before one.

    The router sends a wildcard (`*.example.com`) every name under it that no more specific
    domain claims (not `example.com` itself); a certificate for it covers one label, as TLS
    clients read wildcards. `*.com` is refused.
    """
    msg = ("Hostname must be a DNS name like 'www.example.com' (lowercase, at least two labels), "
           "or a wildcard like '*.example.com'.")
    if not isinstance(value, str):
        raise invalid_field("hostname", msg)
    value = value.strip().lower().rstrip(".")
    labels = value.split(".")
    named = labels[1:] if labels[0] == "*" else labels
    if len(value) > 253 or len(named) < 2 or not all(_LABEL_RE.match(lb) for lb in named):
        raise invalid_field("hostname", msg)
    if labels[-1].isdigit():
        raise invalid_field("hostname", msg)
    return value


def host_name(value: object) -> str:
    if not isinstance(value, str) or not HOST_NAME_RE.match(value):
        raise invalid_field(
            "name", "Host name must be 1 to 63 lowercase letters, digits or '-'."
        )
    return value


def ip_address(value: object, field: str = "address") -> str:
    try:
        return str(ipaddress.ip_address(value if isinstance(value, str) else ""))
    except ValueError:
        raise invalid_field(field, "Address must be an IPv4 or IPv6 address.") from None


def positive_int(value: object, field: str, maximum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= maximum:
        raise invalid_field(field, f"{field} must be a whole number from 1 to {maximum}.")
    return value


def labels(value: object) -> dict[str, str]:
    if value is None:
        return {}
    if (
        not isinstance(value, dict)
        or len(value) > 50
        or not all(
            isinstance(k, str) and isinstance(v, str) and 0 < len(k) <= 63 and len(v) <= 253
            for k, v in value.items()
        )
    ):
        raise invalid_field("labels", "Labels must be an object of up to 50 short string pairs.")
    return dict(value)


LABEL_KEY_RE = re.compile(r"^[a-z0-9](?:[a-z0-9._/-]{0,61}[a-z0-9])?$")
LABEL_VALUE_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$")
READINESS_PATH_MAX = 200
BOOT_TIMEOUT_MAX_S = 3600


def label_key(value: object, field: str = "labels") -> str:
    if not isinstance(value, str) or not LABEL_KEY_RE.match(value):
        raise invalid_field(
            field,
            f"Label name {value!r} must be 1 to 63 lowercase letters, digits, '.', '_', '/' or "
            "'-', starting and ending with a letter or digit.",
        )
    return value


def label_value(key: str, value: object, field: str = "labels") -> str:
    if not isinstance(value, str) or not LABEL_VALUE_RE.match(value):
        raise invalid_field(
            field,
            f"The value of label '{key}' must be 1 to 63 letters, digits, '.', '_' or '-', "
            "starting and ending with a letter or digit.",
        )
    return value


def constraints(value: object) -> dict[str, str]:
    """Host labels a process type needs: an object of label name: value (empty: none)."""
    if value is None:
        return {}
    if not isinstance(value, dict) or len(value) > 20:
        raise invalid_field(
            "constraints", "Constraints must be an object of up to 20 label: value pairs."
        )
    return {
        label_key(k, "constraints"): label_value(k, v, "constraints") for k, v in value.items()
    }


def label_changes(value: object) -> dict[str, str | None]:
    """Host label changes: label name: value to set, or null to remove."""
    if not isinstance(value, dict) or not value or len(value) > 50:
        raise invalid_field(
            "labels", "Give an object of up to 50 label: value pairs (null removes a label)."
        )
    return {
        label_key(k): None if v is None else label_value(k, v) for k, v in value.items()
    }


def readiness_path(value: object) -> str:
    """An HTTP readiness path (`/healthz`), or empty/null for the TCP check."""
    if value is None or value == "":
        return ""
    if (
        not isinstance(value, str) or not value.startswith("/") or len(value) > READINESS_PATH_MAX
        or any(c.isspace() or not c.isprintable() for c in value)
    ):
        raise invalid_field(
            "readiness_path",
            f"Readiness path must be an absolute URL path like /healthz, without spaces, of at "
            f"most {READINESS_PATH_MAX} characters (empty: a TCP connect to $PORT).",
        )
    return value


def boot_timeout(value: object) -> int | None:
    """Seconds a new container has to get ready, or null for the platform's default."""
    if value is None:
        return None
    return positive_int(value, "boot_timeout_s", BOOT_TIMEOUT_MAX_S)
