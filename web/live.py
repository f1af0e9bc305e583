"""The dashboard's live data: log tails, request metrics and container usage.

Everything the dashboard shows that does not come from the database is read here, so a source
can change in one place. Each reader returns plain data classes and an honest "nothing yet"
(an empty list, None) when the source has no data; a Redis that cannot be reached counts as no data
and is reported with `LiveUnavailable` only where the page says so.

Sources:
- app logs: the capped stream `paas:logs:<app>` (fields `time`, `tag`, `line`), written by the
  router and the agents (router.metrics.logs_key); the pages show no line older than the app
  (`scheduler.applog.first_log_id`, as the logs API does);
- build logs: the stream `paas:build-logs:<build id>` (same fields; gitserver.buildlog writes it)
  while a build runs, then the Build row's `log` once it has finished;
- request metrics: the router's per-minute hashes `paas:metrics:router:<app>:<minute>`
  (router.metrics.metrics_key);
- container memory and CPU over time: per-minute hashes `paas:metrics:runtime:<app>:<minute>` with
  fields `memory_bytes` (sum over the app's containers) or, as the agents write them,
  `mem:<container id>` (one container's bytes; summed here), and `cpu_millis` (CPU time used in
  the minute, milliseconds; runtime.agent.reports); the current figures per container come from
  the Container row.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis
from django.conf import settings

from gitserver.buildlog import build_logs_key
from router.metrics import BUCKET_FIELDS, BUCKETS, logs_key, metrics_key

WINDOW_MINUTES = 60
LOG_TAIL_LINES = 200


def runtime_metrics_key(app: str) -> str:
    return f"paas:metrics:runtime:{app}"


@functools.lru_cache(maxsize=4)
def _client(url: str) -> redis.Redis[str]:
    # Short timeouts: a page must render (with "no data yet") even when Redis is away.
    return redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=2,
                                decode_responses=True)


def client() -> redis.Redis[str]:
    return _client(str(settings.REDIS_URL))


@dataclass(frozen=True, slots=True)
class LogLine:
    id: str
    time: datetime | None
    tag: str
    line: str


@dataclass(frozen=True, slots=True)
class LogTail:
    lines: list[LogLine]
    last_id: str  # pass back as `after` to get only newer lines
    available: bool  # False when Redis could not be reached


def _parse_entry(entry_id: str, fields: dict[str, str]) -> LogLine:
    when: datetime | None = None
    raw_time = fields.get("time")
    try:
        if raw_time is not None:
            when = datetime.fromtimestamp(float(raw_time), tz=UTC)
    except (ValueError, OverflowError, OSError):
        when = None
    if when is None:
        # A stream id starts with the milliseconds at which Redis stored the entry.
        try:
            when = datetime.fromtimestamp(int(entry_id.split("-")[0]) / 1000, tz=UTC)
        except (ValueError, OverflowError, OSError):
            when = None
    return LogLine(id=entry_id, time=when, tag=fields.get("tag", ""), line=fields.get("line", ""))


_STREAM_ID = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")


def _id_key(eid: str) -> tuple[int, int]:
    ms, _, seq = eid.partition("-")
    return int(ms), int(seq or 0)


def _tail(key: str, after: str | None, count: int, since: str = "0-0") -> LogTail:
    """The last `count` entries of `key` (or the first ones after the id `after`), none older
    than the id `since`."""
    if after is not None and not _STREAM_ID.fullmatch(after):
        after = None  # not a cursor this module handed out: start from the newest lines
    try:
        if after and _id_key(after) >= _id_key(since):
            # Exclusive start: only entries newer than the last one shown.
            entries = client().xrange(key, min=f"({after}", max="+", count=count)
        elif after:
            entries = client().xrange(key, min=since, max="+", count=count)
        else:
            entries = list(reversed(client().xrevrange(key, max="+", min=since, count=count)))
    except redis.RedisError:
        return LogTail(lines=[], last_id=after or "", available=False)
    lines = [_parse_entry(entry_id, fields) for entry_id, fields in entries]
    return LogTail(lines=lines, last_id=lines[-1].id if lines else (after or ""), available=True)


def app_log_tail(app: str, after: str | None = None, count: int = LOG_TAIL_LINES,
                 since: str = "0-0") -> LogTail:
    """The app's newest log lines (or those after the stream id `after`), oldest first, none
    before the stream id `since` (`scheduler.applog.first_log_id`: none older than the app)."""
    return _tail(logs_key(app), after, count, since)


def build_log_tail(build_id: int, after: str | None = None, count: int = 2000) -> LogTail:
    """A running build's output lines so far (or those after `after`)."""
    return _tail(build_logs_key(build_id), after, count)


# --- metrics ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Series:
    """One line of a chart: a value per minute (None where there is no sample)."""

    name: str
    values: list[float | None]


