"""A build's output, line by line, into the Redis stream the dashboard follows while it runs.

`paas:build-logs:<build id>` (fields `time`, `tag`, `line`; web.live reads it) is capped at about
`MAXLEN` entries and expires `DONE_TTL_S` after the build ends. A writer thread of its own sends
the lines: whatever queued up while the last batch was on its way goes in the next pipeline, so a
fast build costs few round trips, and the build never waits for Redis. When Redis cannot be
reached the lines are dropped with a warning and the build carries on; the Build row's log (stored
at the end) stays the record.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time

import redis

log = logging.getLogger(__name__)

MAXLEN = 10_000
DONE_TTL_S = 24 * 3600
RUNNING_TTL_S = 2 * DONE_TTL_S  # a build whose process died never gets its "done" expiry
QUEUE_LINES = 10_000
BATCH_LINES = 500


def build_logs_key(build_id: int) -> str:
    return f"paas:build-logs:{build_id}"


class BuildLogStream:
    """Send a build's lines to its stream in order, from a thread of its own."""

    def __init__(self, build_id: int, redis_url: str, tag: str = "build") -> None:
        self.key = build_logs_key(build_id)
        self.tag = tag
        self.dropped = 0  # lines not written: Redis unreachable, or the queue full
        self._queue: queue.Queue[tuple[float, str] | None] = queue.Queue(QUEUE_LINES)
        self._closing = threading.Event()
        self._failing = False
        self._redis: redis.Redis[bytes] = redis.Redis.from_url(
            redis_url, socket_connect_timeout=1, socket_timeout=2)
        self._thread = threading.Thread(target=self._run, name=f"build-log-{build_id}", daemon=True)
        self._thread.start()

    def add(self, line: str) -> None:
        """Queue one line; never blocks and never raises."""
        try:
            self._queue.put_nowait((time.time(), line))
        except queue.Full:
            self.dropped += 1

    def close(self) -> None:
        """Send what is queued, then let the stream expire in a day. Returns at once."""
        self._closing.set()
        with contextlib.suppress(queue.Full):  # then the writer sees `_closing` once it is idle
            self._queue.put_nowait(None)

    def wait(self, timeout: float) -> bool:
        """Wait up to `timeout` s for the writer to finish after `close`; whether it did."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        try:
            while True:
                try:
                    first = self._queue.get(timeout=0.5)
                except queue.Empty:
                    if self._closing.is_set():
                        break
                    continue
                batch, done = [], first is None
                if first is not None:
                    batch.append(first)
                while not done and len(batch) < BATCH_LINES:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is None:
                        done = True
                    else:
                        batch.append(item)
                if batch:
                    self._write(batch, RUNNING_TTL_S)
                if done:
                    break
            self._write([], DONE_TTL_S)
        finally:
            self._redis.close()

    def _write(self, batch: list[tuple[float, str]], ttl_s: int) -> None:
        try:
            pipe = self._redis.pipeline(transaction=False)
            for when, line in batch:
                pipe.xadd(self.key, {"time": f"{when:.6f}", "tag": self.tag, "line": line},
                          maxlen=MAXLEN, approximate=True)
            pipe.expire(self.key, ttl_s)
            pipe.execute()
        except (redis.RedisError, OSError) as e:
            self.dropped += len(batch)
            if not self._failing:
                log.warning("cannot write the build's output to %s (carrying on without): %s",
                            self.key, e)
            self._failing = True
            return
        if self._failing:
            log.info("writing the build's output to %s again", self.key)
        self._failing = False
