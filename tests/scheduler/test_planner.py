"""The reconcile plan, without Django: desired release x formation against observed containers."""

from __future__ import annotations

from collections import Counter

import pytest

from scheduler.placement import HostCapacity
from scheduler.planner import Desired, Observed, Plan, ProcessType, backoff_s, plan

NOW = 1_000_000.0
HOSTS = [HostCapacity(name=n, state="ready", memory_mb=8192, cpus=8) for n in ("a", "b", "c")]


def desired(release: int = 2, web: int = 2, worker: int = 0, image: str | None = "sha256:abc") -> Desired:
    return Desired(app="web1", release=release, image=image, processes=(
        ProcessType("web", web, 512, 1.0), ProcessType("worker", worker, 256, 0.5)))


def c(cid: str, number: int, *, release: int = 2, state: str = "ready", host: str | None = "a",
      ptype: str = "web", restarts: int = 0, finished_at: float | None = None) -> Observed:
    return Observed(cid, ptype, number, release, host, state, restarts, finished_at)


def stopped(p: Plan) -> list[str]:
    return sorted(s.container_id for s in p.stops)


def test_it_starts_the_whole_formation_spread_over_hosts() -> None:
    p = plan(desired(web=2, worker=1), [], HOSTS, NOW)
    assert sorted((s.type, s.number) for s in p.starts) == [("web", 1), ("web", 2), ("worker", 1)]
    assert len({s.host for s in p.starts if s.type == "web"}) == 2
    assert all(s.release == 2 for s in p.starts) and not p.stops and not p.converged


def test_it_does_nothing_when_the_formation_runs_and_is_ready() -> None:
    p = plan(desired(web=2), [c("x", 1), c("y", 2, host="b")], HOSTS, NOW)
    assert p.empty and p.converged


def test_it_waits_for_starting_containers_without_starting_more() -> None:
    p = plan(desired(web=2), [c("x", 1, state="starting"), c("y", 2, state="running")], HOSTS, NOW)
    assert p.empty and not p.converged


def test_it_scales_up_with_the_next_free_numbers() -> None:
    p = plan(desired(web=4), [c("x", 1), c("y", 3)], HOSTS, NOW)
    assert sorted(s.number for s in p.starts) == [2, 4]


def test_it_scales_down_stopping_not_ready_ones_first() -> None:
    observed = [c("x", 1), c("y", 2, state="starting"), c("z", 3)]
    p = plan(desired(web=2), observed, HOSTS, NOW)
    assert stopped(p) == ["y"] and not p.starts


def test_it_stops_process_types_that_are_no_longer_wanted() -> None:
    p = plan(desired(web=1, worker=0), [c("x", 1), c("w", 1, ptype="worker")], HOSTS, NOW)
    assert stopped(p) == ["w"]


def test_it_starts_new_release_containers_first_and_keeps_the_old_ones_serving() -> None:
    old = [c("o1", 1, release=1), c("o2", 2, release=1, host="b")]
    p = plan(desired(release=2, web=2), old, HOSTS, NOW)
    assert len(p.starts) == 2 and all(s.release == 2 for s in p.starts)
    assert p.stops == ()


def test_it_drains_one_old_container_per_new_ready_one() -> None:
    observed = [c("o1", 1, release=1), c("o2", 2, release=1, host="b"),
                c("n1", 1, release=2, state="ready"), c("n2", 2, release=2, state="running")]
    p = plan(desired(release=2, web=2), observed, HOSTS, NOW)
    assert len(p.stops) == 1 and p.stops[0].container_id in {"o1", "o2"} and not p.starts


def test_it_removes_every_old_container_once_all_new_ones_are_ready() -> None:
    observed = [c("o1", 1, release=1), c("n1", 1), c("n2", 2, host="b")]
    p = plan(desired(release=2, web=2), observed, HOSTS, NOW)
    assert stopped(p) == ["o1"] and not p.starts


def test_it_stops_old_containers_that_are_not_ready_before_ready_ones() -> None:
    observed = [c("o1", 1, release=1, state="starting"), c("o2", 2, release=1)]
    p = plan(desired(release=2, web=1), [*observed, c("n1", 1, state="running")], HOSTS, NOW)
    assert stopped(p) == ["o1"]


def test_it_replaces_containers_of_a_down_host_at_once() -> None:
    hosts = [HOSTS[0], HostCapacity(name="b", state="down", memory_mb=8192, cpus=8)]
    p = plan(desired(web=2), [c("x", 1), c("y", 2, host="b")], hosts, NOW)
    assert stopped(p) == ["y"]
    assert [(s.number, s.host) for s in p.starts] == [(2, "a")]


def test_it_moves_containers_off_a_draining_host_new_one_first() -> None:
    hosts = [HOSTS[0], HostCapacity(name="b", state="draining", memory_mb=8192, cpus=8)]
    p = plan(desired(web=2), [c("x", 1), c("y", 2, host="b")], hosts, NOW)
    assert not p.stops and [(s.number, s.host) for s in p.starts] == [(2, "a")]
    later = plan(desired(web=2), [c("x", 1), c("y", 2, host="b"), c("z", 2, host="a")], hosts, NOW)
    assert stopped(later) == ["y"] and not later.starts


