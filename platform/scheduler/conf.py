"""The scheduler's settings, read from the environment through the control plane's helpers."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from controlplane.env import ConfigError, env_int


def env_seconds(name: str, default: float) -> float:
    """Read a duration in seconds (a whole or decimal number, 0 or more)."""
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number of seconds, like 2 or 0.5, not {raw!r}") from None
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"{name} must be 0 or more seconds, not {raw!r}")
    return value


@dataclass(frozen=True)
class SchedulerSettings:
    web_port: int  # $PORT inside every web container (each has an address of its own)
    boot_timeout_s: int  # how long a new web container has to accept connections on $PORT
    stop_timeout_s: int  # SIGTERM, then SIGKILL after this many seconds (the drain grace)
    stop_drain_s: float  # a stop waits this long after the route change that took it out
    down_after_s: int  # a host whose last heartbeat is older than this is `down`
    tick_s: int  # the beat's ingest and reconcile interval
    cpu_overcommit: int  # CPU shares placeable per core (a share is a weight, not a whole core)
    max_surge: int | None  # containers beyond the quantity during a roll-out (None: quantity)
    max_unavailable: int  # how far below the quantity ready containers may drop in a roll-out
    crash_reset_after_s: int  # ready this long after crashes: no longer `crashing`, back-off reset

    @classmethod
    def from_env(cls) -> SchedulerSettings:
        return cls(
            web_port=env_int("PAAS_WEB_PORT", 5000),
            boot_timeout_s=env_int("PAAS_BOOT_TIMEOUT_S", 60),
            stop_timeout_s=env_int("PAAS_STOP_TIMEOUT_S", 10),
            stop_drain_s=env_seconds("PAAS_STOP_DRAIN_S", 2.0),
            down_after_s=env_int("PAAS_HOST_DOWN_AFTER_S", 10),
            tick_s=env_int("PAAS_SCHEDULER_TICK_S", 2),
            cpu_overcommit=max(1, env_int("PAAS_CPU_OVERCOMMIT", 8)),
            max_surge=max(0, env_int("PAAS_DEPLOY_MAX_SURGE", -1)) if os.environ.get("PAAS_DEPLOY_MAX_SURGE") else None,
            max_unavailable=max(0, env_int("PAAS_DEPLOY_MAX_UNAVAILABLE", 0)),
            crash_reset_after_s=max(1, env_int("PAAS_CRASH_RESET_AFTER_S", 60)),
        )
