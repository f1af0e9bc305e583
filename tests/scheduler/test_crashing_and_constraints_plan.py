"""The pure parts of crash loops and formation constraints: what `paas ps` calls a container, the
back-off streak, and where a constrained process type may run."""

from __future__ import annotations

import pytest

from scheduler.placement import HostCapacity
from scheduler.planner import (
    CRASHING_RESTARTS,
    Desired,
    Observed,
    ProcessType,
    backoff_s,
    plan,
    status,
    streak,
)

NOW = 2_000_000.0
EU = {"region": "eu"}


def hosts(**labels: dict[str, str]) -> list[HostCapacity]:
    return [HostCapacity(name=n, state="ready", memory_mb=8192, cpus=8, labels=lab)
            for n, lab in labels.items()]


def desired(web: int = 1, constraints: dict[str, str] | None = None, release: int = 2) -> Desired:
    return Desired(app="web1", release=release, image="sha256:abc",
                   processes=(ProcessType("web", web, 512, 1.0, constraints or {}),))


def crashed(cid: str, *, restarts: int, finished_at: float, ready_at: float | None = None,
            state: str = "exited", exit_code: int | None = 1, host: str = "a") -> Observed:
    return Observed(cid, "web", 1, 2, host, state, restarts, finished_at, finished_at - 5,
                    ready_at, exit_code)


@pytest.mark.parametrize(("state", "restarts", "ready_for", "expected"), [
    ("starting", 0, None, "starting"),
    ("running", 1, None, "starting"),
    ("ready", 0, 1.0, "up"),
    ("ready", 2, 1.0, "up"),
    ("oom", 0, None, "oom"),
    ("exited", 1, None, "exited"),
    ("failed", 0, None, "failed"),
    ("starting", CRASHING_RESTARTS, None, "crashing"),
    ("exited", CRASHING_RESTARTS, None, "crashing"),
    ("oom", CRASHING_RESTARTS + 4, None, "crashing"),
    ("ready", CRASHING_RESTARTS, 59.0, "crashing"),
    ("ready", CRASHING_RESTARTS, 60.0, "up"),
])
def test_it_calls_a_container_restarted_three_times_in_a_row_crashing_until_it_stays_ready(
        state: str, restarts: int, ready_for: float | None, expected: str) -> None:
    ready_at = None if ready_for is None else NOW - ready_for
    assert status(state, restarts, ready_at, NOW, stable_s=60.0) == expected


def test_it_grows_the_back_off_with_the_streak_and_carries_how_the_last_one_ended() -> None:
    c = crashed("x", restarts=4, finished_at=NOW, state="oom", exit_code=137)
    assert streak(c) == 4
    assert plan(desired(), [c], hosts(a={}), NOW + backoff_s(4) - 0.1).starts == ()
    p = plan(desired(), [c], hosts(a={}), NOW + backoff_s(4) + 0.1)
    (start,) = p.starts
    assert (start.number, start.restarts) == (1, 5)
    assert (start.last_exit_state, start.last_exit_code) == ("oom", 137)
    assert [s.container_id for s in p.stops] == ["x"]


def test_it_starts_a_new_streak_when_the_crashed_container_had_stayed_ready() -> None:
    c = crashed("x", restarts=6, finished_at=NOW, ready_at=NOW - 600)
    assert streak(c, stable_s=60.0) == 0
    (start,) = plan(desired(), [c], hosts(a={}), NOW + 1.1, stable_s=60.0).starts
    assert start.restarts == 1 and start.last_exit_code == 1
    short = crashed("y", restarts=6, finished_at=NOW, ready_at=NOW - 30)
    p = plan(desired(), [short], hosts(a={}), NOW + 1.1, stable_s=60.0)
    assert p.starts == () and p.retry_at == NOW + backoff_s(6)


def test_it_places_a_constrained_type_only_on_hosts_with_the_labels() -> None:
    p = plan(desired(web=3, constraints=EU), [], hosts(a={}, b=EU, c={"region": "us"}), NOW)
    assert [s.host for s in p.starts] == ["b", "b", "b"] and not p.unplaced


def test_it_says_which_label_no_ready_host_has_instead_of_placing() -> None:
    p = plan(desired(web=2, constraints=EU), [], hosts(a={}, b={"region": "us"}), NOW)
    assert p.starts == () and not p.converged
    assert p.unplaced == ("no ready host has label region=eu (needed by web1 web (512 MB, 1 CPU))",)


def test_it_moves_containers_off_hosts_that_lack_a_newly_constrained_label_new_first() -> None:
    on_a = Observed("x", "web", 1, 2, "a", "ready")
    p = plan(desired(constraints=EU), [on_a], hosts(a={}, b=EU), NOW)
    assert [(s.host, s.number) for s in p.starts] == [("b", 1)]
    assert p.stops == (), "the old one serves until the new one is ready"
    moved = Observed("y", "web", 1, 2, "b", "ready")
    p = plan(desired(constraints=EU), [on_a, moved], hosts(a={}, b=EU), NOW)
    assert [s.container_id for s in p.stops] == ["x"] and p.starts == ()


def test_it_keeps_containers_where_they_are_when_the_labels_still_match() -> None:
    p = plan(desired(constraints=EU), [Observed("x", "web", 1, 2, "b", "ready")],
             hosts(a={}, b={"region": "eu", "disk": "ssd"}), NOW)
    assert p.empty and p.converged