@dataclass(frozen=True, slots=True)
class Chart:
    title: str
    unit: str
    series: list[Series]
    first_minute: int  # Unix minute of values[0]

    @property
    def has_data(self) -> bool:
        return any(v is not None for s in self.series for v in s.values)

    def latest(self, index: int = 0) -> float | None:
        values = [v for v in self.series[index].values if v is not None]
        return values[-1] if values else None


@dataclass(frozen=True, slots=True)
class AppMetrics:
    available: bool
    requests: Chart
    statuses: Chart
    latency: Chart
    memory: Chart
    cpu: Chart

    @property
    def charts(self) -> list[Chart]:
        return [self.requests, self.statuses, self.latency, self.memory, self.cpu]


def _minutes(now: float, window: int) -> list[int]:
    last = int(now // 60)
    return list(range(last - window + 1, last + 1))


def _read_hashes(prefix: str, minutes: Sequence[int]) -> list[dict[str, str]]:
    pipe = client().pipeline(transaction=False)
    for minute in minutes:
        pipe.hgetall(f"{prefix}:{minute}")
    return [dict(result or {}) for result in pipe.execute()]


def _number(fields: dict[str, str], name: str) -> float:
    try:
        return float(fields.get(name, 0))
    except ValueError:
        return 0.0


def latency_quantile(fields: dict[str, str], q: float) -> float | None:
    """The `q` quantile of one minute's latency, from the router's (non-cumulative) buckets.

    The answer is the upper bound of the bucket the quantile falls in (an upper estimate); the
    last, open bucket reports the largest finite bound.
    """
    counts = [_number(fields, name) for name in BUCKET_FIELDS]
    total = sum(counts)
    if total <= 0:
        return None
    rank = q * total
    seen = 0.0
    for bound, count in zip((*BUCKETS, BUCKETS[-1]), counts, strict=True):
        seen += count
        if seen >= rank:
            return float(bound)
    return float(BUCKETS[-1])


def runtime_memory_bytes(fields: dict[str, str]) -> float | None:
    """A minute's memory over the app's containers: `memory_bytes` plus the agents' per-container
    `mem:<container id>` fields (each host writes its own containers), or None without either."""
    parts = [name for name in fields if name == "memory_bytes" or name.startswith("mem:")]
    return sum(_number(fields, name) for name in parts) if parts else None


def app_metrics(app: str, now: Callable[[], float] = time.time,
                window: int = WINDOW_MINUTES) -> AppMetrics:
    """The last hour of the app's request, latency, memory and CPU figures, one point a minute."""
    minutes = _minutes(now(), window)
    try:
        router = _read_hashes(metrics_key(app), minutes)
        runtime = _read_hashes(runtime_metrics_key(app), minutes)
        available = True
    except redis.RedisError:
        router = [{} for _ in minutes]
        runtime = [{} for _ in minutes]
        available = False

    def per_minute(rows: list[dict[str, str]], pick: Callable[[dict[str, str]], float | None]
                   ) -> list[float | None]:
        return [pick(row) if row else None for row in rows]

    first = minutes[0]
    requests = Chart("Requests", "req/min", [
        Series("requests", per_minute(router, lambda r: _number(r, "requests")))], first)
    statuses = Chart("Responses by status", "req/min", [
        Series(name, per_minute(router, functools.partial(_number, name=field)))
        for name, field in (("2xx", "status_2xx"), ("3xx", "status_3xx"),
                            ("4xx", "status_4xx"), ("5xx", "status_5xx"))], first)

    def mean_latency(row: dict[str, str]) -> float | None:
        count = _number(row, "requests")
        return _number(row, "latency_ms_sum") / count if count else None

    latency = Chart("Latency", "ms", [
        Series("mean", per_minute(router, mean_latency)),
        Series("p95", per_minute(router, lambda r: latency_quantile(r, 0.95)))], first)
    def memory_mb(row: dict[str, str]) -> float | None:
        total = runtime_memory_bytes(row)
        return total / 2**20 if total is not None else None

    memory = Chart("Memory", "MB", [Series("memory", per_minute(runtime, memory_mb))], first)
    cpu = Chart("CPU", "%", [
        # CPU milliseconds used in a minute / 60 000 ms = share of one core, as a percentage.
        Series("cpu", per_minute(runtime, lambda r: _number(r, "cpu_millis") / 600
                                 if "cpu_millis" in r else None))], first)
    return AppMetrics(available, requests, statuses, latency, memory, cpu)


# --- containers ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Usage:
    memory_bytes: int | None
    cpu_percent: float | None


def container_usage(container: Any) -> Usage | None:
    """The container's last reported memory and CPU, or None when nothing was reported yet.

    The agents report usage on the Container row (`memory_bytes`, `cpu_percent`) once the
    control plane stores it; until a row carries those figures the page says "no data yet".
    """
    memory = getattr(container, "memory_bytes", None)
    cpu = getattr(container, "cpu_percent", None)
    if memory is None and cpu is None:
        return None
    return Usage(memory_bytes=memory, cpu_percent=cpu)
