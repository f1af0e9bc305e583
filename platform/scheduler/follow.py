"""The report follower: ingest the agents' reports as they arrive, route and reconcile at once.

The beat's `scheduler.ingest` task does the same every `PAAS_SCHEDULER_TICK_S`; the follower
(`manage.py scheduler_follow`, one or more per controller) waits on the streams instead, so a
container that gets ready is routed within milliseconds. Both read through the same consumer
group, so running both never handles a report twice.
"""

from __future__ import annotations

import logging
import os
import socket
import threading

import redis

from core.models import App
from scheduler.ingest import IngestResult, ingest
from scheduler.reconcile import reconcile_app, redis_client, routes_sync

log = logging.getLogger(__name__)


def follow_once(r: redis.Redis[bytes], consumer: str, block_ms: int = 1000) -> IngestResult:
    """Wait up to `block_ms` for reports, store them, then route and reconcile the apps they touch."""
    result = ingest(r, consumer, block_ms=block_ms)
    for app_id, name in App.objects.filter(pk__in=result.apps).values_list("pk", "name"):
        routes_sync(name, app_id)
        reconcile_app(app_id)
    return result


def follow(stop: threading.Event, block_ms: int = 1000) -> None:
    """Follow until `stop` is set; a Redis outage is waited out, never fatal."""
    consumer = f"follow-{socket.gethostname()}-{os.getpid()}"
    r = redis_client()
    while not stop.is_set():
        try:
            follow_once(r, consumer, block_ms)
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as e:
            log.warning("redis is away (%s); trying again", e)
            stop.wait(1.0)
