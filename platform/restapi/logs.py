"""`GET /api/v1/apps/{app}/logs`: an app's log stream as JSON lines, the last N and, with
`follow=1`, what comes after.

The stream is `paas:logs:<app>` in Redis (fields `time` in Unix seconds, `tag`, `line`), written
by the agents (`app[web.1]`), the scheduler (`paas[...]`) and the router (`router`). Each answer
line is `{"id", "time" (RFC 3339 UTC), "tag", "line"}`. A follow answer streams until the client
goes away or `PAAS_LOG_FOLLOW_MAX_S` passes; then its last line is `{"reconnect": {"after": id}}`
and a client asks again with `after=<id>&lines=0`. At most `PAAS_LOG_FOLLOWERS_MAX` answers of
one web process follow at once (each holds a server thread); more are refused with a 503. While nothing new comes it sends an empty line
every `PAAS_LOG_FOLLOW_KEEPALIVE_MS`, which is how a closed connection is noticed and its server
thread freed.
"""

from __future__ import annotations

import functools
import json
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis
from django.conf import settings
from django.db import connection
from django.http import StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.request import Request
from rest_framework.views import APIView

from controlplane.env import env_int
from core import authz
from core.errors import ActionError, invalid_field
from router.metrics import logs_key
from scheduler import applog

LINES_DEFAULT = 100
LINES_MAX = 10_000
SCAN_CHUNK = 1_000
_PS_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}(\.[0-9]{1,9})?$")
_ID_RE = re.compile(r"^[0-9]{1,20}-[0-9]{1,20}$")
_TAG_RE = re.compile(r"^[a-z]+\[([^\]]+)\]$")


@dataclass(frozen=True)
class LogQuery:
    lines: int
    ps: str | None
    follow: bool
    after: str | None

    @classmethod
    def from_params(cls, params: Any) -> LogQuery:
        raw = params.get("lines", str(LINES_DEFAULT))
        if not raw.isdigit() or int(raw) > LINES_MAX:
            raise invalid_field("lines", f"lines must be a whole number from 0 to {LINES_MAX}.")
        ps = params.get("ps") or None
        if ps is not None and not _PS_RE.match(ps):
            raise invalid_field("ps", "ps must be a process type (web) or a container (web.1).")
        follow = params.get("follow", "0")
        if follow not in ("0", "1", "true", "false"):
            raise invalid_field("follow", "follow must be 1 or 0.")
        after = params.get("after") or None
        if after is not None and not _ID_RE.match(after):
            raise invalid_field("after", "after must be a line id from an earlier answer.")
        return cls(int(raw), ps, follow in ("1", "true"), after)


def matches(tag: str, ps: str | None) -> bool:
    """Whether a line's tag is of the process `ps`: `web` takes app[web.1] and paas[web.2],
    `web.1` only web.1's; `router` and `scheduler` name those sources."""
    if ps is None:
        return True
    m = _TAG_RE.match(tag)
    name = m.group(1) if m else tag
    return name == ps or name.startswith(ps + ".")


def item(entry_id: bytes, fields: dict[bytes, bytes]) -> dict[str, str]:
    """One answer line from a stream entry."""
    eid = entry_id.decode()
    raw = fields.get(b"time", b"").decode(errors="replace")
    try:
        when = datetime.fromtimestamp(float(raw), tz=UTC)
    except (ValueError, OverflowError, OSError):
        when = datetime.fromtimestamp(int(eid.split("-")[0]) / 1000, tz=UTC)
    return {
        "id": eid,
        "time": when.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "tag": fields.get(b"tag", b"").decode(errors="replace"),
        "line": fields.get(b"line", b"").decode(errors="replace"),
    }


def tail(r: redis.Redis[bytes], key: str, n: int, ps: str | None,
         after: str | None = None, since: str = "0-0") -> tuple[list[dict[str, str]], str]:
    """The last `n` matching lines (only those after `after` if given, and none before the id
    `since`), oldest first, and the id to follow from."""
    given = after
    after = max(given or "0-0", _before(since), key=_id_key)
    newest = r.xrevrange(key, count=1)
    last = newest[0][0].decode() if newest else after
    if (given is not None and n == 0) or _id_key(last) < _id_key(after):
        last = after  # a reconnect resumes exactly where the last answer ended
    found: list[dict[str, str]] = []
    high, low = "+", f"({after}"
    while len(found) < n:
        chunk = r.xrevrange(key, max=high, min=low, count=SCAN_CHUNK)
        for eid, fields in chunk:
            if matches(fields.get(b"tag", b"").decode(errors="replace"), ps):
                found.append(item(eid, fields))
                if len(found) == n:
                    break
        if len(chunk) < SCAN_CHUNK:
            break
        high = f"({chunk[-1][0].decode()}"
    found.reverse()
    return found, last


def _id_key(eid: str) -> tuple[int, int]:
    ms, _, seq = eid.partition("-")
    return int(ms), int(seq or 0)


