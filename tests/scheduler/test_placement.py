"""Placement is a pure function: filter hosts, then spread an app, then least allocated."""

from __future__ import annotations

from collections import Counter

from scheduler.placement import HostCapacity, Request, Reservation, place, with_reservations


def host(name: str, *, state: str = "ready", mem: int = 4096, cpus: float = 4, used_mem: int = 0,
         used_cpu: float = 0.0, labels: dict[str, str] | None = None) -> HostCapacity:
    return HostCapacity(name=name, state=state, memory_mb=mem, cpus=cpus,
                        memory_reserved_mb=used_mem, cpu_reserved=used_cpu, labels=labels or {})


def web(app: str = "web1", mem: int = 512, cpu: float = 1.0, **constraints: str) -> Request:
    return Request(app=app, process_type="web", memory_mb=mem, cpu=cpu, constraints=constraints)


def test_it_spreads_an_apps_replicas_across_hosts() -> None:
    got = place([web()] * 6, [host("a"), host("b"), host("c")])
    assert Counter(a.host for a in got) == {"a": 2, "b": 2, "c": 2}


def test_it_places_on_ready_hosts_only() -> None:
    got = place([web()] * 2, [host("a", state="draining"), host("b", state="down"), host("c")])
    assert [a.host for a in got] == ["c", "c"]


def test_it_prefers_the_least_allocated_host_when_spread_is_equal() -> None:
    got = place([web()], [host("a", used_mem=2048), host("b", used_mem=1024), host("c", used_mem=3000)])
    assert got[0].host == "b"


def test_it_prefers_a_host_without_the_app_over_a_less_allocated_one_with_it() -> None:
    hosts = [host("a"), host("b", used_mem=3000, used_cpu=3)]
    got = place([web()], hosts, existing={"web1": {"a": 1}})
    assert got[0].host == "b"


def test_it_counts_reservations_and_refuses_a_host_without_room() -> None:
    got = place([web(mem=1024)] * 3, [host("a", mem=2048, used_mem=1024), host("b", mem=1024)])
    assert [a.host for a in got][:2].count("a") == 1 and [a.host for a in got].count("b") == 1
    assert got[2].host is None
    assert "no ready host has room" in got[2].reason


def test_it_counts_cpu_as_well_as_memory() -> None:
    got = place([web(cpu=2)] * 3, [host("a", cpus=2), host("b", cpus=3)])
    assert sorted(str(a.host) for a in got) == ["None", "a", "b"]


def test_it_honours_label_constraints() -> None:
    hosts = [host("a", labels={"disk": "ssd"}), host("b"), host("c", labels={"disk": "hdd"})]
    got = place([web(disk="ssd")] * 2, hosts)
    assert [a.host for a in got] == ["a", "a"]


def test_it_names_the_missing_labels_when_no_host_has_them() -> None:
    got = place([web(zone="eu")], [host("a")])
    assert got[0].host is None and "zone=eu" in got[0].reason


def test_it_says_so_when_no_host_is_ready() -> None:
    got = place([web()], [host("a", state="down")])
    assert got[0].host is None and "no ready host" in got[0].reason


def test_it_spreads_several_apps_and_balances_allocation() -> None:
    hosts = [host(f"h{i}", mem=100_000, cpus=100) for i in range(10)]
    requests = [web(app=f"app{a}") for a in range(20) for _ in range(5)]
    got = place(requests, hosts)
    per_app: dict[str, set[str]] = {}
    for a in got:
        per_app.setdefault(a.request.app, set()).add(str(a.host))
    assert all(len(h) == 5 for h in per_app.values())  # 5 replicas on 5 distinct hosts
    assert set(Counter(a.host for a in got).values()) == {10}


def test_it_gives_the_same_answer_either_way_it_searches() -> None:
    # A small group walks the global heap, a large one builds its own: both spread the same.
    hosts = [host(f"h{i}") for i in range(8)]
    small = place([web()] * 1, hosts)  # 4 * 1 < 8: global heap
    large = place([web()] * 8, hosts)  # 4 * 8 >= 8: per-group heap
    assert small[0].host == "h0"
    assert sorted(str(a.host) for a in large) == [f"h{i}" for i in range(8)]


def test_it_is_deterministic() -> None:
    hosts = [host(f"h{i}", used_mem=(i * 37) % 500) for i in range(30)]
    requests = [web(app=f"a{i % 7}") for i in range(100)]
    assert place(requests, hosts) == place(requests, hosts)


def test_it_and_the_planner_import_without_django() -> None:
    import subprocess
    import sys

    code = ("import sys; sys.modules['django'] = None\n"
            "import scheduler.placement, scheduler.planner\n"
            "assert not any(m == 'django' or m.startswith('django.') for m in sys.modules if sys.modules[m])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_it_counts_what_a_one_off_holds_on_its_host_like_a_reservation() -> None:
    hosts = with_reservations([host("a", mem=2048), host("b", mem=2048, used_mem=512)],
                              [Reservation("a", 1024, 1.0), Reservation("a", 512, 0.5)])
    assert [(h.memory_reserved_mb, h.cpu_reserved) for h in hosts] == [(1536, 1.5), (512, 0.0)]
    # Without the one-offs "a" would be the least allocated; with them it has room for one more.
    got = place([web(app="other")] * 3, hosts)
    assert [a.host for a in got] == ["b", "a", "b"]


def test_it_finds_no_room_where_one_offs_hold_all_the_memory_or_cpu() -> None:
    by_memory = with_reservations([host("a", mem=1024)], [Reservation("a", 1024, 0.5)])
    by_cpu = with_reservations([host("a", cpus=1)], [Reservation("a", 64, 1.0)])
    for hosts in (by_memory, by_cpu):
        (got,) = place([web(mem=64)], hosts)
        assert got.host is None and "no ready host has room" in got.reason


def test_it_ignores_one_offs_on_hosts_it_does_not_know() -> None:
    hosts = [host("a")]
    assert with_reservations(hosts, [Reservation("gone", 4096, 4.0)]) == hosts
