"""Per-app metrics and access-log lines: gathered per request, written to Redis in batches."""

from __future__ import annotations

import asyncio

import redis
import redis.asyncio as aioredis

from router.follow import flush
from router.metrics import LOG_BATCH, Recorder, bucket_field


def send_all(redis_url: str, recorder: Recorder) -> None:
    """Write what the recorder holds as a router worker does (router.follow.flush)."""

    async def go() -> None:
        client = aioredis.from_url(redis_url)
        try:
            await flush(client, recorder)
        finally:
            await client.aclose()

    asyncio.run(go())


def test_it_puts_a_latency_in_the_first_bucket_it_fits() -> None:
    assert bucket_field(0.3) == "latency_ms_le_5"
    assert bucket_field(5.0) == "latency_ms_le_5"
    assert bucket_field(5.1) == "latency_ms_le_10"
    assert bucket_field(45_000) == "latency_ms_le_inf"


def test_it_counts_requests_by_status_class_and_bytes_per_app() -> None:
    recorder = Recorder(clock=lambda: 600.0)
    recorder.record("web1", 200, 3.0, 10, 100, "line 1")
    recorder.record("web1", 503, 30.0, 0, 50, "line 2")
    recorder.record("shop", 404, 1.0, 0, 20, "line 3")
    counts = recorder.counts("web1")
    assert counts["requests"] == 2
    assert counts["status_2xx"] == 1 and counts["status_5xx"] == 1
    assert counts["bytes_in"] == 10 and counts["bytes_out"] == 150
    assert counts["latency_ms_le_5"] == 1 and counts["latency_ms_le_50"] == 1


def test_it_batches_one_log_command_per_app_and_flush() -> None:
    recorder = Recorder(clock=lambda: 600.0)
    for i in range(100):
        recorder.record("web1", 200, 1.0, 0, 0, f"line {i}")
    commands = recorder.take()
    batches = [c for c in commands if c[0] == LOG_BATCH]
    assert len(batches) == 1 and batches[0][1] == "paas:logs:web1" and batches[0][2] == 100
    assert isinstance(batches[0][3], bytes)  # the whole batch travels encoded already
    assert not recorder.pending() and recorder.take() == []


def test_it_hands_over_log_lines_in_slices() -> None:
    recorder = Recorder(clock=lambda: 600.0)
    for i in range(25):
        recorder.record("web1", 200, 1.0, 0, 0, f"line {i}")
    first = recorder.take(max_lines=10)
    assert any(c[0] == "HINCRBY" for c in first)
    assert recorder.pending() and len(recorder.lines) == 15
    second = recorder.take(max_lines=10)
    assert all(c[0] == LOG_BATCH for c in second)
    recorder.take(max_lines=10)
    assert not recorder.pending()


def test_it_keeps_memory_bounded_when_lines_cannot_be_written() -> None:
    recorder = Recorder(max_lines=10)
    for _ in range(25):
        recorder.record("web1", 200, 1.0, 0, 0, "x")
    assert len(recorder.lines) == 10 and recorder.dropped_lines == 15
    assert recorder.counts("web1")["requests"] == 25


def test_it_writes_counters_and_a_capped_log_stream_to_redis(redis_client: redis.Redis, redis_url: str) -> None:
    recorder = Recorder(log_maxlen=1000, clock=lambda: 6000.0)
    for i in range(3):
        recorder.record("web1", 200, 2.0, 5, 7, f'at=info status=200 path="/a b\tc" n={i}')
    send_all(redis_url, recorder)
    totals = redis_client.hgetall("paas:metrics:router:web1")
    assert totals[b"requests"] == b"3" and totals[b"status_2xx"] == b"3" and totals[b"bytes_out"] == b"21"
    assert redis_client.hget("paas:metrics:router:web1:100", "requests") == b"3"
    assert 0 < redis_client.ttl("paas:metrics:router:web1:100") <= 24 * 3600
    entries = redis_client.xrange("paas:logs:web1")
    assert [e[1][b"line"] for e in entries] == [f'at=info status=200 path="/a b\tc" n={i}'.encode() for i in range(3)]
    assert entries[0][1][b"tag"] == b"router" and entries[0][1][b"time"] == b"6000.000000"


def test_it_keeps_the_log_stream_near_its_cap(redis_client: redis.Redis, redis_url: str) -> None:
    recorder = Recorder(log_maxlen=100, clock=lambda: 6000.0)
    for batch in range(5):
        for i in range(200):
            recorder.record("web1", 200, 1.0, 0, 0, f"line {batch}.{i}")
        send_all(redis_url, recorder)
    # Trimming is approximate (whole stream nodes of 100 entries) and once per batch.
    assert 100 <= redis_client.xlen("paas:logs:web1") < 300
    last = redis_client.xrevrange("paas:logs:web1", count=1)[0][1]
    assert last[b"line"] == b"line 4.199" and last[b"tag"] == b"router"


def test_it_writes_non_ascii_lines_and_leaves_the_connection_answering(redis_client: redis.Redis,
                                                                       redis_url: str) -> None:
    recorder = Recorder(clock=lambda: 6000.0)
    recorder.record("web1", 200, 1.0, 0, 0, "path=/caf\u00e9 \u263a")
    recorder.record("web2", 404, 1.0, 0, 0, "second app")

    async def go() -> list[object]:
        client = aioredis.from_url(redis_url, max_connections=1)  # the one the batch went over
        try:
            await flush(client, recorder)
            return [await client.ping(), await client.get("nothing-here")]
        finally:
            await client.aclose()

    assert asyncio.run(go()) == [True, None]  # replies are on again
    assert redis_client.xrange("paas:logs:web1")[0][1][b"line"] == "path=/caf\u00e9 \u263a".encode()
    assert redis_client.xrange("paas:logs:web2")[0][1][b"line"] == b"second app"


def test_it_takes_lines_alone_when_asked_to_leave_the_counters() -> None:
    recorder = Recorder(clock=lambda: 600.0)
    for i in range(5):
        recorder.record("web1", 200, 1.0, 0, 0, f"line {i}")
    commands = recorder.take(max_lines=3, counters=False)
    assert [c[0] for c in commands] == [LOG_BATCH] and recorder.counts("web1")["requests"] == 5
    assert len(recorder.lines) == 2


def test_a_flush_sends_every_slice_and_the_counters_once(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    client.delete("paas:logs:sliced", "paas:metrics:router:sliced")
    recorder = Recorder()
    for i in range(450):
        recorder.record("sliced", 200, 1.0, 0, 10, f"line {i}")
    send_all(redis_url, recorder)
    assert client.xlen("paas:logs:sliced") == 450
    assert [e[1][b"line"] for e in client.xrange("paas:logs:sliced", count=2)] == [b"line 0", b"line 1"]
    assert client.hget("paas:metrics:router:sliced", "requests") == b"450"
    assert client.hget("paas:metrics:router:sliced", "bytes_out") == b"4500"
    assert not recorder.pending()
    client.delete("paas:logs:sliced", "paas:metrics:router:sliced")
