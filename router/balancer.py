"""Pure load balancing: power of two choices over outstanding requests, with set-aside.

An endpoint that refused a connection is set aside for a moment (`set_aside` seconds) and only
chosen again when nothing else is left. The clock and the random source are passed in, so tests
decide both.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Sequence

from router.table import Endpoint


class Balancer:
    """Per-worker balancing state: outstanding requests and set-aside deadlines per endpoint."""

    def __init__(self, set_aside: float = 5.0, rng: random.Random | None = None) -> None:
        self.set_aside = set_aside
        self.outstanding: dict[str, int] = {}
        self.aside_until: dict[str, float] = {}
        self._rng = rng or random.Random()

    def pick(self, endpoints: Sequence[Endpoint], now: float, exclude: Collection[str] = ()) -> Endpoint | None:
        """Choose an endpoint for the next request, or None when every one is excluded."""
        if exclude:
            endpoints = [e for e in endpoints if e.key not in exclude]
        if not endpoints:
            return None
        aside = self.aside_until
        if aside:
            ready = [e for e in endpoints if aside.get(e.key, 0.0) <= now]
            if ready:
                endpoints = ready
            else:  # everything is set aside: try the one that comes back first
                return min(endpoints, key=lambda e: aside.get(e.key, 0.0))
        if len(endpoints) == 1:
            return endpoints[0]
        a, b = self._rng.sample(endpoints, 2)
        out = self.outstanding
        return a if out.get(a.key, 0) <= out.get(b.key, 0) else b

    def started(self, endpoint: Endpoint) -> None:
        self.outstanding[endpoint.key] = self.outstanding.get(endpoint.key, 0) + 1

    def finished(self, endpoint: Endpoint) -> None:
        left = self.outstanding.get(endpoint.key, 0) - 1
        if left > 0:
            self.outstanding[endpoint.key] = left
        else:
            self.outstanding.pop(endpoint.key, None)

    def connect_failed(self, endpoint: Endpoint, now: float) -> None:
        self.aside_until[endpoint.key] = now + self.set_aside

    def connected(self, endpoint: Endpoint) -> None:
        self.aside_until.pop(endpoint.key, None)