def test_it_replaces_a_crashed_container_after_its_back_off() -> None:
    crashed = c("x", 1, state="exited", restarts=2, finished_at=NOW - 1)
    waiting = plan(desired(web=1), [crashed], HOSTS, NOW)
    assert waiting.empty and waiting.retry_at == NOW - 1 + backoff_s(2)
    due = plan(desired(web=1), [crashed], HOSTS, NOW + backoff_s(2))
    assert stopped(due) == ["x"]
    assert [(s.number, s.restarts) for s in due.starts] == [(1, 3)]


def test_it_grows_the_back_off_and_caps_it() -> None:
    assert [backoff_s(n) for n in range(4)] == [1.0, 2.0, 4.0, 8.0]
    assert backoff_s(40) == 300.0


def test_it_removes_gone_containers_of_old_releases_without_replacing_them() -> None:
    p = plan(desired(release=2, web=1), [c("o", 1, release=1, state="oom"), c("n", 1)], HOSTS, NOW)
    assert stopped(p) == ["o"] and not p.starts


def test_it_runs_nothing_for_a_release_without_an_image() -> None:
    p = plan(desired(image=None), [c("x", 1, release=1)], HOSTS, NOW)
    assert stopped(p) == ["x"] and not p.starts
    assert plan(desired(image=None), [], HOSTS, NOW).empty


def test_it_replaces_a_container_whose_spec_never_reached_its_agent() -> None:
    lost = Observed("x", "web", 1, 2, "a", "starting", created_at=NOW - 121)
    p = plan(desired(web=1), [lost], HOSTS, NOW, start_timeout_s=120)
    assert stopped(p) == ["x"] and [s.number for s in p.starts] == [1]
    young = Observed("x", "web", 1, 2, "a", "starting", created_at=NOW - 5)
    assert plan(desired(web=1), [young], HOSTS, NOW, start_timeout_s=120).empty


def test_it_reports_what_fits_nowhere() -> None:
    tiny = [HostCapacity(name="a", state="ready", memory_mb=600, cpus=8)]
    p = plan(desired(web=2), [], tiny, NOW)
    assert len(p.starts) == 1 and len(p.unplaced) == 1 and "no ready host has room" in p.unplaced[0]


def test_it_spreads_new_containers_away_from_the_apps_existing_ones() -> None:
    p = plan(desired(web=3), [c("x", 1, host="a")], HOSTS, NOW)
    assert Counter(s.host for s in p.starts) == {"b": 1, "c": 1}


def test_it_converges_when_its_plans_are_applied_and_everything_gets_ready() -> None:
    hosts = HOSTS
    observed: list[Observed] = [c(f"o{i}", i, release=1, host="abc"[i % 3]) for i in range(1, 5)]
    for step in range(10):
        p = plan(desired(release=2, web=4), observed, hosts, NOW)
        if p.converged:
            break
        gone = {s.container_id for s in p.stops}
        # Every pass, what was started before becomes ready.
        observed = [Observed(o.id, o.type, o.number, o.release, o.host, "ready") for o in observed
                    if o.id not in gone]
        observed += [c(f"n{step}-{s.number}", s.number, state="starting", host=s.host) for s in p.starts]
        ready_serving = sum(1 for o in observed if o.state == "ready")
        assert ready_serving >= 4, "a moment with fewer ready web containers than wanted"
    assert p.converged
    assert sorted((o.release, o.number) for o in observed) == [(2, 1), (2, 2), (2, 3), (2, 4)]


@pytest.mark.parametrize(("surge", "unavailable"), [(None, 0), (1, 0), (0, 1), (2, 1), (0, 0)])
def test_it_rolls_out_within_the_surge_and_unavailability_limits(surge: int | None, unavailable: int) -> None:
    quantity = 4
    observed: list[Observed] = [c(f"o{i}", i, release=1, host="abc"[i % 3]) for i in range(1, quantity + 1)]
    limit_live = quantity + (quantity if surge is None else max(surge, 1 if unavailable == 0 else 0))
    for step in range(40):
        p = plan(desired(release=2, web=quantity), observed, HOSTS, NOW,
                 max_surge=surge, max_unavailable=unavailable)
        if p.converged:
            break
        gone = {s.container_id for s in p.stops}
        observed = [o for o in observed if o.id not in gone]
        assert sum(1 for o in observed if o.state == "ready") >= quantity - unavailable
        observed += [c(f"n{step}-{s.number}", s.number, state="starting", host=s.host) for s in p.starts]
        assert len(observed) <= limit_live
        # Between passes, what was started becomes ready.
        observed = [Observed(o.id, o.type, o.number, o.release, o.host, "ready") for o in observed]
    assert p.converged
    assert sorted((o.release, o.number) for o in observed) == [(2, n) for n in range(1, quantity + 1)]
