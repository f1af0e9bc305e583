"""Platform lines in an app's log stream, next to its containers' own output.

`paas logs` shows what the platform did and saw, Heroku style:

    2026-11-27T23:59:58Z paas[scheduler]: Deploying v5
    2026-11-27T23:59:59Z paas[web.2]: Starting (v5) on host-a
    2026-11-28T00:00:03Z paas[web.1]: Crashed: exited with code 1
    2026-11-28T00:00:04Z paas[scheduler]: Release v5 failed: web.1 exited with code 1

Each line is one call of `write` at the place the thing happens. It goes to `paas:logs:<app>`
(fields `time`, `tag`, `line`, capped near `PAAS_APP_LOG_MAXLEN` entries) once the surrounding
transaction commits, so a rolled-back (and retried) reconcile or ingestion writes it once. Redis
being away costs the line, never the caller's work.
"""

from __future__ import annotations

import functools
import logging
import time

import redis
from django.conf import settings
from django.db import transaction

from controlplane.env import env_int
from core.models import App, Container, Formation
from router.metrics import logs_key

log = logging.getLogger(__name__)

SCHEDULER = "scheduler"


@functools.lru_cache(maxsize=4)
def _client(url: str) -> redis.Redis[bytes]:
    return redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5)


def write(app: str, line: str, source: str = SCHEDULER) -> None:
    """Add `paas[<source>]: <line>` to the app's log stream when the transaction commits."""
    entry = {"time": f"{time.time():.6f}", "tag": f"paas[{source}]", "line": line}

    def send() -> None:
        maxlen = max(100, env_int("PAAS_APP_LOG_MAXLEN", 10_000))
        try:
            _client(str(settings.REDIS_URL)).xadd(logs_key(app), entry,
                                                  maxlen=maxlen, approximate=True)
        except redis.RedisError as e:
            log.warning("could not write to the log of %s (%s): %s", app, line, e)

    transaction.on_commit(send)


def forget(app: str) -> None:
    """Delete a destroyed app's log stream (the API never shows a new app of the same name
    lines older than the app, whatever writes arrive late)."""
    try:
        _client(str(settings.REDIS_URL)).delete(logs_key(app))
    except redis.RedisError as e:
        log.warning("could not delete the log of %s: %s", app, e)


def first_log_id(app: App) -> str:
    """The oldest id in `paas:logs:<app>` that can be a line of this app: an app's name can be
    taken again once it is destroyed, and a late write of the old app's agent must not show as
    the new app's (readers start here: the logs API, the dashboard's tail)."""
    return f"{int(app.created_at.timestamp() * 1000)}-0"


def container_ended(c: Container) -> str:
    """How a container that was not stopped ended: `Crashed: exited with code 1`, `Was
    OOM-killed (limit 512 MB)`, `Failed: <why>`."""
    if c.state == "oom":
        mb = Formation.objects.filter(app_id=c.app_id, type=c.type).values_list(
            "memory_mb", flat=True).first()
        return f"Was OOM-killed (limit {mb} MB)" if mb else "Was OOM-killed"
    if c.state == "exited":
        code = "an unknown code" if c.exit_code is None else f"code {c.exit_code}"
        return f"Crashed: exited with {code}"
    return f"Failed: {c.message or 'it could not be started'}"


def container_name(container_id: str) -> str:
    """`web.1` from the reconciler's container ids `<app>.<type>.<n>.<hex>`."""
    parts = container_id.split(".")
    return f"{parts[1]}.{parts[2]}" if len(parts) == 4 else container_id
