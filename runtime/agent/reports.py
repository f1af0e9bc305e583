"""What the agent reports to the control plane, through Redis streams.

    paas:agent:events        one entry per container state change, from every host
                             (MAXLEN ~100000); fields: host, id, state, address, exit_code,
                             time, app, release, process_type, message
    paas:agent:heartbeats    one entry per heartbeat, from every host (MAXLEN ~10000);
                             fields: host, time, data (JSON, see `Heartbeat`)
    paas:agent:host:<name>   the host's latest heartbeat (JSON), expiring after three missed
                             intervals: the control plane reads liveness from it
    paas:metrics:runtime:<app>:<minute>
                             per app and Unix minute, a hash the dashboard charts: `cpu_millis`
                             (CPU time the app's containers used in the minute, added up by
                             every host with HINCRBY) and `mem:<container id>` (the container's
                             last memory reading in the minute, in bytes; the reader sums them);
                             expires after `RUNTIME_METRICS_TTL_S`

Streams rather than report tasks: the control plane reads them with a consumer group and
acknowledges what it stored, so nothing is lost while it is down, and several readers (the
scheduler, the dashboard, `paas ps`) can follow the same events.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import redis

EVENTS_STREAM = "paas:agent:events"
HEARTBEATS_STREAM = "paas:agent:heartbeats"
HOST_KEY = "paas:agent:host:{host}"
EVENTS_MAXLEN = 100_000
HEARTBEATS_MAXLEN = 10_000
RUNTIME_METRICS_KEY = "paas:metrics:runtime:{app}:{minute}"
RUNTIME_METRICS_TTL_S = 65 * 60  # the dashboard shows the last hour
STATES = ("starting", "running", "ready", "exited", "failed", "oom")


@dataclass(frozen=True)
class ContainerEvent:
    """A container's state change, as the design's container event contract names it."""

    host: str
    id: str
    state: str
    address: str = ""
    exit_code: int | None = None
    time: float = field(default_factory=time.time)
    app: str = ""
    release: int | None = None
    process_type: str = ""
    message: str = ""

    def __post_init__(self) -> None:
        if self.state not in STATES:
            raise ValueError(f"unknown container state {self.state!r}")

    def fields(self) -> dict[str, str]:
        """Flatten for XADD: every value a string, None as the empty string."""
        return {k: "" if v is None else str(v) for k, v in asdict(self).items()}

    @classmethod
    def from_fields(cls, data: dict[str, str]) -> ContainerEvent:
        return cls(
            host=data["host"],
            id=data["id"],
            state=data["state"],
            address=data.get("address", ""),
            exit_code=int(data["exit_code"]) if data.get("exit_code") else None,
            time=float(data["time"]),
            app=data.get("app", ""),
            release=int(data["release"]) if data.get("release") else None,
            process_type=data.get("process_type", ""),
            message=data.get("message", ""),
        )


@dataclass(frozen=True)
class Heartbeat:
    """The host's capacity and usage, and the containers the daemon runs."""

    host: str
    time: float
    cpus: int
    memory_mb: int
    memory_available_mb: int
    load1: float
    memory_reserved_mb: int
    daemon: str  # "up" or "unavailable"
    containers: list[dict[str, Any]]

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


@dataclass(frozen=True)
class ContainerUsage:
    """One running container's stats sample, as the agent takes it each heartbeat."""

    id: str
    app: str
    memory_bytes: int
    cpu_millis: int  # CPU time used since the previous sample
    cpu_percent: float | None  # of one core, since the previous sample; None on the first


def host_capacity(proc: Path = Path("/proc")) -> dict[str, Any]:
    """Read cpus, memory and load from `proc` (injectable for tests)."""
    meminfo: dict[str, int] = {}
    for line in (proc / "meminfo").read_text().splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            meminfo[key] = int(parts[0])
    load1 = float((proc / "loadavg").read_text().split()[0])
    return {
        "cpus": os.cpu_count() or 1,
        "memory_mb": meminfo.get("MemTotal", 0) // 1024,
        "memory_available_mb": meminfo.get("MemAvailable", 0) // 1024,
        "load1": load1,
    }


class Reporter:
    """Write events and heartbeats to Redis."""

    def __init__(self, client: redis.Redis[bytes], host: str) -> None:
        self.redis = client
        self.host = host

    def event(self, container_id: str, state: str, **extra: Any) -> ContainerEvent:
        ev = ContainerEvent(host=self.host, id=container_id, state=state, **extra)
        self.redis.xadd(EVENTS_STREAM, ev.fields(), maxlen=EVENTS_MAXLEN, approximate=True)
        return ev

    def heartbeat(self, beat: Heartbeat, interval_s: float) -> None:
        data = beat.to_json()
        pipe = self.redis.pipeline()
        pipe.xadd(
            HEARTBEATS_STREAM,
            {"host": beat.host, "time": str(beat.time), "data": data},
            maxlen=HEARTBEATS_MAXLEN,
            approximate=True,
        )
        pipe.set(HOST_KEY.format(host=beat.host), data, px=max(1000, int(interval_s * 3000)))
        pipe.execute()

    def runtime_metrics(self, usage: list[ContainerUsage], now: float) -> None:
        """Add the containers' samples to their apps' hash of the current minute."""
        minute = int(now // 60)
        pipe = self.redis.pipeline(transaction=False)
        for app in sorted({u.app for u in usage}):
            key = RUNTIME_METRICS_KEY.format(app=app, minute=minute)
            for u in (u for u in usage if u.app == app):
                pipe.hset(key, f"mem:{u.id}", u.memory_bytes)
                if u.cpu_millis:
                    pipe.hincrby(key, "cpu_millis", u.cpu_millis)
            pipe.hsetnx(key, "cpu_millis", 0)  # a minute that was sampled shows 0, not "no data"
            pipe.expire(key, RUNTIME_METRICS_TTL_S)
        pipe.execute()
