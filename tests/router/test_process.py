"""`python -m router` as it runs in production: a master, workers, Redis, signals."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis

from router.table import route_app_set
from tests.router.app import App
from tests.router.certs import write_cert
from tests.router.helpers import DOMAIN, Client, free_port, get, run

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


@contextlib.asynccontextmanager
async def router_process(redis_url: str, tmp_path: Path, **env: str) -> AsyncIterator[tuple[asyncio.subprocess.Process, int]]:
    port = free_port()
    full_env = dict(os.environ, REDIS_URL=redis_url, PAAS_DOMAIN=DOMAIN, PAAS_ROUTER_BIND=f"127.0.0.1:{port}",
                    PAAS_ROUTER_WORKERS="2", PAAS_DATA_DIR=str(tmp_path), PAAS_ROUTER_FLUSH_INTERVAL="0.2",
                    PAAS_ROUTER_DRAIN_TIMEOUT="10", PYTHONPATH=str(ROOT), **env)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "router", env=full_env, cwd=ROOT, start_new_session=True,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )
    try:
        yield proc, port
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 20)
            except TimeoutError:
                os.killpg(proc.pid, signal.SIGKILL)  # the group this test started, workers included
                await proc.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # any worker left behind


async def until_status(port: int, status: int, path: str = "/", timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = (await get(port, path=path)).status
            if last == status:
                return
        except OSError as error:
            last = error
        await asyncio.sleep(0.05)
    raise AssertionError(f"never got {status}; last: {last!r}")


@run
async def test_it_serves_the_route_table_from_redis_and_follows_changes(redis_client: redis.Redis, redis_url: str, tmp_path: Path) -> None:
    app = await App().start()
    async with router_process(redis_url, tmp_path) as (_, port):
        await until_status(port, 404)
        route_app_set(redis_client, "web1", [app.endpoint])
        await until_status(port, 200)
        route_app_set(redis_client, "web1", [app.endpoint], maintenance=True)
        await until_status(port, 503)
        route_app_set(redis_client, "web1", [app.endpoint])
        await until_status(port, 200)

        def logged() -> tuple[bool, bool]:
            lines = [e[1][b"line"].decode() for e in redis_client.xrange("paas:logs:web1")]
            return (any("status=503" in line and "code=maintenance" in line for line in lines),
                    any("status=200" in line and f"host=web1.{DOMAIN}" in line for line in lines))

        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and logged() != (True, True):
            await asyncio.sleep(0.05)
        assert logged() == (True, True)
        totals = redis_client.hgetall("paas:metrics:router:web1")
        assert int(totals[b"status_2xx"]) >= 1 and int(totals[b"status_5xx"]) >= 1
    await app.stop()


@run
async def test_it_starts_from_its_snapshot_when_redis_is_away(redis_client: redis.Redis, redis_url: str, tmp_path: Path) -> None:
    app = await App().start()
    route_app_set(redis_client, "web1", [app.endpoint])
    async with router_process(redis_url, tmp_path) as (_, port):
        await until_status(port, 200)
    assert (tmp_path / "router" / "table.json").exists()
    async with router_process(f"redis://127.0.0.1:{free_port()}/0", tmp_path) as (_, port):
        await until_status(port, 200, timeout=20)
    await app.stop()


@run
async def test_it_reloads_on_sighup_without_dropping_a_request(redis_client: redis.Redis, redis_url: str, tmp_path: Path) -> None:
    app = await App().start()
    route_app_set(redis_client, "web1", [app.endpoint])
    async with router_process(redis_url, tmp_path) as (proc, port):
        await until_status(port, 200)
        failures: list[str] = []
        done = asyncio.Event()
        served = 0

        async def load() -> None:
            nonlocal served
            while not done.is_set():
                try:
                    client = await Client.connect(port)
                    for _ in range(3):
                        response = await client.request(path="/slow?ms=5")
                        if response.status != 200:
                            failures.append(str(response.status))
                        served += 1
                        if response.header("Connection") == "close":
                            break  # a draining worker says so; the client opens a new connection
                    client.close()
                except (OSError, asyncio.IncompleteReadError) as error:
                    failures.append(repr(error))

        slow = asyncio.ensure_future(get(port, path="/slow?ms=1500"))
        loaders = [asyncio.ensure_future(load()) for _ in range(4)]
        await asyncio.sleep(0.3)
        for _ in range(2):
            proc.send_signal(signal.SIGHUP)
            await asyncio.sleep(1.0)
        assert (await slow).status == 200  # in flight across the reload
        done.set()
        await asyncio.gather(*loaders)
        assert failures == []
        assert served > 20
    await app.stop()


@run
async def test_it_finishes_requests_in_flight_on_sigterm_then_exits(redis_client: redis.Redis, redis_url: str, tmp_path: Path) -> None:
    app = await App().start()
    route_app_set(redis_client, "web1", [app.endpoint])
    async with router_process(redis_url, tmp_path) as (proc, port):
        await until_status(port, 200)
        slow = [asyncio.ensure_future(get(port, path="/slow?ms=800")) for _ in range(4)]
        await asyncio.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        assert [r.status for r in await asyncio.gather(*slow)] == [200] * 4
        assert await asyncio.wait_for(proc.wait(), 15) == 0
        with pytest.raises(OSError):
            await get(port)
    await app.stop()


@run
async def test_it_terminates_tls_on_its_tls_port(redis_client: redis.Redis, redis_url: str, tmp_path: Path) -> None:
    app = await App().start()
    route_app_set(redis_client, "web1", [app.endpoint])
    certs = tmp_path / "router" / "certs"
    certs.mkdir(parents=True)
    cert = write_cert(certs / f"web1.{DOMAIN}.pem", [f"web1.{DOMAIN}"])
    tls_port = free_port()
    async with router_process(redis_url, tmp_path, PAAS_ROUTER_TLS_BIND=f"127.0.0.1:{tls_port}") as (_, port):
        await until_status(port, 200)
        context = ssl.create_default_context(cafile=str(cert))
        reader, writer = await asyncio.open_connection("127.0.0.1", tls_port, ssl=context,
                                                       server_hostname=f"web1.{DOMAIN}")
        client = Client(reader, writer)
        response = await client.request()
        client.close()
        assert response.status == 200
        assert ("X-Forwarded-Proto", "https") in [tuple(h) for h in json.loads(response.body)["headers"]]
    await app.stop()


def worker_pids(master: int) -> set[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(master)], capture_output=True, text=True).stdout
    return {int(p) for p in out.split()}


@run
async def test_it_replaces_a_worker_that_dies(redis_client: redis.Redis, redis_url: str, tmp_path: Path) -> None:
    app = await App().start()
    route_app_set(redis_client, "web1", [app.endpoint])
    async with router_process(redis_url, tmp_path) as (proc, port):
        await until_status(port, 200)
        before = worker_pids(proc.pid)
        assert len(before) == 2
        victim = min(before)
        os.kill(victim, signal.SIGKILL)  # a worker this test's router forked
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            now = worker_pids(proc.pid)
            if len(now) == 2 and victim not in now:
                break
            await asyncio.sleep(0.1)
        assert len(now) == 2 and victim not in now
        for _ in range(10):
            assert (await get(port)).status == 200
    await app.stop()


def test_it_refuses_a_bad_setting_with_a_clear_message() -> None:
    env = dict(os.environ, PAAS_ROUTER_WORKERS="many", PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, "-m", "router"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "PAAS_ROUTER_WORKERS must be a whole number, not 'many'" in result.stderr
    assert "Traceback" not in result.stderr


def test_it_says_so_when_the_port_is_taken() -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = dict(os.environ, PAAS_ROUTER_BIND=f"127.0.0.1:{port}", PYTHONPATH=str(ROOT))
        result = subprocess.run([sys.executable, "-m", "router"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr and "Traceback" not in result.stderr
