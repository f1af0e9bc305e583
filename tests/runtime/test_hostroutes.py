"""Routes between hosts: the pure plan, and the announcements in the real Redis.

(The routes themselves, in network namespaces, are exercised by tests/scheduler/test_multihost.py.)
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from runtime.hostroutes import NET_KEY, Peer, announce, peers, plan

ROOT = Path(__file__).resolve().parents[2]


def test_it_routes_every_other_hosts_subnet_via_its_address() -> None:
    announced = [Peer("a", "10.0.0.11", "10.201.1.0/24"), Peer("b", "10.0.0.12", "10.201.2.0/24"),
                 Peer("c", "10.0.0.13", "10.201.3.0/24")]
    add, remove = plan("a", "10.201.1.0/24", {}, announced)
    assert add == {"10.201.2.0/24": "10.0.0.12", "10.201.3.0/24": "10.0.0.13"} and remove == []


def test_it_removes_the_routes_of_hosts_no_longer_announced_and_keeps_the_rest() -> None:
    current = {"10.201.2.0/24": "10.0.0.12", "10.201.3.0/24": "10.0.0.13"}
    add, remove = plan("a", "10.201.1.0/24", current, [Peer("b", "10.0.0.12", "10.201.2.0/24")])
    assert add == {} and remove == ["10.201.3.0/24"]


def test_it_follows_a_host_that_moved_to_another_address() -> None:
    add, remove = plan("a", None, {"10.201.2.0/24": "10.0.0.12"},
                       [Peer("b", "10.0.0.99", "10.201.2.0/24")])
    assert add == {"10.201.2.0/24": "10.0.0.99"} and remove == []


def test_it_never_routes_its_own_subnet_nor_one_claimed_twice() -> None:
    announced = [Peer("a", "10.0.0.11", "10.201.1.0/24"), Peer("b", "10.0.0.12", "10.201.1.0/25"),
                 Peer("c", "10.0.0.13", "10.201.3.0/24"), Peer("d", "10.0.0.14", "10.201.3.0/24")]
    add, _ = plan("a", "10.201.1.0/24", {}, announced)
    assert add == {"10.201.3.0/24": "10.0.0.13"}  # b overlaps a's own; d claims c's


@pytest.fixture
def rdb() -> Iterator[redis.Redis[bytes]]:
    url = os.environ.get("REDIS_URL")
    assert url, "REDIS_URL is not set: run the suite through scripts/with-test-services"
    client = redis.Redis.from_url(url)
    yield client
    client.close()


def test_its_announcements_expire_with_the_hosts_heartbeat(rdb: redis.Redis[bytes]) -> None:
    host = f"hr-{secrets.token_hex(4)}"
    try:
        announce(rdb, host, "10.0.0.21", "10.202.7.0/24", ttl_s=30)
        assert Peer(host, "10.0.0.21", "10.202.7.0/24") in peers(rdb)
        assert 0 < rdb.pttl(NET_KEY.format(host=host)) <= 30_000
    finally:
        rdb.delete(NET_KEY.format(host=host))


def test_it_skips_a_malformed_announcement(rdb: redis.Redis[bytes]) -> None:
    host = f"hr-{secrets.token_hex(4)}"
    try:
        rdb.set(NET_KEY.format(host=host), b'{"address": "nope", "subnet": "10.1.0.0/24"}', ex=30)
        assert host not in {p.host for p in peers(rdb)}
    finally:
        rdb.delete(NET_KEY.format(host=host))


def test_its_command_says_what_is_wrong_without_a_traceback(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    state = ["--state", str(tmp_path / "routes.json")]
    no_redis = subprocess.run([sys.executable, "-m", "runtime.hostroutes", *state], env=env,
                              capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert no_redis.returncode == 2 and "REDIS_URL must be set" in no_redis.stderr
    env["REDIS_URL"] = "redis://127.0.0.1:1/0"
    bad = subprocess.run([sys.executable, "-m", "runtime.hostroutes", *state, "--interval", "0"],
                         env=env, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert bad.returncode == 2 and "--interval must be between" in bad.stderr
    assert "Traceback" not in no_redis.stderr + bad.stderr
