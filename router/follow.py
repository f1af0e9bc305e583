"""Keep a worker's RouteTable in step with Redis, and send the recorded metrics back.

The follower subscribes to the change channel first and then reads the whole table, so no change
falls between the two. Each change message names what changed; the follower reads just that.
If Redis goes away the worker keeps serving the table it has, retries with back-off, and reads
the whole table again once it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from router.metrics import LOG_BATCH, REPLY_OFF, REPLY_ON, Command, Recorder
from router.routing import RouteTable
from router.table import (
    APPS_KEY,
    CHANGES_CHANNEL,
    DOMAINS_KEY,
    VERSION_KEY,
    AppRoute,
    RouteError,
    decode_app,
    parse_change,
)

log = logging.getLogger("router.follow")


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def decode_apps(raw: dict[Any, Any]) -> dict[str, AppRoute]:
    """Decode a whole `paas:router:apps` hash, leaving out (and logging) malformed entries."""
    apps: dict[str, AppRoute] = {}
    for key, value in raw.items():
        name = _text(key)
        try:
            apps[name] = decode_app(name, value)
        except RouteError as error:
            log.error("at=error code=bad_route app=%s desc=%r", name, str(error))
    return apps


def save_snapshot(path: Path, table: RouteTable) -> None:
    """Write the table to a file (atomically), for a worker that starts while Redis is away."""
    data = {
        "version": table.version,
        "apps": {
            name: {"endpoints": [e.key for e in route.endpoints], "maintenance": route.maintenance}
            for name, route in table.apps.items()
        },
        "domains": table.domains,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def load_snapshot(path: Path, table: RouteTable) -> bool:
    """Fill the table from a snapshot file; False (and the table untouched) if there is none."""
    try:
        data = json.loads(path.read_text())
        apps = decode_apps({name: json.dumps(entry) for name, entry in data["apps"].items()})
        domains = {str(k): str(v) for k, v in data["domains"].items()}
        version = int(data["version"])
    except FileNotFoundError:
        return False
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        log.error("at=error code=bad_snapshot file=%s error=%r", path, str(error))
        return False
    table.replace(apps, domains, version)
    return True


class TableFollower:
    """Follow the route table in Redis for one worker; `synced` is set while it is current."""

    def __init__(
        self,
        client: aioredis.Redis[Any],
        table: RouteTable,
        *,
        retry_max: float = 2.0,
        snapshot: Path | None = None,
    ) -> None:
        self.client = client
        self.table = table
        self.retry_max = retry_max
        self.snapshot = snapshot
        self.synced = asyncio.Event()
        self.syncs = 0  # full reads so far (tests and logs)

    def _save(self) -> None:
        if self.snapshot is None:
            return
        try:
            save_snapshot(self.snapshot, self.table)
        except OSError as error:
            log.warning("at=error code=snapshot_not_written file=%s error=%r", self.snapshot, str(error))

    async def run(self) -> None:
        delay = 0.05
        while True:
            pubsub = self.client.pubsub()
            try:
                await pubsub.subscribe(CHANGES_CHANNEL)
                await self.full_sync()
                if delay > 0.05:
                    log.warning("at=info desc=\"route table back in step with Redis\" version=%d", self.table.version)
                delay = 0.05
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message is not None and message.get("type") == "message":
                        await self.apply(message["data"])
            except (RedisError, OSError) as error:
                if self.synced.is_set():
                    log.warning("at=error code=redis_unavailable desc=\"serving the last route table\" error=%r", str(error))
                self.synced.clear()
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.retry_max)
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[attr-defined]  # stubs predate redis 5

    async def full_sync(self) -> None:
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.hgetall(APPS_KEY)
            pipe.hgetall(DOMAINS_KEY)
            pipe.get(VERSION_KEY)
            apps_raw, domains_raw, version_raw = await pipe.execute()
        domains = {_text(k): _text(v) for k, v in domains_raw.items()}
        self.table.replace(decode_apps(apps_raw), domains, int(version_raw or 0))
        self.syncs += 1
        self.synced.set()
        self._save()

    async def apply(self, data: Any) -> None:
        try:
            version, apps, domains = parse_change(data)
        except RouteError as error:
            log.error("at=error code=bad_change desc=%r", str(error))
            await self.full_sync()
            return
        if version <= self.table.version:
            return  # already in the table (the full read that followed our subscribe saw it)
        if version != self.table.version + 1:
            await self.full_sync()  # we missed a change, or Redis started over
            return
        async with self.client.pipeline(transaction=True) as pipe:
            if apps:
                pipe.hmget(APPS_KEY, apps)
            if domains:
                pipe.hmget(DOMAINS_KEY, domains)
            results = await pipe.execute()
        app_values = results.pop(0) if apps else []
        domain_values = results.pop(0) if domains else []
        app_routes: dict[str, AppRoute | None] = {}
        for name, raw in zip(apps, app_values, strict=True):
            if raw is None:
                app_routes[name] = None
                continue
            try:
                app_routes[name] = decode_app(name, raw)
            except RouteError as error:
                log.error("at=error code=bad_route app=%s desc=%r", name, str(error))
        domain_apps = {
            host: (None if raw is None else _text(raw)) for host, raw in zip(domains, domain_values, strict=True)
        }
        self.table.patch(app_routes, domain_apps, version)
        self._save()


FLUSH_SLICE = 200  # log lines encoded between two chances for requests to get through


async def flush_forever(client: aioredis.Redis[Any], recorder: Recorder, interval: float) -> None:
    """Write what the recorder gathered every `interval` seconds; on failure, drop and go on."""
    while True:
        await asyncio.sleep(interval)
        await flush(client, recorder)


async def flush(client: aioredis.Redis[Any], recorder: Recorder) -> None:
    """Send everything recorded, a slice of lines at a time; on a Redis error drop the rest too.

    Slices let requests through in between, on both sides: the worker encodes no more than
    `FLUSH_SLICE` lines at once, and redis-server stores them in small bursts too. The counters
    go with the first slice only (those of requests served meanwhile wait for the next flush).
    """
    slices = len(recorder.lines) // FLUSH_SLICE + 1  # lines recorded meanwhile wait for the next flush
    commands = recorder.take(max_lines=FLUSH_SLICE)
    while commands:
        try:
            await send(client, commands)
        except (RedisError, OSError) as error:
            lost = len(recorder.lines) + sum(command[2] for command in commands if command[0] == LOG_BATCH)
            recorder.take(max_lines=len(recorder.lines))
            log.warning("at=error code=metrics_lost commands=%d lines=%d error=%r", len(commands), lost, str(error))
            return
        slices -= 1
        commands = recorder.take(max_lines=FLUSH_SLICE, counters=False) if slices and recorder.lines else []


async def send(client: aioredis.Redis[Any], commands: list[Command]) -> None:
    """Send what `Recorder.take` handed over: counters in one pipeline, log batches raw.

    A log batch's XADDs go with replies switched off; the `CLIENT REPLY ON` after them answers
    once they have all been read. A connection that failed half-way is dropped, never reused in
    an unknown reply mode.
    """
    plain = [command for command in commands if command[0] != LOG_BATCH]
    batches = [command[3] for command in commands if command[0] == LOG_BATCH]
    if plain:
        async with client.pipeline(transaction=False) as pipe:
            for command in plain:
                pipe.execute_command(*command)
            await pipe.execute()
    if not batches:
        return
    pool = client.connection_pool
    conn = await pool.get_connection()
    try:
        await conn.send_packed_command([REPLY_OFF, *batches, REPLY_ON])
        reply = await conn.read_response()
    except BaseException:
        await conn.disconnect()
        raise
    finally:
        await pool.release(conn)
    if reply not in (b"OK", "OK"):
        raise RedisError(f"unexpected answer to CLIENT REPLY ON: {reply!r}")
