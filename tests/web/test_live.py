"""The live data the dashboard reads from Redis (a real redis-server): log tails, build output,
request metrics written by the router's own recorder, and what the pages make of them."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from django.conf import settings
from django.test import Client

from core import actions
from router.metrics import Recorder, logs_key
from runtime.agent.reports import ContainerUsage, Heartbeat, Reporter
from scheduler.ingest import ingest
from tests.web.conftest import write_router_commands
from web import charts, live

from .conftest import Acme, login

pytestmark = pytest.mark.django_db


@pytest.fixture
def r() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL, decode_responses=True)


@pytest.fixture
def app_name(r: redis.Redis) -> Iterator[str]:
    """A name no other test uses, with every key written under it removed afterwards."""
    name = f"live-{uuid.uuid4().hex[:10]}"
    yield name
    keys = [k for pattern in (f"paas:*:{name}", f"paas:*:{name}:*") for k in r.scan_iter(pattern)]
    if keys:
        r.delete(*keys)


def _write(r: redis.Redis, commands: list[tuple[Any, ...]]) -> None:
    write_router_commands(r, commands)


def test_it_tails_the_newest_log_lines_oldest_first(r: redis.Redis, app_name: str) -> None:
    for i in range(250):
        r.xadd(logs_key(app_name), {"time": f"{1_800_000_000 + i}.5", "tag": "app[web.1]",
                                    "line": f"line {i}"})
    tail = live.app_log_tail(app_name)
    assert tail.available
    assert [line.line for line in tail.lines] == [f"line {i}" for i in range(50, 250)]
    assert tail.lines[-1].tag == "app[web.1]"
    assert tail.lines[-1].time is not None and tail.lines[-1].time.timestamp() == 1_800_000_249.5


def test_it_returns_only_lines_after_the_cursor(r: redis.Redis, app_name: str) -> None:
    r.xadd(logs_key(app_name), {"tag": "router", "line": "first"})
    cursor = live.app_log_tail(app_name).last_id
    assert live.app_log_tail(app_name, after=cursor).lines == []
    r.xadd(logs_key(app_name), {"tag": "router", "line": "second"})
    newer = live.app_log_tail(app_name, after=cursor)
    assert [line.line for line in newer.lines] == ["second"]
    assert newer.lines[0].time is not None  # taken from the stream id when `time` is absent
    assert newer.last_id != cursor


def test_it_reads_the_router_metrics_into_per_minute_series(r: redis.Redis, app_name: str) -> None:
    now = 1_800_000_000.0
    minute = now - 120
    recorder = Recorder(clock=lambda: minute)
    for status, ms in [(200, 4), (200, 40), (404, 40), (503, 900)]:
        recorder.record(app_name, status, ms, 10, 10, "GET /")
    _write(r, recorder.take())
    metrics = live.app_metrics(app_name, now=lambda: now)
    assert metrics.available
    index = len(metrics.requests.series[0].values) - 3  # two minutes before the last
    assert metrics.requests.series[0].values[index] == 4
    assert metrics.requests.series[0].values[-1] is None
    by_class = {s.name: s.values[index] for s in metrics.statuses.series}
    assert by_class == {"2xx": 2, "3xx": 0, "4xx": 1, "5xx": 1}
    mean, p95 = (s.values[index] for s in metrics.latency.series)
    assert mean == pytest.approx((4 + 40 + 40 + 900) / 4)
    assert p95 == 1000  # the upper bound of the bucket the 95th percentile falls in
    assert not metrics.memory.has_data and not metrics.cpu.has_data


def test_it_reads_container_usage_per_minute(r: redis.Redis, app_name: str) -> None:
    now = 1_800_000_000.0
    r.hset(f"{live.runtime_metrics_key(app_name)}:{int(now // 60)}",
           mapping={"memory_bytes": 256 * 2**20, "cpu_millis": 30_000})
    metrics = live.app_metrics(app_name, now=lambda: now)
    assert metrics.memory.latest() == 256
    assert metrics.cpu.latest() == 50  # 30 s of CPU in a minute: half a core


def test_it_reports_no_data_when_redis_is_unreachable(settings: Any) -> None:
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens on port 1
    tail = live.app_log_tail("anything")
    metrics = live.app_metrics("anything")
    assert (tail.available, tail.lines) == (False, [])
    assert not metrics.available and not any(c.has_data for c in metrics.charts)


@pytest.mark.parametrize(("fields", "q", "expected"), [
    ({}, 0.95, None),
    ({"latency_ms_le_5": "100"}, 0.95, 5.0),
    ({"latency_ms_le_5": "94", "latency_ms_le_250": "6"}, 0.95, 250.0),
    ({"latency_ms_le_5": "50", "latency_ms_le_10": "50"}, 0.5, 5.0),
    ({"latency_ms_le_inf": "3"}, 0.99, 30000.0),
])
def test_it_estimates_latency_quantiles_from_the_router_buckets(
    fields: dict[str, str], q: float, expected: float | None
) -> None:
    assert live.latency_quantile(fields, q) == expected


def test_it_draws_gaps_where_minutes_have_no_samples() -> None:
    chart = live.Chart("Requests", "req/min",
                       [live.Series("requests", [1.0, 2.0, None, None, 4.0, 3.0])], 0)
    drawn = charts.draw(chart)
    assert drawn.has_data and drawn.peak == 5
    assert drawn.series[0].line.count("M") == 2  # two runs of samples, a gap between
    assert drawn.summary == "Requests over the last hour, peak 4 req/min. Latest: requests 3 req/min."


def test_it_says_no_data_yet_for_an_empty_chart() -> None:
    drawn = charts.draw(live.Chart("CPU", "%", [live.Series("cpu", [None] * 60)], 0))
    assert not drawn.has_data and drawn.summary == "CPU: no data yet."


@pytest.mark.parametrize(("value", "ceiling"), [(0, 1), (0.3, 0.5), (7, 10), (37, 50), (101, 200),
                                                (240, 250), (1, 1)])
def test_it_rounds_chart_scales_up_to_a_readable_number(value: float, ceiling: float) -> None:
    assert charts.nice_ceiling(value) == ceiling


# --- the pages that show live data ------------------------------------------------------


def test_it_shows_the_log_tail_and_then_only_new_lines(client: Client, acme: Acme,
                                                       r: redis.Redis) -> None:
    key = logs_key(acme.app.name)
    r.delete(key)
    try:
        r.xadd(key, {"time": str(time.time()), "tag": "app[web.1]", "line": "<b>booted</b>"})
        c = login(client, acme.viewer)
        page = c.get("/apps/shop/logs/").content.decode()
        assert "&lt;b&gt;booted&lt;/b&gt;" in page  # log text is escaped, never markup
        cursor = live.app_log_tail(acme.app.name).last_id
        assert f"after={cursor}" in page
        r.xadd(key, {"time": str(time.time()), "tag": "router", "line": "GET / 200"})
        part = c.get(f"/apps/shop/logs/?after={cursor}", HTTP_HX_REQUEST="true").content.decode()
        assert "GET / 200" in part and "booted" not in part
        assert 'hx-swap-oob="true"' in part  # the poller moves its cursor forward
    finally:
        r.delete(key)


def test_it_shows_an_honest_empty_state_without_logs(client: Client, acme: Acme) -> None:
    page = login(client, acme.viewer).get("/apps/shop/logs/").content.decode()
    assert "No log lines yet." in page


def test_it_streams_a_running_builds_output_and_shows_the_log_once_it_ends(
    client: Client, acme: Acme, r: redis.Redis
) -> None:
    build = actions.build_create(actor=acme.member, app=acme.app, commit="f" * 40)
    key = live.build_logs_key(build.pk)
    try:
        r.xadd(key, {"tag": "build", "line": "-----> Python app detected"})
        c = login(client, acme.viewer)
        running = c.get(f"/apps/shop/builds/{build.pk}/", HTTP_HX_REQUEST="true").content.decode()
        assert "Python app detected" in running and "hx-trigger=\"every" in running
        actions.build_finish(actor=acme.member, build=build, succeeded=False,
                             log="-----> Python app detected\n !     Build failed\n")
        done = c.get(f"/apps/shop/builds/{build.pk}/", HTTP_HX_REQUEST="true").content.decode()
        assert "Build failed" in done and "hx-trigger" not in done  # polling stops
    finally:
        r.delete(key)


def test_it_draws_the_last_hour_of_metrics_as_charts(client: Client, acme: Acme,
                                                     r: redis.Redis) -> None:
    recorder = Recorder(clock=time.time)
    recorder.record(acme.app.name, 200, 12, 100, 100, "GET / 200")
    commands = recorder.take()
    _write(r, commands)
    try:
        part = login(client, acme.viewer).get("/apps/shop/metrics/").content.decode()
        assert part.count("<svg") == 3  # requests, statuses, latency; memory and CPU say so
        assert part.count("No data yet") == 2
        assert 'aria-label="Requests over the last hour, peak 1 req/min.' in part
    finally:
        r.delete(*{str(c[1]) for c in commands})


def test_it_starts_from_the_newest_lines_when_the_cursor_is_not_one(r: redis.Redis,
                                                                    app_name: str) -> None:
    r.xadd(logs_key(app_name), {"tag": "router", "line": "only line"})
    tail = live.app_log_tail(app_name, after="garbage")
    assert tail.available and [line.line for line in tail.lines] == ["only line"]


def test_it_shows_a_containers_memory_and_cpu_once_its_hosts_heartbeat_was_ingested(
    client: Client, deployed: Acme
) -> None:
    web1, web2 = deployed.app.containers.order_by("number")
    c = login(client, deployed.viewer)
    assert c.get("/apps/shop/").content.decode().count("no data yet") == 4  # 2 containers x 2
    assert web1.host is not None
    rb = redis.Redis.from_url(settings.REDIS_URL)
    Reporter(rb, web1.host.name).heartbeat(Heartbeat(
        host=web1.host.name, time=time.time(), cpus=4, memory_mb=8192, memory_available_mb=4096,
        load1=0.2, memory_reserved_mb=1024, daemon="up",
        containers=[{"id": web1.id, "state": "running", "memory_mb": 512,
                     "memory_bytes": 300 * 2**20, "cpu_percent": 42.5},
                    {"id": web2.id, "state": "running", "memory_mb": 512}],  # its stats failed
    ), interval_s=10)
    ingest(rb, f"web-test-{uuid.uuid4().hex[:8]}")
    page = c.get("/apps/shop/").content.decode()
    assert ">300.0 MB<" in page and ">42.5%<" in page
    assert page.count("no data yet") == 2  # web.2 reported no figures


def test_it_adds_up_the_memory_every_host_reported_for_a_minute(r: redis.Redis,
                                                                 app_name: str) -> None:
    now = time.time()
    for host, cid, mem in (("h1", f"{app_name}.web.1.aaaaaa", 100 * 2**20),
                           ("h2", f"{app_name}.web.2.bbbbbb", 28 * 2**20)):
        Reporter(redis.Redis.from_url(settings.REDIS_URL), host).runtime_metrics(
            [ContainerUsage(id=cid, app=app_name, memory_bytes=mem, cpu_millis=6_000,
                            cpu_percent=10.0)], now)
    metrics = live.app_metrics(app_name, now=lambda: now)
    assert metrics.memory.latest() == 128
    assert metrics.cpu.latest() == 20  # 12 s of CPU in the minute


def test_it_tails_no_line_older_than_the_id_it_is_given(r: redis.Redis, app_name: str) -> None:
    key = logs_key(app_name)
    for ms, line in ((1_000, "old app"), (2_000, "new app 1"), (3_000, "new app 2")):
        r.xadd(key, {"tag": "app[web.1]", "line": line}, id=f"{ms}-0")
    assert [x.line for x in live.app_log_tail(app_name, since="2000-0").lines] == ["new app 1",
                                                                                    "new app 2"]
    # A cursor from before the floor (the old app's page left open) starts at the floor.
    assert [x.line for x in live.app_log_tail(app_name, after="1000-0", since="2000-0").lines] == [
        "new app 1", "new app 2"]
    assert [x.line for x in live.app_log_tail(app_name, after="2000-0", since="2000-0").lines] == [
        "new app 2"]


def test_it_shows_on_the_logs_page_no_line_older_than_the_app(client: Client, acme: Acme,
                                                               r: redis.Redis) -> None:
    """A destroyed app of the same name left lines (or its agent wrote them late): the logs API
    leaves them out, and so does the dashboard."""
    key = logs_key(acme.app.name)
    r.delete(key)
    created_ms = int(acme.app.created_at.timestamp() * 1000)
    try:
        r.xadd(key, {"tag": "app[web.1]", "line": "line of the old app"}, id=f"{created_ms - 5000}-0")
        r.xadd(key, {"tag": "app[web.1]", "line": "line of the new app"})
        c = login(client, acme.viewer)
        page = c.get("/apps/shop/logs/").content.decode()
        assert "line of the new app" in page and "line of the old app" not in page
        part = c.get(f"/apps/shop/logs/?after={created_ms - 6000}-0",
                     HTTP_HX_REQUEST="true").content.decode()
        assert "line of the new app" in part and "line of the old app" not in part
    finally:
        r.delete(key)
