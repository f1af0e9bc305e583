"""Following the route table in Redis live, and riding out a Redis outage."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator

import pytest
import redis
import redis.asyncio as aioredis

from router.follow import TableFollower, flush, load_snapshot, save_snapshot
from router.metrics import Recorder
from router.routing import Forward, Refuse, RouteTable
from router.table import APPS_KEY, decode_app, route_app_set, route_domain_set
from tests.router.helpers import free_port, run


async def until(predicate, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def following(url: str):  # type: ignore[no-untyped-def]
    client = aioredis.from_url(url)
    table = RouteTable("apps.test")
    follower = TableFollower(client, table, retry_max=0.2)
    task = asyncio.get_running_loop().create_task(follower.run())
    try:
        yield follower, table
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await client.aclose()


@run
async def test_it_reads_the_whole_table_when_it_starts(redis_client: redis.Redis, redis_url: str) -> None:
    route_app_set(redis_client, "web1", ["10.0.0.1:5000"])
    route_domain_set(redis_client, "www.example.com", "web1")
    async with following(redis_url) as (follower, table):
        await asyncio.wait_for(follower.synced.wait(), 5)
        assert isinstance(table.decide("www.example.com"), Forward)
        assert table.version == 2


@run
async def test_it_follows_changes_without_reading_the_whole_table_again(redis_client: redis.Redis, redis_url: str) -> None:
    async with following(redis_url) as (follower, table):
        await asyncio.wait_for(follower.synced.wait(), 5)
        route_app_set(redis_client, "web1", ["10.0.0.1:5000"])
        await until(lambda: isinstance(table.decide("web1.apps.test"), Forward))
        route_app_set(redis_client, "web1", ["10.0.0.1:5000"], maintenance=True)
        await until(lambda: getattr(table.decide("web1.apps.test"), "code", "") == "maintenance")
        route_domain_set(redis_client, "*.example.com", "web1")
        await until(lambda: table.app_for_host("a.example.com") == "web1")
        assert follower.syncs == 1


@run
async def test_it_reads_everything_again_when_it_missed_a_change(redis_client: redis.Redis, redis_url: str) -> None:
    async with following(redis_url) as (follower, table):
        await asyncio.wait_for(follower.synced.wait(), 5)
        # A write that bypasses the writer: no message, so the next message shows a gap.
        redis_client.hset(APPS_KEY, "ghost", '{"endpoints": ["10.0.0.7:5000"]}')
        redis_client.incr("paas:router:version")
        route_app_set(redis_client, "web1", ["10.0.0.1:5000"])
        await until(lambda: "ghost" in table.apps and "web1" in table.apps)
        assert follower.syncs == 2


@run
async def test_it_leaves_out_a_malformed_entry_and_keeps_the_rest(redis_client: redis.Redis, redis_url: str) -> None:
    redis_client.hset(APPS_KEY, "broken", "{not json")
    route_app_set(redis_client, "web1", ["10.0.0.1:5000"])
    async with following(redis_url) as (follower, table):
        await asyncio.wait_for(follower.synced.wait(), 5)
        assert set(table.apps) == {"web1"}


@pytest.fixture
def own_redis() -> Iterator[tuple[str, int, list[subprocess.Popen[bytes]]]]:
    """A redis-server of this test's own, which the test may stop and start again."""
    port = free_port()
    work = tempfile.mkdtemp(prefix="paas-router-redis-")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        yield work, port, procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        shutil.rmtree(work, ignore_errors=True)


def start_redis(work: str, port: int, procs: list[subprocess.Popen[bytes]]) -> redis.Redis:
    procs.append(subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", work], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    client = redis.Redis(port=port)
    for _ in range(100):
        with contextlib.suppress(redis.ConnectionError):
            client.ping()
            return client
        time.sleep(0.05)
    raise AssertionError("redis-server did not start")


@run
async def test_it_keeps_serving_the_last_table_through_a_redis_outage_and_resyncs_after(own_redis) -> None:  # type: ignore[no-untyped-def]
    work, port, procs = own_redis
    client = start_redis(work, port, procs)
    route_app_set(client, "web1", ["10.0.0.1:5000"])
    async with following(f"redis://127.0.0.1:{port}/0") as (follower, table):
        await asyncio.wait_for(follower.synced.wait(), 5)
        procs[-1].kill()
        procs[-1].wait()
        await until(lambda: not follower.synced.is_set())
        assert isinstance(table.decide("web1.apps.test"), Forward)  # still served from memory
        # Redis comes back empty (no persistence) and the scheduler writes the new state.
        client = start_redis(work, port, procs)
        route_app_set(client, "shop", ["10.0.0.2:5000"])
        await until(follower.synced.is_set, timeout=10)
        await until(lambda: "shop" in table.apps)
        assert isinstance(table.decide("web1.apps.test"), Refuse)
        client.close()


@run
async def test_it_drops_metrics_it_cannot_write_without_failing(own_redis) -> None:  # type: ignore[no-untyped-def]
    _, port, _ = own_redis  # nothing listens there
    client = aioredis.from_url(f"redis://127.0.0.1:{port}/0", socket_connect_timeout=0.5)
    recorder = Recorder()
    recorder.record("web1", 200, 1.0, 0, 0, "x")
    await flush(client, recorder)
    assert not recorder.pending()
    await client.aclose()


def test_it_keeps_a_snapshot_a_new_worker_can_start_from(tmp_path) -> None:  # type: ignore[no-untyped-def]
    table = RouteTable("apps.test")
    table.replace({"web1": decode_app("web1", '{"endpoints": ["10.0.0.1:5000"], "maintenance": true}')},
                  {"*.example.com": "web1"}, 12)
    path = tmp_path / "router" / "table.json"
    save_snapshot(path, table)
    fresh = RouteTable("apps.test")
    assert load_snapshot(path, fresh)
    assert fresh.version == 12 and fresh.domains == {"*.example.com": "web1"}
    assert fresh.apps["web1"] == table.apps["web1"]


def test_it_starts_empty_from_a_missing_or_broken_snapshot(tmp_path) -> None:  # type: ignore[no-untyped-def]
    table = RouteTable("apps.test")
    assert not load_snapshot(tmp_path / "nothing.json", table)
    (tmp_path / "broken.json").write_text("{")
    assert not load_snapshot(tmp_path / "broken.json", table)
    assert table.apps == {}


@run
async def test_it_writes_the_snapshot_as_the_table_changes(redis_client: redis.Redis, redis_url: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    client = aioredis.from_url(redis_url)
    table = RouteTable("apps.test")
    path = tmp_path / "table.json"
    follower = TableFollower(client, table, snapshot=path)
    task = asyncio.get_running_loop().create_task(follower.run())
    try:
        await asyncio.wait_for(follower.synced.wait(), 5)
        route_app_set(redis_client, "web1", ["10.0.0.1:5000"])
        await until(lambda: "web1" in table.apps)
        copy = RouteTable("apps.test")
        assert load_snapshot(path, copy) and "web1" in copy.apps
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await client.aclose()