def _before(eid: str) -> str:
    """The id just before `eid` (so that `(id` ranges include `eid` itself)."""
    ms, seq = _id_key(eid)
    if seq:
        return f"{ms}-{seq - 1}"
    return f"{ms - 1}-{2**64 - 1}" if ms else "0-0"


def follow(r: redis.Redis[bytes], key: str, last: str, ps: str | None, *, block_ms: int,
           max_s: float) -> Iterator[bytes]:
    """New matching lines as they come, an empty line while none do, until `max_s` passes."""
    deadline = time.monotonic() + max_s
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            yield _line({"reconnect": {"after": last}})
            return
        got = r.xread({key: last}, count=SCAN_CHUNK, block=max(1, min(block_ms, int(left * 1000))))
        sent = False
        for _key, entries in got:
            for eid, fields in entries:
                last = eid.decode()
                if matches(fields.get(b"tag", b"").decode(errors="replace"), ps):
                    sent = True
                    yield _line(item(eid, fields))
        if not sent:
            yield b"\n"  # keep-alive: writing to a closed connection ends this generator


def _line(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode() + b"\n"


@functools.lru_cache(maxsize=4)
def _client(url: str, timeout_s: float) -> redis.Redis[bytes]:
    return redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=timeout_s)


def _settings() -> tuple[int, float]:
    keepalive_ms = max(100, env_int("PAAS_LOG_FOLLOW_KEEPALIVE_MS", 15_000))
    return keepalive_ms, float(max(1, env_int("PAAS_LOG_FOLLOW_MAX_S", 900)))


def log_stream(r: redis.Redis[bytes], key: str, lines: list[dict[str, str]], last: str,
               query: LogQuery) -> Iterator[bytes]:
    """The answer's body: the tail, then (following) what comes after."""
    for line in lines:
        yield _line(line)
    if not query.follow:
        return
    if not connection.in_atomic_block:
        connection.close()  # a follower holds a thread for minutes, not a database connection
    keepalive_ms, max_s = _settings()
    try:
        yield from follow(r, key, last, query.ps, block_ms=keepalive_ms, max_s=max_s)
    except redis.RedisError:
        yield _line({"reconnect": {"after": last}})


class LogsUnavailable(ActionError):
    code = "unavailable"
    status = 503


class _Followers:
    """How many answers of this web process follow now: each holds a server thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.count = 0

    def take(self) -> None:
        limit = max(1, env_int("PAAS_LOG_FOLLOWERS_MAX", 4))
        with self.lock:
            if self.count >= limit:
                raise LogsUnavailable(
                    f"This server already streams logs to {limit} clients (PAAS_LOG_FOLLOWERS_MAX), "
                    "each holding one of its threads; try again shortly, or leave out follow.")
            self.count += 1

    def give_back(self) -> None:
        with self.lock:
            self.count -= 1


followers = _Followers()


class _Held:
    """An answer's body that holds a follower place until it ends or the server closes it
    (Django closes it when the client went away, whether or not it ever started)."""

    def __init__(self, body: Iterator[bytes]) -> None:
        self.body = body
        self.open = True

    def __iter__(self) -> _Held:
        return self

    def __next__(self) -> bytes:
        try:
            return next(self.body)
        except StopIteration:
            self.close()
            raise

    def close(self) -> None:
        if self.open:
            self.open = False
            try:
                self.body.close()  # type: ignore[attr-defined]
            finally:
                followers.give_back()


class AppLogsView(APIView):
    @extend_schema(
        parameters=[
            OpenApiParameter("lines", OpenApiTypes.INT,
                             description=f"the last N lines, 0 to {LINES_MAX}; default {LINES_DEFAULT}"),
            OpenApiParameter("ps", OpenApiTypes.STR, description="only a process type or container"),
            OpenApiParameter("follow", OpenApiTypes.BOOL, description="stream new lines as they come"),
            OpenApiParameter("after", OpenApiTypes.STR, description="only lines after this id"),
        ],
        responses={(200, "application/x-ndjson"): OpenApiTypes.OBJECT},
    )
    def get(self, request: Request, app: str) -> StreamingHttpResponse:
        """The app's log lines as JSON lines; with follow=1, then new ones as they come."""
        row = authz.app_get(request.user, app)
        query = LogQuery.from_params(request.query_params)
        keepalive_ms, _max_s = _settings()
        r = _client(str(settings.REDIS_URL), keepalive_ms / 1000 + 10)
        key = logs_key(row.name)
        try:
            # A destroyed app's name can be taken again: its lines are not the new app's.
            lines, last = tail(r, key, query.lines, query.ps, query.after, applog.first_log_id(row))
        except redis.RedisError:
            raise LogsUnavailable("The log store (Redis) cannot be reached; try again shortly.") from None
        body: Iterator[bytes] = log_stream(r, key, lines, last, query)
        if query.follow:
            followers.take()
            body = _Held(body)
        response = StreamingHttpResponse(body, content_type="application/x-ndjson")
        response["Cache-Control"] = "no-cache"
        response["X-Accel-Buffering"] = "no"
        return response
