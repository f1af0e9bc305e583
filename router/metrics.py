"""Per-app request metrics and access-log lines, gathered in memory and written in batches.

The proxy calls `Recorder.record` once per request (a few dict updates, no I/O); the worker's
flush loop calls `Recorder.take` every `PAAS_ROUTER_FLUSH_INTERVAL` and sends the resulting
commands to Redis in one pipeline. Redis keys (read by the dashboard):

- ``paas:metrics:router:<app>`` (hash): totals since the app's first request.
- ``paas:metrics:router:<app>:<minute>`` (hash, expires after a day): the same fields for one
  minute, ``<minute>`` being Unix time // 60.
- Fields: ``requests``, ``status_1xx`` .. ``status_5xx``, ``bytes_in``, ``bytes_out``,
  ``latency_ms_sum`` and ``latency_ms_le_<bound>`` for bounds 5, 10, 25, 50, 100, 250, 500, 1000,
  2500, 5000, 10000, 30000 and ``inf``: a request counts in the first bucket its latency
  (request start to response end) fits, so buckets are not cumulative.
- ``paas:logs:<app>`` (stream, capped near `PAAS_ROUTER_LOG_MAXLEN` entries): one entry per
  request, fields ``time`` (Unix seconds with microseconds), ``tag`` (``router``) and ``line``.

Log lines travel as a `LogBatch`: plain `XADD`s, one per line, then one `XTRIM`, already encoded
in the Redis protocol (by the compiled fast path, or here). The flush sends them with replies
switched off (`CLIENT REPLY OFF`), so neither side spends anything on a reply per line; this
costs redis-server about half what one Lua script adding the same lines did.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable
from typing import Any

BUCKETS = (5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000)
BUCKET_FIELDS = (*tuple(f"latency_ms_le_{b}" for b in BUCKETS), "latency_ms_le_inf")
MINUTE_TTL = 24 * 3600



def resp_command(*args: bytes) -> bytes:
    """One command in the Redis protocol (RESP2), as a client sends it."""
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


REPLY_OFF = resp_command(b"CLIENT", b"REPLY", b"OFF")
REPLY_ON = resp_command(b"CLIENT", b"REPLY", b"ON")  # answers +OK: the batch has been read
LOG_BATCH = "LOG_BATCH"


def log_batch_command(key: str, count: int, payload: bytes) -> Command:
    """`(LOG_BATCH, key, count, payload)`: `payload` holds `count` XADDs and one XTRIM in RESP."""
    return (LOG_BATCH, key, count, payload)

def metrics_key(app: str) -> str:
    return f"paas:metrics:router:{app}"


def logs_key(app: str) -> str:
    return f"paas:logs:{app}"


def bucket_field(ms: float) -> str:
    return BUCKET_FIELDS[bisect_left(BUCKETS, ms)]


# Per-app counters live in a flat list (cheaper per request than a dict); FIELDS names them.
FIELDS = (
    "requests", "status_1xx", "status_2xx", "status_3xx", "status_4xx", "status_5xx",
    "bytes_in", "bytes_out", "latency_ms_sum", *BUCKET_FIELDS,
)
_STATUS_INDEX = (5, 1, 2, 3, 4, 5, 5, 5, 5, 5)  # status // 100 -> index; nonsense counts as 5xx
_BUCKET_BASE = FIELDS.index(BUCKET_FIELDS[0])

Command = tuple[Any, ...]


class Recorder:
    """Collect what happened since the last flush; never touches the network itself."""

    def __init__(
        self,
        log_maxlen: int = 10_000,
        max_lines: int = 50_000,
        clock: Callable[[], float] = time.time,
        formatter: Callable[[Any], str] = str,
        pack_lines: Callable[[bytes, list[tuple[float, Any]], int], bytes | None] | None = None,
    ) -> None:
        self.log_maxlen = log_maxlen
        self.formatter = formatter
        # Encodes a whole batch of (time, line) at once as the XADDs and the XTRIM of a LogBatch
        # (the compiled fast path does it); None from it means: encode them one by one here.
        self.pack_lines = pack_lines
        self.max_lines = max_lines
        self.clock = clock
        self.stats: dict[str, list[int]] = {}
        self.lines: list[tuple[str, float, object]] = []
        self.dropped_lines = 0

    def record(self, app: str, status: int, ms: float, bytes_in: int, bytes_out: int, line: object,
               when: float | None = None) -> None:
        """Count one request; `line` becomes the access-log line through `formatter` at flush time."""
        counts = self.stats.get(app)
        if counts is None:
            counts = self.stats[app] = [0] * len(FIELDS)
        counts[0] += 1
        counts[_STATUS_INDEX[status // 100] if 0 <= status < 1000 else 5] += 1
        counts[6] += bytes_in
        counts[7] += bytes_out
        counts[8] += int(ms)
        counts[_BUCKET_BASE + bisect_left(BUCKETS, ms)] += 1
        if len(self.lines) < self.max_lines:
            self.lines.append((app, self.clock() if when is None else when, line))
        else:  # Redis has been away a long time: keep memory bounded, count what we lost
            self.dropped_lines += 1

    def counts(self, app: str) -> dict[str, int]:
        """The counters recorded for an app since the last take, by field name (non-zero ones)."""
        values = self.stats.get(app, [])
        return {name: value for name, value in zip(FIELDS, values, strict=False) if value}

    def take(self, max_lines: int = 200, counters: bool = True) -> list[Command]:
        """Hand over the counters (unless `counters` is false) and up to `max_lines` log lines.

        The flush loop calls this until `pending()` is false, letting requests through between
        slices, so a busy second never turns into one long pause; it takes the counters with the
        first slice only, as those of requests that came in meanwhile would cost a whole set of
        commands per slice.
        """
        stats, lines = (self.stats, self.lines[:max_lines]) if counters else ({}, self.lines[:max_lines])
        if counters:
            self.stats = {}
        del self.lines[:max_lines]
        minute = int(self.clock() // 60)
        commands: list[Command] = []
        for app, values in stats.items():
            total, per_minute = metrics_key(app), f"{metrics_key(app)}:{minute}"
            for name, amount in zip(FIELDS, values, strict=True):
                if not amount:
                    continue
                commands.append(("HINCRBY", total, name, amount))
                commands.append(("HINCRBY", per_minute, name, amount))
            commands.append(("EXPIRE", per_minute, MINUTE_TTL))
        # One pre-encoded batch per app and slice rather than one client command per request:
        # building thousands of commands in the client costs more than the requests they describe.
        per_app: dict[str, list[tuple[float, object]]] = {}
        for app, when, line in lines:
            entries = per_app.get(app)
            if entries is None:
                entries = per_app[app] = []
            entries.append((when, line))
        for app, entries in per_app.items():
            key = logs_key(app)
            payload = self.pack_lines(key.encode(), entries, self.log_maxlen) if self.pack_lines else None
            if payload is None:
                payload = self.pack_entries(key, entries)
            commands.append(log_batch_command(key, len(entries), payload))
        return commands

    def pack_entries(self, key: str, entries: list[tuple[float, Any]]) -> bytes:
        """The XADDs and the XTRIM of a LogBatch, encoded here (what the fast path's pack does)."""
        key_b = key.encode()
        parts = []
        for when, line in entries:
            stamp, _tab, text = self.format_entry(when, line).partition("\t")
            parts.append(resp_command(b"XADD", key_b, b"*", b"time", stamp.encode(), b"tag", b"router",
                                      b"line", text.encode()))
        parts.append(resp_command(b"XTRIM", key_b, b"MAXLEN", b"~", str(self.log_maxlen).encode()))
        return b"".join(parts)

    def format_entry(self, when: float, line: object) -> str:
        return f"{when:.6f}\t{self.formatter(line).replace(chr(10), ' ')}"

    def pending(self) -> bool:
        return bool(self.stats or self.lines)
