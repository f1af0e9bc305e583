"""Typed readers for the platform's environment variables (12-factor configuration).

Every variable the platform reads goes through these helpers, so that a wrong value fails at
start-up with the variable's name in the message instead of deep inside a request.
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_DATA_DIR = "/var/lib/paas"


class ConfigError(ValueError):
    """An environment variable holds a value the platform cannot use."""


def env_str(name: str, default: str) -> str:
    return os.environ.get(name, default)


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, not {raw!r}") from None


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"{name} must be true or false, not {raw!r}")


def env_list(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if raw is None:
        return list(default)
    return [item.strip() for item in raw.split(",") if item.strip()]


def data_dir() -> Path:
    """Where everything the platform writes lives (PAAS_DATA_DIR, default /var/lib/paas).

    The runtime and the router read the same variable with the same default.
    """
    return Path(env_str("PAAS_DATA_DIR", DEFAULT_DATA_DIR)).resolve()
