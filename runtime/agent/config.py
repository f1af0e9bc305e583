"""The agent's settings, read once from the environment through small typed helpers."""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from runtime.client import runtime_root

N = TypeVar("N", int, float)

_HOST_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{0,62}$")


class ConfigError(Exception):
    """A setting is missing or malformed; the message names the variable."""


def queue_name(host: str) -> str:
    """Return the Celery queue of the agent on `host`."""
    return f"host.{host}"


def _env_number(env: Mapping[str, str], name: str, default: N, lo: N, hi: N) -> N:
    """Read a number of the default's type (int or float) within [lo, hi]."""
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    kind = type(default)
    try:
        value = kind(raw)
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise ConfigError(f"{name} must be {what}, not {raw!r}") from None
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
    # Where images this host lacks come from (the controller's web process), and the host
    # token it authenticates with; empty: images must already be in the host's store.
    controller_url: str = ""
    host_token: str = ""
    # This host's address that other hosts reach it on, its bridge and its container subnet:
    # with an address set, the agent announces its subnet and routes to every other host's.
    host_address: str = ""
    bridge: str = "paas0"
    subnet: str = "10.88.0.0/24"

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
        root = runtime_root(env)
        controller_url = env.get("PAAS_CONTROLLER_URL", "").rstrip("/")
        if controller_url and not controller_url.startswith(("http://", "https://")):
            raise ConfigError(
                f"PAAS_CONTROLLER_URL must be the controller's http(s):// URL, not {controller_url!r}"
            )
        address = env.get("PAAS_HOST_ADDRESS", "")
        if address:
            try:
                if ipaddress.IPv4Address(address).is_loopback:
                    address = ""  # one host alone (`make up`): no other host could use it
            except ValueError:
                raise ConfigError(f"PAAS_HOST_ADDRESS must be an IPv4 address, not {address!r}") from None
        subnet = env.get("PAAS_HOST_SUBNET") or "10.88.0.0/24"
        try:
            ipaddress.IPv4Network(subnet)
        except ValueError:
            raise ConfigError(f"PAAS_HOST_SUBNET must be an IPv4 subnet (a.b.c.0/24), not {subnet!r}") from None
        return cls(
            redis_url=redis_url,
            host=name,
            runtime_root=root,
            daemon_socket=root / "daemon.sock",
            heartbeat_s=_env_number(env, "PAAS_AGENT_HEARTBEAT_S", 3.0, 0.1, 3600.0),
            concurrency=_env_number(env, "PAAS_AGENT_CONCURRENCY", 4, 1, 64),
            controller_url=controller_url,
            host_token=env.get("PAAS_HOST_TOKEN", ""),
            host_address=address,
            bridge=env.get("PAAS_BRIDGE") or "paas0",
            subnet=subnet,
        )


__all__ = ["AgentSettings", "ConfigError", "queue_name"]
