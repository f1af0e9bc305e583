"""The agent's log shipper against real containers of a real runtime daemon, and a real Redis.

The daemon rotates container logs at 64 KiB here (tests.runtime.daemon_fixtures), so a few
hundred long lines rotate the log several times while the shipper follows it.
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import redis

from runtime.agent.config import AgentSettings
from runtime.agent.logship import MARKER_KEY, LogShipper, log_shipper, logs_key
from tests.runtime.daemon_fixtures import Daemon, Image, daemon_fixture, rt_fixture, tiny_fixture

pytestmark = [pytest.mark.root, pytest.mark.slow]
daemon, rt, tiny = daemon_fixture, rt_fixture, tiny_fixture

PAD = "x" * 180


class Shipping:
    """Shippers of one host name (one after the other, like agent restarts), each in a thread."""

    def __init__(self, daemon: Daemon) -> None:
        url = os.environ.get("REDIS_URL")
        assert url, "REDIS_URL is not set: run the suite through scripts/with-test-services"
        self.settings = AgentSettings.from_env(
            {"REDIS_URL": url, "PAAS_RUNTIME_DIR": str(daemon.root),
             "PAAS_AGENT_LOG_POLL_S": "0.05"},
            host=f"h-{secrets.token_hex(4)}",
        )
        self.client: redis.Redis[bytes] = redis.Redis.from_url(url)
        self.app = f"logs-{secrets.token_hex(4)}"
        self.current: tuple[LogShipper, threading.Event, threading.Thread] | None = None

    def start(self) -> LogShipper:
        env = {"PAAS_AGENT_LOG_POLL_S": "0.05"}
        shipper, stop = log_shipper(self.settings, env), threading.Event()
        thread = threading.Thread(target=shipper.run, args=(stop,), daemon=True)
        thread.start()
        self.current = (shipper, stop, thread)
        return shipper

    def stop(self) -> None:
        if self.current is not None:
            _shipper, stop, thread = self.current
            stop.set()
            thread.join(timeout=30)
            self.current = None

    def lines(self) -> list[str]:
        return [f[b"line"].decode() for _id, f in self.client.xrange(logs_key(self.app))]

    def wait_for(self, n: int, timeout: float = 60) -> list[str]:
        return self.wait_until(lambda got: len(got) >= n, timeout)

    def wait_until(self, done: Callable[[list[str]], bool], timeout: float = 60) -> list[str]:
        deadline = time.monotonic() + timeout
        while not done(got := self.lines()) and time.monotonic() < deadline:
            time.sleep(0.05)
        return got

    def cleanup(self) -> None:
        self.stop()
        self.client.delete(logs_key(self.app), MARKER_KEY.format(host=self.settings.host))
        self.client.close()


@pytest.fixture
def shipping(rt: Daemon) -> Iterator[Shipping]:
    s = Shipping(rt)
    try:
        yield s
    finally:
        s.cleanup()


def counting(n: int, every: int = 50, pause: str = "0.05") -> list[str]:
    """A shell command printing `line 1 ...` to `line n ...`, pausing every `every` lines."""
    script = (
        f'i=0; while [ $i -lt {n} ]; do i=$((i+1)); echo "line $i {PAD}"; '
        f'[ $((i % {every})) -eq 0 ] && sleep {pause}; done; echo done >&2; sleep 600'
    )
    return ["/bin/sh", "-c", script]


def test_it_ships_a_containers_output_in_order_with_its_tag(
    rt: Daemon, tiny: Image, shipping: Shipping
) -> None:
    shipping.start()
    c = rt.run(tiny, counting(400), app=shipping.app, labels={"paas.process": "web.1"})
    got = shipping.wait_for(401)
    assert got == [f"line {i} {PAD}" for i in range(1, 401)] + ["done"]
    assert (rt.root / "containers" / c["id"] / "container.log.1").exists()  # it did rotate
    tags = {f[b"tag"] for _id, f in shipping.client.xrange(logs_key(shipping.app))}
    assert tags == {b"app[web.1]"}


def test_an_agent_restarted_mid_stream_neither_loses_nor_repeats_lines(
    rt: Daemon, tiny: Image, shipping: Shipping
) -> None:
    shipping.start()
    rt.run(tiny, counting(1000, every=20), app=shipping.app, labels={"paas.process": "web.1"})
    assert len(shipping.wait_for(100)) < 1000  # still writing
    shipping.stop()
    time.sleep(0.5)  # the container writes (and its log rotates) while no shipper runs
    shipping.start()
    got = shipping.wait_for(1001, timeout=120)
    assert got == [f"line {i} {PAD}" for i in range(1, 1001)] + ["done"]


def test_it_ships_the_last_words_of_a_container_stopped_and_removed(
    rt: Daemon, tiny: Image, shipping: Shipping
) -> None:
    shipping.start()
    script = 'trap "echo bye; exit 0" TERM; echo hello; while true; do sleep 0.1; done'
    c = rt.run(tiny, ["/bin/sh", "-c", script], app=shipping.app)
    assert shipping.wait_for(1) == ["hello"]
    rt.client.stop(c["id"], timeout_s=10)
    rt.client.remove(c["id"])
    # busybox's sh may say "Terminated" for its sleep before its trap says "bye"
    lines = shipping.wait_until(lambda got: "bye" in got)
    assert lines[0] == "hello" and "bye" in lines, lines
    assert set(lines) <= {"hello", "Terminated", "bye"}, lines
