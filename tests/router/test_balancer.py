"""Balancing across an app's endpoints: power of two choices, set-aside after a refusal."""

from __future__ import annotations

import random
from collections import Counter

from router.balancer import Balancer
from router.table import parse_endpoint

A, B, C = (parse_endpoint(f"10.0.0.{i}:5000") for i in (1, 2, 3))


def test_it_picks_the_endpoint_with_fewer_outstanding_requests() -> None:
    balancer = Balancer(rng=random.Random(1))
    for _ in range(3):
        balancer.started(A)
    picks = {balancer.pick([A, B], now=0.0).key for _ in range(20)}  # type: ignore[union-attr]
    assert picks == {B.key}


def test_it_spreads_requests_when_the_load_is_even() -> None:
    balancer = Balancer(rng=random.Random(2))
    counts = Counter(balancer.pick([A, B, C], now=0.0).key for _ in range(300))  # type: ignore[union-attr]
    assert set(counts) == {A.key, B.key, C.key}
    assert min(counts.values()) > 50


def test_it_forgets_a_request_once_it_is_finished() -> None:
    balancer = Balancer()
    balancer.started(A)
    balancer.finished(A)
    assert balancer.outstanding == {}


def test_it_sets_aside_an_endpoint_that_refused_a_connection_for_a_moment() -> None:
    balancer = Balancer(set_aside=5.0, rng=random.Random(3))
    balancer.connect_failed(A, now=100.0)
    assert {balancer.pick([A, B], now=101.0).key for _ in range(20)} == {B.key}  # type: ignore[union-attr]
    assert A.key in {balancer.pick([A, B], now=106.0).key for _ in range(50)}  # type: ignore[union-attr]


def test_it_still_tries_the_soonest_back_when_every_endpoint_is_set_aside() -> None:
    balancer = Balancer(set_aside=5.0)
    balancer.connect_failed(A, now=100.0)
    balancer.connect_failed(B, now=101.0)
    assert balancer.pick([A, B], now=102.0) == A


def test_it_takes_an_endpoint_back_as_soon_as_it_accepts_again() -> None:
    balancer = Balancer(set_aside=5.0)
    balancer.connect_failed(A, now=100.0)
    balancer.connected(A)
    assert balancer.aside_until == {}


def test_it_skips_endpoints_already_tried_for_this_request() -> None:
    balancer = Balancer()
    assert balancer.pick([A, B], now=0.0, exclude={A.key}) == B
    assert balancer.pick([A, B], now=0.0, exclude={A.key, B.key}) is None
