from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import redis


@pytest.fixture
def redis_url() -> str:
    url = os.environ.get("REDIS_URL")
    if not url:
        pytest.fail("REDIS_URL is not set: run the tests under scripts/with-test-services")
    return url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A client on the test redis-server, with the router's keys cleared before and after."""
    client = redis.Redis.from_url(redis_url)

    def clear() -> None:
        keys = [*client.scan_iter("paas:router:*"), *client.scan_iter("paas:metrics:router:*"),
                *client.scan_iter("paas:logs:*")]
        if keys:
            client.delete(*keys)

    clear()
    yield client
    clear()
    client.close()
