"""The agent's settings, read once from the environment through small typed helpers."""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

_HOST_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{0,62}$")


class ConfigError(Exception):
    """A setting is missing or malformed; the message names the variable."""


def queue_name(host: str) -> str:
    """Return the Celery queue of the agent on `host`."""
    return f"host.{host}"


def _env_float(env: Mapping[str, str], name: str, default: float, lo: float, hi: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, not {raw!r}") from None
    if not lo <= value <= hi:
        raise ConfigError(f"{name} must be between {lo} and {hi}, not {raw}")
    return value


def _env_int(env: Mapping[str, str], name: str, default: int, lo: int, hi: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, not {raw!r}") from None
    if not lo <= value <= hi:
        raise ConfigError(f"{name} must be between {lo} and {hi}, not {raw}")
    return value


@dataclass(frozen=True)
class AgentSettings:
    """Where the agent finds Redis, which host it is, and how often it reports."""

    redis_url: str
    host: str
    runtime_root: Path
    daemon_socket: Path
    heartbeat_s: float = 10.0
    concurrency: int = 4

    @property
    def queue(self) -> str:
        return queue_name(self.host)

    @property
    def image_root(self) -> Path:
        return self.runtime_root / "images"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, host: str | None = None) -> AgentSettings:
        env = os.environ if env is None else env
        redis_url = env.get("REDIS_URL", "")
        if not redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError("REDIS_URL must be set to the controller's Redis (redis://host:port/db)")
        name = host or env.get("PAAS_HOST_NAME") or socket.gethostname().split(".")[0].lower()
        if not _HOST_RE.match(name):
            raise ConfigError(
                f"host name {name!r} is not valid: lower-case letters, digits, '.' and '-', up to 63"
            )
        root = Path(env["PAAS_RUNTIME_DIR"]) if env.get("PAAS_RUNTIME_DIR") else None
        if root is None:
            root = Path(env.get("PAAS_DATA_DIR") or "/var/lib/paas") / "runtime"
        return cls(
            redis_url=redis_url,
            host=name,
            runtime_root=root,
            daemon_socket=root / "daemon.sock",
            heartbeat_s=_env_float(env, "PAAS_AGENT_HEARTBEAT_S", 3.0, 0.1, 3600.0),
            concurrency=_env_int(env, "PAAS_AGENT_CONCURRENCY", 4, 1, 64),
        )


__all__ = ["AgentSettings", "ConfigError", "queue_name"]
