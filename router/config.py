"""The router's settings, read once from the environment (12-factor).

Every variable goes through a typed reader so that a wrong value stops the router at start-up
with the variable's name in the message, never inside a request.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path


class ConfigError(ValueError):
    """An environment variable holds a value the router cannot use."""


def _get(env: Mapping[str, str], name: str) -> str | None:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return None
    return raw.strip()


def env_str(env: Mapping[str, str], name: str, default: str) -> str:
    raw = _get(env, name)
    return default if raw is None else raw


def env_int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = _get(env, name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, not {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, not {value}")
    return value


def env_bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = _get(env, name)
    if raw is None:
        return default
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be 1 or 0 (true or false), not {raw!r}")


def env_seconds(env: Mapping[str, str], name: str, default: float) -> float:
    raw = _get(env, name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number of seconds, not {raw!r}") from None
    if not value > 0:
        raise ConfigError(f"{name} must be more than 0 seconds, not {raw!r}")
    return value


def parse_bind(name: str, raw: str) -> tuple[str, int]:
    """Split `host:port` (or `[v6]:port`) into its parts."""
    host, sep, port_text = raw.rpartition(":")
    if not sep or not host:
        raise ConfigError(f"{name} must look like host:port, not {raw!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(f"{name} must end with a port number, not {raw!r}") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"{name} has a port out of range: {raw!r}")
    return host, port


@dataclass(frozen=True)
class RouterConfig:
    """Everything a router process needs to know; see the README's configuration table."""

    bind: tuple[str, int] = ("0.0.0.0", 8080)
    tls_bind: tuple[str, int] | None = None
    workers: int = 2
    redis_url: str = "redis://127.0.0.1:6379/0"
    domain: str = "localhost"
    data_dir: Path = field(default_factory=lambda: Path("/var/lib/paas"))
    connect_timeout: float = 5.0
    first_byte_timeout: float = 30.0
    idle_timeout: float = 55.0
    header_timeout: float = 10.0
    drain_timeout: float = 30.0
    set_aside: float = 5.0
    max_header_bytes: int = 32 * 1024
    max_headers: int = 100
    max_url_bytes: int = 8 * 1024
    flush_interval: float = 1.0
    log_stream_maxlen: int = 10_000
    via: str = "1.1 paas-router"
    fast_path: bool = True

    @property
    def certs_dir(self) -> Path:
        """Where the control plane writes one PEM (chain and key) per host name."""
        return self.data_dir / "router" / "certs"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> RouterConfig:
        env = os.environ if env is None else env
        tls_raw = _get(env, "PAAS_ROUTER_TLS_BIND")
        domain = env_str(env, "PAAS_DOMAIN", "localhost").lower().strip(".")
        if not domain:
            raise ConfigError("PAAS_DOMAIN must be a domain name, like apps.example.com")
        return cls(
            bind=parse_bind("PAAS_ROUTER_BIND", env_str(env, "PAAS_ROUTER_BIND", "0.0.0.0:8080")),
            tls_bind=parse_bind("PAAS_ROUTER_TLS_BIND", tls_raw) if tls_raw else None,
            workers=env_int(env, "PAAS_ROUTER_WORKERS", os.cpu_count() or 1, minimum=1),
            redis_url=env_str(env, "REDIS_URL", "redis://127.0.0.1:6379/0"),
            domain=domain,
            data_dir=Path(env_str(env, "PAAS_DATA_DIR", "/var/lib/paas")).resolve(),
            connect_timeout=env_seconds(env, "PAAS_ROUTER_CONNECT_TIMEOUT", 5.0),
            first_byte_timeout=env_seconds(env, "PAAS_ROUTER_FIRST_BYTE_TIMEOUT", 30.0),
            idle_timeout=env_seconds(env, "PAAS_ROUTER_IDLE_TIMEOUT", 55.0),
            header_timeout=env_seconds(env, "PAAS_ROUTER_HEADER_TIMEOUT", 10.0),
            drain_timeout=env_seconds(env, "PAAS_ROUTER_DRAIN_TIMEOUT", 30.0),
            set_aside=env_seconds(env, "PAAS_ROUTER_SET_ASIDE", 5.0),
            max_header_bytes=env_int(env, "PAAS_ROUTER_MAX_HEADER_BYTES", 32 * 1024, minimum=1024),
            max_headers=env_int(env, "PAAS_ROUTER_MAX_HEADERS", 100, minimum=4),
            flush_interval=env_seconds(env, "PAAS_ROUTER_FLUSH_INTERVAL", 1.0),
            log_stream_maxlen=env_int(env, "PAAS_ROUTER_LOG_MAXLEN", 10_000, minimum=100),
            fast_path=env_bool(env, "PAAS_ROUTER_FAST_PATH", True),
        )
